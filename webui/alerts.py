"""Alert channels page: email (SMTP, optional STARTTLS), webhook (JSON POST, optional HMAC
signature) and syslog (RFC 5424 over UDP/TCP/local socket) channels with a rate limit each and
a "send test" button. Channels live in the policy store (gateway/alerts/channels.py, audited,
secrets never shown back); the running gateway's dispatcher picks changes up within seconds.
JSON API: /api/v1/alerts (webui/api.py's table)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for

from gateway.alerts.channels import (
    KINDS,
    SYSLOG_FACILITIES,
    SYSLOG_TRANSPORTS,
    AlertChannelError,
    AlertSendError,
    Channel,
    delete_channel,
    get_channel,
    list_channels,
    save_channel,
    send,
    test_message,
)
from webui.api import endpoint
from webui.db import get_store
from webui.security import admin_required, login_required

bp = Blueprint("alerts", __name__, url_prefix="/alerts")

FORM_FIELDS = ("name", "kind", "min_severity", "rate_per_min", "burst", "host", "port",
               "username", "password", "sender", "to", "ca_file", "url", "secret", "transport",
               "facility", "path")  # fmt: skip


def public(ch: Channel) -> dict[str, Any]:
    return {**asdict(ch), "settings": ch.public_settings()}


def send_test(channel_id: int) -> tuple[bool, str]:
    """Send a test message now through the channel (synchronously, bounded by SEND_TIMEOUT)."""
    store = get_store()
    ch = get_channel(store, channel_id)
    if ch is None:
        raise AlertChannelError("id", f"alert channel {channel_id} does not exist")
    try:
        send(ch, test_message(ch, g.user.username))
    except AlertSendError as err:
        store.record(
            g.user.username,
            "alerts.test",
            f"alert channel {ch.name}",
            {"ok": False, "error": str(err)},
        )
        return False, str(err)
    store.record(g.user.username, "alerts.test", f"alert channel {ch.name}", {"ok": True})
    return True, f"test message sent through {ch.name}"


@bp.route("/")
@login_required
def index() -> Any:
    return render_template(
        "alerts/index.html", channels=list_channels(get_store()), kinds=KINDS,
        transports=SYSLOG_TRANSPORTS, facilities=list(SYSLOG_FACILITIES),
    )  # fmt: skip


def _form() -> dict[str, Any]:
    data: dict[str, Any] = {k: request.form.get(k, "")[:2000] for k in FORM_FIELDS}
    data["starttls"] = request.form.get("starttls") == "on"
    data["enabled"] = request.form.get("enabled", "on") == "on"
    return data


@bp.route("/", methods=["POST"])
@admin_required
def add() -> Any:
    try:
        ch = save_channel(get_store(), _form(), g.user.username)
    except AlertChannelError as err:
        abort(400, description=f"alert channel not saved: {err}")
    flash(f"alert channel {ch.name} saved")
    return redirect(url_for("alerts.index"))


@bp.route("/<int:channel_id>/toggle", methods=["POST"])
@admin_required
def toggle(channel_id: int) -> Any:
    store = get_store()
    ch = get_channel(store, channel_id)
    if ch is None:
        abort(404, description=f"alert channel {channel_id} does not exist")
    save_channel(store, {**asdict(ch), "enabled": not ch.enabled}, g.user.username, channel_id)
    flash(f"alert channel {ch.name} {'disabled' if ch.enabled else 'enabled'}")
    return redirect(url_for("alerts.index"))


@bp.route("/<int:channel_id>/test", methods=["POST"])
@admin_required
def test(channel_id: int) -> Any:
    try:
        ok, text = send_test(channel_id)
    except AlertChannelError as err:
        abort(404, description=str(err))
    flash(("OK: " if ok else "FAILED: ") + text)
    return redirect(url_for("alerts.index"))


@bp.route("/<int:channel_id>/delete", methods=["POST"])
@admin_required
def delete(channel_id: int) -> Any:
    try:
        delete_channel(get_store(), channel_id, g.user.username)
    except AlertChannelError as err:
        abort(404, description=str(err))
    flash(f"alert channel {channel_id} deleted")
    return redirect(url_for("alerts.index"))


# -- JSON API ---------------------------------------------------------------------------------

CHANNEL_BODY = {
    "type": "object",
    "required": ["name", "kind", "settings"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": list(KINDS)},
        "enabled": {"type": "boolean"},
        "min_severity": {"type": "integer", "minimum": 1, "maximum": 3},
        "rate_per_min": {"type": "number"},
        "burst": {"type": "integer"},
        "settings": {
            "type": "object",
            "description": (
                "email: host, port, starttls, username, password, sender, to, ca_file; "
                "webhook: url, secret; syslog: transport (udp|tcp|unix), host, port, path, facility"
            ),
        },
    },
}


def _api(fn: Any) -> Any:
    try:
        return fn()
    except AlertChannelError as err:
        return jsonify(error=str(err), field=err.field), 404 if err.field == "id" else 400


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AlertChannelError("body", "must be a JSON object")
    return data


@endpoint(
    "/alerts",
    "GET",
    "Alert channels (secrets masked)",
    result={"type": "array", "items": {"type": "object"}},
)
def api_alerts_list() -> Any:
    return jsonify([public(c) for c in list_channels(get_store())])


@endpoint("/alerts", "POST", "Create an alert channel", write=True, body=CHANNEL_BODY)
def api_alerts_add() -> Any:
    return _api(
        lambda: (jsonify(public(save_channel(get_store(), _json_body(), g.user.username))), 201)
    )


@endpoint("/alerts/{channel_id}", "PUT", "Replace an alert channel's configuration", write=True,
          body=CHANNEL_BODY)  # fmt: skip
def api_alerts_update(channel_id: int) -> Any:
    return _api(
        lambda: jsonify(
            public(save_channel(get_store(), _json_body(), g.user.username, channel_id))
        )
    )


@endpoint("/alerts/{channel_id}", "DELETE", "Delete an alert channel", write=True)
def api_alerts_delete(channel_id: int) -> Any:
    def go() -> Any:
        delete_channel(get_store(), channel_id, g.user.username)
        return jsonify(ok=True)

    return _api(go)


@endpoint(
    "/alerts/{channel_id}/test", "POST", "Send a test message through a channel now", write=True
)
def api_alerts_test(channel_id: int) -> Any:
    def go() -> Any:
        ok, text = send_test(channel_id)
        return jsonify(ok=ok, detail=text), 201

    return _api(go)
