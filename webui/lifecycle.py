"""Host lifecycle in the UI and the JSON API: host modes (normal/setup/learning/lockdown), setup
exceptions and update sources, learned tuples, application control, "release from setup",
"allow this" for lockdown events, and recommendation scans (started here, run as a subprocess,
progress polled, report with evidence, apply), scan schedules and the host's history.

One implementation for the HTML blueprint (webui/hosts.py) and the API (endpoints added to
webui/api.py's table on import, so /api/v1/openapi.json lists them). Guarantees: every change
goes through gateway/lifecycle/state.py or gateway/scan/jobs.py (one transaction, one audit row
naming the user) and is followed by `reload` of the running gateway over its control socket;
scans run as `vpatch scan --job ID` subprocesses of the UI, at most MAX_UI_SCANS at once and
one per host at a time (the store's unique index); their output goes to the run row, never to
the page unescaped. Config: SCAN_NETNS (lab only: run the scanner inside that namespace),
SCAN_PORTS (a `--ports` list), SCAN_TIMEOUT (seconds per socket operation).
"""

from __future__ import annotations

import ipaddress
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from flask import current_app, g, jsonify, request

from gateway.errors import ConfigError
from gateway.lifecycle.state import (
    ANY_SOURCE,
    Endpoint,
    HistoryEntry,
    HostMode,
    HostPolicy,
    LearnedTuple,
    LifecycleError,
    LifecycleStore,
    LockdownAction,
    host_services,
    parse_tuple,
)
from gateway.policy.appcontrol import parse_control
from gateway.policy.hosts import Host, Hosts
from gateway.scan.jobs import GLOBAL, ScanJobs, ScanRun
from webui.api import ARR, _body, endpoint
from webui.db import get_events, get_store, policy_db
from webui.inputs import InputError
from webui.services import reload_gateway

MAX_UI_SCANS = 4  # scan subprocesses the UI runs at once
MAX_ENDPOINT_LINES = 64  # exceptions / update sources one form may carry
HISTORY_SHOWN = 200
LOCKDOWN_SIDS = (9100001, 9100002)  # gateway/lifecycle/monitor.py SID_NEW_PEER / SID_NEW_PORT
_PROCS: dict[int, subprocess.Popen[bytes]] = {}
_PROCS_LOCK = threading.Lock()


def _life() -> LifecycleStore:
    return LifecycleStore(policy_db())


def _jobs() -> ScanJobs:
    return ScanJobs(policy_db())


def host_record(host_id: int) -> Host:
    host = Hosts(get_store()).get_host(host_id)
    if host is None:
        raise LookupError(f"host {host_id}: not found")
    if "/" in host.address:
        raise InputError(f"host {host.address}: a CIDR group of addresses has no host mode")
    return host


def policy_dict(p: HostPolicy) -> dict[str, Any]:
    return {
        "address": p.address, "mode": p.mode.value, "auto_apply": p.auto_apply,
        "lockdown_action": p.lockdown_action.value,
        "exceptions": [str(e) for e in p.exceptions],
        "update_sources": [str(e) for e in p.update_sources],
        "learned": [str(t) for t in p.learned], "assigned": list(p.assigned),
        "app_controls": list(p.app_controls),
    }  # fmt: skip


def history_dict(e: HistoryEntry) -> dict[str, Any]:
    return {"ts": e.ts, "action": e.action, "target": e.target, "reason": e.reason,
            "evidence": [list(x) for x in e.evidence]}  # fmt: skip


def host_view(host_id: int) -> dict[str, Any]:
    host = host_record(host_id)
    life = _life()
    jobs = _jobs()
    jobs.expire_stale()
    _reap()
    sched = jobs.schedule_for(host.address)
    return {
        "host": asdict(host),
        "policy": policy_dict(life.host(host.address)),
        "history": [history_dict(e) for e in reversed(life.history(host.address)[-HISTORY_SHOWN:])],
        "runs": [r.as_dict() for r in jobs.runs(host.address, 20)],
        "schedule": None if sched is None else asdict(sched),
        "services": host_services(get_store(), host.id),
    }


