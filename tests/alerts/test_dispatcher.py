"""gateway/alerts/dispatcher.py: events written to the real event store (sink schema) reach
a real webhook receiver; old events are not replayed; the rate limit holds back what exceeds
the bucket and sends one summary later; severity filter; a dead receiver is counted, not
fatal; the dispatcher thread of `vpatch run` works the same way (start/stop)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.alerts.channels import save_channel
from gateway.alerts.dispatcher import Dispatcher
from gateway.events.eve import DropReason, EventType, to_eve
from gateway.events.sink import _INSERT, SCHEMA, _row
from gateway.policy.store import Store
from tests.alerts.conftest import free_port, wait_for
from tests.webui.conftest import make_event


def add_events(db: Path, n: int, **kw: Any) -> None:
    conn = sqlite3.connect(str(db))
    conn.executescript(SCHEMA)
    for i in range(n):
        eve = to_eve(make_event(flow_id=1000 + i, **kw))
        conn.execute(_INSERT, _row(eve, json.dumps(eve)))
    conn.commit()
    conn.close()


def setup(tmp_path: Path, url: str, **kw: Any) -> tuple[Path, Path]:
    events, policy = tmp_path / "events.db", tmp_path / "policy.db"
    with Store(policy) as store:
        save_channel(store, {"name": "hook", "kind": "webhook", "url": url, **kw}, "test")
    return events, policy


def test_new_alerts_sent_old_not_replayed(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    add_events(events, 3)  # before the dispatcher starts: history, not news
    d = Dispatcher(events, policy)
    assert d.poll(0.0) == 0
    add_events(events, 2)
    assert d.poll(1.0) == 2
    reqs = wait_for(webhook.requests, 2)
    assert [json.loads(b)["event"]["flow_id"] for _, b in reqs] == [1000, 1001]
    assert d.sent == 2 and d.poll(2.0) == 0


def test_rate_limit_and_summary(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url, rate_per_min="6", burst="2")
    d = Dispatcher(events, policy)
    d.poll(0.0)
    add_events(events, 10)
    d.poll(1.0)
    assert d.sent == 2 and d.suppressed == 8
    d.poll(5.0)  # 0.4 token: nothing yet
    assert d.sent == 2
    d.poll(11.5)  # one token again: the summary goes out
    reqs = wait_for(webhook.requests, 3)
    summary = json.loads(reqs[2][1])
    assert summary["type"] == "suppressed"
    assert summary["suppressed"]["count"] == 8
    assert summary["suppressed"]["top"] == [["9000100", 8]]
    d.poll(30.0)
    assert d.sent == 3  # nothing more to summarise


def test_min_severity_filter(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url, min_severity="1")
    d = Dispatcher(events, policy)
    d.poll(0.0)
    add_events(events, 1, severity="low")  # EVE severity 3
    add_events(events, 1, severity="critical")  # EVE severity 1
    d.poll(1.0)
    (req,) = wait_for(webhook.requests)
    assert json.loads(req[1])["severity"] == 1
    assert d.sent == 1 and d.suppressed == 0


def test_dead_receiver_counted(tmp_path: Path) -> None:
    events, policy = setup(tmp_path, f"http://127.0.0.1:{free_port()}/none")
    d = Dispatcher(events, policy)
    d.poll(0.0)
    add_events(events, 2)
    d.poll(1.0)  # the first fails; the second joins the outbox without being tried
    assert (d.failures, d.sent, d.stats()["queued"]) == (1, 0, 2)


def test_failed_alerts_retried_in_order(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    d = Dispatcher(events, policy)
    d.poll(0.0)
    webhook.status = 503  # the receiver is up but failing
    add_events(events, 2)
    d.poll(1.0)
    assert (d.failures, d.stats()["queued"]) == (1, 2)
    d.poll(3.0)  # before the first retry delay: nothing tried
    assert len(wait_for(webhook.requests, 2, timeout=0.3)) == 1
    d.poll(6.5)  # first retry, still failing: the next waits longer
    assert (d.failures, d.stats()["queued"]) == (2, 2)
    webhook.status = 204
    add_events(events, 1)
    d.poll(20.0)  # before the second retry: the new alert waits behind the others
    assert (d.sent, d.stats()["queued"]) == (0, 3)
    d.poll(37.0)
    reqs = wait_for(webhook.requests, 5)
    assert [json.loads(b)["event"]["flow_id"] for _, b in reqs[2:]] == [1000, 1001, 1000]
    assert (d.sent, d.dropped, d.stats()["queued"]) == (3, 0, 0)
    add_events(events, 1)
    d.poll(38.0)  # the channel works again: no outbox, sent at once
    assert d.sent == 4 and len(wait_for(webhook.requests, 6)) == 6


def test_undeliverable_alerts_given_up(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("gateway.alerts.dispatcher.OUTBOX_LIMIT", 3)
    events, policy = setup(tmp_path, f"http://127.0.0.1:{free_port()}/none")
    d = Dispatcher(events, policy)
    d.poll(0.0)
    add_events(events, 5)
    d.poll(1.0)  # a full outbox gives up its oldest
    assert (d.stats()["queued"], d.dropped) == (3, 2)
    d.poll(3600.0)
    assert (d.stats()["queued"], d.dropped) == (3, 2)
    d.poll(3602.0)  # an hour after their first failure: given up, counted
    assert (d.stats()["queued"], d.dropped, d.sent) == (0, 5, 0)
    assert d.outboxes == {}


def test_thread_start_stop(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    add_events(events, 1)
    d = Dispatcher(events, policy)
    d.start()
    try:
        deadline = time.monotonic() + 5
        while d.last_id is None and time.monotonic() < deadline:
            time.sleep(0.02)
        add_events(events, 1)
        (req,) = wait_for(webhook.requests)
        assert json.loads(req[1])["event"]["flow_id"] == 1000
    finally:
        d.stop()
    assert d._thread is not None and not d._thread.is_alive()


def test_outbox_and_cursor_survive_a_restart(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    state = tmp_path / "events.alert-state.db"
    first = Dispatcher(events, policy, state_db=state)
    first.poll(0.0)
    webhook.status = 503
    add_events(events, 2)
    first.poll(1.0)
    assert (first.failures, first.stats()["queued"], first.stats()["durable"]) == (1, 2, True)
    del first  # `vpatch run` stops; one more event is flushed after the dispatcher's last read
    add_events(events, 1)
    webhook.status = 204
    second = Dispatcher(events, policy, state_db=state)
    assert second.poll(500.0) == 1  # the event it had not read yet, not the whole history
    reqs = wait_for(webhook.requests, 4)
    assert [json.loads(b)["event"]["flow_id"] for _, b in reqs[1:]] == [1000, 1001, 1000]
    assert (second.sent, second.stats()["queued"], second.dropped) == (3, 0, 0)
    third = Dispatcher(events, policy, state_db=state)  # nothing left to send
    assert third.poll(600.0) == 0 and third.stats()["queued"] == 0
    assert len(wait_for(webhook.requests, 5, timeout=0.3)) == 4


def test_first_start_with_state_does_not_replay_history(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    add_events(events, 3)
    d = Dispatcher(events, policy, state_db=tmp_path / "state.db")
    assert d.poll(0.0) == 0 and d.sent == 0
    # a cursor past the newest event (the event store was replaced): start at the newest
    with sqlite3.connect(str(tmp_path / "state.db")) as conn:
        conn.execute("UPDATE cursor SET last_id = 99")
    again = Dispatcher(events, policy, state_db=tmp_path / "state.db")
    assert again.poll(1.0) == 0
    add_events(events, 1)
    assert again.poll(2.0) == 1 and len(wait_for(webhook.requests)) == 1


def test_restored_alerts_given_up_by_wall_clock(tmp_path: Path) -> None:
    events, policy = setup(tmp_path, f"http://127.0.0.1:{free_port()}/none")
    state, wall = tmp_path / "state.db", [1_000_000.0]
    first = Dispatcher(events, policy, state_db=state, wall_clock=lambda: wall[0])
    first.poll(0.0)
    add_events(events, 2)
    first.poll(1.0)
    assert first.stats()["queued"] == 2
    wall[0] += 3000.0  # down for 50 minutes: still within the hour
    second = Dispatcher(events, policy, state_db=state, wall_clock=lambda: wall[0])
    second.poll(7.0)  # retried at once, fails again
    assert (second.failures, second.stats()["queued"], second.dropped) == (1, 2, 0)
    wall[0] += 700.0
    third = Dispatcher(events, policy, state_db=state, wall_clock=lambda: wall[0])
    third.poll(3.0)  # an hour and 40 s after the first failure: given up, counted
    assert (third.stats()["queued"], third.dropped, third.failures) == (0, 2, 0)


def test_bad_state_file_and_bad_rows(tmp_path: Path, webhook: Any, caplog: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    state = tmp_path / "state.db"
    state.write_bytes(b"this is not an SQLite database" * 100)
    d = Dispatcher(events, policy, state_db=state)
    d.poll(0.0)
    add_events(events, 1)
    d.poll(1.0)  # alerts still go out, in memory only; the file is named in the log
    assert d.sent == 1 and d.stats()["durable"] is False
    assert any(str(state) in r.getMessage() and "memory only" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert state.read_bytes().startswith(b"this is not")  # left for the admin to look at
    good = tmp_path / "good.db"
    Dispatcher(events, policy, state_db=good).poll(2.0)
    with sqlite3.connect(str(good)) as conn:
        conn.execute("INSERT INTO outbox (channel_id, first_failed, message) VALUES (1, ?, ?)",
                     (time.time(), '{"kind": "alert", "no_such_field": 1}'))  # fmt: skip
        conn.execute("INSERT INTO outbox (channel_id, first_failed, message) VALUES (1, ?, ?)",
                     (time.time(), "[not json"))  # fmt: skip
        ok = {"kind": "alert", "title": "t", "text": "x", "severity": 1, "timestamp": 1.0,
              "event": None, "suppressed": None}  # fmt: skip
        conn.execute("INSERT INTO outbox (channel_id, first_failed, message) VALUES (1, ?, ?)",
                     (time.time(), json.dumps({**ok, "severity": "high"})))  # fmt: skip
    restarted = Dispatcher(events, policy, state_db=good)
    caplog.clear()
    restarted.poll(3.0)
    assert (restarted.dropped, restarted.stats()["queued"], restarted.sent) == (3, 0, 0)
    assert any("field 'severity' has type str" in r.getMessage() for r in caplog.records)


def test_lockdown_drops_alert_firewall_and_setup_drops_do_not(tmp_path: Path, webhook: Any) -> None:
    events, policy = setup(tmp_path, webhook.url)
    d = Dispatcher(events, policy)
    d.poll(0.0)
    for reason in (DropReason.FIREWALL, DropReason.SETUP, DropReason.LOCKDOWN):
        add_events(events, 1, event_type=EventType.DROP, reason=reason, severity="medium",
                   signature=f"{reason.value} drop")  # fmt: skip
    d.poll(1.0)
    (req,) = wait_for(webhook.requests)
    assert json.loads(req[1])["event"]["alert"]["signature"] == "lockdown drop"
    assert d.sent == 1
