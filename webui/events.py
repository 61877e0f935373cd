"""Events: filters (time, host, rule, CVE, action, address), pagination, a detail view that
explains the decision, CSV/JSON export, and a one-click exception (host, port or URI scope,
mandatory reason, optional expiry)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, g, redirect, render_template, request, url_for

from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.store import StoreError
from webui.db import get_store
from webui.inputs import InputError, int_arg
from webui.security import admin_required, csv_safe, login_required
from webui.services import (
    DEFAULT_PAGE_SIZE,
    EVENT_COLUMNS,
    EVENT_FILTERS,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    explain_event,
    export_events,
    get_event,
    list_events,
    reload_gateway,
)  # fmt: skip

bp = Blueprint("events", __name__, url_prefix="/events")


def _filters() -> dict[str, str]:
    return {k: request.args.get(k, "")[:256] for k in EVENT_FILTERS}


@bp.route("/")
@login_required
def index() -> Any:
    filters = _filters()
    try:
        result = list_events(filters, int_arg("page", 1, 1, MAX_PAGE),
                             int_arg("per_page", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE))  # fmt: skip
    except InputError as err:
        abort(400, description=str(err))
    return render_template("events/index.html", result=result, filters=filters)


@bp.route("/<int:event_id>")
@login_required
def detail(event_id: int) -> Any:
    found = get_event(event_id)
    if found is None:
        abort(404, description=f"event {event_id}: not found")
    event, eve = found
    return render_template(
        "events/detail.html", event=event, why=explain_event(event, eve),
        eve_json=json.dumps(eve, indent=2, sort_keys=True),
    )  # fmt: skip


def csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EVENT_COLUMNS)
    for r in rows:
        writer.writerow([csv_safe(",".join(r[c]) if c == "cves" else r[c]) for c in EVENT_COLUMNS])
    return out.getvalue()


@bp.route("/export.<fmt>")
@login_required
def export(fmt: str) -> Any:
    try:
        rows = export_events(_filters())
    except InputError as err:
        abort(400, description=str(err))
    if fmt == "csv":
        return Response(
            csv_text(rows),
            mimetype="text/csv",
            headers={"Content-Disposition": "attachment; filename=vpatch-events.csv"},
        )
    if fmt == "json":
        return Response(
            json.dumps(rows, indent=1),
            mimetype="application/json",
            headers={"Content-Disposition": "attachment; filename=vpatch-events.json"},
        )
    abort(404, description=f"export format {fmt!r}: csv or json")


def parse_expiry(value: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as err:
        raise InputError(f"expires {value!r}: not an ISO 8601 time") from err
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def add_exception_from(event_id: int, form: dict[str, Any], actor: str) -> Any:
    found = get_event(event_id)
    if found is None:
        raise InputError(f"event {event_id}: not found")
    event, eve = found
    scope = str(form.get("scope", "host"))
    port = uri = None
    if scope == "port":
        port = int(event["dest_port"])
    elif scope == "uri":
        uri = str(form.get("uri") or (eve.get("http", {}) or {}).get("url") or "")
        if not uri:
            raise InputError("uri: this event records no URI; type one")
    elif scope != "host":
        raise InputError(f"scope {scope!r}: host, port or uri")
    store = get_store()
    exc = PolicyExceptions(store).add_exception(
        str(event["dest_ip"]), str(form.get("reason", "")), actor, int(event["signature_id"]),
        port, uri, parse_expiry(str(form.get("expires", ""))), event_id,
    )  # fmt: skip
    return exc, reload_gateway(store, actor)


@bp.route("/<int:event_id>/exception", methods=["POST"])
@admin_required
def add_exception(event_id: int) -> Any:
    try:
        add_exception_from(event_id, request.form.to_dict(), g.user.username)
    except (InputError, StoreError) as err:
        abort(400, description=str(err))
    return redirect(url_for("events.exceptions"))


@bp.route("/exceptions")
@login_required
def exceptions() -> Any:
    exceptions = PolicyExceptions(get_store()).list_exceptions()
    return render_template("events/exceptions.html", exceptions=exceptions)


@bp.route("/exceptions/<int:exc_id>/delete", methods=["POST"])
@admin_required
def delete_exception(exc_id: int) -> Any:
    store = get_store()
    try:
        PolicyExceptions(store).delete_exception(exc_id, g.user.username)
    except StoreError as err:
        abort(404, description=str(err))
    reload_gateway(store, g.user.username)
    return redirect(url_for("events.exceptions"))
