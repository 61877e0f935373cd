"""Scan runs and scan schedules: the recommendation scan started from the UI, the API or a
schedule, with its progress, report, history and apply step, kept in the policy store
(gateway/policy/store.py migration 4: tables `scan_runs`, `scan_schedules`).

A run goes queued -> running -> done | failed | cancelled. `ScanJobs.queue()` creates it; the
unique index `scan_runs_active` (one queued/running row per host) makes "one scan per host at
a time" hold across processes (UI, API, the scheduled loop): a second request gets `ScanBusy`
naming the run in the way. `execute()` scans (gateway/scan/scanner.py), writes progress into
the row at most every PROGRESS_EVERY_S, recommends (gateway/scan/recommend.py), records the
findings, and when the host's `auto_apply` is on (or the caller forces it) applies the
recommendation; the report (findings with evidence, recommendations with evidence, applied or
not) is stored as JSON in the row. `apply()` applies a finished run's recommendation later
(the UI's "apply" button). Every run writes a `scan` entry in the host's lifecycle history
(when, who or which schedule, what it found); every applied change an assign/unassign entry
with the evidence.

`cancel()` ends a queued run at once and asks a running one to stop (column `cancel_by`,
migration 6): the runner looks at it between probes (at most every PROGRESS_EVERY_S; a probe
under way finishes within its timeout) and ends the run `cancelled`, its report holding the
findings of the probes done so far (`cancelled`, `probes_done`, `probes_total`) and no
recommendation: a partial scan proves nothing absent, so nothing is recorded or applied.

Runs whose process is gone (pid no longer alive) or that are older than MAX_RUN_SECONDS are
marked failed by `expire_stale()`, so a crashed scan never blocks its host for good. Bounds:
MAX_RUNS_KEPT rows (oldest finished pruned), MAX_SCHEDULED_PER_PASS scans per scheduler pass,
intervals between MIN_INTERVAL_S and MAX_INTERVAL_S.

Schedules: one row per host, or host '*' for every host of the lifecycle state (a host's own
row, enabled or not, overrides '*'). A host is due when its last scheduled run was queued at
least `interval_s` ago. `run_scheduler()` is the loop of `vpatch scan --scheduled`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.control.server import ControlError, control_request
from gateway.database import Row, Target, db_errors, integrity_errors
from gateway.lifecycle.state import (
    HistoryEntry,
    LifecycleError,
    LifecycleStore,
    check_address,
)
from gateway.policy.store import Store, StoreError
from gateway.scan import probes
from gateway.scan.assign import apply_recommendations
from gateway.scan.probes import Evidence
from gateway.scan.recommend import (
    RecAction,
    Recommendation,
    RuleAffected,
    recommend,
    recommendation_to_dict,
)
from gateway.scan.scanner import ScanResult, result_to_dict, scan_host

GLOBAL = "*"  # schedule host meaning every host of the lifecycle state
TRIGGERS = ("ui", "api", "cli", "schedule")
STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
MAX_RUN_SECONDS = 900.0  # a run queued/running longer than this is stale
MAX_RUNS_KEPT = 10_000
MAX_SCHEDULED_PER_PASS = 64
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 366 * 86400.0
PROGRESS_EVERY_S = 0.2
MAX_ERROR_LEN = 1000
RELOAD_TIMEOUT_S = 10.0


class ScanBusy(LifecycleError):
    """The host already has a queued or running scan (names the run)."""


@dataclass(frozen=True, slots=True)
class ScanRun:
    id: int
    host: str
    trigger: str
    actor: str
    status: str
    queued_at: float
    started_at: float | None
    finished_at: float | None
    done: int
    total: int
    step: str
    pid: int | None
    report: dict[str, Any] | None
    applied: bool
    error: str
    cancel_by: str | None = None  # who asked a running scan to stop

    def progress(self) -> dict[str, Any]:
        """The small form the UI's page polls."""
        return {
            "id": self.id, "host": self.host, "status": self.status, "done": self.done,
            "total": self.total, "step": self.step, "error": self.error, "applied": self.applied,
        }  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.progress(), "trigger": self.trigger, "actor": self.actor,
            "queued_at": self.queued_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "report": self.report,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ScanSchedule:
    id: int
    host: str  # an address, or GLOBAL
    interval_s: float
    enabled: bool
    last_run: float | None
    updated_by: str
    updated_at: float


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(r: Row) -> ScanRun:
    report = json.loads(r["report_json"]) if r["report_json"] else None
    return ScanRun(
        int(r["id"]), str(r["host"]), str(r["trigger"]), str(r["actor"]), str(r["status"]),
        float(r["queued_at"]), r["started_at"], r["finished_at"], int(r["done"]),
        int(r["total"]), str(r["step"]), r["pid"], report, bool(r["applied"]), str(r["error"]),
        r["cancel_by"],
    )  # fmt: skip


