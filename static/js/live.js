// Live updates for the dashboard and the fleet page, from the session-authenticated /ws/live/
// socket. The page works without it; this only keeps figures, badges and charts current.
(function () {
  "use strict";

  const WINDOW_S = 3600; // seconds of history the live charts keep (the server sends the last hour)
  const charts = new Map(); // device uid -> {plot, xs, ys, key}
  const seriesEl = document.getElementById("dashboard-series");
  const initialSeries = seriesEl ? JSON.parse(seriesEl.textContent) : {};
  const indicator = document.querySelector("[data-live-indicator]");

  function setIndicator(text, state) {
    if (!indicator) return;
    indicator.textContent = text;
    indicator.dataset.state = state;
  }

  function each(selector, fn) {
    document.querySelectorAll(selector).forEach(fn);
  }

  function cssEscape(value) {
    return window.CSS && CSS.escape ? CSS.escape(value) : value.replace(/"/g, '\\"');
  }

  function formatNumber(value) {
    return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toFixed(1);
  }

  function timeAgo(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 5) return "just now";
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function markSeen(uid, iso) {
    each('[data-last-seen-for="' + cssEscape(uid) + '"]', (el) => {
      el.dataset.ts = iso;
      el.textContent = timeAgo(iso);
    });
  }

  function setOnline(uid, online) {
    each('[data-status-for="' + cssEscape(uid) + '"]', (el) => {
      el.textContent = online ? "online" : "offline";
      el.classList.toggle("online", online);
      el.classList.toggle("offline", !online);
    });
  }

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  // Time labels as HH:MM in the browser's local time; values with as many decimals as the
  // spacing of the axis needs (no "0.01, 0.01, 0.00"), and room for the longest label.
  function timeLabels(u, splits) {
    return splits.map((t) => {
      const d = new Date(t * 1000);
      return pad(d.getHours()) + ":" + pad(d.getMinutes());
    });
  }

  function valueLabels(u, splits) {
    const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 1;
    const decimals = step >= 1 || step === 0 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return splits.map((v) => v.toFixed(decimals));
  }

  function labelWidth(u, values) {
    if (!values) return 40;
    const longest = values.reduce((n, v) => Math.max(n, String(v).length), 0);
    return 16 + longest * 7;
  }

  // The x axis always spans the last hour to now, even with one point (uPlot would otherwise
  // stretch a single point's range to years); the y axis starts at zero for power.
  function lastHour() {
    const now = Date.now() / 1000;
    return [now - WINDOW_S, now];
  }

  function setupCharts() {
    if (typeof uPlot === "undefined") return;
    each("[data-chart-for]", (el) => {
      const key = el.dataset.chartKey;
      const initial = initialSeries[el.dataset.chartSensor] || [[], []];
      const xs = initial[0].slice();
      const ys = initial[1].slice();
      const plot = new uPlot(
        {
          width: Math.max(200, el.clientWidth),
          height: 140,
          legend: { show: false },
          cursor: { show: false },
          scales: {
            x: { time: true, range: () => lastHour() },
            y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] },
          },
          axes: [
            { values: timeLabels, space: 60, size: 30 },
            { values: valueLabels, size: labelWidth },
          ],
          series: [{}, { label: key, stroke: "#0b7a55", width: 2, fill: "rgba(11,122,85,0.08)" }],
        },
        [xs, ys],
        el
      );
      charts.set(el.dataset.chartFor, { plot, xs, ys, key, el });
    });
    // Keep the hour window moving while no reading comes.
    window.setInterval(() => charts.forEach((c) => (c.dirty = true)), 30000);
    window.addEventListener("resize", () => {
      charts.forEach((c) => c.plot.setSize({ width: Math.max(200, c.el.clientWidth), height: 120 }));
    });
  }

  function addPoint(uid, ts, values) {
    const chart = charts.get(uid);
    if (!chart || !(chart.key in values)) return;
    const x = Date.parse(ts) / 1000;
    // Points may arrive out of order after a device replays its buffer: insert in place.
    let i = chart.xs.length;
    while (i > 0 && chart.xs[i - 1] > x) i--;
    chart.xs.splice(i, 0, x);
    chart.ys.splice(i, 0, values[chart.key]);
    const cutoff = chart.xs[chart.xs.length - 1] - WINDOW_S;
    while (chart.xs.length && chart.xs[0] < cutoff) {
      chart.xs.shift();
      chart.ys.shift();
    }
    chart.dirty = true;
  }

  function onReadings(msg) {
    let newest = null;
    msg.points.forEach((point) => {
      addPoint(msg.device, point.ts, point.values);
      if (!newest || point.ts > newest.ts) newest = point;
    });
    if (!newest) return;
    Object.entries(newest.values).forEach(([key, value]) => {
      each('[data-metric-for="' + cssEscape(msg.device + ":" + key) + '"]', (el) => {
        el.textContent = formatNumber(value);
        el.dataset.value = value;
      });
    });
    updateSitePower(msg.device);
    setOnline(msg.device, true);
    markSeen(msg.device, new Date().toISOString());
  }

  const POWER_FACTORS = { w: 1, kw: 1000, mw: 1000000 };

  // A site's power now: the sum of its devices' latest power readings shown on the page.
  function updateSitePower(uid) {
    const device = document.querySelector('[data-device="' + cssEscape(uid) + '"]');
    const site = device && device.closest("[data-site]");
    const total = site && site.querySelector("[data-site-power]");
    if (!total) return;
    let watts = 0;
    let any = false;
    site.querySelectorAll("[data-power-unit]").forEach((el) => {
      const value = el.dataset.value !== undefined ? Number(el.dataset.value) : Number(el.textContent);
      if (Number.isFinite(value)) {
        watts += value * (POWER_FACTORS[(el.dataset.powerUnit || "w").toLowerCase()] || 1);
        any = true;
      }
    });
    if (any) total.textContent = Math.abs(watts) >= 1000 ? (watts / 1000).toFixed(2) + " kW" : watts.toFixed(0) + " W";
  }

  function onStatus(msg) {
    setOnline(msg.device, msg.online);
    if (msg.last_seen) markSeen(msg.device, msg.last_seen);
  }

  function onCommand(msg) {
    each('[data-command-status-for="' + cssEscape(msg.device) + '"]', (el) => {
      const what = msg.name + (msg.args && msg.args.state ? " " + msg.args.state : "");
      el.textContent = what + ": " + msg.status + (msg.detail ? " (" + msg.detail + ")" : "");
    });
    if (msg.name === "relay" && msg.status === "done" && msg.args && msg.args.state) {
      each('[data-relay-for="' + cssEscape(msg.device) + '"]', (box) => {
        box.querySelector("[data-relay-now]").textContent = msg.args.state;
        const since = box.querySelector("[data-relay-since]");
        const d = new Date();
        since.textContent = "since " + pad(d.getHours()) + ":" + pad(d.getMinutes());
      });
    }
  }

  const handlers = { readings: onReadings, status: onStatus, command: onCommand, power: () => {} };

  // Redraw at most once per animation frame, however many readings arrived.
  function redraw() {
    charts.forEach((c) => {
      if (c.dirty) {
        c.plot.setData([c.xs, c.ys]);
        c.dirty = false;
      }
    });
    window.requestAnimationFrame(redraw);
  }

  let attempt = 0;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/live/" + location.search);
    socket.onopen = () => {
      attempt = 0;
      setIndicator("live", "live");
    };
    socket.onmessage = (event) => {
      // One message, or several in order as an array (sent so when they waited together).
      const data = JSON.parse(event.data);
      (Array.isArray(data) ? data : [data]).forEach((msg) => {
        const handler = handlers[msg.type];
        if (handler) handler(msg);
        // Other scripts of the page (outages.js) hear every message without a socket of their own.
        document.dispatchEvent(new CustomEvent("live:message", { detail: msg }));
      });
    };
    socket.onclose = () => {
      // Reconnect by itself (server restarts, network blips) with capped, jittered backoff.
      attempt += 1;
      const delay = Math.random() * Math.min(10000, 500 * 2 ** attempt);
      setIndicator("reconnecting…", "down");
      window.setTimeout(connect, delay);
    };
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function setupRelays() {
    each("[data-relay-for]", (box) => {
      const uid = box.dataset.relayFor;
      box.querySelectorAll("[data-relay-state]").forEach((button) => {
        button.addEventListener("click", async () => {
          const status = box.querySelector("[data-command-status-for]");
          status.textContent = "sending…";
          const response = await fetch("/api/v1/devices/" + encodeURIComponent(uid) + "/commands/", {
            method: "POST",
            credentials: "same-origin",
            headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
            body: JSON.stringify({ name: "relay", args: { state: button.dataset.relayState } }),
          });
          const body = await response.json().catch(() => ({}));
          if (!response.ok) status.textContent = "refused: " + (body.detail || response.status);
        });
      });
    });
  }

  // Panels the server renders (outages.js, dr.js) are fetched afresh when live messages say
  // they changed: several messages close together make one fetch; `done` runs after.
  const pendingPanels = new Map(); // url -> timer
  function replacePanel(url, selector, done) {
    window.clearTimeout(pendingPanels.get(url));
    pendingPanels.set(url, window.setTimeout(async () => {
      pendingPanels.delete(url);
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) return;
      const old = document.querySelector(selector);
      if (old) old.outerHTML = await response.text();
      if (done) done();
    }, 150));
  }
  window.livePanels = { replace: replacePanel };

  setupCharts();
  setupRelays();
  window.setInterval(() => each("[data-last-seen-for]", (el) => {
    if (el.dataset.ts) el.textContent = timeAgo(el.dataset.ts);
  }), 5000);
  window.requestAnimationFrame(redraw);
  connect();
})();