def _endpoints(value: Any, name: str, names: bool = False) -> tuple[Endpoint, ...]:
    """Endpoints from a textarea or a list; `names`: host names allowed (update sources)."""
    if isinstance(value, str):
        items = [x.strip() for x in value.replace(",", "\n").splitlines()]
    elif isinstance(value, list):
        items = [str(x).strip() for x in value]
    else:
        raise InputError(f"{name}: a list of CIDR[:proto[/port]]")
    items = [x for x in items if x]
    if len(items) > MAX_ENDPOINT_LINES:
        raise InputError(f"{name}: {len(items)} entries, at most {MAX_ENDPOINT_LINES}")
    return tuple(Endpoint.parse(x, name, names=names) for x in items)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "on", "true", "yes"):
        return True
    if str(value).lower() in ("0", "off", "false", "no", ""):
        return False
    raise InputError(f"{name} {value!r}: on or off")


def update_lifecycle(host_id: int, data: dict[str, Any], actor: str) -> dict[str, Any]:
    """Change mode / lockdown action / auto-apply / exceptions / update sources (only the keys
    present), with a history entry for a mode change; then reload the gateway."""
    host = host_record(host_id)
    life = _life()
    current = life.host(host.address)
    changes: dict[str, Any] = {}
    history: list[HistoryEntry] = []
    try:
        if "mode" in data:
            mode = HostMode(str(data["mode"]))
            changes["mode"] = mode
            if mode is HostMode.LEARNING and current.mode is not HostMode.LEARNING:
                changes["learned"] = ()  # a learning period starts empty
            if mode is not current.mode:
                history.append(
                    HistoryEntry(
                        time.time(),
                        host.address,
                        "mode",
                        mode.value,
                        f"{actor}: {current.mode.value} -> {mode.value}",
                    )
                )
        if "lockdown_action" in data:
            changes["lockdown_action"] = LockdownAction(str(data["lockdown_action"]))
    except ValueError as err:
        raise InputError(f"{err} (host {host.address})") from err
    if "auto_apply" in data:
        changes["auto_apply"] = _bool(data["auto_apply"], "auto_apply")
    if "exceptions" in data:
        changes["exceptions"] = _endpoints(data["exceptions"], "exceptions")
    if "update_sources" in data:
        changes["update_sources"] = _endpoints(data["update_sources"], "update_sources", True)
    new = life.update_host(host.address, history=history, actor=actor, **changes)
    return {"policy": policy_dict(new), "reload": reload_gateway(get_store(), actor)}


def release(host_id: int, actor: str) -> dict[str, Any]:
    host = host_record(host_id)
    life = _life()
    if life.host(host.address).mode is not HostMode.SETUP:
        raise InputError(f"host {host.address} is not in setup mode: nothing to release")
    new = life.update_host(
        host.address, actor=actor, mode=HostMode.NORMAL,
        history=[HistoryEntry(time.time(), host.address, "release", "normal",
                              f"{actor} released setup protection")],
    )  # fmt: skip
    return {"policy": policy_dict(new), "reload": reload_gateway(get_store(), actor)}


def app_control(host_id: int, data: dict[str, Any], actor: str) -> dict[str, Any]:
    host = host_record(host_id)
    life = _life()
    controls = list(life.host(host.address).app_controls)
    add, remove = str(data.get("add") or "").strip(), str(data.get("remove") or "").strip()
    if add:
        try:
            add = parse_control(add, "app-control").text  # the canonical text
        except ConfigError as err:
            raise InputError(str(err)) from err
        if add not in controls:
            controls.append(add)
    if remove:
        if remove not in controls:
            raise InputError(f"app-control {remove!r}: not set for host {host.address}")
        controls.remove(remove)
    if not add and not remove:
        raise InputError("app-control: give add or remove")
    new = life.update_host(host.address, actor=actor, app_controls=tuple(controls))
    return {"policy": policy_dict(new), "reload": reload_gateway(get_store(), actor)}


def allow_tuple(host: str, t: LearnedTuple, actor: str, why: str) -> dict[str, Any]:
    """Add `t` to the host's learned set (history `allow`, audited), then reload. A network
    or "any" initiator must be on the far side of the host: the host is the responder."""
    if host != t.dst and (t.src_is_net or host != t.src):
        raise InputError(
            f"{t}: host {host} must be the responder"
            + ("" if t.src_is_net else " or the initiator")
        )
    life = _life()
    current = life.host(host)
    learned = tuple(sorted(set(current.learned) | {t}))
    new = life.update_host(
        host, actor=actor, learned=learned,
        history=[HistoryEntry(time.time(), host, "allow", str(t), why)],
    )  # fmt: skip
    return {"host": host, "allowed": str(t), "policy": policy_dict(new),
            "reload": reload_gateway(get_store(), actor)}  # fmt: skip


