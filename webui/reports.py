"""Reports page: the summary of a day, week, month or custom range (gateway/reports), with
charts as server-rendered inline SVG (no script), and downloads as CSV, JSON and one
self-contained HTML file; JSON API /api/v1/report (docs/reports.md, docs/webui.md).

The period comes from the query string (`period=day|week|month`, or `from`/`to` as ISO dates
or date-times, UTC), so a report's URL can be bookmarked and shared; a bad value is a 400
naming it. The event store is read only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from markupsafe import Markup

from gateway.reports.period import Period, PeriodKind, ReportError, parse_period
from gateway.reports.render import RENDERERS, bars_svg, chart_svg
from gateway.reports.sources import ReportSources, make_report
from gateway.reports.summary import DEFAULT_TOP, MAX_TOP, Report
from webui.api import endpoint
from webui.db import get_rules
from webui.inputs import InputError, int_arg
from webui.security import login_required

bp = Blueprint("reports", __name__, url_prefix="/reports")
MIME = {"csv": "text/csv", "json": "application/json", "html": "text/html"}
PERIODS = tuple(k.value for k in PeriodKind if k is not PeriodKind.CUSTOM)


def _period() -> Period:
    kind_text = request.args.get("period", "")[:16] or None
    if kind_text is not None and kind_text not in PERIODS:
        raise InputError(f"period {kind_text!r}: one of {', '.join(PERIODS)}")
    start = request.args.get("from", "")[:40] or None
    end = request.args.get("to", "")[:40] or None
    try:
        return parse_period(start, end, PeriodKind(kind_text) if kind_text else None,
                            datetime.now(UTC))  # fmt: skip
    except ReportError as err:
        raise InputError(str(err)) from err


def _report() -> Report:
    cfg = current_app.config
    sources = ReportSources(Path(cfg["EVENTS_DB"]), Path(cfg["POLICY_DB"]), (),
                            Path(cfg["CONTROL_SOCKET"]))  # fmt: skip
    top = int_arg("top", DEFAULT_TOP, 1, MAX_TOP)
    try:
        return make_report(sources, _period(), top, rules=get_rules())
    except ReportError as err:
        raise InputError(str(err)) from err


def _query() -> dict[str, str]:
    return {k: request.args[k][:40] for k in ("period", "from", "to", "top") if request.args.get(k)}


@bp.route("/")
@login_required
def index() -> Any:
    try:
        report = _report()
    except InputError as err:
        abort(400, description=str(err))
    charts = {"timeline": Markup(chart_svg(report.timeline)),
              "cves": Markup(bars_svg(report.by_cve)),
              "hosts": Markup(bars_svg(report.by_host))}  # fmt: skip
    return render_template("reports/index.html", report=report, charts=charts, query=_query(),
                           periods=PERIODS, args=request.args)  # fmt: skip


@bp.route("/report.<fmt>")
@login_required
def download(fmt: str) -> Any:
    if fmt not in RENDERERS:
        abort(404, description=f"report format {fmt!r}: one of {', '.join(RENDERERS)}")
    try:
        report = _report()
    except InputError as err:
        abort(400, description=str(err))
    name = f"vpatch-report-{report.period_start[:10]}-{report.period_end[:10]}.{fmt}"
    return Response(RENDERERS[fmt](report), mimetype=MIME[fmt],
                    headers={"Content-Disposition": f"attachment; filename={name}"})  # fmt: skip


@endpoint("/report", "GET", "Report of a period (period=day|week|month, or from/to, UTC)",
          params=("period", "from", "to", "top"))  # fmt: skip
def api_report() -> Any:
    return jsonify(_report().as_dict())
