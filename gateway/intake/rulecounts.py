"""Per-rule counters of one queue in shared memory: how often each rule (signature id) fired,
blocked or only alerting, written by the queue's worker, read by the parent for `status` and
the metrics endpoint (gateway/metrics.py).

Layout: MAX_RULE_SLOTS slots of three unsigned 64-bit words (sid + 1, blocked, alerted); a
slot whose first word is 0 is free. Guarantees:
- one writer at a time (the queue's worker; a restarted or standby worker that takes over
  finds the slots the dead one filled and goes on counting in them: the counts are the
  queue's, like WorkerStats);
- bounded: past MAX_RULE_SLOTS distinct rules, further rules are counted in `overflow`
  (their firings are not lost from the totals, only their sid);
- readers may see a slot whose sid is written and whose counts are not yet: a count is never
  attributed to another rule.
"""

from __future__ import annotations

import multiprocessing.sharedctypes
from typing import Any, Final

__all__ = ["MAX_RULE_SLOTS", "RuleCounts"]

MAX_RULE_SLOTS: Final = 2048
_WORDS: Final = 3  # sid + 1, blocked, alerted
_OVERFLOW: Final = MAX_RULE_SLOTS * _WORDS  # then: blocked, alerted of rules past the slots


class RuleCounts:
    def __init__(self) -> None:
        self._arr: Any = multiprocessing.sharedctypes.RawArray("Q", _OVERFLOW + 2)
        self._slot: dict[int, int] = {}  # the writer's own index: sid -> word offset
        self._used = -1  # slots in use as the writer knows it (-1: not looked yet)

    def _find(self, sid: int) -> int | None:
        if self._used < 0:  # a new writer: learn the slots an earlier worker filled
            self._used = 0
            for i in range(MAX_RULE_SLOTS):
                key = int(self._arr[i * _WORDS])
                if key == 0:
                    break
                self._slot[key - 1] = i * _WORDS
                self._used = i + 1
        off = self._slot.get(sid)
        if off is None and self._used < MAX_RULE_SLOTS:
            off = self._used * _WORDS
            self._arr[off] = sid + 1
            self._slot[sid] = off
            self._used += 1
        return off

    def count(self, sid: int, blocked: bool, n: int = 1) -> None:
        """`n` firings of rule `sid` (the writer only)."""
        off = self._find(sid)
        base = _OVERFLOW if off is None else off + 1
        self._arr[base + (0 if blocked else 1)] += n

    def snapshot(self) -> dict[int, tuple[int, int]]:
        """{sid: (blocked, alerted)} for every rule counted so far (any reader)."""
        out: dict[int, tuple[int, int]] = {}
        for i in range(MAX_RULE_SLOTS):
            off = i * _WORDS
            key = int(self._arr[off])
            if key == 0:
                break
            out[key - 1] = (int(self._arr[off + 1]), int(self._arr[off + 2]))
        return out

    def overflow(self) -> tuple[int, int]:
        """(blocked, alerted) firings of rules past MAX_RULE_SLOTS."""
        return int(self._arr[_OVERFLOW]), int(self._arr[_OVERFLOW + 1])
