"""The shared event store (gateway/events/shared.py) on a real PostgreSQL server: a gateway's
spool (its local SQLite event store) is forwarded exactly once, tagged with its name, with the
dashboard's rollups; a database that cannot be reached holds nothing back for good and sends
nothing twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.database import connect
from gateway.events.rollup import minute_counts, top_keys
from gateway.events.shared import BATCH, EventForwarder, open_shared_events
from gateway.events.sink import EventSink
from tests.events.test_sink import event


def spool(path: Path, gateway: str, first: int, n: int) -> None:
    with EventSink(path, None, gateway=gateway) as sink:
        for i in range(first, first + n):
            sink.emit(event(i, blocked=i % 2 == 0))


def counts(url: str, gateway: str) -> tuple[int, int]:
    db = connect(url)
    try:
        row = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT local_id) FROM events WHERE gateway = ?", (gateway,)
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        db.close()


def test_two_spools_are_forwarded_once_each_with_rollups(tmp_path: Path, postgres_url: str) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    spool(a, "gw-a", 0, BATCH + 7)  # more than one batch
    spool(b, "gw-b", 0, 5)
    fa = EventForwarder(a, postgres_url, "gw-a", 0.1)
    fb = EventForwarder(b, postgres_url, "gw-b", 0.1)
    while fa.forward_once():
        pass
    while fb.forward_once():
        pass
    assert fa.forward_once() == 0 and fa.backlog == 0 and not fa.failing
    assert counts(postgres_url, "gw-a") == (BATCH + 7, BATCH + 7)
    assert counts(postgres_url, "gw-b") == (5, 5)
    spool(a, "gw-a", BATCH + 7, 3)  # later events: only those go
    assert fa.forward_once() == 3 and counts(postgres_url, "gw-a") == (BATCH + 10, BATCH + 10)
    db = open_shared_events(postgres_url)
    try:
        minutes = minute_counts(db, 0, 2_000_000_000)
        assert sum(al + bl for _, al, bl in minutes) == BATCH + 15
        rules = {str(k): n for k, _label, n in top_keys(db, "rule", 0, 2_000_000_000, 10)}
        assert sum(rules.values()) == BATCH + 15 and set(rules) == {"9001001", "9001002"}
    finally:
        db.close()


def test_an_unreachable_database_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, postgres_url: str, postgres_server: Any
) -> None:
    a = tmp_path / "a.db"
    spool(a, "gw-a", 0, 10)
    broken = postgres_url.replace(str(postgres_server.socket_dir), str(tmp_path / "nosock"))
    f = EventForwarder(a, broken, "gw-a", 0.1)
    assert f.forward_once() == 0 and f.failing and "nosock" in f.last_error
    f.url = postgres_url  # the database is back
    assert f.forward_once() == 10 and not f.failing
    again = EventForwarder(a, postgres_url, "gw-a", 0.1)  # a restarted gateway: same cursor
    assert again.forward_once() == 0
    assert counts(postgres_url, "gw-a") == (10, 10)


@pytest.mark.timeout(60)
def test_the_thread_forwards_until_stopped(tmp_path: Path, postgres_url: str) -> None:
    a = tmp_path / "a.db"
    spool(a, "gw-a", 0, 1)
    f = EventForwarder(a, postgres_url, "gw-a", 0.1)
    f.start()
    spool(a, "gw-a", 1, 4)
    f.stop()  # one last round after the sink closed
    assert counts(postgres_url, "gw-a") == (5, 5) and f.stats()["forwarded"] == 5
