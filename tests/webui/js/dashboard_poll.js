// Runs webui/static/dashboard.js (path in argv[2]) against stubs: a DOM that accepts anything,
// a fetch() whose answers the script below releases one by one, and timers that are recorded
// instead of run. Prints, as JSON, what the dashboard had done at each step.
"use strict";
const fs = require("fs");
const src = fs.readFileSync(process.argv[2], "utf8");

function element() {
  return {
    dataset: { url: "/dashboard/data" }, textContent: "", firstChild: null,
    removeChild() {}, appendChild() {}, setAttribute() {}, replaceChildren() {},
    getAttribute() { return "100"; },
  };
}
const pending = [];  // resolve/reject pairs of fetch() calls not answered yet
const timers = [];  // [callback, ms] of setTimeout calls not run yet
let fetches = 0, intervals = 0;
global.document = { getElementById: element, createElement: element, createElementNS: element,
                    documentElement: element() };
global.getComputedStyle = () => ({ getPropertyValue: () => "" });
global.window = { addEventListener() {} };  // no uPlot here: the charts are skipped
global.fetch = () => { fetches++; return new Promise((res, rej) => pending.push([res, rej])); };
global.setTimeout = (fn, ms) => { timers.push([fn, ms]); return timers.length; };
global.setInterval = (fn, ms) => { intervals++; timers.push([fn, ms]); return -1; };

const body = {
  health: { reachable: true, alerts: null },
  events: { total: 3, buckets: [{ start: "t", allowed: 1, blocked: 2 }],
            top: { rules: [], cves: [], sources: [], hosts: [] } },
};
const settle = () => new Promise((r) => setImmediate(r));
const state = (step) => ({ step, fetches, in_flight: pending.length, intervals,
                           timers: timers.map((t) => t[1]) });

(async () => {
  const steps = [];
  new Function(src)();
  await settle();
  steps.push(state("started"));
  // as if a minute passed with the answer still outstanding: run every timer there is
  for (const [fn] of timers.splice(0)) fn();
  await settle();
  steps.push(state("a minute, no answer"));
  pending.shift()[0]({ ok: true, json: async () => body });
  await settle(); await settle();
  steps.push(state("answered"));
  for (const [fn] of timers.splice(0)) fn();
  await settle();
  steps.push(state("next poll"));
  pending.shift()[1](new TypeError("network down"));
  await settle(); await settle();
  steps.push(state("failed"));
  console.log(JSON.stringify(steps));
})();
