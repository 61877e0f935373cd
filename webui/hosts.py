"""Hosts and groups: protected hosts with their services (from the last scan, if any), the
rules assigned to them and their modes; groups share a policy."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, g, redirect, render_template, request, url_for

from gateway.policy.store import StoreError
from webui.db import get_store
from webui.security import admin_required, login_required

bp = Blueprint("hosts", __name__, url_prefix="/hosts")


@bp.route("/")
@login_required
def index() -> Any:
    store = get_store()
    hosts = store.list_hosts()
    assignments = store.list_assignments()
    rows = []
    for h in hosts:
        rows.append({
            "host": h,
            "services": store.host_services(h.id),
            "assigned": [a for a in assignments if (a.scope == "host" and a.scope_id == h.id)
                         or (a.scope == "group" and h.group_id is not None and a.scope_id == h.group_id)],
        })  # fmt: skip
    groups = {gr.id: gr for gr in store.list_groups()}
    return render_template("hosts/index.html", rows=rows, groups=groups)


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@bp.route("/", methods=["POST"])
@admin_required
def save() -> Any:
    try:
        get_store().save_host(
            request.form.get("address", ""), g.user.username, request.form.get("name", ""),
            _int_or_none(request.form.get("group_id")), request.form.get("mode", "normal"),
        )  # fmt: skip
    except StoreError as err:
        abort(400, description=str(err))
    return redirect(url_for("hosts.index"))


@bp.route("/<int:host_id>/delete", methods=["POST"])
@admin_required
def delete(host_id: int) -> Any:
    try:
        get_store().delete_host(host_id, g.user.username)
    except StoreError as err:
        abort(404, description=str(err))
    return redirect(url_for("hosts.index"))


@bp.route("/groups", methods=["POST"])
@admin_required
def add_group() -> Any:
    try:
        get_store().create_group(
            request.form.get("name", ""), request.form.get("description", ""), g.user.username
        )
    except StoreError as err:
        abort(400, description=str(err))
    return redirect(url_for("hosts.index"))


@bp.route("/groups/<int:group_id>/delete", methods=["POST"])
@admin_required
def delete_group(group_id: int) -> Any:
    try:
        get_store().delete_group(group_id, g.user.username)
    except StoreError as err:
        abort(404, description=str(err))
    return redirect(url_for("hosts.index"))
