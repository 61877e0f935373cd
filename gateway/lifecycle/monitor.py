"""The lifecycle monitor: turns NFLOG copies from the host-mode rules into learned tuples and
lockdown events. Runs in the gateway's network namespace: as a thread of `vpatch run`
(gateway/supervisor.py) or standalone (`vpatch hosts monitor`).

- Learning group: each logged new connection gives a `LearnedTuple` (initiator, responder,
  protocol, destination port / ICMP type) for every learning host it involves; tuples are
  batched and written to the lifecycle state every FLUSH_INTERVAL_S (and at exit).
- Lockdown group: each logged new connection of a locked-down host becomes one event
  (signature "lockdown: new peer A -> B:P/tcp not learned" or "... new port ..."; event_type
  "drop" with alert.action "blocked" when the host's lockdown_action is drop, else "alert"
  with "allowed"), given to the sink, whose aggregation makes repeats one record with a count;
  at most once per tuple per EVENT_REPEAT_S, a line on stdout with the one-step command that
  allows it (`vpatch hosts allow HOST 'A -> B:P/tcp'`).
- Drop-log group (settings.log_group): firewall rules (deny, reject, log) and setup
  protection's refusals become `drop` / `flow` events (gateway/firewall/dropevents.py); the
  firewall rules' names are read when a rule not named yet logs (NAMES_RETRY_S) and every
  NAMES_INTERVAL_S.
The kernel rate-limits what it copies to the lockdown and drop-log groups
(gateway/firewall/droplog.py); packets the monitor cannot read are counted (`malformed`, and
the reader's own `malformed` / `overruns`), never raised.
Guarantees: the packet path is the kernel's; this process only observes, so its death never
blocks traffic (learning allows everything; lockdown drops what it would drop anyway).
Host modes are re-read from the state every RELOAD_INTERVAL_S, and at once (at most every
STALE_RETRY_S) when the kernel logs a copy for the learning or lockdown group that names no
host the monitor holds in that mode: the kernel copies only for hosts in its mode sets, which
a mode change refreshes before it returns, so such a copy means the monitor's view is older
than the change (the first connections after `vpatch hosts set ... --mode learning` were
otherwise not learned).
Bounded: MAX_PENDING tuples between flushes, MAX_RATE_ENTRIES remembered events.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

from gateway.database import target_exists
from gateway.events.eve import DropReason, Event, EventType
from gateway.events.sink import EventSink
from gateway.firewall.apply import BackendInfo
from gateway.firewall.dropcount import DropCounts, read_drop_counts
from gateway.firewall.dropevents import DropEvents, headers, rule_names
from gateway.firewall.droplog import parse_prefix
from gateway.firewall.hostmodes import DEFAULT_SETTINGS, HostModeSettings
from gateway.lifecycle.nflog import LoggedPacket, NflogReader
from gateway.lifecycle.state import (
    HostMode,
    HostPolicy,
    LearnedTuple,
    LifecycleStore,
    LockdownAction,
)
from gateway.vocabulary import (
    ICMP_PROTOS,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    Action,
    Direction,
)

FLUSH_INTERVAL_S = 1.0
NAMES_INTERVAL_S = 30.0  # the firewall rules' names are re-read this often at most ...
NAMES_RETRY_S = 1.0  # ... or this often while a rule they do not name logs packets
COUNTERS_INTERVAL_S = 1.0  # a reading of the kernel's drop counters is reused this long
RELOAD_INTERVAL_S = 1.0  # re-read host modes from the state this often ...
STALE_RETRY_S = 0.2  # ... or this often while the kernel logs hosts the view misses
EVENT_REPEAT_S = 60.0
MAX_PENDING = 65536
MAX_RATE_ENTRIES = 65536
SID_NEW_PEER = 9100001
SID_NEW_PORT = 9100002
_PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


def tuple_of(payload: bytes) -> tuple[LearnedTuple, int] | None:
    """(tuple, source port) of a logged packet (its headers: the copy is cut short), or None
    if they cannot be read."""
    h = headers(payload)
    if h is None:
        return None
    proto = PROTO_NAMES.get(h.proto, str(h.proto))
    port = h.dport if h.proto in (PROTO_TCP, PROTO_UDP) or h.proto in ICMP_PROTOS else 0
    return LearnedTuple(h.src, h.dst, proto, port), h.sport


def allow_command(host: str, t: LearnedTuple) -> str:
    return f"vpatch hosts allow {host} '{t}'"


class LifecycleMonitor:
    """Sans-socket core: feed LoggedPackets with `handle`, call `flush` to persist."""

    def __init__(
        self,
        store: LifecycleStore,
        settings: HostModeSettings = DEFAULT_SETTINGS,
        sink: EventSink | None = None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sink = sink
        self.out = out
        self.clock = clock
        self.hosts: dict[str, HostPolicy] = {}
        self.pending: dict[str, set[LearnedTuple]] = {}
        self.recent: OrderedDict[LearnedTuple, float] = OrderedDict()
        self.drops = DropEvents()
        self._names_at = -math.inf  # when the firewall rules' names were last read
        self._stale_at = -math.inf  # when host modes were last re-read for a stale view
        self.events = 0
        self.learned = 0
        self.malformed = 0  # logged packets whose headers could not be read
        self.reader: NflogReader | None = None  # the socket run_monitor reads (its counters)
        self.reload()

    def reload(self) -> None:
        if not target_exists(self.store.path):  # no policy database yet: no host in a special mode
            self.hosts = {}
            return
        self.hosts = {h.address: h for h in self.store.hosts()}

    def _refresh_names(self, logged: LoggedPacket, now: float) -> None:
        """Re-read the firewall rules' names when a rule not known yet logs (at most once
        per NAMES_RETRY_S) and every NAMES_INTERVAL_S (an edited comment)."""
        since = now - self._names_at
        prefix = parse_prefix(logged.prefix)
        unknown = (
            prefix is not None
            and prefix.reason is DropReason.FIREWALL
            and prefix.rule_id not in self.drops.rule_names
        )
        if since >= NAMES_INTERVAL_S or (unknown and since >= NAMES_RETRY_S):
            self._names_at = now
            names = rule_names(self.store.path)
            if names is not None:  # unreadable for now: keep the names we have
                self.drops.rule_names = names

    def handle(self, logged: LoggedPacket) -> Event | None:
        if logged.group == self.settings.log_group:
            now = self.clock()
            self._refresh_names(logged, now)
            return self._emit(self.drops.event(logged, now))
        parsed = tuple_of(logged.payload)
        if parsed is None:
            self.malformed += 1
            return None
        t, sport = parsed
        if logged.group == self.settings.learn_group:
            self._fresh_view(t, HostMode.LEARNING)
            for addr in (t.src, t.dst):
                h = self.hosts.get(addr)
                if h is not None and h.mode is HostMode.LEARNING:
                    bucket = self.pending.setdefault(addr, set())
                    if sum(len(v) for v in self.pending.values()) < MAX_PENDING:
                        bucket.add(t)
            return None
        if logged.group == self.settings.lockdown_group:
            self._fresh_view(t, HostMode.LOCKDOWN)
            return self._lockdown_event(t, sport)
        return None

    def _fresh_view(self, t: LearnedTuple, mode: HostMode) -> None:
        """Re-read the host modes when neither end of a copy the kernel logged for `mode` is
        a host in that mode here (the view predates a mode change), at most every
        STALE_RETRY_S."""
        if any((h := self.hosts.get(a)) is not None and h.mode is mode for a in (t.src, t.dst)):
            return
        now = self.clock()
        if now - self._stale_at >= STALE_RETRY_S:
            self._stale_at = now
            self.reload()

    def _emit(self, event: Event | None) -> Event | None:
        if event is not None:
            self.events += 1
            if self.sink is not None:
                self.sink.emit(event)
        return event

    def _first_in_a_while(self, t: LearnedTuple, now: float) -> bool:
        """True at most once per tuple per EVENT_REPEAT_S (the stdout line's rate)."""
        last = self.recent.get(t)
        if last is not None and now - last < EVENT_REPEAT_S:
            return False
        self.recent[t] = now
        self.recent.move_to_end(t)
        while len(self.recent) > MAX_RATE_ENTRIES:
            self.recent.popitem(last=False)
        return True

    def _lockdown_event(self, t: LearnedTuple, sport: int) -> Event | None:
        now = self.clock()
        host = next(
            (
                self.hosts[a]
                for a in (t.dst, t.src)
                if a in self.hosts and self.hosts[a].mode is HostMode.LOCKDOWN
            ),
            None,
        )
        if host is None:
            return None
        peer = t.src if host.address == t.dst else t.dst
        known_peer = any(peer in (x.src, x.dst) for x in host.learned)
        kind, sid = ("new port", SID_NEW_PORT) if known_peer else ("new peer", SID_NEW_PEER)
        blocked = host.lockdown_action is LockdownAction.DROP
        event = Event(
            timestamp=now,
            flow_id=zlib.crc32(str(t).encode()) | (sport << 32),
            src_ip=t.src,
            src_port=sport,
            dest_ip=t.dst,
            dest_port=t.port if t.proto in ("tcp", "udp") else 0,
            proto=_PROTO_NUMBERS.get(t.proto, 0),
            server_port=t.port,
            direction=Direction.TO_SERVER,
            signature_id=sid,
            signature=f"lockdown: {kind} {t} not learned",
            severity="medium",
            cves=(),
            rule_action=Action.DROP if blocked else Action.ALERT,
            blocked=blocked,
            event_type=EventType.DROP if blocked else EventType.ALERT,
            reason=DropReason.LOCKDOWN if blocked else None,
        )
        self._emit(event)
        if self.out is not None and self._first_in_a_while(t, now):
            self.out.write(
                f"{event.signature} ({'dropped' if blocked else 'alerted'}); "
                f"allow with: {allow_command(host.address, t)}\n"
            )
            self.out.flush()
        return event

    def stats(self) -> dict[str, int]:
        """Counters for `vpatch status`: events made, tuples learned, what could not be read
        (logged packets, netlink messages) and the kernel's overruns of the NFLOG socket."""
        reader = self.reader
        return {
            "events": self.events,
            "drop_events": self.drops.events,
            "learned": self.learned,
            "malformed_packets": self.malformed + self.drops.malformed,
            "malformed_messages": reader.malformed if reader is not None else 0,
            "overruns": reader.overruns if reader is not None else 0,
        }

    def flush(self) -> int:
        added = 0
        for addr, tuples in self.pending.items():
            if tuples:
                added += self.store.add_learned(addr, sorted(tuples))
        self.pending = {}
        self.learned += added
        return added


class DropLogStatus:
    """`vpatch status`'s `drop_log`: the kernel's logged/refused/suppressed packets per rule
    (gateway/firewall/dropcount.py, read at most once per COUNTERS_INTERVAL_S: it runs
    iptables-save), the monitor's counters (`watch` it: run_monitor's `created`) and its
    event sink's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor: LifecycleMonitor | None = None
        self.sink: EventSink | None = None
        self._clock = clock
        self._counts = DropCounts()
        self._read_at: float | None = None

    def watch(self, monitor: LifecycleMonitor) -> None:
        self.monitor = monitor

    def report(self, backend: BackendInfo, prefix: str) -> dict[str, Any]:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= COUNTERS_INTERVAL_S:
            self._counts = read_drop_counts(backend, prefix)
            self._read_at = now
        return {
            "kernel": self._counts.as_dict() if self._counts.available else None,
            "monitor": self.monitor.stats() if self.monitor is not None else None,
            "sink": self.sink.stats() if self.sink is not None else None,
        }


def run_monitor(
    store: LifecycleStore,
    settings: HostModeSettings,
    sink: EventSink | None,
    duration: float | None = None,
    out: TextIO = sys.stdout,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    created: Callable[[LifecycleMonitor], None] | None = None,
) -> LifecycleMonitor:
    """Read NFLOG until duration seconds have passed (forever if None), `stop` is set, or
    SIGINT/SIGTERM; `ready` is set once the NFLOG groups are bound; `created` is given the
    monitor (its `stats()`) before the first read."""
    reader = NflogReader((settings.learn_group, settings.lockdown_group, settings.log_group))
    if ready is not None:
        ready.set()
    mon = LifecycleMonitor(store, settings, sink, out)
    mon.reader = reader
    if created is not None:
        created(mon)
    deadline = None if duration is None else time.monotonic() + duration
    next_flush = next_reload = time.monotonic()
    out.write(
        f"lifecycle monitor: NFLOG groups learn={settings.learn_group} "
        f"lockdown={settings.lockdown_group} drops={settings.log_group}, state {store.path}\n"
    )
    out.flush()
    try:
        while (deadline is None or time.monotonic() < deadline) and not (stop and stop.is_set()):
            for logged in reader.receive(0.2):
                mon.handle(logged)
            now = time.monotonic()
            if now >= next_flush:
                mon.flush()
                next_flush = now + FLUSH_INTERVAL_S
            if now >= next_reload:
                mon.reload()
                next_reload = now + RELOAD_INTERVAL_S
    finally:
        mon.flush()
        reader.close()
    return mon
