// Energy history of a site, and the chart and table helpers the analytics page shares
// (window.EnergyCharts). The page is a frame: the figures come from the JSON API and are drawn
// here, with uPlot, so the server never holds a page back for a big query.
(function () {
  "use strict";

  const ACCENT = "#0b7a55";
  const PREVIOUS = "#8a96a3";

  // Decimals by size: 0.25, 12.5, 745. `scale` sets them for a series of values (an axis).
  function formatKwh(value, scale) {
    if (value === null || value === undefined) return "–";
    const size = Math.abs(scale === undefined ? value : scale);
    const digits = size >= 100 ? 0 : size >= 10 ? 1 : 2;
    return Number(value).toLocaleString(undefined, {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    });
  }

  // Energy as the API gives it: rounded once to the watt-hour, so it is shown with exactly
  // three decimals, and rows shown add up to the totals shown (the API sums the rounded rows).
  function formatShown(value) {
    if (value === null || value === undefined) return "–";
    return Number(value).toLocaleString(undefined, {
      minimumFractionDigits: 3,
      maximumFractionDigits: 3,
    });
  }

  // Money as the API gives it, already rounded to the currency's minor unit.
  function formatMoney(value, currency) {
    if (value === null || value === undefined) return "–";
    try {
      return Number(value).toLocaleString(undefined, { style: "currency", currency });
    } catch (error) {
      return Number(value).toFixed(2) + " " + currency;
    }
  }

  function formatTime(iso) {
    if (!iso) return "never";
    return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  async function fetchJson(url) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.detail || "the server answered " + response.status);
    return body;
  }

  // An element with text children only (never HTML from data).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([key, value]) => {
      if (value === null || value === undefined || value === false) return;
      if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    children.flat().forEach((child) => {
      if (child === null || child === undefined) return;
      node.append(child instanceof Node ? child : String(child));
    });
    return node;
  }

  function bar(pct) {
    const width = Math.max(0, Math.min(100, pct || 0));
    const fill = el("span", { style: "width:" + width + "%" });
    return el("div", { class: "bar", "aria-hidden": "true" }, fill);
  }

  function fillBody(table, rows, emptyText, columns) {
    const body = table.tBodies[0] || table.appendChild(el("tbody"));
    const empty = el("tr", {}, el("td", { class: "muted", colspan: columns || 1 }, emptyText));
    body.replaceChildren(...(rows.length ? rows : [empty]));
  }

  function kwhValue(u, v) {
    return v === null || v === undefined ? "–" : formatShown(v) + " kWh";
  }

  // A bar chart over labelled slots (hours, days, feeders…), with optional dashed line series,
  // drawn by uPlot on an index axis: every slot gets one bar, so a 25-hour day has 25.
  function barChart(container, options) {
    const labels = options.labels;
    const xs = labels.map((_, i) => i);
    const height = options.height || 260;
    const minLabelPx = options.minLabelPx || 46;
    const width = () => Math.max(240, container.clientWidth);
    const labelOf = (u, i) => (i === null || i === undefined ? "" : labels[i] || "");
    const series = [{ label: options.xLabel || "", value: labelOf }];
    options.series.forEach((s) => {
      const common = { label: s.label, stroke: s.color, value: kwhValue };
      if (s.type === "line") {
        const points = { show: true, size: 4, fill: s.color };
        series.push({ ...common, width: 2, dash: [6, 4], points });
      } else {
        const paths = uPlot.paths.bars({ size: [0.72, 80], align: 0 });
        series.push({ ...common, fill: s.color, width: 0, paths, points: { show: false } });
      }
    });
    // Label every slot that fits, then every second, third… one.
    const splits = (u) => {
      const step = Math.ceil((labels.length * minLabelPx) / Math.max(1, u.width - 60));
      return xs.filter((i) => i % Math.max(1, step) === 0);
    };
    const plot = new uPlot(
      {
        width: width(),
        height,
        scales: {
          x: { time: false, range: () => [-0.5, Math.max(0.5, labels.length - 0.5)] },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
        },
        axes: [
          {
            size: 34,
            splits,
            values: (u, ticks) => ticks.map((i) => labels[i] || ""),
            grid: { show: false },
          },
          {
            size: 52,
            label: "kWh",
            labelSize: 16,
            values: (u, ticks) => ticks.map((v) => formatKwh(v, Math.max(...ticks))),
          },
        ],
        cursor: { points: { show: false }, drag: { x: false, y: false } },
        legend: { show: options.legend !== false },
        series,
      },
      [xs, ...options.series.map((s) => s.values)],
      container
    );
    if (options.onPick) {
      plot.over.style.cursor = "pointer";
      plot.over.addEventListener("click", () => {
        const i = plot.cursor.idx;
        if (i !== null && i !== undefined) options.onPick(i);
      });
    }
    let pending = null;
    window.addEventListener("resize", () => {
      window.clearTimeout(pending);
      pending = window.setTimeout(() => plot.setSize({ width: width(), height }), 100);
    });
    container.dataset.drawn = "true";
    return plot;
  }

  window.EnergyCharts = {
    ACCENT,
    bar,
    barChart,
    el,
    fetchJson,
    fillBody,
    formatMoney,
    formatShown,
    formatTime,
  };

  // --- the history page ---------------------------------------------------------------------

  // A day of a week or month opens as a day; a month of a year as a month.
  function drillUrl(root, data, slot) {
    if (data.unit === "hour") return null;
    const kind = data.unit === "day" ? "day" : "month";
    return root.dataset.page + "?period=" + kind + "&date=" + slot.start.slice(0, 10);
  }

  function breakdownRows(rows, data) {
    const currency = data.site.currency;
    const total = data.energy_kwh || 0;
    const all = rows.map((row) => ({
      name: row.name,
      detail: [row.kind, row.room].filter(Boolean).join(" · "),
      energy: row.energy_kwh,
      cost: row.cost,
      share: row.share_pct,
    }));
    if (data.unattributed_kwh > 0) {
      all.push({
        name: "Rest of the home",
        detail: "measured by the meter only",
        energy: data.unattributed_kwh,
        cost: data.unattributed_cost,
        share: total > 0 ? (100 * data.unattributed_kwh) / total : null,
        other: true,
      });
    }
    return all.map((row) => {
      const detail = row.detail ? el("span", { class: "muted small detail" }, row.detail) : null;
      const hasShare = row.share !== null && row.share !== undefined;
      const share = hasShare ? Math.round(row.share) + "%" : "";
      return el(
        "tr",
        { class: row.other ? "other" : null },
        el("th", { scope: "row" }, row.name, detail, bar(row.share)),
        el("td", { class: "num" }, formatShown(row.energy) + " kWh"),
        el("td", { class: "num" }, formatMoney(row.cost, currency)),
        el("td", { class: "num muted" }, share)
      );
    });
  }

  function renderSummary(root, data) {
    const unitName = root.dataset.unitName;
    const comparison = data.comparison;
    root.querySelector("[data-total-energy]").textContent = formatShown(data.energy_kwh);
    const cost = formatMoney(data.cost, data.site.currency);
    root.querySelector("[data-total-cost]").textContent = cost;
    const change = root.querySelector("[data-change]");
    const pct = comparison.change_pct;
    change.textContent = pct === null ? "–" : (pct > 0 ? "+" : "") + pct.toLocaleString() + "%";
    change.classList.toggle("change-up", pct !== null && pct > 0);
    change.classList.toggle("change-down", pct !== null && pct < 0);
    const upTo = comparison.basis === "to_date" ? " up to the same point" : "";
    root.querySelector("[data-previous-text]").textContent = comparison.previous_kwh
      ? "vs " + formatShown(comparison.previous_kwh) + " kWh the previous " + unitName + upTo
      : "nothing recorded the previous " + unitName + upTo;
  }

  function renderHistory(root, data) {
    const unitName = root.dataset.unitName;
    const previous = data.previous.results;
    const previousKwh = (i) => (previous[i] ? previous[i].energy_kwh : null);
    renderSummary(root, data);

    const status = root.querySelector("[data-status]");
    const hasData = data.results.some((slot) => slot.energy_kwh !== null);
    status.textContent = hasData ? "" : "No readings in this " + unitName + ".";
    barChart(root.querySelector("[data-history-chart]"), {
      xLabel: { hour: "Hour", day: "Day", month: "Month" }[data.unit],
      labels: data.results.map((slot) => slot.label),
      minLabelPx: { hour: 46, day: 60, month: 34 }[data.unit],
      series: [
        {
          label: "This " + unitName,
          values: data.results.map((slot) => slot.energy_kwh),
          color: ACCENT,
        },
        {
          label: "Previous " + unitName,
          values: data.results.map((_, i) => previousKwh(i)),
          color: PREVIOUS,
          type: "line",
        },
      ],
      onPick:
        data.unit === "hour"
          ? null
          : (i) => window.location.assign(drillUrl(root, data, data.results[i])),
    });

    const nothing = "Nothing measured in this " + unitName + ".";
    ["devices", "rooms"].forEach((kind) => {
      const table = root.querySelector('[data-breakdown="' + kind + '"]');
      fillBody(table, breakdownRows(data[kind], data), nothing);
    });

    const slots = data.results.map((slot, i) => {
      const link = drillUrl(root, data, slot);
      return el(
        "tr",
        {},
        el("th", { scope: "row" }, link ? el("a", { href: link }, slot.name) : slot.name),
        el("td", { class: "num" }, formatShown(slot.energy_kwh)),
        el("td", { class: "num" }, formatMoney(slot.cost, data.site.currency)),
        el("td", { class: "num muted" }, formatShown(previousKwh(i)))
      );
    });
    fillBody(root.querySelector("[data-slots]"), slots, "");
    root.querySelector("[data-slots-energy]").textContent = formatShown(data.energy_kwh);
    root.querySelector("[data-slots-cost]").textContent = formatMoney(data.cost, data.site.currency);
    const hadPrevious = previous.some((slot) => slot.energy_kwh !== null);
    root.querySelector("[data-slots-previous]").textContent = hadPrevious
      ? formatShown(data.previous.energy_kwh)
      : "–";
    root.dataset.loaded = "true";
  }

  // A period wholly in the future has no `data-api`: the page says so, with nothing to fetch.
  const root = document.querySelector("[data-history]");
  if (root && root.dataset.api) {
    fetchJson(root.dataset.api)
      .then((data) => renderHistory(root, data))
      .catch((error) => {
        const status = root.querySelector("[data-status]");
        status.classList.add("error");
        status.textContent =
          "Could not load the figures: " + error.message + ". Reload the page to try again.";
      });
  }
})();
