"""gateway/events/rollup.py on real SQLite files: the rollups equal a plain recount of the
events (per minute, per hour and key), the per-hour bound counts the rest under "(other)" with
totals kept exact, the readers search by primary key (EXPLAIN QUERY PLAN), events written by the
sink are counted, and a store written before rollups existed is counted by the sink's writer."""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.events.rollup import (
    MAX_KEYS_PER_HOUR,
    MINUTES_SQL,
    OTHER_KEY,
    TOPS_SQL,
    backfill_pending,
)
from gateway.events.sink import _INSERT, EventSink, create_store, store_rows
from gateway.events.sink import SCHEMA as EVENTS_SCHEMA
from tests.events.test_sink import event

NOW = 1_800_000_000


def row(ts: float | str, action: str | None = "blocked", sig: int = 9000100, src: str = "a",
        dest: str = "d", cves: str = ",CVE-1,", count: int = 1) -> tuple[Any, ...]:  # fmt: skip
    """An events row (sink.py _row order) with what the rollups read."""
    stamp = ts if isinstance(ts, str) else datetime.fromtimestamp(ts, UTC).isoformat()
    return (stamp, 1, "alert", sig, f"sig {sig}", action, "reset", 1, src, 1, dest, 80, "TCP",
            "http", cves, "{}", count, "")  # fmt: skip


