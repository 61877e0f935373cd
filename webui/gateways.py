"""Gateways: every gateway that reports to this policy store (a shared PostgreSQL store, or the
one local gateway), with its last heartbeat, the policy version it applied and its health
(gateway/policy/sync.py writes the rows). A gateway whose heartbeat is older than STALE_AFTER
heartbeats is shown as silent; its events stay filterable (events?gateway=NAME)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify, render_template

from gateway.policy.sync import STALE_AFTER, list_gateways
from webui.db import get_store
from webui.security import login_required

bp = Blueprint("gateways", __name__, url_prefix="/gateways")
HEARTBEAT_S = 2.0  # config database.heartbeat's default: the UI does not read the gateways' config


def gateways_view() -> dict[str, Any]:
    store = get_store()
    now = time.time()
    current = store.policy_version()
    rows = []
    for gw in list_gateways(store):
        age = max(0.0, now - gw.last_seen)
        sync = gw.status.get("sync") or {}
        forwarder = gw.status.get("forwarder") or {}
        rows.append({
            "name": gw.name,
            "last_seen": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(gw.last_seen)),
            "age": round(age, 1),
            "silent": age > STALE_AFTER * HEARTBEAT_S,
            "policy_version": gw.policy_version,
            "current": gw.policy_version == current,
            "workers": f"{gw.status.get('alive', '?')}/{gw.status.get('workers', '?')}",
            "backlog": forwarder.get("backlog"),
            "failing": bool(sync.get("failing") or forwarder.get("failing")),
        })  # fmt: skip
    return {"policy_version": current, "gateways": rows}


@bp.route("/")
@login_required
def index() -> Any:
    return render_template("gateways/index.html", view=gateways_view())


@bp.route("/data")
@login_required
def data() -> Any:
    return jsonify(gateways_view())
