"""An event storm through the real packet path: 100,000 firing datagrams through the engine,
the worker's PacketHandler and the event sink (SQLite + EVE JSON lines), as in a worker.

Held: every packet got its verdict (the packet path never waits on the store); the store
received far fewer records than events (aggregated per rule, source, destination and window:
issue 15 "event storms"); the records' counts add up to every event the engine raised, in
SQLite, in the JSON lines and in the dashboard's rollups; nothing was dropped or lost, and a
clean stop wrote everything (close flushes the queue and every open window).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from gateway.config import FailPolicy
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.events.sink import EventSink
from gateway.intake.nfqueue import PacketHandler, WorkerStats, publish_sink
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.traffic import udp_exchange
from tests.intake.test_nfqueue import QueuedPacket

STORM = 100_000
SOURCES = 10
SLAMMER = bytes([4]) + b"\x01" * 96 + b"\x90" * 279  # rules/ms02-039-slammer.yaml's shape


def test_a_storm_of_100k_alerts_is_aggregated_and_every_verdict_given(tmp_path: Path) -> None:
    db, jsonl = tmp_path / "events.db", tmp_path / "eve.json"
    # room for every flow: the storm alone (a full table would add its own limit events)
    engine = Engine(load_rules([default_rule_dir()]), EngineConfig(max_flows=2 * STORM))
    sink = EventSink(db, jsonl, max_queue=10_000, aggregate_window=1.0, aggregate_keys=10_000)
    stats = WorkerStats()
    handler = PacketHandler(engine, stats, FailPolicy.OPEN, 1 << 28, 1 << 28, sink)
    started = time.monotonic()
    verdicts = {"accept": 0, "drop": 0, "": 0}
    for i in range(STORM):  # each datagram its own flow: its own firing
        src = f"198.18.1.{i % SOURCES + 1}"
        sport = 1024 + i // SOURCES
        (data,) = udp_exchange(SLAMMER, sport=sport, dport=1434, client=src)
        pkt = QueuedPacket(data)
        handler(pkt)
        verdicts[pkt.verdict] += 1
    seconds = time.monotonic() - started
    sink.close()
    publish_sink(stats, sink)
    assert verdicts == {"accept": 0, "drop": STORM, "": 0}
    assert engine.stats.events == STORM and stats.get("events") == STORM
    assert stats.get("events_dropped") == 0 and stats.get("events_lost") == 0
    assert stats.get("store_errors") == 0 and stats.get("store_failing") == 0
    conn = sqlite3.connect(db)
    records, events = conn.execute("SELECT COUNT(*), SUM(count) FROM events").fetchone()
    assert events == STORM  # every event counted, none lost
    # at most two records per key (first + summary) per window of ~1 s (+ the last window)
    windows = int(seconds / 1.0) + 2
    assert records <= 2 * SOURCES * windows, (records, seconds)
    assert records < STORM / 50
    per_source = dict(conn.execute("SELECT src_ip, SUM(count) FROM events GROUP BY src_ip"))
    assert per_source == {f"198.18.1.{k}": STORM // SOURCES for k in range(1, SOURCES + 1)}
    blocked = conn.execute("SELECT SUM(blocked) FROM event_minutes").fetchone()[0]
    assert blocked == STORM  # the dashboard's rollups count events, not records
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == records and sum(e["vpatch"]["count"] for e in lines) == STORM
    assert {e["alert"]["signature_id"] for e in lines} == {9001020}


def test_without_aggregation_a_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    """Aggregation off and a tiny queue behind a store locked by another writer: emit returns
    at once, the events that did not fit are counted as dropped (the old behaviour, kept for
    `events.aggregate_window: 0`)."""
    db = tmp_path / "events.db"
    sink = EventSink(db, None, max_queue=5, aggregate_window=0.0)
    locker = sqlite3.connect(db, timeout=1, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        engine = Engine(load_rules([default_rule_dir()]))
        for i in range(2000):  # a blocking emit would hang here: the lock is still held
            (data,) = udp_exchange(SLAMMER, sport=2000 + i, dport=1434)
            for event in engine.process_ip(data, 1e9 + i).events:
                sink.emit(event)
    finally:
        locker.execute("COMMIT")
        locker.close()
    sink.close()
    assert sink.emitted + sink.dropped == 2000 and sink.dropped > 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == sink.emitted
