"""Firewall policy page: ordered allow/deny/reject/log rules per host or group (address/CIDR, port
range, protocol, MAC, direction). Each change is validated (the error names the field), stored
and audited by gateway/firewall/policy.py, then the running gateway is told to `reload`, which
rewrites its kernel chain atomically. JSON API: /api/v1/firewall (webui/api.py's table)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for

from gateway.firewall.policy import (
    ACTIONS,
    DIRECTIONS,
    PROTOCOLS,
    FirewallRuleError,
    add_rule,
    delete_rule,
    list_rules,
    move_rule,
    update_rule,
)
from gateway.policy.hosts import Hosts
from webui.api import endpoint
from webui.db import get_store
from webui.security import admin_required, login_required
from webui.services import reload_gateway

bp = Blueprint("firewall", __name__, url_prefix="/firewall")

FORM_FIELDS = ("scope", "direction", "address", "protocol", "port_from", "port_to", "mac",
               "action", "comment", "position")  # fmt: skip


def _form() -> dict[str, Any]:
    data: dict[str, Any] = {
        k: request.form[k][:300] for k in FORM_FIELDS if request.form.get(k, "") != ""
    }  # empty fields take their defaults
    scope = data.get("scope") or "global"
    kind, _, ident = scope.partition(":")
    data["scope"], data["scope_id"] = kind, ident or None
    data["enabled"] = True
    return data


def _reloaded(what: str) -> None:
    rl = reload_gateway(get_store(), g.user.username)
    if rl["ok"]:
        flash(f"{what}; gateway reloaded in {rl['seconds']:.2f} s")
    else:
        flash(f"{what}; gateway NOT reloaded: {rl['error']}")


@bp.route("/")
@login_required
def index() -> Any:
    store = get_store()
    hosts = {h.id: h for h in Hosts(store).list_hosts()}
    groups = {gr.id: gr for gr in Hosts(store).list_groups()}
    return render_template(
        "firewall/index.html", rules=list_rules(store), hosts=hosts, groups=groups,
        directions=DIRECTIONS, protocols=PROTOCOLS, actions=ACTIONS,
    )  # fmt: skip


@bp.route("/", methods=["POST"])
@admin_required
def add() -> Any:
    try:
        rule = add_rule(get_store(), _form(), g.user.username)
    except FirewallRuleError as err:
        abort(400, description=f"firewall rule not saved: {err}")
    _reloaded(f"firewall rule {rule.id} added")
    return redirect(url_for("firewall.index"))


@bp.route("/<int:rule_id>/toggle", methods=["POST"])
@admin_required
def toggle(rule_id: int) -> Any:
    store = get_store()
    rule = next((r for r in list_rules(store) if r.id == rule_id), None)
    if rule is None:
        abort(404, description=f"firewall rule {rule_id} does not exist")
    update_rule(store, rule_id, {"enabled": not rule.enabled}, g.user.username)
    _reloaded(f"firewall rule {rule_id} {'disabled' if rule.enabled else 'enabled'}")
    return redirect(url_for("firewall.index"))


@bp.route("/<int:rule_id>/move", methods=["POST"])
@admin_required
def move(rule_id: int) -> Any:
    offset = -1 if request.form.get("to") == "up" else 1
    try:
        move_rule(get_store(), rule_id, offset, g.user.username)
    except FirewallRuleError as err:
        abort(404, description=str(err))
    _reloaded(f"firewall rule {rule_id} moved")
    return redirect(url_for("firewall.index"))


@bp.route("/<int:rule_id>/delete", methods=["POST"])
@admin_required
def delete(rule_id: int) -> Any:
    try:
        delete_rule(get_store(), rule_id, g.user.username)
    except FirewallRuleError as err:
        abort(404, description=str(err))
    _reloaded(f"firewall rule {rule_id} deleted")
    return redirect(url_for("firewall.index"))


# -- JSON API (registered on the api blueprint through its endpoint table) --------------------

FW_BODY = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "scope": {"type": "string", "enum": ["global", "host", "group"]},
        "scope_id": {"type": "integer", "nullable": True},
        "direction": {"type": "string", "enum": list(DIRECTIONS)},
        "address": {"type": "string", "description": "peer address or CIDR; empty: any"},
        "protocol": {"type": "string", "enum": list(PROTOCOLS)},
        "port_from": {"type": "integer", "nullable": True},
        "port_to": {"type": "integer", "nullable": True},
        "mac": {"type": "string"},
        "action": {"type": "string", "enum": list(ACTIONS)},
        "comment": {"type": "string"},
        "enabled": {"type": "boolean"},
        "position": {"type": "integer", "nullable": True},
    },
}


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise FirewallRuleError("body", "must be a JSON object")
    return data


def _api(fn: Any) -> Any:
    try:
        return fn()
    except FirewallRuleError as err:
        return jsonify(error=str(err), field=err.field), 404 if err.field == "id" else 400


@endpoint(
    "/firewall",
    "GET",
    "Firewall rules in order",
    result={"type": "array", "items": {"type": "object"}},
)
def api_firewall_list() -> Any:
    return jsonify([asdict(r) for r in list_rules(get_store())])


@endpoint(
    "/firewall", "POST", "Add a firewall rule, then reload the gateway", write=True, body=FW_BODY
)
def api_firewall_add() -> Any:
    def go() -> Any:
        rule = add_rule(get_store(), _json_body(), g.user.username)
        return jsonify(rule=asdict(rule), reload=reload_gateway(get_store(), g.user.username)), 201

    return _api(go)


@endpoint(
    "/firewall/{rule_id}",
    "PUT",
    "Change a firewall rule, then reload the gateway",
    write=True,
    body={**FW_BODY, "required": []},
)
def api_firewall_update(rule_id: int) -> Any:
    def go() -> Any:
        rule = update_rule(get_store(), rule_id, _json_body(), g.user.username)
        return jsonify(rule=asdict(rule), reload=reload_gateway(get_store(), g.user.username))

    return _api(go)


@endpoint(
    "/firewall/{rule_id}", "DELETE", "Delete a firewall rule, then reload the gateway", write=True
)
def api_firewall_delete(rule_id: int) -> Any:
    def go() -> Any:
        delete_rule(get_store(), rule_id, g.user.username)
        return jsonify(ok=True, reload=reload_gateway(get_store(), g.user.username))

    return _api(go)
