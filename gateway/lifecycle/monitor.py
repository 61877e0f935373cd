"""The lifecycle monitor: turns NFLOG copies from the host-mode rules into learned tuples and
lockdown events. Runs in the gateway's network namespace: as a thread of `vpatch run`
(gateway/supervisor.py) or standalone (`vpatch hosts monitor`).

- Learning group: each logged new connection gives a `LearnedTuple` (initiator, responder,
  protocol, destination port / ICMP type) for every learning host it involves; tuples are
  batched and written to the lifecycle state every FLUSH_INTERVAL_S (and at exit).
- Lockdown group: each logged new connection of a locked-down host becomes one EVE alert
  (event_type "alert", signature "lockdown: new peer A -> B:P/tcp not learned" or "... new
  port ..."; alert.action "blocked" when the host's lockdown_action is drop), at most one per
  tuple per EVENT_REPEAT_S (retransmitted SYNs do not flood), and a line on stdout with the
  one-step command that allows it (`vpatch hosts allow HOST 'A -> B:P/tcp'`).
Guarantees: the packet path is the kernel's; this process only observes, so its death never
blocks traffic (learning allows everything; lockdown drops what it would drop anyway).
Bounded: MAX_PENDING tuples between flushes, MAX_RATE_ENTRIES remembered events.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TextIO

from gateway.database import target_exists
from gateway.decode.packet import parse_ip
from gateway.errors import DecodeError
from gateway.events.eve import Event
from gateway.events.sink import EventSink
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
RELOAD_INTERVAL_S = 1.0  # re-read host modes from the state this often
EVENT_REPEAT_S = 60.0
MAX_PENDING = 65536
MAX_RATE_ENTRIES = 65536
SID_NEW_PEER = 9100001
SID_NEW_PORT = 9100002
_PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


def tuple_of(payload: bytes) -> tuple[LearnedTuple, int] | None:
    """(tuple, source port) of a logged packet, or None if it cannot be decoded."""
    try:
        pkt = parse_ip(payload)
    except DecodeError:
        return None
    proto = PROTO_NAMES.get(pkt.proto, str(pkt.proto))
    if pkt.proto in (PROTO_TCP, PROTO_UDP):
        port = pkt.dport
    elif pkt.proto in ICMP_PROTOS:
        port = max(pkt.icmp_type, 0)
    else:
        port = 0
    src = str(ipaddress.ip_address(pkt.src))
    dst = str(ipaddress.ip_address(pkt.dst))
    return LearnedTuple(src, dst, proto, port), pkt.sport if pkt.proto in (6, 17) else 0


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
        self.events = 0
        self.learned = 0
        self.reload()

    def reload(self) -> None:
        if not target_exists(self.store.path):  # no policy database yet: no host in a special mode
            self.hosts = {}
            return
        self.hosts = {h.address: h for h in self.store.hosts()}

    def handle(self, logged: LoggedPacket) -> Event | None:
        parsed = tuple_of(logged.payload)
        if parsed is None:
            return None
        t, sport = parsed
        if logged.group == self.settings.learn_group:
            for addr in (t.src, t.dst):
                h = self.hosts.get(addr)
                if h is not None and h.mode is HostMode.LEARNING:
                    bucket = self.pending.setdefault(addr, set())
                    if sum(len(v) for v in self.pending.values()) < MAX_PENDING:
                        bucket.add(t)
            return None
        if logged.group == self.settings.lockdown_group:
            return self._lockdown_event(t, sport)
        return None

    def _lockdown_event(self, t: LearnedTuple, sport: int) -> Event | None:
        now = self.clock()
        last = self.recent.get(t)
        if last is not None and now - last < EVENT_REPEAT_S:
            return None
        self.recent[t] = now
        self.recent.move_to_end(t)
        while len(self.recent) > MAX_RATE_ENTRIES:
            self.recent.popitem(last=False)
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
        )
        self.events += 1
        if self.sink is not None:
            self.sink.emit(event)
        if self.out is not None:
            self.out.write(
                f"{event.signature} ({'dropped' if blocked else 'alerted'}); "
                f"allow with: {allow_command(host.address, t)}\n"
            )
            self.out.flush()
        return event

    def flush(self) -> int:
        added = 0
        for addr, tuples in self.pending.items():
            if tuples:
                added += self.store.add_learned(addr, sorted(tuples))
        self.pending = {}
        self.learned += added
        return added


def run_monitor(
    store: LifecycleStore,
    settings: HostModeSettings,
    sink: EventSink | None,
    duration: float | None = None,
    out: TextIO = sys.stdout,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> LifecycleMonitor:
    """Read NFLOG until duration seconds have passed (forever if None), `stop` is set, or
    SIGINT/SIGTERM; `ready` is set once the NFLOG groups are bound."""
    reader = NflogReader((settings.learn_group, settings.lockdown_group))
    if ready is not None:
        ready.set()
    mon = LifecycleMonitor(store, settings, sink, out)
    deadline = None if duration is None else time.monotonic() + duration
    next_flush = next_reload = time.monotonic()
    out.write(
        f"lifecycle monitor: NFLOG groups learn={settings.learn_group} "
        f"lockdown={settings.lockdown_group}, state {store.path}\n"
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
