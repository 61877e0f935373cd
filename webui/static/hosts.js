// Host pages: polls the progress of running scans (fetch, same-origin session cookie) and
// reloads the page when a scan finishes or is cancelled, so its report and history appear;
// shows stored times as local time. No inline script: CSP script-src 'self'. Writes textContent only.
"use strict";
(function () {
  const POLL_MS = 500;
  document.querySelectorAll(".ts").forEach(function (el) {
    const t = Number(el.dataset.ts);
    if (t > 0) el.textContent = new Date(t * 1000).toLocaleString();
  });
  document.querySelectorAll(".scan-status").forEach(function (status) {
    const row = status.closest("tr") || status.closest("dl");
    const bar = row ? row.querySelector("progress") : null;
    const step = row ? row.querySelector(".scan-step") : null;
    function poll() {
      fetch(status.dataset.url, {credentials: "same-origin", headers: {Accept: "application/json"}})
        .then(function (r) { return r.json(); })
        .then(function (p) {
          status.textContent = p.status;
          if (bar) { bar.max = Math.max(1, p.total); bar.value = p.done; }
          if (step) step.textContent = p.step || "";
          if (p.status === "done" || p.status === "failed" || p.status === "cancelled") {
            window.location.reload();
            return;
          }
          window.setTimeout(poll, POLL_MS);
        })
        .catch(function () { window.setTimeout(poll, POLL_MS * 4); });
    }
    window.setTimeout(poll, POLL_MS);
  });
})();