def recount(rows: list[tuple[Any, ...]]) -> tuple[Counter[Any], Counter[Any]]:
    """Per (minute, blocked) and per (dim, hour, key), counted one event at a time (a row
    stands for `count` events)."""
    minutes: Counter[Any] = Counter()
    tops: Counter[Any] = Counter()
    for r in rows:
        try:
            ts = int(datetime.fromisoformat(r[0]).timestamp())
        except ValueError:
            continue
        n = r[16] if len(r) > 16 else 1
        minutes[(ts // 60 * 60, r[5] == "blocked")] += n
        for dim, k in (("rule", 3), ("source", 8), ("host", 10), ("cves", 14)):
            tops[(dim, ts // 3600 * 3600, r[k])] += n
    return minutes, tops


def tables(conn: sqlite3.Connection) -> tuple[Counter[Any], Counter[Any]]:
    minutes: Counter[Any] = Counter()
    for m, allowed, blocked in conn.execute("SELECT minute, allowed, blocked FROM event_minutes"):
        minutes[(m, False)] += allowed
        minutes[(m, True)] += blocked
    tops = Counter({(d, h, k): n for d, h, k, n in
                    conn.execute("SELECT dim, hour, key, n FROM event_tops")})  # fmt: skip
    return +minutes, tops


def store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    create_store(conn)
    return conn


def insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], rng: random.Random) -> None:
    """In batches of random sizes, each in its transaction, as the sink's writer does."""
    i = 0
    while i < len(rows):
        n = rng.randint(1, 500)
        conn.execute("BEGIN IMMEDIATE")
        store_rows(conn, rows[i : i + n])
        conn.execute("COMMIT")
        i += n


def test_rollups_equal_a_recount_of_the_events(tmp_path: Path) -> None:
    rng = random.Random(15)
    rows = [row(NOW - rng.uniform(0, 40 * 86400), rng.choice(["blocked", "allowed", None]),
                rng.choice([9000100, 9000001, 9000002]), f"198.18.1.{rng.randint(1, 40)}",
                rng.choice(["198.18.0.20", "198.18.0.21"]),
                rng.choice([",CVE-1,", ",CVE-1,CVE-2,", ""]), rng.choice([1, 1, 1, 7, 1000]))
            for _ in range(4000)]  # fmt: skip
    rows += [row("yesterday"), row("2030-13-45T00:00:00")]  # stored, not counted
    conn = store(tmp_path / "events.db")
    insert(conn, rows, rng)
    assert tables(conn) == recount(rows)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == len(rows)


def test_the_bound_counts_the_rest_under_other(tmp_path: Path) -> None:
    rng = random.Random(3)
    sources = [f"198.18.2.{i}" for i in range(MAX_KEYS_PER_HOUR + 150)]
    rows = [row(NOW + i % 3000, src=src) for i, src in enumerate(sources * 2)]
    conn = store(tmp_path / "events.db")
    insert(conn, rows, rng)
    hour = NOW // 3600 * 3600
    kept = dict(conn.execute(
        "SELECT key, n FROM event_tops WHERE dim = 'source' AND hour = ?", (hour,)))  # fmt: skip
    assert len(kept) == MAX_KEYS_PER_HOUR + 1 and kept[OTHER_KEY] == 2 * 150
    assert set(kept) - {OTHER_KEY} == set(sources[:MAX_KEYS_PER_HOUR])  # the first seen
    assert sum(kept.values()) == len(rows)  # nothing lost
    assert {n for k, n in kept.items() if k != OTHER_KEY} == {2}


def test_readers_search_by_primary_key(tmp_path: Path) -> None:
    conn = store(tmp_path / "events.db")
    insert(conn, [row(NOW - i * 60) for i in range(100)], random.Random(1))
    conn.execute("ANALYZE")
    for sql, args in ((MINUTES_SQL, (0, NOW)), (TOPS_SQL, ("source", 0, NOW, 10))):
        plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "SEARCH" in plan and "SCAN" not in plan and "events " not in plan, plan


def test_the_sink_counts_what_it_writes(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with EventSink(db, None) as sink:
        for i in range(300):
            sink.emit(event(i, blocked=i % 3 != 0))
    conn = sqlite3.connect(str(db))
    full = conn.execute("SELECT timestamp, flow_id, event_type, signature_id, signature, action,"
                        " rule_action, severity, src_ip, src_port, dest_ip, dest_port, proto,"
                        " app_proto, cves FROM events").fetchall()  # fmt: skip
    assert len(full) == 300
    assert tables(conn) == recount(full)
    assert not backfill_pending(conn)


def test_a_store_written_before_rollups_is_counted_by_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    now = time.time()
    old = [row(now - i * 97.0, src=f"198.18.3.{i % 7}") for i in range(12_000)]  # 13 days
    ancient = [row(now - 60 * 86400 - i) for i in range(10)]  # outside every window
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.executescript(EVENTS_SCHEMA)  # the schema of a vpatch without rollups
    with conn:
        conn.execute("BEGIN")
        conn.executemany(_INSERT, ancient + old[::-1])  # ids grow with time
    db.chmod(0o600)  # as the sink creates it (a store every user may read is refused)
    with EventSink(db, None) as sink:
        deadline = time.monotonic() + 60
        while backfill_pending(conn) and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.emit(event(1))  # a new event, counted on its own
    assert not backfill_pending(conn)
    minutes, tops = tables(conn)
    want_minutes, want_tops = recount(old)
    new_minute = (1_700_000_001 // 60 * 60, True)
    assert minutes[new_minute] == 1 + want_minutes[new_minute]
    del minutes[new_minute], want_minutes[new_minute]
    horizon = int(now) - 30 * 86400
    assert {k: n for k, n in minutes.items() if k[0] >= horizon} == +want_minutes
    assert {k: n for k, n in tops.items() if k[0] == "source" and k[1] >= horizon} == {
        k: n for k, n in want_tops.items() if k[0] == "source"}  # fmt: skip


def test_a_store_from_before_aggregation_gets_its_count_column(tmp_path: Path) -> None:
    """An events table without `count` (written before aggregation) is given the column, its
    rows counting 1 each, and new aggregated rows are counted by their count."""
    db = tmp_path / "events.db"
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.executescript(EVENTS_SCHEMA.replace(",\n    count INTEGER NOT NULL DEFAULT 1", "")
                       .replace(",\n    gateway TEXT NOT NULL DEFAULT ''", ""))  # fmt: skip
    assert not {"count", "gateway"} & {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    with conn:
        conn.execute("BEGIN")
        old_insert = _INSERT.replace(", count, gateway)", ")").replace(", ?, ?)", ")")
        conn.executemany(old_insert, [row(NOW)[:16]])
    db.chmod(0o600)  # as the sink creates it (a store every user may read is refused)
    with EventSink(db, None, aggregate_window=3600) as sink:
        for _ in range(10):
            sink.emit(event(0))  # one key: one record now, one summary of 9 at close
    counts = [r[0] for r in conn.execute("SELECT count FROM events ORDER BY id")]
    assert counts == [1, 1, 9]
