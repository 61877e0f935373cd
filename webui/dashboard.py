"""Dashboard: gateway health as cards (webui/health_cards.py), events over time and the live
packet rate as charts (uPlot, vendored in static/vendor/uplot/, drawn by static/dashboard.js),
top rules / CVEs / sources / hosts; refreshed by fetch() from /dashboard/data."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from webui.health_cards import health_cards
from webui.inputs import int_arg
from webui.security import login_required
from webui.services import DEFAULT_HOURS, MAX_HOURS, gateway_status, shared_dashboard_data

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


@bp.route("/")
@login_required
def index() -> Any:
    health = gateway_status()
    return render_template(
        "dashboard/index.html", data=shared_dashboard_data(), health=health,
        cards=health_cards(health),
    )  # fmt: skip


@bp.route("/data")
@login_required
def data() -> Any:
    hours = int_arg("hours", DEFAULT_HOURS, 1, MAX_HOURS)
    health = gateway_status()
    return jsonify(events=shared_dashboard_data(hours), health=health,
                   cards=[c.as_json() for c in health_cards(health)])  # fmt: skip
