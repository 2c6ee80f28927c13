// Operators' analytics: energy by feeder and transformer, the top sites and the devices that
// stopped reporting, fetched from the JSON API and drawn here (helpers from history.js).
(function () {
  "use strict";

  const charts = window.EnergyCharts;
  const { el, bar, fillBody, formatShown, formatMoney, formatTime } = charts;
  const FEEDERS_CHARTED = 30;
  const root = document.querySelector("[data-analytics]");
  if (!root) return;

  function share(value, total) {
    return total > 0 ? (100 * value) / total : 0;
  }

  function detail(text) {
    return el("span", { class: "muted small detail" }, text);
  }

  // The grid by day, or by month for a year: each site's local days in its own days and months.
  function renderSlots(data) {
    charts.barChart(root.querySelector("[data-slot-chart]"), {
      xLabel: data.unit === "month" ? "Month" : "Day",
      labels: data.results.map((slot) => slot.label),
      series: [
        { label: "Energy", values: data.results.map((slot) => slot.energy_kwh), color: charts.ACCENT },
      ],
      height: 200,
      minLabelPx: data.unit === "month" ? 34 : 60,
      legend: false,
    });
    const rows = data.results.map((slot) =>
      el(
        "tr",
        { dataset: { slot: slot.date } },
        el("th", { scope: "row" }, slot.name),
        el("td", { class: "num" }, formatShown(slot.energy_kwh))
      )
    );
    fillBody(root.querySelector("[data-grid-slots]"), rows, "", 2);
    root.querySelector("[data-grid-slots-total]").textContent = formatShown(data.energy_kwh);
  }

  function renderFeeders(data) {
    const charted = data.feeders.filter((f) => f.energy_kwh > 0).slice(0, FEEDERS_CHARTED);
    const chart = root.querySelector("[data-feeder-chart]");
    chart.hidden = charted.length === 0;
    if (charted.length) {
      charts.barChart(chart, {
        labels: charted.map((f) => f.code || "none"),
        series: [
          { label: "Energy", values: charted.map((f) => f.energy_kwh), color: charts.ACCENT },
        ],
        height: 220,
        minLabelPx: 64,
        legend: false,
      });
    }
    const rows = data.feeders.map((f) =>
      el(
        "tr",
        { dataset: { feeder: f.code || "" } },
        el("th", { scope: "row" }, f.code || "No feeder", detail(f.name),
          bar(share(f.energy_kwh, data.energy_kwh))),
        el("td", {}, f.transformer_code || "—"),
        el("td", { class: "num" }, f.sites),
        el("td", { class: "num" }, formatShown(f.energy_kwh))
      )
    );
    fillBody(root.querySelector("[data-feeders]"), rows, "No feeders registered.", 4);
  }

  function renderTransformers(data) {
    const rows = data.transformers.map((t) => {
      const capacity = t.capacity_kva ? t.capacity_kva + " kVA" : null;
      return el(
        "tr",
        { dataset: { transformer: t.code } },
        el("th", { scope: "row" }, t.code,
          detail([t.substation_code, capacity].filter(Boolean).join(" · ")),
          bar(share(t.energy_kwh, data.energy_kwh))),
        el("td", { class: "num" }, t.feeders),
        el("td", { class: "num" }, t.sites),
        el("td", { class: "num" }, formatShown(t.energy_kwh))
      );
    });
    fillBody(root.querySelector("[data-transformers]"), rows, "No transformers registered.", 4);
  }

  function renderTopSites(data) {
    const rows = data.top_sites.map((s, i) =>
      el(
        "tr",
        { dataset: { site: s.id } },
        el("td", { class: "muted" }, i + 1),
        el("th", { scope: "row" }, el("a", { href: s.history_url }, s.name),
          detail(s.feeder_code || "no feeder")),
        el("td", { class: "num" }, formatShown(s.energy_kwh)),
        el("td", { class: "num" }, formatMoney(s.cost, s.currency))
      )
    );
    fillBody(root.querySelector("[data-top-sites]"), rows, "No site used energy then.", 4);
  }

  function renderNotReporting(data) {
    root.querySelector("[data-not-reporting-count]").textContent = data.count;
    const more = data.count > data.results.length;
    const shown = more ? " (the first " + data.results.length + " shown)" : "";
    root.querySelector("[data-not-reporting-summary]").textContent = data.count
      ? data.online_silent + " online but silent, " + data.offline + " offline" + shown
      : "Every device sent a reading in this time.";
    const rows = data.results.map((d) => {
      const silent = d.state === "silent";
      const badge = el("span", { class: "badge " + (silent ? "silent" : "offline") },
        silent ? "online, silent" : "offline");
      return el(
        "tr",
        { dataset: { device: d.uid } },
        el("th", { scope: "row" }, el("code", {}, d.uid), detail(d.name + " · " + d.kind)),
        el("td", {}, d.site.name, detail(d.feeder_code || "no feeder")),
        el("td", {}, badge),
        el("td", {}, formatTime(d.last_reading)),
        el("td", {}, formatTime(d.last_seen))
      );
    });
    fillBody(root.querySelector("[data-not-reporting]"), rows, "No device to show.", 5);
  }

  function fail(target, error) {
    target.classList.add("error");
    target.textContent =
      "Could not load the figures: " + error.message + ". Reload the page to try again.";
  }

  // A period wholly in the future has no `data-energy-api`: the page says so instead.
  if (root.dataset.energyApi) {
    const status = root.querySelector("[data-status]");
    charts
      .fetchJson(root.dataset.energyApi)
      .then((data) => {
        root.querySelector("[data-grid-energy]").textContent = formatShown(data.energy_kwh);
        root.querySelector("[data-grid-sites]").textContent =
          data.sites_with_data + " / " + data.sites;
        renderSlots(data);
        renderFeeders(data);
        renderTransformers(data);
        renderTopSites(data);
        status.textContent = "";
        root.dataset.energyLoaded = "true";
      })
      .catch((error) => fail(status, error));
  }

  const minutes = root.querySelector("[data-silent-minutes]");
  function loadNotReporting() {
    const url = root.dataset.notReportingApi + "?minutes=" + encodeURIComponent(minutes.value);
    charts
      .fetchJson(url)
      .then((data) => {
        renderNotReporting(data);
        root.dataset.notReportingLoaded = minutes.value;
      })
      .catch((error) => fail(root.querySelector("[data-not-reporting-summary]"), error));
  }
  minutes.addEventListener("change", loadNotReporting);
  loadNotReporting();
})();
