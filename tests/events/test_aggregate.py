"""Tests for gateway/events/aggregate.py with a clock passed in (no sleeping)."""

from __future__ import annotations

from dataclasses import replace

from gateway.events.aggregate import FOLD_DEST, FOLD_PORT, FOLD_SRC, Aggregator
from gateway.events.eve import Event, EventType
from tests.events.test_sink import event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ev(i: int, src: str = "198.18.0.10", dest: str = "198.18.0.20", sig: int = 9001001) -> Event:
    return replace(event(i), src_ip=src, dest_ip=dest, signature_id=sig)


def test_first_event_passes_the_rest_are_counted_into_one_summary() -> None:
    clock = Clock()
    agg = Aggregator(1.0, 100, clock)
    passed = [e for i in range(1000) if (e := agg.add(ev(i))) is not None]
    assert [e.flow_id for e in passed] == [1000]
    assert agg.close_due() == []  # the window is still open
    clock.now += 1.0
    (summary,) = agg.close_due()
    assert summary.count == 999 and summary.flow_id == 1999 and summary.folded == ""
    assert agg.add(ev(5000)) is not None  # a new window: passed at once again
    assert agg.close_due() == [] and agg.close_all() == []  # nothing counted in it


def test_keys_are_rule_source_destination_and_blocked() -> None:
    agg = Aggregator(1.0, 100, Clock())
    firsts = [
        agg.add(ev(1)),
        agg.add(ev(2, src="198.18.0.11")),
        agg.add(ev(3, dest="198.18.0.21")),
        agg.add(ev(4, sig=9001002)),
        agg.add(replace(ev(5), blocked=False)),
        agg.add(ev(6)),  # same key as the first
    ]
    assert [e is not None for e in firsts] == [True] * 5 + [False]


def test_counts_add_up_whatever_the_mix() -> None:
    clock = Clock()
    agg = Aggregator(0.5, 20, clock)
    records: list[Event] = []
    for i in range(20_000):
        e = agg.add(ev(i, src=f"198.18.{i % 7}.{i % 53}", sig=9001001 + i % 3))
        if e is not None:
            records.append(e)
        if i % 1000 == 0:
            clock.now += 0.3
            records += agg.close_due()
    records += agg.close_all()
    assert sum(r.count for r in records) == 20_000 == agg.added
    assert agg.passed + agg.aggregated == agg.added
    assert len(agg) == 0


def test_bounded_keys_fold_sources_then_destinations() -> None:
    """Spoofed sources: at most max_keys exact windows, then per (rule, destination), then per
    rule; memory stays bounded and every event is still counted."""
    clock = Clock()
    agg = Aggregator(1.0, 10, clock)
    passed = [agg.add(ev(i, src=f"198.18.{i // 256}.{i % 256}", dest=f"198.19.0.{i % 30}"))
              for i in range(5000)]  # fmt: skip
    assert sum(e is not None for e in passed) == 10  # the first 10 sources
    assert len(agg) <= 10 + 10 + 2
    summaries = agg.close_all()
    folded = {s.folded for s in summaries}
    assert folded == {FOLD_SRC, FOLD_DEST}
    assert sum(s.count for s in summaries) == 5000 - 10
    assert agg.folded == 5000 - 10


def test_unsent_events_go_into_the_summary() -> None:
    agg = Aggregator(1.0, 100, Clock())
    first = agg.add(ev(1))
    assert first is not None
    agg.unsent(first)  # the queue was full
    assert agg.add(ev(2)) is None
    (summary,) = agg.close_all()
    assert summary.count == 2 and agg.passed == 0 and agg.aggregated == 2


def test_window_zero_passes_everything() -> None:
    agg = Aggregator(0.0, 1, Clock())
    assert all(agg.add(ev(i)) is not None for i in range(100))
    assert agg.close_all() == [] and len(agg) == 0


def drop(i: int, port: int, src: str = "198.18.0.10", ts: float = 0.0) -> Event:
    return replace(ev(i, src=src), event_type=EventType.DROP, dest_port=port, timestamp=ts or i)


def test_drop_events_are_keyed_by_port_and_keep_the_first_time() -> None:
    clock = Clock()
    agg = Aggregator(1.0, 100, clock)
    firsts = [agg.add(drop(i, 80)) for i in range(1, 4)] + [agg.add(drop(9, 81))]
    assert [e is not None for e in firsts] == [True, False, False, True]
    assert agg.add(ev(10)) is not None and agg.add(replace(ev(11), dest_port=81)) is None
    clock.now += 1.0
    by_port = {(e.event_type, e.dest_port): e for e in agg.close_due()}
    summary = by_port[(EventType.DROP, 80)]
    assert summary.count == 2 and summary.first_seen == 2 and summary.timestamp == 3
    assert by_port[(EventType.ALERT, 81)].count == 1  # alerts: the port is not in the key


def test_a_port_scan_folds_sources_then_ports() -> None:
    clock = Clock()
    agg = Aggregator(1.0, 2, clock)
    for port in range(1, 11):
        for src in ("198.18.0.10", "198.18.0.11"):
            agg.add(drop(port, port, src=src))
    clock.now += 1.0
    out = agg.close_all()
    assert agg.added == 20 and agg.passed + sum(e.count for e in out) == 20
    assert {e.folded for e in out} <= {"", FOLD_SRC, FOLD_PORT} and FOLD_PORT in {
        e.folded for e in out
    }
    assert len(agg) == 0
