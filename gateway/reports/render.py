"""A report (gateway/reports/summary.py) as JSON, CSV or one self-contained HTML file
(docs/reports.md).

- JSON: `Report.as_dict()`, one object (every breakdown with its `total`).
- CSV: one table, columns CSV_COLUMNS; `section` says which breakdown a line belongs to
  (totals, timeline, cve, host, source, rule, event_type, firewall, lockdown, host_mode_change,
  coverage, health); cells a spreadsheet would evaluate (= + - @ first) get a leading `'`.
- HTML: one file with its stylesheet inline and its charts as inline SVG drawn here (a stacked
  bar chart of blocked and detected alerts over the period, with axes, and horizontal bars for
  the top lists): no script, no external resource, so it opens from a mail or a disk as is. Every
  value from the event store (attacker-controlled: signatures, addresses) is HTML-escaped. The
  SVG uses presentation attributes only, so `chart_svg` can also go into a UI page under the
  UI's CSP (style-src 'self').
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any, Final

from gateway.reports.summary import Count, Report

__all__ = ["CSV_COLUMNS", "FORMATS", "bars_svg", "chart_svg", "to_csv", "to_html", "to_json"]

FORMATS: Final = ("html", "csv", "json")
CSV_COLUMNS: Final = ("section", "key", "label", "blocked", "detected", "total")
BLOCKED_COLOUR: Final = "#c0392b"
DETECTED_COLOUR: Final = "#e6a23c"
_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=1, sort_keys=True) + "\n"


# -- CSV ----------------------------------------------------------------------------------------


def _safe(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _csv_counts(section: str, items: Iterable[Count]) -> list[list[object]]:
    return [[section, c.key, c.label, c.blocked, c.detected, c.total] for c in items]


def to_csv(report: Report) -> str:
    rows: list[list[object]] = [["period", report.period_start, report.period_end, "", "", ""]]
    t = report.totals
    rows.append(["totals", "alerts", "alerts in the period", t.get("blocked", 0),
                 t.get("detected", 0), t.get("alerts", 0)])  # fmt: skip
    rows.append(["totals", "events", "events of every type", "", "", t.get("events", 0)])
    for section, items in (("timeline", report.timeline), ("cve", report.by_cve),
                           ("host", report.by_host), ("source", report.by_source),
                           ("rule", report.top_rules), ("event_type", report.event_types),
                           ("firewall", report.firewall),
                           ("lockdown", report.host_modes["lockdown_events"])):  # fmt: skip
        rows.extend(_csv_counts(section, items))
    for action, n in report.host_modes["changes"].items():
        rows.append(["host_mode_change", action, "", "", "", n])
    for cov in report.coverage:
        missing = "; ".join(f"{rid} {title}" for rid, title in cov.not_enforced)
        rows.append(
            ["coverage", cov.host, missing, "", len(cov.detect_only), len(cov.not_enforced)]
        )
    for key, value in _health_rows(report.health):
        rows.append(["health", key, value, "", "", ""])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([[_safe(v) for v in row] for row in rows])
    return out.getvalue()


def _health_rows(health: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("reachable", str(health["reachable"]).lower()),
            ("events_recorded", str(health["events_recorded"]))]  # fmt: skip
    for key, value in (health.get("period") or {}).items():
        rows.append((f"period_{key}", "" if value is None else json.dumps(value)))
    for key, value in (health.get("live") or {}).items():
        rows.append((key, "" if value is None else json.dumps(value, sort_keys=True)))
    rows.extend(("not_kept", text) for text in health["not_kept"])
    return rows


# -- SVG ----------------------------------------------------------------------------------------


def _ticks(top: int) -> list[int]:
    """Round y-axis ticks from 0 to at least `top`: a step of 1, 2 or 5 times a power of ten,
    at most 5 steps."""
    exp = 0
    while True:
        for mult in (1, 2, 5):
            step = mult * 10**exp
            if top <= 5 * step:
                last = -(-max(top, 1) // step) * step
                return list(range(0, last + 1, step))
        exp += 1


def _tick(key: str) -> str:
    """An x-axis label: "12-05 01h" for an hour bucket, "12-05" for a day."""
    return key[5:].replace("T", " ") + ("h" if "T" in key else "")


def chart_svg(timeline: Sequence[Count], width: int = 720, height: int = 240) -> str:
    """Stacked bars (blocked below, detected above) per bucket, y axis with ticks, x labels."""
    left, bottom, top_pad, right = 48, 40, 12, 8
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    peak = max((c.total for c in timeline), default=0)
    ticks = _ticks(peak)
    scale = plot_h / max(ticks[-1], 1)
    n = max(len(timeline), 1)
    bar_w = plot_w / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="alerts over the period">'
    ]
    for t in ticks:
        y = top_pad + plot_h - t * scale
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#444">{t}</text>'
        )
    every = max(1, n // 12)
    for i, c in enumerate(timeline):
        x = left + i * bar_w
        hb, hd = c.blocked * scale, c.detected * scale
        base = top_pad + plot_h
        title = escape(f"{c.label}: {c.blocked} blocked, {c.detected} detected")
        parts.append(
            f"<g><title>{title}</title>"
            f'<rect x="{x + 1:.1f}" y="{base - hb:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{hb:.1f}" fill="{BLOCKED_COLOUR}"/>'
            f'<rect x="{x + 1:.1f}" y="{base - hb - hd:.1f}" '
            f'width="{max(bar_w - 2, 1):.1f}" height="{hd:.1f}" '
            f'fill="{DETECTED_COLOUR}"/></g>'
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{base + 14}" font-size="10" '
                f'text-anchor="middle" fill="#444">{escape(_tick(c.key))}</text>'
            )
    parts.append(
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#444"/>'
    )
    parts.append(
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" '
        f'y2="{top_pad + plot_h}" stroke="#444"/>'
    )
    parts.append(
        f'<rect x="{left}" y="{height - 14}" width="10" height="10" '
        f'fill="{BLOCKED_COLOUR}"/><text x="{left + 14}" y="{height - 5}" '
        'font-size="11">blocked</text>'
    )
    parts.append(f'<rect x="{left + 80}" y="{height - 14}" width="10" height="10" '
                 f'fill="{DETECTED_COLOUR}"/><text x="{left + 94}" y="{height - 5}" '
                 'font-size="11">detected</text></svg>')  # fmt: skip
    return "".join(parts)


def bars_svg(items: Sequence[Count], width: int = 480) -> str:
    """Horizontal stacked bars, one per item, labelled with its key and total."""
    row_h, label_w = 20, 170
    height = row_h * max(len(items), 1) + 4
    peak = max((c.total for c in items), default=0) or 1
    scale = (width - label_w - 50) / peak
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
    ]
    for i, c in enumerate(items):
        y = i * row_h + 2
        wb, wd = c.blocked * scale, c.detected * scale
        title = escape(f"{c.label or c.key}: {c.blocked} blocked, {c.detected} detected")
        parts.append(f'<g><title>{title}</title>'
                     f'<text x="{label_w - 6}" y="{y + 13}" font-size="11" text-anchor="end">'
                     f'{escape(c.key[:28])}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{wb:.1f}" height="{row_h - 6}" '
                     f'fill="{BLOCKED_COLOUR}"/><rect x="{label_w + wb:.1f}" y="{y + 2}" '
                     f'width="{wd:.1f}" height="{row_h - 6}" fill="{DETECTED_COLOUR}"/>'
                     f'<text x="{label_w + wb + wd + 4:.1f}" y="{y + 13}" font-size="11">'
                     f'{c.total}</text></g>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


# -- HTML ---------------------------------------------------------------------------------------

_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:60em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.n{text-align:right}.note{color:#555}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ccc;padding:.6em 1em}
.card b{display:block;font-size:1.6em}
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], num_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{escape(str(v))}</td>'
            if i >= num_from
            else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="note">none in this period</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _counts_table(first: str, items: Sequence[Count], label: bool = False) -> str:
    if label:
        return _table(
            (first, "name", "blocked", "detected", "total"),
            [(c.key, c.label, c.blocked, c.detected, c.total) for c in items],
            2,
        )
    return _table((first, "blocked", "detected", "total"),
                  [(c.key, c.blocked, c.detected, c.total) for c in items])  # fmt: skip


def _sections(report: Report) -> list[str]:
    t = report.totals
    cards = "".join(
        f'<div class="card">{escape(name)}<b>{value}</b></div>'
        for name, value in (
            ("alerts", t.get("alerts", 0)),
            ("blocked", t.get("blocked", 0)),
            ("detected only", t.get("detected", 0)),
            ("events of every type", t.get("events", 0)),
        )
    )
    cov = [(c.host, c.mode, c.scanned_at or "never", c.recommended,
            "; ".join(f"{r} {title}" for r, title in c.not_enforced) or "-",
            "; ".join(f"{r} {title}" for r, title in c.detect_only) or "-")
           for c in report.coverage]  # fmt: skip
    live = report.health.get("live") or {}
    return [
        f'<div class="cards">{cards}</div>',
        "<h2>Alerts over the period</h2>", chart_svg(report.timeline),
        "<h2>By CVE</h2>", bars_svg(report.by_cve), _counts_table("CVE", report.by_cve),
        "<h2>By protected host</h2>", bars_svg(report.by_host),
        _counts_table("host", report.by_host),
        "<h2>By source</h2>", _counts_table("source", report.by_source),
        "<h2>Top rules</h2>", _counts_table("rule", report.top_rules, label=True),
        "<h2>Events by type</h2>", _counts_table("event type", report.event_types),
        "<h2>Firewall and host-mode events</h2>",
        _counts_table("event type and signature", report.firewall),
        "<h2>Setup protection and lockdown</h2>",
        _table(("host mode", "hosts now"), report.host_modes["hosts_by_mode"].items()),
        _table(("change in the period", "count"), report.host_modes["changes"].items()),
        _counts_table("lockdown events for host", report.host_modes["lockdown_events"]),
        "<h2>Rule coverage</h2><p class=note>Rules the host's last scan recommended that are "
        "not enforced (effective mode off) or only detect.</p>",
        _table(("host", "mode", "last scan", "recommended", "not enforced", "detect only"),
               cov, 3),
        "<h2>Gateway health</h2>",
        _table(("figure", "value"), _health_rows(report.health)) if report.health else "",
        "" if live else "<p class=note>No live figures: the gateway was not reachable.</p>",
    ]  # fmt: skip


def to_html(report: Report) -> str:
    """One self-contained HTML document (see the module comment)."""
    title = f"vpatch report {report.period_label}"
    notes = "".join(f"<p class=note>{escape(n)}</p>" for n in report.notes)
    return (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"<p class=note>Generated {escape(report.generated_at)}; period "
        f"{escape(report.period_start)} to {escape(report.period_end)} (end excluded).</p>"
        f"{notes}{''.join(_sections(report))}</body></html>\n"
    )


RENDERERS: Final = {"html": to_html, "csv": to_csv, "json": to_json}
