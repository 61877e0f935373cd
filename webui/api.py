"""JSON API under /api/v1: every UI operation, bearer-token auth (`Authorization: Bearer
vpt_...`; tokens from the UI or `vpatch ui --create-token USER`). Viewer tokens may only read.
Cookies are ignored here, so CSRF does not apply. /api/v1/openapi.json is generated from the
same table (`ENDPOINTS`) that registers the routes, so the document matches the code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Blueprint, abort, g, jsonify, request

from gateway.lifecycle.state import host_services
from gateway.policy.accounts import Accounts
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Hosts
from gateway.policy.store import StoreError
from webui.db import get_store
from webui.events import exception_draft, save_exception
from webui.inputs import MAX_SQL_INT, InputError, int_arg
from webui.services import (
    DEFAULT_HOURS,
    DEFAULT_PAGE_SIZE,
    EVENT_FILTERS,
    MAX_HOURS,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    explain_event,
    gateway_status,
    get_event,
    list_events,
    reload_gateway,
    reload_rules,
    rules_view,
    set_rule_mode,
    shared_dashboard_data,
)  # fmt: skip

bp = Blueprint("api", __name__, url_prefix="/api/v1")

OBJ = {"type": "object"}
ARR = {"type": "array", "items": OBJ}
ENDPOINTS: list[dict[str, Any]] = []


def endpoint(
    path: str,
    method: str,
    summary: str,
    *,
    write: bool = False,
    params: tuple[str, ...] = (),
    body: dict[str, Any] | None = None,
    result: dict[str, Any] = OBJ,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ENDPOINTS.append({"path": path, "method": method, "summary": summary, "write": write,
                          "params": params, "body": body, "result": result})  # fmt: skip
        flask_path = path.replace("{", "<int:").replace("}", ">")

        def view(**kw: Any) -> Any:
            _authenticate(write)
            try:
                return fn(**kw)
            except (InputError, StoreError) as err:
                return jsonify(error=str(err)), 400

        view.__name__ = fn.__name__
        bp.add_url_rule(flask_path, endpoint=fn.__name__, view_func=view, methods=[method])
        return fn

    return deco


def _authenticate(write: bool) -> None:
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token:
        abort(401, description="bearer token required (Authorization: Bearer TOKEN)")
    user = Accounts(get_store()).token_user(token.strip())
    if user is None:
        abort(401, description="unknown or revoked token")
    if write and user.role != "admin":
        abort(403, description=f"user {user.username!r} is a viewer: read-only")
    g.user = user


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    return data


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{key} {v!r}: must be an integer")
    return v


@endpoint("/status", "GET", "Gateway health from its control socket")
def status() -> Any:
    return jsonify(gateway_status())


@endpoint("/https", "GET", "Services the HTTPS plane proxies: mode, certificate, TLS settings",
          result=ARR)  # fmt: skip
def https_services() -> Any:
    health = gateway_status()
    return jsonify(health.get("tls_proxy") or [])


@endpoint(
    "/dashboard", "GET", "Events over time and top rules/CVEs/sources/hosts", params=("hours",)
)
def dashboard() -> Any:
    return jsonify(shared_dashboard_data(int_arg("hours", DEFAULT_HOURS, 1, MAX_HOURS)))


@endpoint("/rules", "GET", "Rules with modes and would-block counts",
          params=("q", "cve", "product", "severity", "protocol"), result=ARR)  # fmt: skip
def rules() -> Any:
    return jsonify(
        rules_view(
            {k: request.args.get(k, "") for k in ("q", "cve", "product", "severity", "protocol")}
        )
    )


@endpoint("/rules/reload", "POST", "Load the rule files again in the running gateway (no "
          "restart; a bad rule refuses the whole set)", write=True)  # fmt: skip
def rules_reload() -> Any:
    return jsonify(reload_rules(get_store(), g.user.username))  # "ok": false says why not


MODE_BODY = {
    "type": "object",
    "required": ["mode"],
    "properties": {
        "mode": {"type": "string", "enum": ["off", "detect", "prevent", "inherit"]},
        "scope": {"type": "string", "enum": ["global", "host", "group"]},
        "scope_id": {"type": "integer", "nullable": True},
        "reason": {"type": "string"},
    },
}


@endpoint("/rules/{rule_id}/mode", "PUT", "Set a rule's mode for a scope, then reload the gateway",
          write=True, body=MODE_BODY)  # fmt: skip
def rule_mode(rule_id: int) -> Any:
    data = _body()
    mode = data.get("mode")
    if not isinstance(mode, str):
        raise InputError("mode: required string")
    result = set_rule_mode(
        rule_id,
        str(data.get("scope", "global")),
        _opt_int(data, "scope_id"),
        None if mode == "inherit" else mode,
        g.user.username,
        str(data.get("reason", ""))[:1000],
    )
    return jsonify(result)


@endpoint("/hosts", "GET", "Protected hosts", result=ARR)
def hosts() -> Any:
    store = get_store()
    return jsonify(
        [{**asdict(h), "services": host_services(store, h.id)} for h in Hosts(store).list_hosts()]
    )


HOST_BODY = {
    "type": "object",
    "required": ["address"],
    "properties": {
        "address": {"type": "string"},
        "name": {"type": "string"},
        "group_id": {"type": "integer", "nullable": True},
        "mode": {"type": "string", "enum": ["normal", "setup", "learning", "lockdown"]},
    },
}


@endpoint("/hosts", "POST", "Create or update a host (by address)", write=True, body=HOST_BODY)
def save_host() -> Any:
    data = _body()
    h = Hosts(get_store()).save_host(
        str(data.get("address", "")), g.user.username, str(data.get("name", "")),
        _opt_int(data, "group_id"), str(data.get("mode", "normal")),
    )  # fmt: skip
    # the running gateway refills its protected-host sets: the host is queued at once
    return jsonify({**asdict(h), "reload": reload_gateway(get_store(), g.user.username)}), 201


@endpoint("/hosts/{host_id}", "DELETE", "Delete a host and its assignments", write=True)
def delete_host(host_id: int) -> Any:
    Hosts(get_store()).delete_host(host_id, g.user.username)
    return jsonify(ok=True, reload=reload_gateway(get_store(), g.user.username))


@endpoint("/groups", "GET", "Host groups", result=ARR)
def groups() -> Any:
    return jsonify([asdict(gr) for gr in Hosts(get_store()).list_groups()])


GROUP_BODY = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
}


@endpoint("/groups", "POST", "Create a group", write=True, body=GROUP_BODY)
def create_group() -> Any:
    data = _body()
    gr = Hosts(get_store()).create_group(
        str(data.get("name", "")), str(data.get("description", "")), g.user.username
    )
    return jsonify(asdict(gr)), 201


@endpoint("/groups/{group_id}", "DELETE", "Delete a group", write=True)
def delete_group(group_id: int) -> Any:
    Hosts(get_store()).delete_group(group_id, g.user.username)
    return jsonify(ok=True)


@endpoint(
    "/events", "GET", "Events, filtered and paginated", params=(*EVENT_FILTERS, "page", "per_page")
)
def events() -> Any:
    page = int_arg("page", 1, 1, MAX_PAGE)
    per_page = int_arg("per_page", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return jsonify(list_events({k: request.args.get(k, "") for k in EVENT_FILTERS}, page, per_page))


@endpoint("/events/{event_id}", "GET", "One event, its EVE record and why it fired")
def event(event_id: int) -> Any:
    found = get_event(event_id)
    if found is None:
        return jsonify(error=f"event {event_id}: not found"), 404
    ev, eve = found
    return jsonify(event=ev, eve=eve, why=explain_event(ev, eve))


EXC_BODY = {
    "type": "object",
    "required": ["reason"],
    "properties": {
        "scope": {"type": "string", "enum": ["host", "port", "uri"]},
        "reason": {"type": "string"},
        "uri": {
            "type": "string",
            "description": "literal (a * matches a *); default: the "
            "request target the event recorded, without its query",
        },
        "match": {
            "type": "string",
            "enum": ["exact", "prefix"],
            "description": "prefix: every URI starting with the normalised uri",
        },
        "expires": {"type": "string", "description": "ISO 8601"},
    },
}


@endpoint(
    "/events/{event_id}/exception",
    "POST",
    "Exception from an event (host, port or URI)",
    write=True,
    body=EXC_BODY,
)
def event_exception(event_id: int) -> Any:
    data = _body()
    draft = exception_draft(event_id, data)
    exc, rl = save_exception(draft, data, g.user.username)
    return jsonify(exception=asdict(exc), scope=draft.as_dict(), reload=rl), 201


@endpoint("/exceptions", "GET", "Exceptions (also expired ones)", result=ARR)
def exceptions() -> Any:
    out = []
    for e in PolicyExceptions(get_store()).list_exceptions():
        scope = e.uri_scope()  # what the engine compares: {path, prefix}
        out.append(asdict(e) | {"uri_scope": None if scope is None else asdict(scope)})
    return jsonify(out)


@endpoint("/exceptions/{exception_id}", "DELETE", "Delete an exception", write=True)
def delete_exception(exception_id: int) -> Any:
    store = get_store()
    PolicyExceptions(store).delete_exception(exception_id, g.user.username)
    return jsonify(ok=True, reload=reload_gateway(store, g.user.username))


@endpoint("/audit", "GET", "Audit trail, newest first", params=("limit", "offset"), result=ARR)
def audit() -> Any:
    lim = int_arg("limit", 100, 1, 1000)
    off = int_arg("offset", 0, 0, MAX_SQL_INT)
    return jsonify([asdict(e) for e in get_store().list_audit(lim, off)])


@endpoint("/reload", "POST", "Ask the running gateway to apply the stored policy now", write=True)
def reload() -> Any:
    return jsonify(reload_gateway(get_store(), g.user.username))


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    error_schema = {"type": "object", "properties": {"error": {"type": "string"}}}
    err = {"description": "error", "content": {"application/json": {"schema": error_schema}}}
    for ep in ENDPOINTS:
        created = ep["method"] == "POST" and not ep["path"].endswith("/reload")
        ok = {"description": "ok", "content": {"application/json": {"schema": ep["result"]}}}
        op: dict[str, Any] = {
            "summary": ep["summary"],
            "operationId": f"{ep['method'].lower()}_{ep['path']}",
            "security": [{"bearer": []}],
            "responses": {"201" if created else "200": ok, "400": err, "401": err, "404": err},
        }
        if ep["write"]:
            op["responses"]["403"] = err
        parameters = [{"name": p, "in": "query", "required": False, "schema": {"type": "string"}}
                      for p in ep["params"]]  # fmt: skip
        for name in [s.strip("{}") for s in ep["path"].split("/") if s.startswith("{")]:
            parameters.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}
            )
        if parameters:
            op["parameters"] = parameters
        if ep["body"] is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ep["body"]}},
            }
        paths.setdefault(ep["path"], {})[ep["method"].lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "vpatch admin API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


@bp.route("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())
