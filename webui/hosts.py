"""Hosts and groups: protected hosts with their services (from the last scan, if any), the
rules assigned to them and their modes; groups share a policy. A host's page (`/hosts/<id>`)
shows and changes its lifecycle (webui/lifecycle.py): mode, setup exceptions and update
sources, learned tuples, application control, "release from setup", recommendation scans
(start, progress polled by static/hosts.js, report with evidence, apply), the scan schedule
and the history. Every change is admin-only, CSRF-checked, audited, then reloads the gateway
(adding or deleting a host refills the gateway's protected-host sets: queued at once, no
restart). The list says for every host whether the running gateway inspects it now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for

from gateway.lifecycle.state import LifecycleError, host_services
from gateway.policy.assignments import Assignment, Assignments
from gateway.policy.hosts import Host, Hosts
from gateway.policy.store import StoreError
from gateway.scan.jobs import GLOBAL
from webui import lifecycle
from webui.db import get_store
from webui.inputs import InputError, parse_int
from webui.security import admin_required, login_required
from webui.services import gateway_status, inspected_now, reload_gateway

bp = Blueprint("hosts", __name__, url_prefix="/hosts")
MODES = ("normal", "setup", "learning", "lockdown")


@bp.route("/")
@login_required
def index() -> Any:
    store = get_store()
    hosts = Hosts(store).list_hosts()
    assignments = Assignments(store).list_assignments()
    rows = []
    for h in hosts:
        rows.append({
            "host": h,
            "services": host_services(store, h.id),
            "assigned": _assigned_to(h, assignments),
        })  # fmt: skip
    groups = {gr.id: gr for gr in Hosts(store).list_groups()}
    sched = {s.host: s for s in lifecycle._jobs().schedules()}.get(GLOBAL)
    status = gateway_status()
    inspected = inspected_now([h.address for h in hosts], status)
    return render_template(
        "hosts/index.html", rows=rows, groups=groups, global_schedule=sched,
        inspected=inspected, gateway=status,
    )  # fmt: skip


def _assigned_to(host: Host, assignments: list[Assignment]) -> list[Assignment]:
    """The assignments that name the host itself or its group."""
    return [
        a
        for a in assignments
        if (a.scope == "host" and a.scope_id == host.id)
        or (a.scope == "group" and host.group_id is not None and a.scope_id == host.group_id)
    ]


def _int_or_none(value: str | None, name: str) -> int | None:
    return parse_int(value, name, 0) if value and value.strip() else None


@bp.route("/", methods=["POST"])
@admin_required
def save() -> Any:
    try:
        Hosts(get_store()).save_host(
            request.form.get("address", ""), g.user.username, request.form.get("name", ""),
            _int_or_none(request.form.get("group_id"), "group_id"),
            request.form.get("mode", "normal"),
        )  # fmt: skip
    except StoreError as err:
        abort(400, description=str(err))
    flash(f"host saved; {_reload_note({'reload': reload_gateway(get_store(), g.user.username)})}")
    return redirect(url_for("hosts.index"))


@bp.route("/<int:host_id>/delete", methods=["POST"])
@admin_required
def delete(host_id: int) -> Any:
    try:
        Hosts(get_store()).delete_host(host_id, g.user.username)
    except StoreError as err:
        abort(404, description=str(err))
    flash(f"host deleted; {_reload_note({'reload': reload_gateway(get_store(), g.user.username)})}")
    return redirect(url_for("hosts.index"))


@bp.route("/groups", methods=["POST"])
@admin_required
def add_group() -> Any:
    try:
        Hosts(get_store()).create_group(
            request.form.get("name", ""), request.form.get("description", ""), g.user.username
        )
    except StoreError as err:
        abort(400, description=str(err))
    return redirect(url_for("hosts.index"))


@bp.route("/groups/<int:group_id>/delete", methods=["POST"])
@admin_required
def delete_group(group_id: int) -> Any:
    try:
        Hosts(get_store()).delete_group(group_id, g.user.username)
    except StoreError as err:
        abort(404, description=str(err))
    return redirect(url_for("hosts.index"))


# -- lifecycle (webui/lifecycle.py) -----------------------------------------------------------


def _do(fn: Any, *args: Any) -> Any:
    """Run a lifecycle change; 404/400 with the message naming the bad value."""
    try:
        return fn(*args)
    except LookupError as err:
        abort(404, description=str(err))
    except (InputError, LifecycleError, StoreError) as err:
        abort(400, description=str(err))


@bp.route("/<int:host_id>")
@login_required
def detail(host_id: int) -> Any:
    view = _do(lifecycle.host_view, host_id)
    return render_template("hosts/detail.html", v=view, modes=MODES)


def _back(host_id: int, message: str) -> Any:
    flash(message)
    return redirect(url_for("hosts.detail", host_id=host_id))


def _reload_note(result: dict[str, Any]) -> str:
    rl = result.get("reload") or {}
    return "gateway reloaded" if rl.get("ok") else f"gateway not reloaded: {rl.get('error', '?')}"


@bp.route("/<int:host_id>/lifecycle", methods=["POST"])
@admin_required
def update_lifecycle(host_id: int) -> Any:
    form = request.form.to_dict()
    form.pop("csrf_token", None)
    form["auto_apply"] = "on" if request.form.get("auto_apply") else "off"
    result = _do(lifecycle.update_lifecycle, host_id, form, g.user.username)
    return _back(host_id, f"mode {result['policy']['mode']} saved; {_reload_note(result)}")


@bp.route("/<int:host_id>/release", methods=["POST"])
@admin_required
def release(host_id: int) -> Any:
    result = _do(lifecycle.release, host_id, g.user.username)
    return _back(host_id, f"released from setup protection; {_reload_note(result)}")


@bp.route("/<int:host_id>/app-control", methods=["POST"])
@admin_required
def app_control(host_id: int) -> Any:
    data = {k: request.form.get(k, "") for k in ("add", "remove")}
    result = _do(lifecycle.app_control, host_id, data, g.user.username)
    return _back(host_id, f"application control saved; {_reload_note(result)}")


@bp.route("/<int:host_id>/allow", methods=["POST"])
@admin_required
def allow_entry(host_id: int) -> Any:
    result = _do(lifecycle.allow_entry, host_id, {"tuple": request.form.get("tuple", "")},
                 g.user.username)  # fmt: skip
    return _back(host_id, f"allowed {result['allowed']}; {_reload_note(result)}")


@bp.route("/<int:host_id>/disallow", methods=["POST"])
@admin_required
def disallow_entry(host_id: int) -> Any:
    result = _do(lifecycle.disallow_entry, host_id, {"tuple": request.form.get("tuple", "")},
                 g.user.username)  # fmt: skip
    return _back(host_id, f"deleted {result['disallowed']}; {_reload_note(result)}")


@bp.route("/<int:host_id>/scan", methods=["POST"])
@admin_required
def start_scan(host_id: int) -> Any:
    run = _do(lifecycle.start_scan, host_id, "ui", g.user.username)
    if request.accept_mimetypes.best == "application/json":
        return jsonify(run.progress()), 201
    return _back(host_id, f"scan run {run.id} started")


@bp.route("/<int:host_id>/scans/<int:run_id>")
@login_required
def scan_report(host_id: int, run_id: int) -> Any:
    run = _do(lifecycle.scan_run, run_id, host_id)
    return render_template("hosts/scan.html", run=run, host_id=host_id)


@bp.route("/<int:host_id>/scans/<int:run_id>/progress")
@login_required
def scan_progress(host_id: int, run_id: int) -> Any:
    return jsonify(_do(lifecycle.scan_run, run_id, host_id).progress())


@bp.route("/<int:host_id>/scans/<int:run_id>/apply", methods=["POST"])
@admin_required
def apply_scan(host_id: int, run_id: int) -> Any:
    result = _do(lifecycle.apply_scan, run_id, g.user.username, host_id)
    return _back(host_id, f"scan run {run_id} applied: {result['changes']} change(s); "
                          f"{_reload_note(result)}")  # fmt: skip


@bp.route("/<int:host_id>/scans/<int:run_id>/cancel", methods=["POST"])
@admin_required
def cancel_scan(host_id: int, run_id: int) -> Any:
    progress = _do(lifecycle.cancel_scan, run_id, g.user.username, host_id)
    if request.accept_mimetypes.best == "application/json":
        return jsonify(progress), 201
    return _back(host_id, f"scan run {run_id}: cancel asked ({progress['status']})")


@bp.route("/<int:host_id>/schedule", methods=["POST"])
@admin_required
def schedule(host_id: int) -> Any:
    data = {"interval_minutes": request.form.get("interval_minutes", ""),
            "enabled": "off" if request.form.get("never") else "on"}  # fmt: skip
    _do(lifecycle.set_schedule, host_id, data, g.user.username)
    return _back(host_id, "scan schedule saved")


@bp.route("/schedule", methods=["POST"])
@admin_required
def global_schedule() -> Any:
    data = {"interval_minutes": request.form.get("interval_minutes", "")}
    _do(lifecycle.set_schedule, None, data, g.user.username)
    flash("global scan schedule saved")
    return redirect(url_for("hosts.index"))


@bp.route("/allow-event/<int:event_id>", methods=["POST"])
@admin_required
def allow_event(event_id: int) -> Any:
    source = request.form.get("source", "")
    result = _do(lifecycle.allow_event, event_id, g.user.username, source)
    flash(f"allowed {result['allowed']} for {result['host']}; {_reload_note(result)}")
    host = Hosts(get_store()).host_by_address(result["host"])
    if host is None:
        return redirect(url_for("events.detail", event_id=event_id))
    return redirect(url_for("hosts.detail", host_id=host.id))
