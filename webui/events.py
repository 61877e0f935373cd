"""Events: filters (time, host, rule, CVE, action, address), pagination, a detail view that
explains the decision, CSV/JSON export, and an exception from an event (host, port or URI scope,
mandatory reason, optional expiry).

An exception from an event is never saved in one click (issue 15, finding 5): the form leads to
a page that shows its exact scope (host, rule, port, and the URI as the engine will compare it:
normalised, query dropped, exact unless the admin chose "prefix"), and only a save from that
page, naming the same scope, stores it. The URI comes from the request target the gateway
recorded (the attacker's bytes), every character of it literal (gateway.policy.exceptions
`uri_scope`); a target the gateway kept only in part is refused (the admin types the URI)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, g, redirect, render_template, request, url_for

from gateway.events.eve import unescape_bytes
from gateway.match.explain import MAX_TARGET
from gateway.policy.exceptions import PolicyException, PolicyExceptions, UriScope, uri_scope
from gateway.policy.store import StoreError
from webui.db import get_store
from webui.inputs import InputError, int_arg
from webui.security import admin_required, csv_safe, login_required
from webui.services import (
    DEFAULT_PAGE_SIZE,
    EVENT_COLUMNS,
    EVENT_FILTERS,
    EVENT_SORTS,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    explain_event,
    export_events,
    get_event,
    list_events,
    reload_gateway,
)  # fmt: skip
from webui.tables import sort_arg

bp = Blueprint("events", __name__, url_prefix="/events")


def _filters() -> dict[str, str]:
    return {k: request.args.get(k, "")[:256] for k in EVENT_FILTERS}


@bp.route("/")
@login_required
def index() -> Any:
    filters = _filters()
    sort = sort_arg(tuple(EVENT_SORTS), "-time")
    try:
        result = list_events(filters, int_arg("page", 1, 1, MAX_PAGE),
                             int_arg("per_page", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
                             sort.column, sort.descending)  # fmt: skip
    except InputError as err:
        abort(400, description=str(err))
    return render_template("events/index.html", result=result, filters=filters, sort=sort)


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


MATCHES = ("exact", "prefix")


@dataclass(frozen=True, slots=True)
class ExceptionDraft:
    """An exception from an event, as it would be stored (shown before saving)."""

    event_id: int
    rule_id: int
    rule: str  # the event's signature
    host: str
    port: int | None  # None: any port
    uri: UriScope | None  # None: any URI
    uri_from_event: bool  # the path is the request target the gateway recorded

    @property
    def confirm(self) -> str:
        """The scope in one line: a save must send back exactly this (it saw this scope)."""
        uri = "any" if self.uri is None else ("prefix " if self.uri.prefix else "exact ")
        return f"host {self.host} rule {self.rule_id} port {self.port or 'any'} uri {uri}" + (
            self.uri_field
        )

    @property
    def uri_field(self) -> str:
        """The URI as the confirmation page sends it back (printable: %-escapes for control
        characters); typed, it makes the same path."""
        return "" if self.uri is None else UriScope(self.uri.path, False).stored

    def as_dict(self) -> dict[str, Any]:
        uri = None if self.uri is None else {"path": self.uri.path, "prefix": self.uri.prefix}
        return {"host": self.host, "rule_id": self.rule_id, "port": self.port, "uri": uri,
                "uri_from_event": self.uri_from_event}  # fmt: skip


def recorded_target(eve: dict[str, Any]) -> str:
    """The request target the gateway recorded in the event (`http.url`, unescaped)."""
    http = eve.get("http")
    url = http.get("url") if isinstance(http, dict) else None
    if not isinstance(url, str) or not url:
        raise InputError("uri: this event records no URI; type one")
    raw = unescape_bytes(url)
    if len(raw) >= MAX_TARGET:
        raise InputError(f"uri: the event kept only the first {MAX_TARGET} bytes of the "
                         "request target; type the URI")  # fmt: skip
    return raw.decode("latin-1")


def exception_draft(event_id: int, form: dict[str, Any]) -> ExceptionDraft:
    """The exception `form` asks for on event `event_id` (InputError/StoreError name what is
    wrong). `uri` typed by the admin is kept with its query; the recorded one loses it."""
    found = get_event(event_id)
    if found is None:
        raise InputError(f"event {event_id}: not found")
    event, eve = found
    scope = str(form.get("scope") or "host")
    match = str(form.get("match") or "exact")
    if match not in MATCHES:
        raise InputError(f"match {match[:40]!r}: exact or prefix")
    port = uri = None
    typed = str(form.get("uri") or "").strip()
    if scope == "port":
        if event["dest_port"] is None:
            raise InputError("scope port: this event records no port")
        port = int(event["dest_port"])
    elif scope == "uri":
        text = typed or recorded_target(eve)
        uri = uri_scope(text, match == "prefix", drop_query=not typed)
    elif scope != "host":
        raise InputError(f"scope {scope[:40]!r}: host, port or uri")
    if event["signature_id"] is None:
        raise InputError(f"event {event_id}: records no rule")
    rule, host = int(event["signature_id"]), str(event["dest_ip"])
    signature = str(event["signature"] or "")
    return ExceptionDraft(event_id, rule, signature, host, port, uri, scope == "uri" and not typed)


def save_exception(
    draft: ExceptionDraft, form: dict[str, Any], actor: str
) -> tuple[PolicyException, dict[str, Any]]:
    """Store the draft with the form's reason and expiry, then reload the gateway."""
    store = get_store()
    exc = PolicyExceptions(store).add_exception(
        draft.host, str(form.get("reason", "")), actor, draft.rule_id, draft.port, draft.uri,
        parse_expiry(str(form.get("expires", ""))), draft.event_id,
    )  # fmt: skip
    return exc, reload_gateway(store, actor)


@bp.route("/<int:event_id>/exception", methods=["POST"])
@admin_required
def add_exception(event_id: int) -> Any:
    """Without `confirm`, or with one naming another scope: the page showing the exact scope.
    With the `confirm` that page sent: the exception is saved."""
    form = request.form.to_dict()
    try:
        draft = exception_draft(event_id, form)
        if form.get("confirm") == draft.confirm:
            save_exception(draft, form, g.user.username)
            return redirect(url_for("events.exceptions"))
    except (InputError, StoreError) as err:
        abort(400, description=str(err))
    return render_template("events/exception_confirm.html", draft=draft, form=form)


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
