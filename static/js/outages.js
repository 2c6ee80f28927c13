// Power cuts on the dashboard and the fleet page. The server renders each panel; this script
// ticks an open cut's elapsed time and credit every second, moves the credit to the next step
// when its instant passes (then asks the API for the server's figures), and fetches a panel
// afresh when the live socket (live.js) says the outages (or the suspected ones) changed.
(function () {
  "use strict";

  let skewMs = 0; // server clock minus this browser's, from the last panel rendered

  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min " + s + " s";
    if (m) return m + " min " + s + " s";
    return s + " s";
  }

  function setText(root, selector, text) {
    const el = root.querySelector(selector);
    if (el) el.textContent = text;
  }

  function learnSkew(banner) {
    if (banner.dataset.serverNow) {
      skewMs = Date.parse(banner.dataset.serverNow) - Date.now();
      delete banner.dataset.serverNow;
    }
  }

  async function refreshQuote(banner) {
    const response = await fetch("/api/v1/outages/" + banner.dataset.outage + "/", {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) return;
    const outage = await response.json();
    const quote = outage.credit && outage.credit.quote;
    if (!quote) return; // ended meanwhile: the live message brings the new panel
    skewMs = Date.parse(quote.quoted_at) - Date.now();
    banner.dataset.amount = quote.amount;
    setText(banner, "[data-outage-amount]", banner.dataset.symbol + quote.amount);
    if (quote.next_step_at) {
      banner.dataset.nextAt = quote.next_step_at;
      banner.dataset.nextAmount = quote.next_amount;
      setText(banner, "[data-outage-next-amount]", banner.dataset.symbol + quote.next_amount);
      setText(banner, "[data-outage-next-time]", stepTime(new Date(quote.next_step_at), banner.dataset.tz));
    } else {
      delete banner.dataset.nextAt;
      setText(banner, "[data-outage-next]", "No further credit for this cut.");
    }
  }

  function tick() {
    const now = Date.now() + skewMs;
    document.querySelectorAll("[data-open-outages] [data-since]").forEach((el) => {
      el.textContent = span((now - Date.parse(el.dataset.since)) / 1000);
    });
    document.querySelectorAll("[data-outage-banner]").forEach((banner) => {
      learnSkew(banner);
      setText(banner, "[data-outage-elapsed]", span((now - Date.parse(banner.dataset.started)) / 1000));
      if (!banner.dataset.nextAt) return;
      const left = (Date.parse(banner.dataset.nextAt) - now) / 1000;
      if (left > 0) {
        setText(banner, "[data-outage-next-in]", "(in " + span(Math.ceil(left)) + ")");
        return;
      }
      // The step is reached: show it at once, then take the server's figures.
      banner.dataset.amount = banner.dataset.nextAmount;
      setText(banner, "[data-outage-amount]", banner.dataset.symbol + banner.dataset.nextAmount);
      setText(banner, "[data-outage-next-in]", "");
      delete banner.dataset.nextAt;
      refreshQuote(banner).catch(() => {});
    });
  }

  // Options that put a time on the home's clock, as the server shows it; the browser's own clock
  // for a zone it does not know.
  function homeZone(tz) {
    try {
      new Intl.DateTimeFormat("en-GB", { timeZone: tz });
      return { timeZone: tz };
    } catch (error) {
      return {};
    }
  }

  // The next step's time on the home's clock, with its day when that is not today (a step days
  // away would otherwise read as today's).
  function stepTime(instant, tz) {
    const zone = homeZone(tz);
    const time = { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" };
    const day = Object.assign({ day: "numeric", month: "short" }, zone);
    const text = instant.toLocaleTimeString("en-GB", Object.assign(time, zone));
    const stepDay = instant.toLocaleDateString("en-GB", day);
    const today = new Date(Date.now() + skewMs).toLocaleDateString("en-GB", day);
    return stepDay === today ? text : text + " on " + stepDay;
  }

  function localTime(instant, tz) {
    const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    return instant.toLocaleTimeString("en-GB", Object.assign(options, homeZone(tz)));
  }

  // A device's power report reaches the page as soon as its socket gets it, before the site's
  // outage is derived (a Celery task): show the cut (or its end) at once, from the device's
  // instant, marked provisional; the site's `outage` message then brings the server's panel in
  // its place.
  function showReport(msg) {
    const panel = document.querySelector('[data-outage-panel][data-site="' + Number(msg.site) + '"]');
    const instant = new Date(msg.ts);
    if (!panel || Number.isNaN(instant.getTime())) return;
    const open = panel.querySelector("[data-outage-banner]");
    const banner = document.createElement("div");
    banner.setAttribute("role", "status");
    banner.dataset.provisional = msg.state;
    const title = document.createElement("p");
    const strong = document.createElement("strong");
    const note = document.createElement("span");
    note.className = "muted small";
    title.append(strong, " ", note);
    banner.append(title);
    if (msg.state === "lost") {
      if (open && Date.parse(open.dataset.started) <= instant.getTime()) return; // already shown
      banner.className = "outage-banner open";
      banner.dataset.outageBanner = "";
      banner.dataset.started = instant.toISOString();
      title.className = "outage-title";
      strong.textContent = "Power cut since " + localTime(instant, panel.dataset.tz);
      note.textContent = "(reported by " + msg.device + "; credit follows)";
      const figures = document.createElement("p");
      figures.className = "outage-figures";
      const lasting = document.createElement("span");
      const elapsed = document.createElement("strong");
      elapsed.dataset.outageElapsed = "";
      lasting.append("Lasting ", elapsed);
      figures.append(lasting);
      banner.append(figures);
    } else if (msg.state === "restored") {
      if (!open) return; // no cut shown: nothing to end
      banner.className = "outage-banner ended";
      strong.textContent = "Power is back";
      note.textContent = "since " + localTime(instant, panel.dataset.tz) + " (credit being worked out)";
    } else {
      return;
    }
    panel.querySelectorAll("[data-outage-banner], [data-outage-ended], [data-provisional]").forEach((el) => el.remove());
    panel.prepend(banner);
    tick();
  }

  function replaceLater(url, selector) {
    window.livePanels.replace(url, selector, tick);
  }

  document.addEventListener("live:message", (event) => {
    const msg = event.detail;
    if (msg.type === "suspected") {
      // Operators only (the fleet group): suspected outages are shown in the open outages.
      if (document.querySelector("[data-open-outages]")) replaceLater("/outages/open/", "[data-open-outages]");
      return;
    }
    if (msg.type === "power") {
      showReport(msg);
      return;
    }
    if (msg.type !== "outage") return;
    const panel = document.querySelector('[data-outage-panel][data-site="' + Number(msg.site) + '"]');
    if (panel) replaceLater("/outages/site/" + Number(msg.site) + "/", '[data-outage-panel][data-site="' + Number(msg.site) + '"]');
    if (document.querySelector("[data-open-outages]")) replaceLater("/outages/open/", "[data-open-outages]");
  });

  tick();
  window.setInterval(tick, 1000);
})();
