"""Dashboard: events over time (SVG bars drawn by static/dashboard.js), top rules / CVEs /
sources / hosts, and gateway health from the control socket, refreshed by fetch()."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from webui.inputs import int_arg
from webui.security import login_required
from webui.services import DEFAULT_HOURS, MAX_HOURS, gateway_status, shared_dashboard_data

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


@bp.route("/")
@login_required
def index() -> Any:
    return render_template(
        "dashboard/index.html", data=shared_dashboard_data(), health=gateway_status()
    )


@bp.route("/data")
@login_required
def data() -> Any:
    hours = int_arg("hours", DEFAULT_HOURS, 1, MAX_HOURS)
    return jsonify(events=shared_dashboard_data(hours), health=gateway_status())
