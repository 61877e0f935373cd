// Dashboard: health cards and two uPlot charts (static/vendor/uplot/, uPlot 1.6.32) refreshed
// with fetch() from /dashboard/data (same-origin, session cookie): events per bucket over the
// window (blocked and allowed, time axis, events axis, legend with the values under the
// cursor) and the live packet rate (packets/s inspected and dropped by the kernel queue, from
// the differences between two refreshes). The next refresh is planned only once the previous
// answer has arrived (or failed), REFRESH_MS later: a slow server is never asked again before
// it answered, so open dashboards cannot pile requests up on it. No inline script or style
// (CSP script-src 'self', style-src 'self'): uPlot sets sizes through the CSSOM only, and every
// figure is written as textContent, never parsed as HTML.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const RATE_POINTS = 120;  // ten minutes at one point per refresh
  const health = document.getElementById("health");
  if (!health) return;
  const url = health.dataset.url;
  const css = getComputedStyle(document.documentElement);
  const colour = name => css.getPropertyValue(name).trim() || "#888";

  function setText(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value === undefined || value === null ? "" : String(value);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderCards(cards) {
    const box = document.getElementById("health-cards");
    if (!box || !cards) return;
    const nodes = cards.map(function (c) {
      const card = el("div", "metric status-" + c.status);
      card.id = "card-" + c.id;
      card.appendChild(el("div", "label", c.label));
      const line = el("div");
      const value = el("span", "value", c.value);
      value.id = c.id;
      line.appendChild(value);
      line.appendChild(el("span", "unit", c.unit));
      card.appendChild(line);
      card.appendChild(el("p", "hint", c.hint));
      return card;
    });
    box.replaceChildren(...nodes);
    const error = document.getElementById("h-error");
    if (error) error.hidden = cards.length > 1;
  }

  // -- charts -------------------------------------------------------------------------------

  function width(node) {
    return Math.max(240, node.clientWidth);
  }

  // whole numbers only on a count axis (no "0.5 events")
  const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6, 1e7];

  function makeChart(node, yLabel, series, valueFmt, incrs) {
    const opts = {
      width: width(node),
      height: 260,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { label: "time (local)", stroke: colour("--muted"), grid: { stroke: colour("--line") } },
        { label: yLabel, stroke: colour("--muted"), grid: { stroke: colour("--line") },
          size: 60, values: (u, splits) => splits.map(v => valueFmt(v)) },
      ],
      series: [{ label: "time" }].concat(series),
    };
    if (incrs) opts.axes[1].incrs = incrs;
    const chart = new uPlot(opts, [[], ...series.map(() => [])], node);
    window.addEventListener("resize", () => chart.setSize({ width: width(node), height: 260 }));
    return chart;
  }

  const compact = v => v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k"
                                 : String(Math.round(v * 10) / 10);
  const eventsNode = document.getElementById("events-chart");
  const rateNode = document.getElementById("rate-chart");
  let eventsChart = null, rateChart = null;
  const raw = { blocked: [], allowed: [] };  // the events chart's counts, unstacked
  if (typeof uPlot === "function") {
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
    if (eventsNode) {
      const hours = Number(eventsNode.dataset.hours) || 24;
      // stacked: the red bar is blocked + allowed, the blue one (drawn over it) allowed; the
      // legend shows each series' own count
      const own = name => (u, v, s, i) => i === null || !raw[name].length ? "–" : raw[name][i] + " events";
      eventsChart = makeChart(eventsNode, "events per " + (hours * 60 / 24) + " min", [
        { label: "blocked", stroke: colour("--blocked"), fill: colour("--blocked") + "dd", paths: bars,
          points: { show: false }, value: own("blocked") },
        { label: "allowed", stroke: colour("--allowed"), fill: colour("--allowed"), paths: bars,
          points: { show: false }, value: own("allowed") },
      ], compact, WHOLE);
    }
    if (rateNode) {
      rateChart = makeChart(rateNode, "packets/s", [
        { label: "inspected", stroke: colour("--allowed"), width: 2, fill: colour("--allowed") + "22",
          value: (u, v) => v === null ? "–" : compact(v) + " pkt/s" },
        { label: "queue drops", stroke: colour("--bad"), width: 2,
          value: (u, v) => v === null ? "–" : compact(v) + " pkt/s" },
      ], compact);
    }
  }

  function drawEvents(buckets) {
    if (!eventsChart) return;
    const xs = buckets.map(b => Date.parse(b.start) / 1000);
    raw.blocked = buckets.map(b => b.blocked);
    raw.allowed = buckets.map(b => b.allowed);
    eventsChart.setData([xs, buckets.map(b => b.blocked + b.allowed), raw.allowed]);
  }

  const rate = { last: null, xs: [], inspected: [], drops: [] };
  function drawRate(hl) {
    if (!rateChart) return;
    const now = Date.now() / 1000;
    if (!hl.reachable) { rate.last = null; return; }
    const cur = { t: now, packets: hl.packets || 0, drops: hl.queue_drops || 0 };
    const last = rate.last;
    rate.last = cur;
    if (!last || cur.packets < last.packets) return;  // first answer, or the gateway restarted
    const dt = Math.max(0.001, cur.t - last.t);
    rate.xs.push(now);
    rate.inspected.push((cur.packets - last.packets) / dt);
    rate.drops.push(Math.max(0, cur.drops - last.drops) / dt);
    for (const a of [rate.xs, rate.inspected, rate.drops]) while (a.length > RATE_POINTS) a.shift();
    rateChart.setData([rate.xs, rate.inspected, rate.drops]);
  }

  function fillTop(name, items) {
    const ol = document.getElementById("top-" + name);
    if (!ol) return;
    ol.replaceChildren(...items.map(item => el("li", "", item.label + " (" + item.count + ")")));
    const empty = document.getElementById("top-" + name + "-empty");
    if (empty) empty.hidden = items.length > 0;
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
    renderCards(data.cards);
    drawRate(data.health);
    setText("ev-total", data.events.total);
    const empty = document.getElementById("events-empty");
    if (empty) empty.hidden = data.events.total > 0;
    drawEvents(data.events.buckets);
    for (const name of ["rules", "cves", "sources", "hosts"]) fillTop(name, data.events.top[name]);
  }
  refresh();
})();
