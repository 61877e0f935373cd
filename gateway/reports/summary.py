"""The report of a period: what the gateway blocked and detected, where its policy has gaps,
and how it kept up (issue 13 point 2; docs/reports.md).

`build_report(events, store, rules, period, status, top)` reads
- the event store (gateway/events/sink.py, table `events`, read only): every count is
  SUM(count) over the events whose `timestamp` lies in [period.start, period.end) (an
  aggregated record stands for `count` events), found through the timestamp index; so the
  figures are exact for any period, not rounded to the rollups' hours;
- the policy store (gateway/policy/*): hosts and their modes, the effective mode of each rule
  per host (gateway/policy/compiled.py over policy_snapshot, the gateway's own view), the last
  finished recommendation scan of each host (gateway/scan/jobs.py, scan_runs.report_json) and
  the host-mode history (lifecycle_history) within the period;
- the gateway's control socket `status`, when reachable: its health now.

What it guarantees:
- Alerts (event_type "alert") are split into blocked (alert.action "blocked") and detected
  (the rest) by CVE, by protected host (dest_ip), by source (src_ip) and by rule; every list
  holds at most `top` entries, the largest first, and `totals` counts everything in the period.
- Events of every other event_type (the firewall's and host modes' `drop` and `flow` events)
  are counted per event_type and per (event_type, signature); the lockdown alerts of the
  lifecycle monitor (signature ids LOCKDOWN_SIDS) are also counted per host under `host_modes`.
- `coverage` lists, per protected host address, the rules its last finished scan recommended
  (assign or keep) whose effective mode for that host is `off` (not enforced), or `detect`.
- `health` says what is known and what is not: the event store's own figures for the period,
  the live status counters (since the gateway started, not per period) and `not_kept`, the
  health figures vpatch keeps no history of.
Nothing here writes to either store. A missing event store gives a report with zero counts and
says so in `notes`.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from gateway.lifecycle.monitor import SID_NEW_PEER, SID_NEW_PORT
from gateway.match.rules import RuleSet
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store
from gateway.reports.period import Period
from gateway.vocabulary import Mode

__all__ = [
    "DEFAULT_TOP",
    "LOCKDOWN_SIDS",
    "NOT_KEPT",
    "Count",
    "Coverage",
    "Report",
    "build_report",
]

DEFAULT_TOP: Final = 10
MAX_TOP: Final = 1000
LOCKDOWN_SIDS: Final = (SID_NEW_PEER, SID_NEW_PORT)
# Gateway health figures of a period come from the health check's history (one sample a
# minute, gateway/health/history.py); without it only the live counters (since start) exist
NOT_KEPT: Final = (
    "no health check history (vpatch-health.timer not running): the period's uptime, queue "
    "drops, fail-open (uninspected) packets and worker restarts are unknown; the live figures "
    "count since the gateway's start",
)


@dataclass(frozen=True, slots=True)
class Count:
    """One line of a breakdown: `key` (a CVE, an address, a rule id, an event type ...)."""

    key: str
    label: str
    blocked: int
    detected: int

    @property
    def total(self) -> int:
        return self.blocked + self.detected


@dataclass(frozen=True, slots=True)
class Coverage:
    """A protected host and the rules its last scan recommended that are not in prevent."""

    host: str
    mode: str  # the host's protection mode (normal, setup, learning, lockdown)
    scanned_at: str  # ISO time of the scan, "" when never scanned
    recommended: int
    not_enforced: tuple[tuple[int, str], ...]  # (rule id, title): effective mode off
    detect_only: tuple[tuple[int, str], ...]  # effective mode detect


@dataclass(frozen=True, slots=True)
class Report:
    period_start: str
    period_end: str
    period_label: str
    period_kind: str
    generated_at: str
    totals: dict[str, int]
    timeline: list[Count]  # key: bucket start (hour or day), blocked / detected alerts
    by_cve: list[Count]
    by_host: list[Count]
    by_source: list[Count]
    top_rules: list[Count]
    event_types: list[Count]  # blocked = events with action blocked, detected = the rest
    firewall: list[Count]  # non-alert events by (event_type, signature)
    host_modes: dict[str, Any]
    coverage: list[Coverage]
    health: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("timeline", "by_cve", "by_host", "by_source", "top_rules", "event_types",
                     "firewall"):  # fmt: skip
            for item, count in zip(out[name], getattr(self, name), strict=True):
                item["total"] = count.total
        return out


# -- the event store ----------------------------------------------------------------------------

_IN_PERIOD: Final = "timestamp >= ? AND timestamp < ?"
_BLOCKED: Final = "SUM(CASE WHEN action = 'blocked' THEN count ELSE 0 END)"
_DETECTED: Final = "SUM(CASE WHEN action = 'blocked' THEN 0 ELSE count END)"


def _rows(conn: sqlite3.Connection, sql: str, period: Period, *args: Any) -> list[Any]:
    return conn.execute(sql, (period.start_text, period.end_text, *args)).fetchall()


def _grouped(
    conn: sqlite3.Connection, period: Period, key: str, label: str, top: int, where: str = ""
) -> list[Count]:
    rows = _rows(conn, f"SELECT {key}, MAX({label}), {_BLOCKED} AS b, {_DETECTED} AS d "
                 f"FROM events WHERE {_IN_PERIOD} AND event_type = 'alert' {where} "
                 f"GROUP BY {key} ORDER BY b + d DESC, {key} LIMIT ?", period, top)  # fmt: skip
    return [Count(str(k if k is not None else ""), str(lb or ""), int(b), int(d))
            for k, lb, b, d in rows]  # fmt: skip


def _by_cve(conn: sqlite3.Connection, period: Period, top: int) -> list[Count]:
    """Per CVE: the `cves` column (",A,B,") grouped in SQL, split here (an event with two
    CVEs counts for each)."""
    counts: Counter[tuple[str, bool]] = Counter()
    rows = _rows(conn, f"SELECT cves, {_BLOCKED}, {_DETECTED} FROM events WHERE {_IN_PERIOD} "
                 "AND event_type = 'alert' AND cves != '' GROUP BY cves", period)  # fmt: skip
    for cves, blocked, detected in rows:
        for cve in filter(None, str(cves).split(",")):
            counts[(cve, True)] += int(blocked)
            counts[(cve, False)] += int(detected)
    keys = sorted(
        {k for k, _ in counts}, key=lambda k: (-counts[(k, True)] - counts[(k, False)], k)
    )
    return [Count(k, k, counts[(k, True)], counts[(k, False)]) for k in keys[:top]]


def _timeline(conn: sqlite3.Connection, period: Period) -> list[Count]:
    """Alerts per hour (periods of up to two days) or per day, every bucket present."""
    hourly = period.end - period.start <= timedelta(days=2)
    width = 13 if hourly else 10  # "YYYY-MM-DDTHH" or "YYYY-MM-DD" of the UTC timestamp
    rows = _rows(conn, f"SELECT substr(timestamp, 1, {width}), {_BLOCKED}, {_DETECTED} "
                 f"FROM events WHERE {_IN_PERIOD} AND event_type = 'alert' GROUP BY 1",
                 period)  # fmt: skip
    found = {str(k): (int(b), int(d)) for k, b, d in rows}
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    out, moment = [], period.start.replace(minute=0, second=0, microsecond=0)
    if not hourly:
        moment = moment.replace(hour=0)
    while moment < period.end:
        key = moment.isoformat()[:width]
        b, d = found.get(key, (0, 0))
        out.append(Count(key, key.replace("T", " ") + (":00" if hourly else ""), b, d))
        moment += step
    return out


def _event_counts(conn: sqlite3.Connection, period: Period, top: int) -> dict[str, Any]:
    totals = _rows(
        conn,
        f"SELECT COALESCE({_BLOCKED}, 0), COALESCE({_DETECTED}, 0), COUNT(*) "
        f"FROM events WHERE {_IN_PERIOD} AND event_type = 'alert'",
        period,
    )[0]
    everything = _rows(conn, f"SELECT COALESCE(SUM(count), 0), COUNT(*) FROM events WHERE "
                       f"{_IN_PERIOD}", period)[0]  # fmt: skip
    types = _rows(
        conn,
        f"SELECT event_type, {_BLOCKED}, {_DETECTED} FROM events WHERE "
        f"{_IN_PERIOD} GROUP BY event_type ORDER BY event_type",
        period,
    )
    firewall = _rows(
        conn,
        f"SELECT event_type || ' ' || COALESCE(signature, ''), {_BLOCKED} "
        f"AS b, {_DETECTED} AS d FROM events WHERE {_IN_PERIOD} AND event_type "
        "!= 'alert' GROUP BY 1 ORDER BY b + d DESC, 1 LIMIT ?",
        period,
        top,
    )
    sids = ",".join(str(s) for s in LOCKDOWN_SIDS)
    return {
        "totals": {"events": int(everything[0]), "records": int(everything[1]),
                   "alerts": int(totals[0]) + int(totals[1]), "blocked": int(totals[0]),
                   "detected": int(totals[1]), "alert_records": int(totals[2])},
        "event_types": [Count(str(t), str(t), int(b), int(d)) for t, b, d in types],
        "firewall": [Count(str(k), str(k), int(b), int(d)) for k, b, d in firewall],
        "lockdown": _grouped(conn, period, "dest_ip", "dest_ip", top,
                             f"AND signature_id IN ({sids})"),
    }  # fmt: skip


# -- the policy store ---------------------------------------------------------------------------


def _last_scans(store: Store) -> dict[str, tuple[float, list[dict[str, Any]]]]:
    """host address -> (finished_at, recommendations) of its last finished scan."""
    out: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    rows = store.db.execute(
        "SELECT host, finished_at, report_json FROM scan_runs WHERE status = 'done' AND "
        "report_json IS NOT NULL ORDER BY id"
    )
    for host, finished, text in rows:
        try:
            recs = json.loads(text).get("recommendations", [])
        except (ValueError, AttributeError):
            continue
        out[str(host)] = (float(finished or 0), [r for r in recs if isinstance(r, dict)])
    return out


def _coverage(store: Store, rules: RuleSet) -> list[Coverage]:
    hosts, groups, assignments = policy_snapshot(store)
    policy = CompiledPolicy(hosts, groups, assignments)
    scans = _last_scans(store)
    out = []
    for host in sorted(hosts, key=lambda h: h.address):
        if host.id < 0 or "/" in host.address:
            continue  # a network entry, or a host that exists only through an exception
        finished, recs = scans.get(host.address, (0.0, []))
        recommended = [int(r["rule_id"]) for r in recs if r.get("action") in ("assign", "keep")]
        off, detect = [], []
        for rule_id in sorted(set(recommended)):
            rule = rules.by_id.get(rule_id)
            if rule is None:
                off.append((rule_id, "(not in the loaded rule set)"))
                continue
            mode = policy.mode(host.address, rule)
            if mode is Mode.OFF:
                off.append((rule_id, rule.title))
            elif mode is Mode.DETECT:
                detect.append((rule_id, rule.title))
        scanned = datetime.fromtimestamp(finished, UTC).isoformat() if finished else ""
        out.append(Coverage(host.address, host.mode, scanned, len(set(recommended)),
                            tuple(off), tuple(detect)))  # fmt: skip
    return out


def _history(store: Store, period: Period) -> dict[str, Any]:
    """Host-mode changes in the period (lifecycle_history) and the hosts' modes now."""
    start, end = period.start.timestamp(), period.end.timestamp()
    rows = store.db.execute(
        "SELECT action, COUNT(*) FROM lifecycle_history WHERE ts >= ? AND ts < ? "
        "GROUP BY action ORDER BY action", (start, end)).fetchall()  # fmt: skip
    modes = store.db.execute(
        "SELECT mode, COUNT(*) FROM hosts GROUP BY mode ORDER BY mode").fetchall()  # fmt: skip
    return {"changes": {str(a): int(n) for a, n in rows},
            "hosts_by_mode": {str(m): int(n) for m, n in modes}}  # fmt: skip


