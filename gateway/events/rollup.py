"""Rollups of the event store for the dashboard, kept up to date as events are inserted.

Why: the dashboard used to read every event of its window (7-8 s for 1M events, and an attacker
makes events just by sending exploits); it now reads these tables, whose size is set by the
window and the bounds below, not by the number of events (issue 15, finding 3).

Tables (in the event store, beside `events`; SCHEMA):
- `event_minutes(minute, allowed, blocked)`: events per UTC minute (`minute` = epoch seconds of
  its start), blocked (alert.action "blocked") and the rest. Chart and totals.
- `event_tops(dim, hour, key, label, n)`: events per UTC hour and per key of a dimension: `rule`
  (key: signature_id, label: the signature), `source` (src_ip), `host` (dest_ip) and `cves`
  (key: the events row's `cves` text, ",CVE-A,CVE-B,"; split by the reader). Top lists.

What it guarantees:
- `add_rollups(conn, rows)` counts the rows (the events table's INSERT tuples, sink.py `_row`),
  each as many times as its `count` column says (an aggregated record, gateway/events/
  aggregate.py, stands for that many events), in the caller's transaction, so events and
  rollups commit together: a reader never sees one without the other. Rows whose timestamp
  is not ISO 8601 are stored but not counted.
- Bound: at most MAX_KEYS_PER_HOUR keys per dimension and hour. Policy at the bound: a key not
  yet in that hour is counted under OTHER_KEY (label "(other)"), so totals stay exact and the
  reader sees how much fell outside the kept keys; each hour starts afresh. A reader of a
  window of H hours reads at most H * 60 minute rows and 4 * H * (MAX_KEYS_PER_HOUR + 1) top rows.
- Readers (`minute_counts`, `top_keys`) go by primary key ranges (EXPLAIN QUERY PLAN: a search,
  never a scan of `events`) and return at most their bound of rows.
- `create_rollups(conn)` creates the tables once (race-free across processes); on a store that
  already held events it records where counting starts, and `backfill_step(conn, now)` counts
  the older events in chunks of BACKFILL_CHUNK (newest first, back to BACKFILL_HOURS before
  `now`), each chunk in its own transaction with its cursor, so several writers can share it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from gateway.database import AnyConn, is_postgres, table_exists

__all__ = [
    "BACKFILL_CHUNK",
    "BACKFILL_HOURS",
    "DIMENSIONS",
    "MAX_KEYS_PER_HOUR",
    "OTHER_KEY",
    "SCHEMA",
    "add_rollups",
    "backfill_pending",
    "backfill_step",
    "create_rollups",
    "MINUTES_SQL",
    "TOPS_SQL",
    "minute_counts",
    "rollups_exist",
    "top_keys",
]

MAX_KEYS_PER_HOUR: Final = 100  # keys kept per dimension and hour (then OTHER_KEY)
OTHER_KEY: Final = ""
OTHER_LABEL: Final = "(other)"
BACKFILL_CHUNK: Final = 5000  # event ids counted per backfill transaction
BACKFILL_HOURS: Final = 24 * 30  # the dashboard's longest window: older events are not counted

# dimension -> (index of the key, index of the label) in an events row (sink.py _row / _INSERT)
_TS, _SIG, _SIGNATURE, _ACTION, _SRC, _DEST, _CVES, _COUNT = 0, 3, 4, 5, 8, 10, 14, 16
DIMENSIONS: Final = {"rule": (_SIG, _SIGNATURE), "source": (_SRC, _SRC), "host": (_DEST, _DEST),
                     "cves": (_CVES, _CVES)}  # fmt: skip

SCHEMA: Final = """
CREATE TABLE event_minutes (
    minute INTEGER PRIMARY KEY,
    allowed INTEGER NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE event_tops (
    dim TEXT NOT NULL,
    hour INTEGER NOT NULL,
    key NOT NULL,
    label TEXT,
    n INTEGER NOT NULL,
    PRIMARY KEY (dim, hour, key)
) WITHOUT ROWID;
CREATE TABLE event_rollup_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_ROW_COLUMNS: Final = (
    "timestamp, flow_id, event_type, signature_id, signature, action, rule_action, severity,"
    " src_ip, src_port, dest_ip, dest_port, proto, app_proto, cves, NULL, count"
)


def _epoch(timestamp: object) -> int | None:
    try:
        return int(datetime.fromisoformat(str(timestamp)).timestamp())
    except (ValueError, OverflowError, OSError):
        return None


def add_rollups(conn: AnyConn, rows: Iterable[Sequence[Any]]) -> None:
    """Count `rows` (events table tuples) into the rollups; call inside the transaction that
    inserts them."""
    minutes: Counter[tuple[int, bool]] = Counter()
    tops: Counter[tuple[str, int, Any]] = Counter()
    labels: dict[tuple[str, int, Any], Any] = {}
    for row in rows:
        ts = _epoch(row[_TS])
        if ts is None:
            continue
        n = int(row[_COUNT] or 1) if len(row) > _COUNT else 1
        minutes[(ts - ts % 60, row[_ACTION] == "blocked")] += n
        hour = ts - ts % 3600
        for dim, (k, label) in DIMENSIONS.items():
            key = row[k] if row[k] is not None else OTHER_KEY
            tops[(dim, hour, key)] += n
            labels[(dim, hour, key)] = row[label]
    conn.executemany(
        "INSERT INTO event_minutes (minute, allowed, blocked) VALUES (?, ?, ?) ON CONFLICT(minute)"
        " DO UPDATE SET allowed = event_minutes.allowed + excluded.allowed,"
        " blocked = event_minutes.blocked + excluded.blocked",
        [(m, 0 if blocked else n, n if blocked else 0) for (m, blocked), n in minutes.items()],
    )
    _add_tops(conn, tops, labels)


def _add_tops(
    conn: AnyConn,
    tops: Counter[tuple[str, int, Any]],
    labels: dict[tuple[str, int, Any], Any],
) -> None:
    if is_postgres(conn):  # its `key` column is TEXT (SQLite's takes any type)
        labels = {(d, h, str(k)): label for (d, h, k), label in labels.items()}
        tops = Counter({(d, h, str(k)): n for (d, h, k), n in tops.items()})
    by_hour: dict[tuple[str, int], list[Any]] = {}
    for dim, hour, key in tops:
        by_hour.setdefault((dim, hour), []).append(key)
    updates: list[tuple[Any, ...]] = []
    inserts: list[tuple[Any, ...]] = []
    for (dim, hour), keys in by_hour.items():
        stored = {k for (k,) in conn.execute(  # at most MAX_KEYS_PER_HOUR + 1 rows
            "SELECT key FROM event_tops WHERE dim = ? AND hour = ?", (dim, hour))}  # fmt: skip
        room = MAX_KEYS_PER_HOUR - len(stored - {OTHER_KEY})
        other = 0
        for key in keys:
            n, label = tops[(dim, hour, key)], labels[(dim, hour, key)]
            if key != OTHER_KEY and key in stored:
                updates.append((n, label, dim, hour, key))
            elif key != OTHER_KEY and room > 0:
                inserts.append((dim, hour, key, label, n))
                room -= 1
            else:
                other += n  # the bound (or no key): counted, under "(other)"
        if other:
            inserts.append((dim, hour, OTHER_KEY, OTHER_LABEL, other))
    conn.executemany(
        "UPDATE event_tops SET n = n + ?, label = ? WHERE dim = ? AND hour = ? AND key = ?",
        updates,
    )
    conn.executemany(
        "INSERT INTO event_tops (dim, hour, key, label, n) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(dim, hour, key) DO UPDATE SET n = event_tops.n + excluded.n",
        inserts,
    )


MINUTES_SQL: Final = (
    "SELECT minute, allowed, blocked FROM event_minutes WHERE minute >= ? AND minute < ?"
    " ORDER BY minute"
)


def minute_counts(conn: AnyConn, start: int, end: int) -> list[tuple[int, int, int]]:
    """(minute, allowed, blocked) for the minutes in [start, end) (epoch seconds)."""
    rows = conn.execute(MINUTES_SQL, (start, end))
    return [(int(m), int(a), int(b)) for m, a, b in rows]


TOPS_SQL: Final = (
    "SELECT key, MAX(label), SUM(n) AS c FROM event_tops WHERE dim = ? AND hour >= ?"
    " AND hour < ? GROUP BY key ORDER BY c DESC, key LIMIT ?"
)


def top_keys(conn: AnyConn, dim: str, start: int, end: int, limit: int) -> list[Any]:
    """[(key, label, count)] of dimension `dim` in the hours starting in [start, end), the
    largest counts first (OTHER_KEY among them when the bound was reached)."""
    rows = conn.execute(TOPS_SQL, (dim, start, end, limit))
    return [(k, label, int(c)) for k, label, c in rows]


def rollups_exist(conn: AnyConn) -> bool:
    """Whether the store has rollups (a store written by an older vpatch has none until a
    writer of this version opens it)."""
    return _exists(conn)


def create_rollups(conn: AnyConn) -> None:
    """Create the rollup tables unless they exist (one process does it; `conn` in autocommit).
    Events already in the store are left to `backfill_step`."""
    if _exists(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _exists(conn):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO event_rollup_state (name, value) "
                "SELECT 'backfill_next', COALESCE(MAX(id), 0) FROM events"
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _exists(conn: AnyConn) -> bool:
    return table_exists(conn, "event_rollup_state")


def backfill_pending(conn: AnyConn) -> bool:
    row = conn.execute(
        "SELECT value FROM event_rollup_state WHERE name = 'backfill_next'"
    ).fetchone()
    return row is not None and int(row[0]) > 0


def backfill_step(conn: AnyConn, now: float) -> bool:
    """Count one chunk of the events that were in the store before the rollups existed (newest
    first); False once there is nothing left. `conn` in autocommit mode."""
    horizon = now - BACKFILL_HOURS * 3600
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT value FROM event_rollup_state WHERE name = 'backfill_next'"
        ).fetchone()
        upto = int(row[0]) if row is not None else 0
        if upto > 0:
            rows = conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM events WHERE id <= ? AND id > ?",
                (upto, upto - BACKFILL_CHUNK),
            ).fetchall()
            add_rollups(conn, rows)
            upto -= BACKFILL_CHUNK
            stamps = [_epoch(r[_TS]) for r in rows]
            if rows and all(t is None or t < horizon for t in stamps):
                upto = 0  # ids grow with time: what is older lies outside the longest window
            conn.execute(
                "UPDATE event_rollup_state SET value = ? WHERE name = 'backfill_next'",
                (max(upto, 0),),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return upto > 0
