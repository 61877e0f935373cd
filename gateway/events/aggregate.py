"""Event aggregation in front of the event store: a storm of firings becomes a bounded number of
records, each saying how many firings it stands for (`Event.count`).

Why: each rule raises at most one event per flow (gateway/verdict/judge.py), but an attacker
opens flows for free: 100,000 exploit connections a minute would be 100,000 rows, a writer
that cannot keep up, dropped events and a UI drowning in copies. Suricata answers with
thresholds and rate filters per rule and source; this is the same idea, always on, with the
count kept so that nothing is lost from the totals.

What it does: `Aggregator(window, max_keys, clock)`; the packet path calls `add(event)`:
- Key: (signature_id, src_ip, dest_ip, blocked), and for drop and flow events (firewall and
  host modes, gateway/firewall/dropevents.py) also (dest_port, proto), so a scan shows which
  ports were tried. The first event of a key opens a window of
  `window` seconds (by `clock`, the sink's monotonic clock) and is passed on at once (the
  caller queues it, count 1): an attack shows without delay.
- Later events of an open window are only counted. `close_due()` (the sink's writer calls it
  every BATCH_WAIT) closes the windows whose time is up, and `close_all()` (at the sink's close)
  every window: a window that counted more events gives one summary record, the last of those
  events with `count` = how many it stands for. So one key writes at most two records per
  window, and the sum of `count` over the records equals the events added.
- Bound (a limit is a decision): at most `max_keys` windows per level. An event whose exact key
  would open one more is counted under (signature_id, dest_ip, blocked) with `folded` "src" (the
  record names one of the sources), and past that bound too under (signature_id, blocked) with
  `folded` "src,dest" ("src,dest,port" for drop/flow events: the port is left out of that
  level's key); these last keys number at most twice the rules per event type. Spoofed
  sources and port scans thus cost memory bounded by max_keys, not by the flood.
- A summary record carries `first_seen`: the timestamp of the first event it counts (its own
  timestamp is the last one's).
- `unsent(event)`: an event `add` passed on that the caller could not queue (queue full) goes
  back into its window's count, so the summary carries it: counted, never lost, never waited for.
- `window` 0 turns aggregation off: `add` passes every event on.

Thread safety: `add`/`unsent` (packet thread) and `close_due`/`close_all` (writer thread) share
one lock; each holds it for a few dictionary operations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from gateway.events.eve import Event, EventType

__all__ = ["FOLD_DEST", "FOLD_PORT", "FOLD_SRC", "Aggregator"]

FOLD_SRC: Final = "src"  # the record stands for events from several sources
FOLD_DEST: Final = "src,dest"  # ... from several sources to several destinations
FOLD_PORT: Final = "src,dest,port"  # drop/flow events: ... and several ports

# (signature_id, event type, src_ip, dest_ip, dest_port, proto, blocked)
_Key = tuple[int, str, str, str, int, int, bool]


class _Window:
    __slots__ = ("first", "last", "opened", "pending")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.pending = 0  # events counted but not yet passed on
        self.first = 0.0  # the timestamp of the first of them
        self.last: Event | None = None  # the latest of them

    def count(self, event: Event, n: int = 1) -> None:
        if not self.pending:
            self.first = event.first_seen or event.timestamp
        self.pending += n
        self.last = event


class Aggregator:
    """Per-key windows of events (see the module comment)."""

    def __init__(
        self, window: float, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # level 0: exact keys, 1: sources folded, 2: sources and destinations folded
        self._levels: tuple[dict[_Key, _Window], ...] = ({}, {}, {})
        self.added = 0  # events given to add()
        self.passed = 0  # events add() passed on at once
        self.aggregated = 0  # events counted into a window instead
        self.folded = 0  # events counted under a coarser key (bound reached)

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def add(self, event: Event) -> Event | None:
        """`event` when the caller should queue it now, else None (counted in its window)."""
        self.added += 1
        if self.window <= 0:
            self.passed += 1
            return event
        with self._lock:
            level, key, win = self._window(event)
            if win is None:
                win = self._levels[level][key] = _Window(self._clock())
                if level == 0:
                    self.passed += 1
                    return event
                self.folded += 1
            elif level:
                self.folded += 1
            win.count(event)
            self.aggregated += 1
            return None

    def unsent(self, event: Event) -> None:
        """An event `add` passed on that could not be queued: count it in its window."""
        with self._lock:
            level, key, win = self._window(event)
            if win is None:
                win = self._levels[level][key] = _Window(self._clock())
            win.count(event, event.count)
            self.passed -= 1
            self.aggregated += 1

    def close_due(self) -> list[Event]:
        """Close the windows whose time is up; their summary records."""
        now = self._clock()
        with self._lock:
            return self._close(lambda win: now - win.opened >= self.window)

    def close_all(self) -> list[Event]:
        """Close every window (the sink is stopping); their summary records."""
        with self._lock:
            return self._close(lambda _win: True)

    def _window(self, event: Event) -> tuple[int, _Key, _Window | None]:
        """The level, key and open window (None: none yet, may open) for `event`."""
        sig, kind, blocked = event.signature_id, event.event_type.value, event.blocked
        port, proto = (0, 0) if event.event_type is EventType.ALERT else (
            event.dest_port, event.proto)  # fmt: skip
        keys: tuple[_Key, ...] = (
            (sig, kind, event.src_ip, event.dest_ip, port, proto, blocked),
            (sig, kind, "", event.dest_ip, port, proto, blocked),
            (sig, kind, "", "", 0, 0, blocked),
        )
        for level, key in enumerate(keys):
            windows = self._levels[level]
            win = windows.get(key)
            if win is not None or level == 2 or len(windows) < self.max_keys:
                return level, key, win
        raise AssertionError("unreachable: level 2 always answers")

    def _close(self, due: Callable[[_Window], bool]) -> list[Event]:
        out: list[Event] = []
        for level, windows in enumerate(self._levels):
            done = [key for key, win in windows.items() if due(win)]
            for key in done:
                win = windows.pop(key)
                if win.pending and win.last is not None:
                    folded = ("", FOLD_SRC, FOLD_DEST)[level]
                    if level == 2 and win.last.event_type is not EventType.ALERT:
                        folded = FOLD_PORT
                    out.append(
                        replace(win.last, count=win.pending, folded=folded, first_seen=win.first)
                    )
        return out
