"""Tests for gateway/events/sink.py with real SQLite files and JSON-lines files."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.events.eve import Event
from gateway.events.sink import BATCH_WAIT, EventSink
from gateway.vocabulary import Action, Direction


def event(i: int, blocked: bool = True) -> Event:
    return Event(
        timestamp=1_700_000_000.0 + i,
        flow_id=1000 + i,
        src_ip="198.18.0.10",
        src_port=40000 + i % 100,
        dest_ip="198.18.0.20",
        dest_port=445,
        proto=6,
        server_port=445,
        direction=Direction.TO_SERVER,
        signature_id=9001001 + i % 2,
        signature="MS17-010 test",
        severity="critical",
        cves=("CVE-2017-0143", "CVE-2017-0144"),
        rule_action=Action.RESET if blocked else Action.ALERT,
        blocked=blocked,
    )


def test_events_land_in_sqlite_and_jsonl_with_a_concurrent_reader(tmp_path: Path) -> None:
    db, jsonl = tmp_path / "db" / "events.db", tmp_path / "log" / "eve.json"
    sink = EventSink(db, jsonl, max_queue=100_000)
    seen_counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            conn = sqlite3.connect(db, timeout=5)
            while not stop.is_set():
                seen_counts.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])
                time.sleep(0.005)
            conn.close()
        except BaseException as err:  # noqa: BLE001 (reported by the test)
            errors.append(err)

    t = threading.Thread(target=reader)
    t.start()
    try:
        n = 3000
        for i in range(n):
            sink.emit(event(i, blocked=i % 3 != 0))
            if i % 500 == 0:
                time.sleep(0.01)  # let the writer commit a few batches while the reader reads
    finally:
        sink.close()
        stop.set()
        t.join()
    assert not errors
    assert seen_counts == sorted(seen_counts)  # readers only ever see whole batches, growing
    assert sink.emitted == n and sink.written == n and sink.dropped == 0 and sink.write_errors == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == n
    blocked = conn.execute("SELECT count(*) FROM events WHERE action = 'blocked'").fetchone()[0]
    assert blocked == n - len(range(0, n, 3))
    row = conn.execute(
        "SELECT timestamp, flow_id, signature_id, rule_action, src_ip, src_port, dest_ip,"
        " dest_port, proto, app_proto, cves, eve FROM events WHERE flow_id = 1001"
    ).fetchone()
    assert row[:11] == (
        "2023-11-14T22:13:21.000000+00:00",
        1001,
        9001002,
        "reset",
        "198.18.0.10",
        40001,
        "198.18.0.20",
        445,
        "TCP",
        "smb",
        ",CVE-2017-0143,CVE-2017-0144,",
    )
    assert json.loads(row[11])["alert"]["metadata"]["cve"] == ["CVE-2017-0143", "CVE-2017-0144"]
    by_cve = "SELECT count(*) FROM events WHERE cves LIKE '%,CVE-2017-0144,%'"
    assert conn.execute(by_cve).fetchone()[0] == n
    indexed = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"events_timestamp", "events_flow_id", "events_signature_id", "events_action"} <= indexed
    conn.close()
    lines = jsonl.read_text().splitlines()
    assert len(lines) == n
    assert [json.loads(x)["flow_id"] for x in lines] == [1000 + i for i in range(n)]


def test_emit_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    sink = EventSink(db, None, max_queue=2)
    locker = sqlite3.connect(db, timeout=1, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer stalls on its commit
    try:
        sink.emit(event(0))
        deadline = time.monotonic() + 10
        while not sink._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(BATCH_WAIT + 0.3)  # batch window over: the writer now waits for the lock
        for i in range(1, 11):  # a blocking emit would hang here (the lock is still held)
            sink.emit(event(i))
    finally:
        locker.execute("COMMIT")
        locker.close()
    sink.close()
    assert sink.dropped == 8 and sink.emitted == 3 and sink.written == 3
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT flow_id FROM events ORDER BY id")] == [
        1000,
        1001,
        1002,
    ]
    conn.close()
    sink.emit(event(99))  # after close: dropped, no exception
    assert sink.dropped == 9


def test_jsonl_only_and_bad_paths(tmp_path: Path) -> None:
    with EventSink(None, tmp_path / "eve.json") as sink:
        sink.emit(event(1))
    assert json.loads((tmp_path / "eve.json").read_text())["flow_id"] == 1001
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"events.sqlite .*file/sub/events.db"):
        EventSink(blocker / "sub" / "events.db", None)
    with pytest.raises(ConfigError, match="events.jsonl"):
        EventSink(None, blocker / "eve.json")
    with pytest.raises(ConfigError, match="max_queue"):
        EventSink(None, None, max_queue=0)