# -- health -------------------------------------------------------------------------------------


def _health(
    status: dict[str, Any] | None, totals: dict[str, int], history: dict[str, Any] | None
) -> dict[str, Any]:
    live: dict[str, Any] | None = None
    if status is not None:
        queues = status.get("queues") or {}
        live = {
            "uptime_s": status.get("uptime"),
            "workers": len(queues),
            "workers_alive": sum(1 for q in queues.values() if q.get("alive")),
            "worker_restarts": sum(int(q.get("restarts") or 0) for q in queues.values()),
            "queue_drops": status.get("queue_drops"),
            "fail_open_packets": status.get("uninspected_packets"),
            "events_dropped": status.get("events_dropped"),
            "event_store": status.get("event_store"),
        }
    not_kept = list(NOT_KEPT) if history is None or not history["checks"] else []
    if history is not None and history["checks"] and not history["complete"]:
        not_kept.append("the period starts before the first health sample: its first "
                        "gateway instance's counts before that sample are unknown")  # fmt: skip
    return {"reachable": status is not None, "live": live, "period": history,
            "events_recorded": totals.get("events", 0), "not_kept": not_kept}  # fmt: skip


def _breakdowns(events: sqlite3.Connection | None, period: Period, top: int) -> dict[str, Any]:
    """Every part of the report read from the event store (zero counts without one)."""
    if events is None:
        return {"totals": {}, "event_types": [], "firewall": [], "lockdown": [], "timeline": [],
                "by_cve": [], "by_host": [], "by_source": [], "top_rules": []}  # fmt: skip
    return {
        **_event_counts(events, period, top),
        "timeline": _timeline(events, period),
        "by_cve": _by_cve(events, period, top),
        "by_host": _grouped(events, period, "dest_ip", "dest_ip", top),
        "by_source": _grouped(events, period, "src_ip", "src_ip", top),
        "top_rules": _grouped(events, period, "signature_id", "signature", top),
    }


