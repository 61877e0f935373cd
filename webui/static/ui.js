// Every page: marks the current page in the navigation (aria-current="page", the longest link
// path that prefixes the location), opens and closes the navigation on a phone, asks before a
// form with data-confirm is sent, and sorts tables in the browser by a click on a header.
// A table is sorted here only when it shows all its rows: tables sorted and paged by the
// server (a th.sortable header, or followed by a .pager) and tables marked data-nosort are
// left alone. Loaded with `defer` from base.html; no inline script (CSP script-src 'self');
// writes text and attributes only.
"use strict";
(function () {
  function markCurrent() {
    const links = Array.from(document.querySelectorAll("#mainnav a"));
    const here = window.location.pathname;
    let best = null, bestLen = -1;
    for (const a of links) {
      const path = new URL(a.href, window.location.href).pathname;
      const len = path.length;
      if ((here === path || here.startsWith(path.endsWith("/") ? path : path + "/")) && len > bestLen) {
        best = a; bestLen = len;
      }
    }
    if (!best && here === "/") best = links[0] || null;  // "/" is the dashboard
    if (best) best.setAttribute("aria-current", "page");
  }

  function navToggle() {
    const button = document.querySelector(".nav-toggle");
    const nav = document.getElementById("mainnav");
    if (!button || !nav) return;
    button.addEventListener("click", function () {
      const open = nav.classList.toggle("open");
      button.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  function confirmForms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
      });
    });
  }

  function cellValue(row, index) {
    const cell = row.cells[index];
    return cell ? cell.textContent.trim() : "";
  }

  function compare(a, b) {
    const na = Number(a.replace(/[, ]/g, "")), nb = Number(b.replace(/[, ]/g, ""));
    if (a !== "" && b !== "" && !Number.isNaN(na) && !Number.isNaN(nb)) return na - nb;
    return a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });
  }

  function sortable(table) {
    if (table.dataset.nosort !== undefined || table.querySelector("th.sortable")) return;
    const next = table.closest(".table-wrap") || table;
    if (next.nextElementSibling && next.nextElementSibling.classList.contains("pager")) return;
    const header = table.tHead ? table.tHead.rows[0] : table.rows[0];
    if (!header || header.querySelector("td")) return;
    const body = table.tBodies[0];
    const rows = function () {
      return Array.from(body.rows).filter(r => r !== header && !r.classList.contains("empty"));
    };
    if (rows().length < 2) return;
    table.classList.add("js-sortable");
    Array.from(header.cells).forEach(function (th, index) {
      if (th.textContent.trim() === "") { th.classList.add("nosort"); return; }
      th.tabIndex = 0;
      const sort = function () {
        const descending = th.getAttribute("aria-sort") === "ascending";
        Array.from(header.cells).forEach(c => c.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        const sorted = rows().sort((x, y) => compare(cellValue(x, index), cellValue(y, index)));
        if (descending) sorted.reverse();
        for (const r of sorted) body.appendChild(r);
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sort(); });
    });
  }

  markCurrent();
  navToggle();
  confirmForms();
  document.querySelectorAll("main table").forEach(sortable);
})();
