// Dashboard: draws the events-over-time chart as SVG and refreshes health and chart with fetch()
// (same-origin, session cookie). The next refresh is planned only once the previous answer has
// arrived (or failed), REFRESH_MS later: a slow server is never asked again before it answered,
// so open dashboards cannot pile requests up on it. No inline script: CSP script-src 'self'.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const health = document.getElementById("health");
  if (!health) return;
  const url = health.dataset.url;

  function setText(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value === undefined || value === null ? "" : String(value);
  }

  function drawChart(buckets) {
    const svg = document.getElementById("chart");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
    const max = Math.max(1, ...buckets.map(b => b.allowed + b.blocked));
    const bw = w / buckets.length;
    buckets.forEach((b, i) => {
      let y = h;
      for (const kind of ["blocked", "allowed"]) {
        const bh = (b[kind] / max) * (h - 10);
        if (bh <= 0) continue;
        const r = document.createElementNS(SVG, "rect");
        r.setAttribute("x", String(i * bw + 1));
        r.setAttribute("y", String(y - bh));
        r.setAttribute("width", String(bw - 2));
        r.setAttribute("height", String(bh));
        r.setAttribute("class", kind);
        const t = document.createElementNS(SVG, "title");
        t.textContent = b.start + ": " + b[kind] + " " + kind;
        r.appendChild(t);
        svg.appendChild(r);
        y -= bh;
      }
    });
  }

  function fillTop(name, items) {
    const ol = document.getElementById("top-" + name);
    if (!ol) return;
    while (ol.firstChild) ol.removeChild(ol.firstChild);
    for (const item of items) {
      const li = document.createElement("li");
      li.textContent = item.label + " (" + item.count + ")";  // textContent: never parsed as HTML
      ol.appendChild(li);
    }
  }

  async function refresh() {
    try {
      await update();
    } catch (e) { /* gateway or UI briefly unreachable: keep the last figures */ }
    finally {
      setTimeout(refresh, REFRESH_MS);  // after the answer, never on a fixed beat
    }
  }

  async function update() {  // throws when the UI cannot be reached
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    const data = await resp.json();
    const hl = data.health;
    setText("h-reachable", hl.reachable);
    setText("h-workers", (hl.workers_alive ?? "") + " / " + (hl.workers ?? ""));
    setText("h-fail", hl.fail_policy);
    setText("h-packets", hl.packets);
    setText("h-bytes", hl.bytes);
    setText("h-drops", hl.queue_drops);
    setText("h-unseen", hl.kernel_unseen);
    setText("h-uninspected", hl.uninspected_packets);
    setText("h-events-dropped", hl.events_dropped);
    setText("h-rules", hl.rules_loaded);
    setText("h-policy", hl.policy_version);
    const al = hl.alerts;
    setText("h-alerts", al ? [al.sent, al.failures, al.queued, al.dropped].join(" / ")
                           : "no alert dispatcher");
    setText("ev-total", data.events.total);
    drawChart(data.events.buckets);
    for (const name of ["rules", "cves", "sources", "hosts"]) fillTop(name, data.events.top[name]);
  }
  refresh();
})();