def build_report(
    events: sqlite3.Connection | None,
    store: Store,
    rules: RuleSet,
    period: Period,
    status: dict[str, Any] | None = None,
    top: int = DEFAULT_TOP,
    now: datetime | None = None,
    history: dict[str, Any] | None = None,
) -> Report:
    """The report of `period` (see the module comment); `status` is the control socket's
    `status` reply, None when the gateway is not reachable."""
    top = max(1, min(top, MAX_TOP))
    notes: list[str] = []
    if events is None:
        notes.append("no event store: every event count is zero")
    if status is None:
        notes.append("gateway not reachable on its control socket: no live health figures")
    parts = _breakdowns(events, period, top)
    return Report(
        period_start=period.start_text, period_end=period.end_text, period_label=period.label,
        period_kind=period.kind.value,
        generated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        totals=parts["totals"], timeline=parts["timeline"], by_cve=parts["by_cve"],
        by_host=parts["by_host"], by_source=parts["by_source"], top_rules=parts["top_rules"],
        event_types=parts["event_types"], firewall=parts["firewall"],
        host_modes={**_history(store, period), "lockdown_events": parts["lockdown"]},
        coverage=_coverage(store, rules), health=_health(status, parts["totals"], history),
        notes=notes,
    )  # fmt: skip