def _tuple_arg(data: dict[str, Any]) -> LearnedTuple:
    text = data.get("tuple")
    if not isinstance(text, str) or not text.strip():
        raise InputError("tuple: 'SRC -> DST:PORT/PROTO' (SRC: an address, a CIDR or any)")
    return parse_tuple(text, "tuple")


def allow_entry(host_id: int, data: dict[str, Any], actor: str) -> dict[str, Any]:
    """The host page's "add entry" and POST /hosts/{id}/allow: {"tuple": "SRC -> DST:P/PROTO"}."""
    host = host_record(host_id)
    t = _tuple_arg(data)
    return allow_tuple(host.address, t, actor, f"{actor}: allowed")


def disallow_entry(host_id: int, data: dict[str, Any], actor: str) -> dict[str, Any]:
    """Delete one learned or allowed tuple (history `disallow`, audited), then reload: new
    connections it let in are refused from then on."""
    host = host_record(host_id)
    t = _tuple_arg(data)
    new = _life().remove_learned(
        host.address, t, actor=actor,
        history=[HistoryEntry(time.time(), host.address, "disallow", str(t), f"{actor}: deleted")],
    )  # fmt: skip
    return {"host": host.address, "disallowed": str(t), "policy": policy_dict(new),
            "reload": reload_gateway(get_store(), actor)}  # fmt: skip


def lockdown_tuple(event_id: int) -> tuple[str, LearnedTuple] | None:
    """(locked-down host, tuple) of a lockdown event, None for any other event."""
    conn = get_events()
    if conn is None:
        return None
    row = conn.execute(
        "SELECT signature_id, signature FROM events WHERE id = ?", (event_id,)
    ).fetchone()
    if row is None or int(row[0]) not in LOCKDOWN_SIDS:
        return None
    text = str(row[1])
    for kind in ("lockdown: new peer ", "lockdown: new port "):
        if text.startswith(kind) and text.endswith(" not learned"):
            t = parse_tuple(text[len(kind) : -len(" not learned")], f"event {event_id}")
            break
    else:
        return None
    life = _life()
    for addr in (t.dst, t.src):
        if life.host(addr).mode in (HostMode.LOCKDOWN, HostMode.LEARNING):
            return addr, t
    return t.dst, t


def widen_source(t: LearnedTuple, source: str) -> LearnedTuple:
    """The event's tuple with its initiator kept ("exact" or empty), widened to a network
    that holds it (a CIDR) or to every client ("any")."""
    source = source.strip().lower()
    if source in ("", "exact"):
        return t
    if source == ANY_SOURCE:
        return replace(t, src=ANY_SOURCE)
    wide = parse_tuple(f"{source} -> {t.dst}:{t.port}/{t.proto}", "source")
    try:
        holds = ipaddress.ip_address(t.src) in ipaddress.ip_network(wide.src)
    except ValueError:
        holds = False
    if not holds:
        raise InputError(f"source {source!r}: does not hold the event's initiator {t.src}")
    return wide


def source_choices(t: LearnedTuple) -> list[tuple[str, str]]:
    """(value, label) of the "allow this" choices for an event's tuple: this client, its
    /24 (IPv4) or /64 (IPv6) network, any client."""
    addr = ipaddress.ip_address(t.src)
    net = ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 64}", strict=False)
    return [("exact", f"this client ({t.src})"), (str(net), f"its network {net}"),
            (ANY_SOURCE, "any client")]  # fmt: skip


def allow_event(event_id: int, actor: str, source: str = "") -> dict[str, Any]:
    found = lockdown_tuple(event_id)
    if found is None:
        raise LookupError(f"event {event_id}: not a lockdown event")
    host, t = found
    t = widen_source(t, source)
    return allow_tuple(host, t, actor, f"{actor}: allow this (event {event_id})")


# -- scans ------------------------------------------------------------------------------------


def _reap() -> None:
    with _PROCS_LOCK:
        for run_id, proc in list(_PROCS.items()):
            if proc.poll() is not None:
                del _PROCS[run_id]


