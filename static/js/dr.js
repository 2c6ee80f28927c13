// Demand response on the resident's dashboard and the operators' event page. The server renders
// each panel; this script ticks an event's time left, fetches a panel afresh when the live
// socket (live.js) says an event or its commands changed (and the resident's saving every
// minute while an event runs), and on the event page draws the invited sites' load against
// their baseline with uPlot, adding the live feed's readings as they come.
(function () {
  "use strict";

  const SAVING_REFRESH_MS = 60000;
  const LIVE_POINTS = 3600; // live points the chart keeps
  let skewMs = 0; // server clock minus this browser's, from the last panel rendered

  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (h) return h + " h " + m + " min " + s + " s";
    if (m) return m + " min " + s + " s";
    return s + " s";
  }

  function tick() {
    document.querySelectorAll("[data-dr-time-left]").forEach((el) => {
      if (el.dataset.serverNow) {
        skewMs = Date.parse(el.dataset.serverNow) - Date.now();
        delete el.dataset.serverNow;
      }
      const left = (Date.parse(el.dataset.end) - (Date.now() + skewMs)) / 1000;
      el.textContent = left > 0 ? span(Math.ceil(left)) : "ending…";
    });
  }

  function replaceLater(url, selector) {
    window.livePanels.replace(url, selector, tick);
  }

  function refreshPanels(onlyRunning) {
    document.querySelectorAll("[data-dr-panel]").forEach((panel) => {
      if (onlyRunning && !panel.querySelector('[data-event-status="active"][data-answer="opted_in"]')) return;
      const site = Number(panel.dataset.site);
      replaceLater("/dr/site/" + site + "/", '[data-dr-panel][data-site="' + site + '"]');
    });
  }

  // The operator's chart: baseline and quarter-hour averages from the server, live points after.
  const dataEl = document.getElementById("dr-chart-data");
  const chartEl = document.querySelector("[data-dr-chart]");
  const chart = dataEl && chartEl && typeof uPlot !== "undefined" ? setupChart(JSON.parse(dataEl.textContent)) : null;

  function setupChart(data) {
    // Each quarter-hour's value as a flat segment: a point at its start and one just before its end.
    const quarters = [], baseline = [], actual = [];
    data.quarters.forEach((q, i) => {
      quarters.push(q, Math.min(q + 900, data.end) - 1);
      baseline.push(data.baseline_kw[i], data.baseline_kw[i]);
      actual.push(data.actual_kw[i], data.actual_kw[i]);
    });
    const live = []; // [x, kW]
    const latestW = new Map(); // device uid -> W
    const liveLabel = document.querySelector("[data-live-kw]");
    const width = () => Math.max(260, chartEl.clientWidth);
    const plot = new uPlot(
      {
        width: width(),
        height: 280,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
        axes: [{ size: 50 }, { size: 52, label: "kW", labelSize: 16 }],
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        series: [
          {},
          { label: "Baseline", stroke: "#5f6b7a", width: 2, dash: [6, 4], spanGaps: true, points: { show: false } },
          { label: "Actual (15 min)", stroke: "#0b7a55", width: 2, spanGaps: true, fill: "rgba(11,122,85,0.08)", points: { show: false } },
          { label: "Live", stroke: "#d9480f", width: 1.5, spanGaps: true }, // points shown while sparse
        ],
        hooks: {
          drawClear: [
            (u) => {
              // The event's window, shaded behind the lines.
              const x0 = u.valToPos(data.start, "x", true);
              const x1 = u.valToPos(data.end, "x", true);
              u.ctx.save();
              u.ctx.fillStyle = "rgba(255, 196, 0, 0.12)";
              u.ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height);
              u.ctx.restore();
            },
          ],
        },
      },
      merged(),
      chartEl
    );
    window.addEventListener("resize", () => plot.setSize({ width: width(), height: 280 }));

    function merged() {
      // One x axis for all series: the quarter-hours and the live instants, in order.
      const xs = [], b = [], a = [], l = [];
      let i = 0, j = 0;
      while (i < quarters.length || j < live.length) {
        if (j >= live.length || (i < quarters.length && quarters[i] <= live[j][0])) {
          xs.push(quarters[i]); b.push(baseline[i]); a.push(actual[i]); l.push(null); i++;
        } else {
          xs.push(live[j][0]); b.push(null); a.push(null); l.push(live[j][1]); j++;
        }
      }
      return [xs, b, a, l];
    }

    let dirty = false;
    function redraw() {
      if (dirty) {
        plot.setData(merged());
        dirty = false;
      }
      window.requestAnimationFrame(redraw);
    }
    window.requestAnimationFrame(redraw);

    return {
      sensors: data.sensors,
      onReadings(msg) {
        const sensor = data.sensors[msg.device];
        if (!sensor) return;
        const key = sensor[1];
        msg.points.forEach((point) => {
          if (!(key in point.values)) return;
          latestW.set(msg.device, point.values[key] * sensor[2]);
          const x = Date.parse(point.ts) / 1000;
          if (x < data.quarters[0] || x > data.end) return;
          let total = 0;
          latestW.forEach((w) => { total += w; });
          const kw = total / 1000;
          let k = live.length;
          while (k > 0 && live[k - 1][0] > x) k--; // a replayed buffer arrives late
          live.splice(k, 0, [x, kw]);
          if (live.length > LIVE_POINTS) live.shift();
          if (liveLabel) liveLabel.textContent = kw.toFixed(2);
          dirty = true;
        });
      },
    };
  }

  const summary = document.querySelector("[data-dr-summary]");
  document.addEventListener("live:message", (event) => {
    const msg = event.detail;
    if (msg.type === "dr_event") refreshPanels(false);
    // The event page's chart and time left are drawn for the status it had: redraw on a new one.
    if (chart && msg.type === "dr_event" && msg.change === "status" && summary &&
        Number(msg.event) === Number(summary.dataset.event)) {
      window.location.reload();
      return;
    }
    if (chart && msg.type === "readings") chart.onReadings(msg);
    if (!summary) return;
    const eventId = Number(summary.dataset.event);
    const ours = (msg.type === "dr_event" && Number(msg.event) === eventId) ||
      (msg.type === "command" && (msg.name === "curtail" || msg.name === "restore"));
    if (ours) replaceLater("/dr/events/" + eventId + "/summary/", "[data-dr-summary]");
  });

  tick();
  window.setInterval(tick, 1000);
  window.setInterval(() => refreshPanels(true), SAVING_REFRESH_MS);
})();
