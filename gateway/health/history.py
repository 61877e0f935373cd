"""The health check's history: one sample per check, so that a report can give a period's
gateway health (gateway/reports/summary.py), which the gateway's own counters (since its start)
cannot.

`vpatch health check` (every minute by vpatch-health.timer) records what it saw in
`<health.state stem>.history.db` beside its state (`history_path`): whether the gateway
answered, when the answering instance started, and its cumulative worker restarts, queue drops
and uninspected packets. Samples older than KEEP_DAYS are removed as new ones come.

`period_health(path, start, end)` sums a period from them: checks made and how many found the
gateway unreachable, gateway starts in the period, and for each counter the growth between
consecutive samples of one gateway instance (an instance is known by its start time), plus,
for an instance that started inside the period, what it had counted at its first sample. When
the first instance of the period started before it and no sample precedes the period, what it
counted before its first sample in the period is unknown: `complete` is then False.

Guarantees: `record` raises HealthHistoryError naming the file when it cannot write (the check
reports it); `period_health` never raises for a missing or unreadable file (None: no history).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

from gateway.errors import VpatchError
from gateway.health.checks import Counters
from gateway.statefiles import create_file, make_dir, shared_gid

__all__ = ["KEEP_DAYS", "HealthHistoryError", "history_path", "period_health", "record"]

KEEP_DAYS: Final = 400  # a year of monthly reports, and some
SAME_INSTANCE_S: Final = 2.0  # start times (now - uptime) of one instance agree within this
_COUNTERS: Final = ("restarts", "queue_drops", "uninspected")
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS samples(ts REAL NOT NULL, reachable INTEGER NOT NULL, "
    "started REAL NOT NULL, restarts INTEGER NOT NULL, queue_drops INTEGER NOT NULL, "
    "uninspected INTEGER NOT NULL); CREATE INDEX IF NOT EXISTS samples_ts ON samples(ts)"
)


class HealthHistoryError(VpatchError):
    """The health history could not be written (names the file and the cause)."""


def history_path(state: Path) -> Path:
    return state.with_name(state.stem + ".history.db")


def record(path: Path, now: float, counters: Counters | None) -> None:
    """One check's sample (`counters` None: the gateway did not answer)."""
    try:
        if not path.exists():  # the state's modes: 0600, or 0660 with the group vpatch (the
            gid = shared_gid()  # daily report runs as vpatch-ui in that group)
            make_dir(path.parent, gid)
            create_file(path, gid)
        with sqlite3.connect(str(path), timeout=5.0) as db:
            db.executescript(_SCHEMA)
            row = (now, 0, 0.0, 0, 0, 0)
            if counters is not None:
                row = (now, 1, counters.started, counters.restarts, counters.queue_drops,
                       counters.uninspected)  # fmt: skip
            db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)", row)
            db.execute("DELETE FROM samples WHERE ts < ?", (now - KEEP_DAYS * 86400,))
        db.close()
    except (OSError, sqlite3.Error, VpatchError) as err:
        raise HealthHistoryError(f"health history {path}: cannot be written: {err}") from err


def period_health(path: Path | None, start: float, end: float) -> dict[str, Any] | None:
    """The gateway's health in [start, end) from the samples (see the module comment), or None
    when there is no readable history."""
    if path is None or not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            cols = "ts, reachable, started, restarts, queue_drops, uninspected"
            before = db.execute(
                f"SELECT {cols} FROM samples WHERE ts < ? AND reachable = 1 "
                "ORDER BY ts DESC LIMIT 1", (start,)
            ).fetchone()  # fmt: skip
            rows = db.execute(
                f"SELECT {cols} FROM samples WHERE ts >= ? AND ts < ? ORDER BY ts", (start, end)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return _summed(before, rows, start, end)


def _summed(
    before: tuple[Any, ...] | None, rows: list[tuple[Any, ...]], start: float, end: float
) -> dict[str, Any]:
    totals = dict.fromkeys(_COUNTERS, 0)
    starts = unreachable = 0
    complete = True
    prev = before
    for ts, reachable, started, *values in rows:
        if not reachable:
            unreachable += 1
            continue
        if prev is not None and abs(started - prev[2]) < SAME_INSTANCE_S:
            for name, now_value, then_value in zip(_COUNTERS, values, prev[3:], strict=True):
                totals[name] += max(0, now_value - then_value)
        elif start <= started < end:  # started in the period: all it counted is in it
            starts += 1
            for name, value in zip(_COUNTERS, values, strict=True):
                totals[name] += value
        else:  # running since before the period, no sample before it: the part before is unknown
            complete = False
        prev = (ts, reachable, started, *values)
    return {
        "checks": len(rows),
        "unreachable_checks": unreachable,
        "first_check": rows[0][0] if rows else None,
        "last_check": rows[-1][0] if rows else None,
        "gateway_starts": starts,
        "worker_restarts": totals["restarts"],
        "queue_drops": totals["queue_drops"],
        "uninspected_packets": totals["uninspected"],
        "complete": complete and bool(rows),
    }
