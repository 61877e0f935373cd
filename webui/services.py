"""Operations shared by the HTML blueprints and the JSON API (one implementation of each).

Event queries only read the event store (schema: docs/architecture.md, `events` table) with
bound parameters and a bounded page size (MAX_PAGE_SIZE). Changes to the policy go through the
store (audited) and are followed by the gateway's `reload` over its control socket.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app

from gateway.control.server import ControlError, control_request
from gateway.database import Dialect
from gateway.events.rollup import minute_counts, rollups_exist, top_keys
from gateway.firewall.dropevents import FW_SID_BASE, SID_SETUP_IN, SID_SETUP_OUT
from gateway.lifecycle.monitor import SID_NEW_PEER, SID_NEW_PORT
from gateway.match.rules import Rule
from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.vocabulary import Mode
from webui.db import forget_rules, get_events, get_rules, get_store
from webui.inputs import MAX_SQL_INT, InputError, parse_int

MAX_PAGE_SIZE = 200
MAX_PAGE = MAX_SQL_INT // MAX_PAGE_SIZE  # the OFFSET stays an SQLite INTEGER
DEFAULT_PAGE_SIZE = 50
MAX_EXPORT_ROWS = 10_000
TOP_N = 10
MAX_CVE_SETS = 10_000  # distinct `cves` texts read per dashboard (one per rule's CVE list)
CHART_BUCKETS = 24
DEFAULT_HOURS = 24
MAX_HOURS = 24 * 30  # the dashboard's window: 1 hour .. 30 days
EVENT_FILTERS = ("since", "until", "host", "rule", "cve", "action", "address", "kind", "gateway")
# the event list's `kind` filter: label -> SQL condition on the events table (event_type, and
# the signature ids of the firewall, setup protection and lockdown: gateway/firewall/dropevents.py)
EVENT_KINDS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "alert": ("event_type = 'alert' AND signature_id NOT IN (?, ?)", (SID_NEW_PEER, SID_NEW_PORT)),
    "drop": ("event_type = 'drop'", ()),
    "flow": ("event_type = 'flow'", ()),
    "firewall": ("event_type IN ('drop', 'flow') AND signature_id >= ?", (FW_SID_BASE,)),
    "setup": ("signature_id IN (?, ?)", (SID_SETUP_IN, SID_SETUP_OUT)),
    "lockdown": ("signature_id IN (?, ?)", (SID_NEW_PEER, SID_NEW_PORT)),
}


# -- rules and modes --------------------------------------------------------------------------


def rule_default_mode(rule: Rule) -> str:
    return rule.default_mode.value


def rule_products(rule: Rule) -> list[str]:
    out: list[str] = []
    for entry in getattr(rule, "affected", ()) or ():
        product = (
            entry.get("product") if isinstance(entry, dict) else getattr(entry, "product", None)
        )
        if product:
            out.append(str(product))
    return out


WOULD_BLOCK_SQL = {  # the one query whose JSON functions differ between the two databases
    Dialect.SQLITE: "SELECT signature_id, COUNT(DISTINCT flow_id) FROM events WHERE json_extract("
    "CASE WHEN json_valid(eve) THEN eve END, '$.vpatch.would_block') = 1 GROUP BY signature_id",
    Dialect.POSTGRESQL: "SELECT signature_id, COUNT(DISTINCT flow_id) FROM events"
    " WHERE (eve::jsonb -> 'vpatch' ->> 'would_block') = 'true' GROUP BY signature_id",
}


def would_block_counts() -> dict[int, int]:
    """Per rule: distinct flows that a detect-mode match would have blocked."""
    conn = get_events()
    if conn is None:
        return {}
    rows = conn.execute(WOULD_BLOCK_SQL[conn.dialect])
    return {int(r[0]): int(r[1]) for r in rows if r[0] is not None}


def rules_view(filters: dict[str, str]) -> list[dict[str, Any]]:
    store = get_store()
    assignments = Assignments(store).list_assignments()
    hosts = {h.id: h for h in Hosts(store).list_hosts()}
    groups = {gr.id: gr for gr in Hosts(store).list_groups()}
    counts = would_block_counts()
    q_cve = filters.get("cve", "").strip().upper()
    q_product = filters.get("product", "").strip().lower()
    q_sev = filters.get("severity", "").strip().lower()
    q_proto = filters.get("protocol", "").strip().lower()
    q_text = filters.get("q", "").strip().lower()
    out = []
    for rule in sorted(get_rules().rules, key=lambda r: r.id):
        if q_cve and not any(q_cve in c.upper() for c in rule.cves):
            continue
        products = rule_products(rule)
        if q_product and not any(q_product in p for p in products):
            continue
        if q_sev and rule.severity != q_sev:
            continue
        if q_proto and rule.protocol != q_proto:
            continue
        if q_text and q_text not in rule.title.lower() and q_text != str(rule.id):
            continue
        mine = [a for a in assignments if a.rule_id == rule.id]
        glob = next((a.mode for a in mine if a.scope == "global"), None)
        scoped = []
        for a in mine:
            if a.scope == "host" and a.scope_id in hosts:
                scoped.append(
                    {
                        "scope": "host",
                        "scope_id": a.scope_id,
                        "name": hosts[a.scope_id].address,
                        "mode": a.mode,
                    }
                )
            elif a.scope == "group" and a.scope_id in groups:
                scoped.append(
                    {
                        "scope": "group",
                        "scope_id": a.scope_id,
                        "name": groups[a.scope_id].name,
                        "mode": a.mode,
                    }
                )
        out.append({
            "id": rule.id, "title": rule.title, "cves": list(rule.cves),
            "severity": rule.severity, "protocol": rule.protocol, "ports": rule.ports_json,
            "ports_text": rule.ports_text,
            "action": rule.action.value, "products": products,
            "default_mode": rule_default_mode(rule),
            "global_mode": glob or rule_default_mode(rule), "global_explicit": glob is not None,
            "scoped": scoped, "would_block_flows": counts.get(rule.id, 0),
        })  # fmt: skip
    return out


def set_rule_mode(
    rule_id: int, scope: str, scope_id: int | None, mode: str | None, actor: str, reason: str = ""
) -> dict[str, Any]:
    """Store the mode (None: inherit) and ask the running gateway to reload; returns both."""
    if rule_id not in get_rules().by_id:
        raise InputError(f"rule {rule_id}: no such rule in the loaded rule set")
    names = tuple(m.value for m in Mode)
    if mode is not None and mode not in names:
        raise InputError(f"mode {mode!r}: must be one of {', '.join(names)} or inherit")
    store = get_store()
    after = Assignments(store).set_assignment(
        rule_id, scope, scope_id, mode, actor, "admin", reason
    )
    return {"assignment": asdict(after) if after else None, "reload": reload_gateway(store, actor)}


def reload_gateway(store: Store, actor: str) -> dict[str, Any]:
    """Ask the gateway to apply the policy now. Never raises: the result says what happened."""
    sock = Path(current_app.config["CONTROL_SOCKET"])
    started = time.monotonic()
    try:
        result = control_request(sock, "reload", timeout=current_app.config["RELOAD_TIMEOUT"])
    except ControlError as err:
        store.record(actor, "gateway.reload", str(sock), {"ok": False, "error": str(err)})
        return {"ok": False, "error": str(err)}
    took = time.monotonic() - started
    store.record(actor, "gateway.reload", str(sock), {"ok": True, "seconds": round(took, 3)})
    return {"ok": True, "seconds": took, "result": result}


RULES_RELOAD_TIMEOUT = 180.0  # the gateway compiles, then waits for every worker


def reload_rules(store: Store, actor: str) -> dict[str, Any]:
    """Ask the gateway to load its rule files again (`rules-reload`: the whole set validated
    first, nothing changes on a bad rule), then let this UI read them again too. Never
    raises: the result says what happened (a refused set names file, line and reason)."""
    sock = Path(current_app.config["CONTROL_SOCKET"])
    try:
        result = control_request(sock, "rules-reload", timeout=RULES_RELOAD_TIMEOUT)
    except ControlError as err:
        store.record(actor, "rules.reload", str(sock), {"ok": False, "error": str(err)})
        return {"ok": False, "error": str(err)}
    forget_rules()
    store.record(actor, "rules.reload", str(sock), {"ok": True, "version": result.get("version")})
    return {"ok": True, "result": result}


def gateway_status() -> dict[str, Any]:
    sock = Path(current_app.config["CONTROL_SOCKET"])
    try:
        status = control_request(sock, "status", timeout=2.0)
    except ControlError as err:
        return {"reachable": False, "error": str(err)}
    queues = status.get("queues", {})

    def total(name: str) -> int:  # per-queue counters; None: the kernel did not list the queue
        return sum(int(q.get(name) or 0) for q in queues.values())

    return {
        "reachable": True,
        "fail_policy": status.get("fail_policy"),
        "backend": status.get("backend"),
        "uptime": status.get("uptime"),
        "workers": len(queues),
        "workers_alive": sum(1 for q in queues.values() if q.get("alive")),
        "packets": total("packets"),
        "bytes": total("bytes"),
        "errors": total("errors"),
        "queue_drops": total("queue_drops"),
        "kernel_unseen": total("kernel_unseen"),
        # passed by the kernel without a verdict (queue full / no reader), gateway-wide
        "uninspected_packets": status.get("uninspected_packets"),
        "uninspected_bytes": status.get("uninspected_bytes"),
        "events_dropped": status.get("events_dropped"),
        "event_store": status.get("event_store"),  # failing, write_errors, lost, ... (None: older)
        "kernel_counters": status.get("kernel_counters"),
        "rules_loaded": status.get("rules_loaded", len(get_rules().rules)),
        "policy_version": status.get("policy_version"),
        "alerts": status.get("alerts"),  # None: no dispatcher (no SQLite event store)
        "protected_hosts": status.get("protected_hosts"),  # what the kernel queues now
        # the HTTPS plane's proxied services (mode, certificate, TLS settings, counters;
        # gateway/tls/plane.py); [] from a gateway without the plane
        "tls_proxy": status.get("tls_proxy") or [],
    }


def inspected_now(addresses: list[str], status: dict[str, Any]) -> dict[str, bool | None]:
    """address -> whether the running gateway's protected-host sets cover it (with a live
    worker); None for every address when the gateway cannot say (unreachable, older)."""
    protected = status.get("protected_hosts")
    if not status.get("reachable") or protected is None:
        return dict.fromkeys(addresses)
    alive = bool(status.get("workers_alive"))
    nets = [ipaddress.ip_network(n, strict=False) for n in protected]
    out: dict[str, bool | None] = {}
    for address in addresses:
        net = ipaddress.ip_network(address, strict=False)
        out[address] = alive and any(
            net.version == n.version and net.subnet_of(n)  # type: ignore[arg-type]
            for n in nets
        )
    return out


# -- events -----------------------------------------------------------------------------------


def _iso(value: str, name: str) -> str:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as err:
        raise InputError(f"{name} {value!r}: not an ISO 8601 time") from err
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def event_where(filters: dict[str, str]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    f = {k: (filters.get(k) or "").strip() for k in EVENT_FILTERS}
    if f["since"]:
        clauses.append("timestamp >= ?")
        args.append(_iso(f["since"], "since"))
    if f["until"]:
        clauses.append("timestamp <= ?")
        args.append(_iso(f["until"], "until"))
    if f["host"]:
        clauses.append("dest_ip = ?")
        args.append(f["host"])
    if f["rule"]:
        clauses.append("signature_id = ?")
        args.append(parse_int(f["rule"], "rule"))
    if f["cve"]:
        clauses.append("cves LIKE ?")
        args.append(f"%,{f['cve'].upper()},%")
    if f["action"]:
        if f["action"] not in ("allowed", "blocked"):
            raise InputError(f"action {f['action']!r}: must be allowed or blocked")
        clauses.append("action = ?")
        args.append(f["action"])
    if f["address"]:
        clauses.append("(src_ip = ? OR dest_ip = ?)")
        args += [f["address"], f["address"]]
    if f["kind"]:
        if f["kind"] not in EVENT_KINDS:
            raise InputError(f"kind {f['kind'][:40]!r}: one of {', '.join(EVENT_KINDS)}")
        clause, values = EVENT_KINDS[f["kind"]]
        clauses.append(clause)
        args += values
    if f["gateway"]:
        clauses.append("gateway = ?")
        args.append(f["gateway"])
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


# the event list's sortable columns (webui/tables.py names) -> indexed columns of the store
EVENT_SORTS = {"time": "timestamp", "rule": "signature_id", "action": "action",
               "source": "src_ip", "destination": "dest_ip"}  # fmt: skip


def list_events(
    filters: dict[str, str],
    page: int = 1,
    per_page: int = DEFAULT_PAGE_SIZE,
    sort: str = "time",
    descending: bool = True,
) -> dict[str, Any]:
    """One page of the events matching `filters`, ordered by `sort` (a key of EVENT_SORTS),
    newest first among equals."""
    way = "DESC" if descending else "ASC"
    order = (f"timestamp {way}, id {way}" if sort == "time"
             else f"{EVENT_SORTS[sort]} {way}, timestamp DESC, id DESC")  # fmt: skip
    per_page = max(1, min(per_page, MAX_PAGE_SIZE))
    page = max(1, min(page, MAX_PAGE))  # past the end: an empty page, never an overflow
    conn = get_events()
    if conn is None:
        return {"events": [], "total": 0, "page": page, "per_page": per_page}
    where, args = event_where(filters)
    total = int(conn.execute(f"SELECT COUNT(*) FROM events{where}", args).fetchone()[0])
    rows = conn.execute(
        f"SELECT * FROM events{where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*args, per_page, (page - 1) * per_page],
    )
    return {
        "events": [event_dict(r) for r in rows],
        "total": total,
        "page": page,
        "per_page": per_page,
    }


def export_events(filters: dict[str, str]) -> list[dict[str, Any]]:
    conn = get_events()
    if conn is None:
        return []
    where, args = event_where(filters)
    rows = conn.execute(
        f"SELECT * FROM events{where} ORDER BY timestamp DESC, id DESC LIMIT ?",
        [*args, MAX_EXPORT_ROWS],
    )
    return [event_dict(r) for r in rows]


_STORED_COLUMNS = (
    "id", "timestamp", "flow_id", "signature_id", "signature", "action", "rule_action",
    "severity", "src_ip", "src_port", "dest_ip", "dest_port", "proto", "app_proto", "cves",
    "event_type", "count", "gateway",
)  # fmt: skip
# and from the EVE record of drop/flow events (vpatch.firewall; "" for alerts)
_FIREWALL_COLUMNS = ("mode", "first_seen", "last_seen")
EVENT_COLUMNS = (*_STORED_COLUMNS, *_FIREWALL_COLUMNS)


def event_dict(row: Any) -> dict[str, Any]:
    present = set(row.keys())  # a store written before `gateway` existed lacks that column
    d = {k: row[k] if k in present else "" for k in _STORED_COLUMNS}
    d["cves"] = [c for c in (row["cves"] or "").split(",") if c]
    try:
        eve = json.loads(row["eve"] or "{}")
    except ValueError:
        eve = {}
    found = eve.get("vpatch") if isinstance(eve, dict) else None
    vp: dict[str, Any] = found if isinstance(found, dict) else {}
    d["would_block"] = bool(vp.get("would_block"))
    got = vp.get("firewall")
    fw: dict[str, Any] = got if isinstance(got, dict) else {}
    d.update({k: str(fw.get(k, "")) for k in _FIREWALL_COLUMNS})
    return d


def get_event(event_id: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    conn = get_events()
    if conn is None:
        return None
    row = conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    try:
        eve = json.loads(row["eve"] or "{}")
    except ValueError:
        eve = {}
    return event_dict(row), eve if isinstance(eve, dict) else {}


def explain_event(event: dict[str, Any], eve: dict[str, Any]) -> dict[str, Any]:
    """Why the gateway acted: the rule, its conditions, the field and an excerpt if recorded."""
    rule = get_rules().by_id.get(int(event["signature_id"]))
    vp = eve.get("vpatch", {}) if isinstance(eve.get("vpatch"), dict) else {}
    conditions = []
    if rule is not None:
        for p in rule.patterns:
            conditions.append(f"{p.kind}{' (nocase)' if p.nocase else ''}: {p.expr!r}")
    excerpt = vp.get("excerpt") or eve.get("payload_printable") or vp.get("match")
    return {
        "rule": rule.title if rule else event["signature"],
        "rule_known": rule is not None,
        "direction": rule.direction if rule else None,
        "conditions": conditions or vp.get("conditions") or [],
        "condition": vp.get("condition") or None,  # the one that matched (gateway/match/explain.py)
        "url": (eve.get("http") or {}).get("url") if isinstance(eve.get("http"), dict) else None,
        "field": vp.get("field")
        or (f"raw {rule.protocol} stream, {rule.direction}" if rule else None),
        "excerpt": excerpt,
        "rule_action": event["rule_action"],
        "would_block": event["would_block"],
    }


TOP_DIMENSIONS = {"rules": "rule", "sources": "source", "hosts": "host"}  # answer -> rollup
DASHBOARD_CACHE_S = 2.0  # open dashboards share one reading of a window for this long
MAX_CACHED_WINDOWS = 64  # (event store, hours) pairs kept; cleared when full
_dashboards: dict[tuple[str, int], tuple[float, dict[str, Any]]] = {}
_dashboards_lock = threading.Lock()


def shared_dashboard_data(hours: int = DEFAULT_HOURS) -> dict[str, Any]:
    """`dashboard_data(hours)`, computed at most once per DASHBOARD_CACHE_S for all requests:
    fifty open dashboards cost what one does."""
    key = (str(current_app.config["EVENTS_DB"]), hours)
    now = time.monotonic()
    with _dashboards_lock:
        hit = _dashboards.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    data = dashboard_data(hours)
    with _dashboards_lock:
        if len(_dashboards) >= MAX_CACHED_WINDOWS:
            _dashboards.clear()
        _dashboards[key] = (now + DASHBOARD_CACHE_S, data)
    return data


def dashboard_data(hours: int = DEFAULT_HOURS, now: float | None = None) -> dict[str, Any]:
    """Events over the last `hours` before `now` (CHART_BUCKETS buckets of whole minutes,
    ending with the current minute; an event counts in the bucket where its minute starts) and
    the top rules, CVEs, sources and hosts of the hours the window touches (from `tops_since`),
    read from the rollups (gateway/events/rollup.py): the work is bounded by the window, not by
    the number of events."""
    clock = int(time.time() if now is None else now)
    end = clock - clock % 60 + 60
    start = end - hours * 3600
    bucket_s = hours * 3600 // CHART_BUCKETS
    since_hour = start - start % 3600
    buckets: list[dict[str, Any]] = [
        {"start": _utc(start + i * bucket_s), "allowed": 0, "blocked": 0}
        for i in range(CHART_BUCKETS)
    ]
    top: dict[str, list[dict[str, Any]]] = {"rules": [], "cves": [], "sources": [], "hosts": []}
    total = 0
    conn = get_events()
    ready = conn is not None and rollups_exist(conn)
    if conn is not None and ready:
        for minute, allowed, blocked in minute_counts(conn, start, end):
            b = buckets[min((minute - start) // bucket_s, CHART_BUCKETS - 1)]
            b["allowed"] += allowed
            b["blocked"] += blocked
            total += allowed + blocked
        for name, dim in TOP_DIMENSIONS.items():
            rows = top_keys(conn, dim, since_hour, end, TOP_N)
            top[name] = [{"key": k, "label": label, "count": n} for k, label, n in rows]
        cves: dict[str, int] = {}
        for text, _label, n in top_keys(conn, "cves", since_hour, end, MAX_CVE_SETS):
            for c in str(text).split(","):
                if c:
                    cves[c] = cves.get(c, 0) + n
        top["cves"] = [{"key": c, "label": c, "count": n}
                       for c, n in sorted(cves.items(), key=lambda kv: -kv[1])[:TOP_N]]  # fmt: skip
    return {"hours": hours, "total": total, "buckets": buckets, "top": top,
            "tops_since": _utc(since_hour), "counted": ready}  # fmt: skip


def _utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