def scan_command(run: ScanRun) -> list[str]:
    cfg = current_app.config
    argv = [sys.executable, "-m", "gateway.cli", "scan", run.host, "--job", str(run.id),
            "--state", str(cfg["POLICY_DB"]), "--socket", str(cfg["CONTROL_SOCKET"]),
            "--timeout", str(float(cfg.get("SCAN_TIMEOUT", 2.0)))]  # fmt: skip
    for path in cfg.get("RULE_PATHS") or ():
        argv += ["--rules", str(path)]
    if cfg.get("SCAN_PORTS"):
        argv += ["--ports", str(cfg["SCAN_PORTS"])]
    if cfg.get("SCAN_NETNS"):
        argv = ["ip", "netns", "exec", str(cfg["SCAN_NETNS"]), *argv]
    return argv


def start_scan(host_id: int, trigger: str, actor: str) -> ScanRun:
    """Queue a run (ScanBusy if the host has one) and start its subprocess."""
    host = host_record(host_id)
    _reap()
    with _PROCS_LOCK:
        if len(_PROCS) >= MAX_UI_SCANS:
            raise InputError(f"{len(_PROCS)} scans are running (at most {MAX_UI_SCANS}); wait")
        jobs = _jobs()
        run = jobs.queue(host.address, trigger, actor)
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                scan_command(run), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except OSError as err:
            jobs.fail(run.id, f"cannot start the scanner: {err}")
            raise InputError(f"scan of {host.address}: cannot start the scanner: {err}") from err
        _PROCS[run.id] = proc
    return run


def scan_run(run_id: int, host_id: int | None = None) -> ScanRun:
    _reap()
    jobs = _jobs()
    jobs.expire_stale()
    run = jobs.get(run_id)
    if run is None or (host_id is not None and run.host != host_record(host_id).address):
        raise LookupError(f"scan run {run_id}: not found")
    return run


def apply_scan(run_id: int, actor: str, host_id: int | None = None) -> dict[str, Any]:
    scan_run(run_id, host_id)
    run, changes = _jobs().apply(run_id, actor)
    return {"run": run.progress(), "changes": changes,
            "reload": reload_gateway(get_store(), actor)}  # fmt: skip


def cancel_scan(run_id: int, actor: str, host_id: int | None = None) -> dict[str, Any]:
    """Cancel a queued run, or ask a running one to stop between probes (its report then
    says cancelled, with the findings of the probes done so far)."""
    scan_run(run_id, host_id)
    return _jobs().cancel(run_id, actor).progress()


def set_schedule(host_id: int | None, data: dict[str, Any], actor: str) -> dict[str, Any]:
    """interval_minutes > 0: scan every that many minutes; 0 or empty: no own schedule
    (the host follows the global one); enabled false: never scheduled (overrides global)."""
    target = GLOBAL if host_id is None else host_record(host_id).address
    raw = data.get("interval_minutes", "")
    try:
        minutes = float(raw) if str(raw).strip() else 0.0
    except ValueError as err:
        raise InputError(f"interval_minutes {raw!r}: a number of minutes") from err
    if not math.isfinite(minutes) or minutes < 0:
        raise InputError(f"interval_minutes {raw!r}: a number of minutes >= 0")
    enabled = _bool(data.get("enabled", True), "enabled")
    if minutes == 0 and enabled:
        sched = _jobs().set_schedule(target, None, actor)
    else:
        sched = _jobs().set_schedule(target, minutes * 60 if minutes else 86400.0, actor, enabled)
    return {"schedule": None if sched is None else asdict(sched)}


# -- API (added to webui/api.py's table: listed in the OpenAPI document) ----------------------

LIFECYCLE_BODY = {
    "type": "object",
    "properties": {
        "mode": {"type": "string", "enum": [m.value for m in HostMode]},
        "lockdown_action": {"type": "string", "enum": ["drop", "alert"]},
        "auto_apply": {"type": "boolean"},
        "exceptions": {"type": "array", "items": {"type": "string"}},
        "update_sources": {"type": "array", "items": {"type": "string"}},
    },
}
APP_BODY = {
    "type": "object",
    "properties": {"add": {"type": "string"}, "remove": {"type": "string"}},
}
SCHEDULE_BODY = {
    "type": "object",
    "properties": {
        "interval_minutes": {"type": "number", "minimum": 0},
        "enabled": {"type": "boolean"},
    },
}