def _schedule(r: Row) -> ScanSchedule:
    return ScanSchedule(
        int(r["id"]), str(r["host"]), float(r["interval_s"]), bool(r["enabled"]),
        r["last_run"], str(r["updated_by"]), float(r["updated_at"]),
    )  # fmt: skip


def recommendations_from(report: dict[str, Any]) -> list[Recommendation]:
    """The Recommendation records of a stored report."""
    out = []
    for r in report.get("recommendations", []):
        out.append(
            Recommendation(
                int(r["rule_id"]),
                str(r["title"]),
                RecAction(r["action"]),
                str(r["reason"]),
                tuple(Evidence(str(e["probe"]), str(e["saw"])) for e in r.get("evidence", [])),
            )
        )
    return out


def notify_reload(control_socket: Path | None) -> dict[str, Any]:
    """Ask the running gateway to reload; never raises (the result says what happened)."""
    if control_socket is None:
        return {"ok": False, "error": "no control socket given"}
    try:
        result = control_request(control_socket, "reload", timeout=RELOAD_TIMEOUT_S)
    except ControlError as err:
        return {"ok": False, "error": str(err)}
    return {"ok": True, "version": result.get("version"), "complete": result.get("complete")}


class ScanJobs:
    """Scan runs and schedules in the policy store at `path` (a connection per call, so one
    ScanJobs may be shared by threads)."""

    def __init__(self, path: Target) -> None:
        self.path = path
        self.lifecycle = LifecycleStore(path)

    @contextmanager
    def _store(self) -> Iterator[Store]:
        try:
            store = Store(self.path)
        except db_errors(StoreError) as err:
            raise LifecycleError(f"{self.path}: cannot open the policy database: {err}") from err
        try:
            yield store
        except db_errors() as err:
            raise LifecycleError(f"{self.path}: scan runs: {err}") from err
        finally:
            store.close()

    # -- runs ---------------------------------------------------------------------------------

    def expire_stale(self, now: float | None = None) -> int:
        """Mark failed the active runs whose process is gone or that are too old."""
        now = time.time() if now is None else now
        with self._store() as store, store.transaction():
            rows = store.db.execute(
                "SELECT * FROM scan_runs WHERE status IN ('queued', 'running')"
            ).fetchall()
            expired = 0
            for r in rows:
                why = None
                if r["pid"] is not None and not _pid_alive(int(r["pid"])):
                    why = f"scan process {r['pid']} ended without a result"
                elif float(r["queued_at"]) < now - MAX_RUN_SECONDS:
                    why = f"stale: no result within {MAX_RUN_SECONDS:.0f}s"
                if why is not None:
                    store.db.execute(
                        "UPDATE scan_runs SET status = 'failed', error = ?, finished_at = ? "
                        "WHERE id = ?",
                        (why, now, r["id"]),
                    )
                    expired += 1
            return expired

    def queue(self, host: str, trigger: str, actor: str) -> ScanRun:
        """A new queued run for host; ScanBusy when the host has an active one."""
        host = check_address(host, "scan host")
        if trigger not in TRIGGERS:
            raise LifecycleError(f"scan trigger {trigger!r}: one of {', '.join(TRIGGERS)}")
        self.expire_stale()
        with self._store() as store:
            try:
                with store.transaction():
                    now = time.time()
                    cur = store.db.execute(
                        "INSERT INTO scan_runs(host, trigger, actor, status, queued_at) "
                        "VALUES (?,?,?,'queued',?)",
                        (host, trigger, actor, now),
                    )
                    run_id = int(cur.lastrowid or 0)
                    store.db.execute(
                        "DELETE FROM scan_runs WHERE id <= ? AND status IN "
                        "('done', 'failed', 'cancelled')",
                        (run_id - MAX_RUNS_KEPT,),
                    )
                    store.audit(
                        actor, "scan.queue", host, None, {"run": run_id, "trigger": trigger}
                    )
            except integrity_errors():
                row = store.db.execute(
                    "SELECT id, status FROM scan_runs WHERE host = ? AND status IN "
                    "('queued', 'running')",
                    (host,),
                ).fetchone()
                what = f"run {row['id']} is {row['status']}" if row else "a run is active"
                raise ScanBusy(f"host {host}: scan {what} (one scan per host at a time)") from None
            row = store.db.execute("SELECT * FROM scan_runs WHERE id = ?", (run_id,)).fetchone()
            return _run(row)

    def get(self, run_id: int) -> ScanRun | None:
        with self._store() as store:
            row = store.db.execute("SELECT * FROM scan_runs WHERE id = ?", (run_id,)).fetchone()
            return None if row is None else _run(row)

    def runs(self, host: str | None = None, limit: int = 50) -> list[ScanRun]:
        """Newest first."""
        limit = max(1, min(limit, 1000))
        with self._store() as store:
            if host is None:
                rows = store.db.execute(
                    "SELECT * FROM scan_runs ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = store.db.execute(
                    "SELECT * FROM scan_runs WHERE host = ? ORDER BY id DESC LIMIT ?",
                    (host, limit),
                ).fetchall()
            return [_run(r) for r in rows]

    def _set(self, run_id: int, **cols: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in cols)
        with self._store() as store:
            store.db.execute(f"UPDATE scan_runs SET {names} WHERE id = ?", (*cols.values(), run_id))

    def fail(self, run_id: int, error: str) -> None:
        self._set(run_id, status="failed", error=error[:MAX_ERROR_LEN], finished_at=time.time())

    def cancel(self, run_id: int, actor: str) -> ScanRun:
        """Cancel a queued run at once, or ask a running one to stop between probes
        (audited); LifecycleError when the run is already over."""
        with self._store() as store, store.transaction():
            row = store.db.execute("SELECT * FROM scan_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise LifecycleError(f"{self.path}: scan run {run_id}: no such run")
            run = _run(row)
            if run.status in FINAL:
                raise LifecycleError(f"scan run {run_id}: is {run.status}, nothing to cancel")
            if run.status == "queued":
                store.db.execute(
                    "UPDATE scan_runs SET status = 'cancelled', cancel_by = ?, error = ?, "
                    "finished_at = ? WHERE id = ?",
                    (actor, f"cancelled by {actor} before it started", time.time(), run_id),
                )
            else:
                store.db.execute("UPDATE scan_runs SET cancel_by = ? WHERE id = ?", (actor, run_id))
            store.audit(actor, "scan.cancel", run.host, run.status, {"run": run_id})
        new = self.get(run_id)
        assert new is not None
        return new

    def _cancel_check(self, run_id: int, stop: threading.Event | None) -> Callable[[], bool]:
        """True once `stop` is set or someone asked to cancel the run (the row is read at
        most every PROGRESS_EVERY_S)."""
        state = {"next": 0.0, "asked": False}

        def cancelled() -> bool:
            if stop is not None and stop.is_set():
                return True
            now = time.monotonic()
            if not state["asked"] and now >= state["next"]:
                state["next"] = now + PROGRESS_EVERY_S
                run = self.get(run_id)
                state["asked"] = run is not None and run.cancel_by is not None
            return bool(state["asked"])

        return cancelled

    def execute(
        self,
        run_id: int,
        rules: Sequence[RuleAffected],
        tcp_ports: Sequence[int] = probes.DEFAULT_TCP_PORTS,
        udp_ports: Sequence[int] = probes.DEFAULT_UDP_PORTS,
        timeout: float = probes.DEFAULT_TIMEOUT_S,
        control_socket: Path | None = None,
        force_apply: bool = False,
        stop: threading.Event | None = None,
    ) -> ScanRun:
        """Carry out a queued run (see the module docstring); returns the finished run. A
        failure of the scan itself is recorded in the run (status failed), not raised; `stop`
        (or a `cancel()` from elsewhere) ends it `cancelled` between probes."""
        run = self.get(run_id)
        if run is None:
            raise LifecycleError(f"{self.path}: scan run {run_id}: no such run")
        if run.status != "queued":
            raise LifecycleError(f"scan run {run_id}: is {run.status}, not queued")
        self._set(run_id, status="running", started_at=time.time(), pid=os.getpid())
        last = [0.0]

        def progress(done: int, total: int, what: str) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done >= total:
                last[0] = now
                self._set(run_id, done=done, total=total, step=what[:200])

        try:
            result = scan_host(run.host, tcp_ports, udp_ports, timeout=timeout, progress=progress,
                               cancelled=self._cancel_check(run_id, stop))  # fmt: skip
            if result.cancelled:
                return self._cancelled(run, result, stop)
            policy = self.lifecycle.host(run.host)
            recs = recommend(result, list(rules), policy.assigned)
            report: dict[str, Any] = {
                **result_to_dict(result),
                "recommendations": [recommendation_to_dict(r) for r in recs],
            }
            findings = report["findings"]
            self.lifecycle.record_scan(run.host, findings, actor=f"{run.trigger}:{run.actor}")
            applied = bool(force_apply or policy.auto_apply)
            counts = {a.value: sum(1 for r in recs if r.action is a) for a in RecAction}
            summary = (
                f"{run.trigger} scan by {run.actor}: {len(findings)} service(s) identified; "
                f"assign {counts['assign']}, unassign {counts['unassign']}, keep {counts['keep']}"
                + ("; applied automatically (auto-apply)" if applied else "")
            )
            entry = HistoryEntry(
                time.time(), run.host, "scan", f"run {run_id}", summary,
                tuple((f"{f['port']}/{f['transport']} {f['service']}",
                       f"{f['product'] or '?'} {f['version'] or ''}".strip()) for f in findings),
            )  # fmt: skip
            changed = apply_recommendations(
                self.lifecycle, run.host, recs, f"scan run {run_id} (auto-apply)", run.actor,
                [entry],
            ) if applied else 0  # fmt: skip
            if not applied:
                self.lifecycle.update_host(run.host, history=[entry], actor=run.actor)
            report["applied"] = applied
            if applied and changed:
                report["reload"] = notify_reload(control_socket)
            done = max(run.total, 1)
            self._set(
                run_id, status="done", finished_at=time.time(), report_json=json.dumps(report),
                applied=int(applied), step="finished", done=done, total=done,
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001 - recorded in the run, which the UI shows
            self.fail(run_id, f"{type(err).__name__}: {err}")
        finished = self.get(run_id)
        assert finished is not None
        return finished

    def _cancelled(self, run: ScanRun, result: ScanResult, stop: threading.Event | None) -> ScanRun:
        """End a run stopped between probes: status cancelled, the partial report kept (no
        recommendation, nothing recorded or applied), a history entry."""
        again = self.get(run.id)
        who = (again.cancel_by if again is not None else None) or (
            "signal" if stop is not None and stop.is_set() else "?"
        )
        report: dict[str, Any] = {**result_to_dict(result), "recommendations": [],
                                  "applied": False, "cancelled_by": who}  # fmt: skip
        why = f"cancelled by {who} after {result.probes_done} of {result.probes_total} probes"
        entry = HistoryEntry(time.time(), run.host, "scan", f"run {run.id}", f"{run.trigger} {why}")
        self.lifecycle.update_host(run.host, actor=run.actor, history=[entry])
        self._set(
            run.id, status="cancelled", finished_at=time.time(), report_json=json.dumps(report),
            step=why, error=why, done=result.probes_done, total=max(result.probes_total, 1),
        )  # fmt: skip
        finished = self.get(run.id)
        assert finished is not None
        return finished

    def apply(self, run_id: int, actor: str) -> tuple[ScanRun, int]:
        """Apply a finished run's recommendation (once); returns the run and the changes."""
        run = self.get(run_id)
        if run is None:
            raise LifecycleError(f"{self.path}: scan run {run_id}: no such run")
        if run.status != "done" or run.report is None:
            raise LifecycleError(f"scan run {run_id}: is {run.status}; only a finished run applies")
        if run.applied:
            raise LifecycleError(f"scan run {run_id}: already applied")
        changes = apply_recommendations(
            self.lifecycle, run.host, recommendations_from(run.report),
            f"scan run {run_id} applied by {actor}", actor,
        )  # fmt: skip
        report = dict(run.report, applied=True)
        self._set(run_id, applied=1, report_json=json.dumps(report))
        new = self.get(run_id)
        assert new is not None
        return new, changes

    # -- schedules ----------------------------------------------------------------------------

    def set_schedule(
        self, host: str, interval_s: float | None, actor: str, enabled: bool = True
    ) -> ScanSchedule | None:
        """Set (or with interval None, delete) the schedule of host or GLOBAL; audited."""
        if host != GLOBAL:
            host = check_address(host, "schedule host")
        if interval_s is not None and not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise LifecycleError(
                f"schedule of {host}: interval {interval_s!r}s outside "
                f"{MIN_INTERVAL_S:.0f}..{MAX_INTERVAL_S:.0f}"
            )
        with self._store() as store, store.transaction():
            db = store.db
            before = db.execute("SELECT * FROM scan_schedules WHERE host = ?", (host,)).fetchone()
            if interval_s is None:
                db.execute("DELETE FROM scan_schedules WHERE host = ?", (host,))
                after = None
            else:
                db.execute(
                    "INSERT INTO scan_schedules(host, interval_s, enabled, updated_by, updated_at)"
                    " VALUES (?,?,?,?,?) ON CONFLICT(host) DO UPDATE SET "
                    "interval_s = excluded.interval_s, enabled = excluded.enabled, "
                    "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                    (host, float(interval_s), int(enabled), actor, time.time()),
                )
                after = _schedule(
                    db.execute("SELECT * FROM scan_schedules WHERE host = ?", (host,)).fetchone()
                )
            store.audit(
                actor, "scan.schedule", host,
                None if before is None else {"interval_s": before["interval_s"],
                                             "enabled": bool(before["enabled"])},
                None if after is None else {"interval_s": after.interval_s,
                                            "enabled": after.enabled},
            )  # fmt: skip
            return after

    def schedules(self) -> list[ScanSchedule]:
        with self._store() as store:
            rows = store.db.execute("SELECT * FROM scan_schedules ORDER BY host").fetchall()
            return [_schedule(r) for r in rows]

    def schedule_for(self, host: str) -> ScanSchedule | None:
        """The schedule that applies to host: its own, else the global one."""
        own = {s.host: s for s in self.schedules()}
        return own.get(host) or own.get(GLOBAL)

    def due(self, now: float | None = None) -> list[str]:
        """Hosts whose schedule says a scan is due (oldest first, at most a pass's worth)."""
        now = time.time() if now is None else now
        scheds = {s.host: s for s in self.schedules()}
        if not scheds:
            return []
        hosts = [h.address for h in self.lifecycle.hosts()]
        out: list[tuple[float, str]] = []
        with self._store() as store:
            for host in hosts:
                s = scheds.get(host) or scheds.get(GLOBAL)
                if s is None or not s.enabled:
                    continue
                row = store.db.execute(
                    "SELECT MAX(queued_at) FROM scan_runs WHERE host = ? AND trigger = 'schedule'",
                    (host,),
                ).fetchone()
                last = float(row[0]) if row and row[0] is not None else 0.0
                if now - last >= s.interval_s:
                    out.append((last, host))
        return [h for _last, h in sorted(out)[:MAX_SCHEDULED_PER_PASS]]

    def next_due_in(self, now: float | None = None) -> float | None:
        """Seconds until the next scheduled scan is due (0 when one is due; None: none)."""
        now = time.time() if now is None else now
        scheds = {s.host: s for s in self.schedules()}
        if not scheds:
            return None
        best: float | None = None
        with self._store() as store:
            for h in self.lifecycle.hosts():
                s = scheds.get(h.address) or scheds.get(GLOBAL)
                if s is None or not s.enabled:
                    continue
                row = store.db.execute(
                    "SELECT MAX(queued_at) FROM scan_runs WHERE host = ? AND trigger = 'schedule'",
                    (h.address,),
                ).fetchone()
                last = float(row[0]) if row and row[0] is not None else 0.0
                wait = max(0.0, last + s.interval_s - now)
                best = wait if best is None else min(best, wait)
        return best

    def mark_scheduled(self, host: str, now: float) -> None:
        with self._store() as store:
            store.db.execute(
                "UPDATE scan_schedules SET last_run = ? WHERE host IN (?, ?)", (now, host, GLOBAL)
            )


def run_scheduler(
    jobs: ScanJobs,
    rules: Callable[[], Sequence[RuleAffected]],
    *,
    tcp_ports: Sequence[int] = probes.DEFAULT_TCP_PORTS,
    udp_ports: Sequence[int] = probes.DEFAULT_UDP_PORTS,
    timeout: float = probes.DEFAULT_TIMEOUT_S,
    control_socket: Path | None = None,
    stop: threading.Event | None = None,
    once: bool = False,
    max_sleep: float = 5.0,
    out: TextIO | None = None,
) -> int:
    """Scan due hosts until `stop` is set (or one pass with `once`); returns runs carried out.

    Each due host gets a run with trigger 'schedule' (skipped while the host has another
    active run); auto-apply hosts get the recommendation applied and the gateway reloaded
    (control_socket). Sleeps until the next due time, at most max_sleep, so new schedules are
    noticed."""
    stop = stop or threading.Event()
    count = 0
    while not stop.is_set():
        jobs.expire_stale()
        for host in jobs.due():
            if stop.is_set():
                break
            try:
                run = jobs.queue(host, "schedule", "scheduler")
            except ScanBusy as err:
                if out is not None:
                    out.write(f"vpatch scan --scheduled: {err}; skipped\n")
                continue
            jobs.mark_scheduled(host, run.queued_at)
            done = jobs.execute(
                run.id, rules(), tcp_ports, udp_ports, timeout, control_socket=control_socket,
                stop=stop,
            )  # fmt: skip
            count += 1
            if out is not None:
                rep = done.report or {}
                out.write(
                    f"vpatch scan --scheduled: {host} run {done.id} {done.status}"
                    f"{' (' + done.error + ')' if done.error else ''}; "
                    f"{len(rep.get('recommendations', []))} recommendation(s), "
                    f"applied {done.applied}, reload {rep.get('reload', {}).get('ok', '-')}\n"
                )
                out.flush()
        if once:
            break
        wait = jobs.next_due_in()
        stop.wait(max_sleep if wait is None else min(max(wait, 0.05), max_sleep))
    return count
