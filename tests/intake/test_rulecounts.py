"""gateway/intake/rulecounts.py: firings per rule in shared memory; a new writer (a restarted
worker, in another process) goes on counting in the slots the first one filled; bounded."""

from __future__ import annotations

import multiprocessing

from gateway.intake import rulecounts
from gateway.intake.rulecounts import RuleCounts


def _child(counts: RuleCounts) -> None:
    counts.count(7, True)
    counts.count(9, False, 3)


def test_counts_survive_a_new_writer_in_another_process() -> None:
    counts = RuleCounts()
    first = multiprocessing.get_context("spawn").Process(target=_child, args=(counts,))
    first.start()
    first.join(30)
    second = multiprocessing.get_context("spawn").Process(target=_child, args=(counts,))
    second.start()
    second.join(30)
    assert counts.snapshot() == {7: (2, 0), 9: (0, 6)}


def test_rules_past_the_slots_count_as_overflow() -> None:
    counts = RuleCounts()
    for sid in range(rulecounts.MAX_RULE_SLOTS + 5):
        counts.count(sid, sid % 2 == 0)
    assert len(counts.snapshot()) == rulecounts.MAX_RULE_SLOTS
    assert counts.snapshot()[0] == (1, 0)
    assert sum(counts.overflow()) == 5