def _api(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except LookupError as err:
        return jsonify(error=str(err)), 404
    except LifecycleError as err:
        return jsonify(error=str(err)), 400


@endpoint("/hosts/{host_id}/lifecycle", "GET", "A host's mode, exceptions, update sources, "
          "learned tuples, app control, scan runs, schedule and history")  # fmt: skip
def api_host_lifecycle(host_id: int) -> Any:
    return _api(lambda: jsonify(host_view(host_id)))


@endpoint("/hosts/{host_id}/lifecycle", "PUT", "Change a host's mode, lockdown action, "
          "auto-apply, setup exceptions or update sources; reload", write=True,
          body=LIFECYCLE_BODY)  # fmt: skip
def api_update_lifecycle(host_id: int) -> Any:
    return _api(lambda: jsonify(update_lifecycle(host_id, _body(), g.user.username)))


@endpoint("/hosts/{host_id}/release", "POST", "Release a host from setup protection; reload",
          write=True)  # fmt: skip
def api_release(host_id: int) -> Any:
    return _api(lambda: (jsonify(release(host_id, g.user.username)), 201))


@endpoint("/hosts/{host_id}/app-control", "POST", "Add or remove an application-control rule; "
          "reload", write=True, body=APP_BODY)  # fmt: skip
def api_app_control(host_id: int) -> Any:
    return _api(lambda: (jsonify(app_control(host_id, _body(), g.user.username)), 201))


@endpoint("/hosts/{host_id}/scans", "GET", "A host's scan runs, newest first", result=ARR)
def api_scans(host_id: int) -> Any:
    return _api(lambda: jsonify(
        [r.as_dict() for r in _jobs().runs(host_record(host_id).address, 50)]))  # fmt: skip


@endpoint("/hosts/{host_id}/scans", "POST", "Start a recommendation scan of the host (one per "
          "host at a time)", write=True)  # fmt: skip
def api_start_scan(host_id: int) -> Any:
    return _api(lambda: (jsonify(start_scan(host_id, "api", g.user.username).as_dict()), 201))


@endpoint("/scans/{run_id}", "GET", "A scan run: progress, then the report with evidence")
def api_scan(run_id: int) -> Any:
    return _api(lambda: jsonify(scan_run(run_id).as_dict()))


@endpoint("/scans/{run_id}/apply", "POST", "Apply a finished scan's recommendation; reload",
          write=True)  # fmt: skip
def api_apply_scan(run_id: int) -> Any:
    return _api(lambda: (jsonify(apply_scan(run_id, g.user.username)), 201))


@endpoint("/scans/{run_id}/cancel", "POST", "Cancel a queued or running scan: it stops after "
          "the probe under way, its report keeps what was found so far", write=True)  # fmt: skip
def api_cancel_scan(run_id: int) -> Any:
    return _api(lambda: (jsonify(cancel_scan(run_id, g.user.username)), 201))


@endpoint("/hosts/{host_id}/schedule", "PUT", "Set the host's scan schedule (0: follow the "
          "global one)", write=True, body=SCHEDULE_BODY)  # fmt: skip
def api_host_schedule(host_id: int) -> Any:
    return _api(lambda: jsonify(set_schedule(host_id, _body(), g.user.username)))


@endpoint("/schedule", "PUT", "Set the global scan schedule (every host)", write=True,
          body=SCHEDULE_BODY)  # fmt: skip
def api_global_schedule() -> Any:
    return _api(lambda: jsonify(set_schedule(None, _body(), g.user.username)))


@endpoint("/events/{event_id}/allow", "POST", "Allow this: add a lockdown event's tuple to the "
          "host's learned set (source: exact, a CIDR holding the client, or any); reload",
          write=True, params=("source",))  # fmt: skip
def api_allow_event(event_id: int) -> Any:
    source = request.args.get("source", "")
    return _api(lambda: (jsonify(allow_event(event_id, g.user.username, source)), 201))


TUPLE_BODY = {
    "type": "object",
    "required": ["tuple"],
    "properties": {"tuple": {"type": "string"}},
}


@endpoint("/hosts/{host_id}/allow", "POST", "Add a lockdown entry 'SRC -> DST:PORT/PROTO' (SRC: "
          "an address, a CIDR or any) to the host's learned set; reload", write=True,
          body=TUPLE_BODY)  # fmt: skip
def api_allow_entry(host_id: int) -> Any:
    return _api(lambda: (jsonify(allow_entry(host_id, _body(), g.user.username)), 201))


@endpoint("/hosts/{host_id}/disallow", "POST", "Delete one learned or allowed entry of the host; "
          "reload", write=True, body=TUPLE_BODY)  # fmt: skip
def api_disallow_entry(host_id: int) -> Any:
    return _api(lambda: (jsonify(disallow_entry(host_id, _body(), g.user.username)), 201))
