"""The flow table: packets -> bidirectional flows, bounded, with idle timeouts (sans-I/O).

What it does: ``FlowTable.lookup(pkt, now)`` finds or creates the ``Flow`` a decoded packet
belongs to, tells which way it travels (gateway.vocabulary ``Direction``) and counts it;
``expire(now)`` removes idle flows. The clock is always passed in (``now``, seconds); nothing
here reads a clock.

Who is the client (fixed when the flow is created): the sender of a SYN without ACK; the
receiver of a SYN+ACK; for ICMP echo the sender of the request; otherwise (mid-stream pickup,
UDP) the side whose port is a known service port (the ``server_ports`` hint) is the server, and
failing that the side with the lower port (ties: the receiver).
A SYN without ACK on a TCP flow that has closed (FIN both ways or RST) starts a new flow: the
old one leaves the table first (port reuse in long captures).
A SYN without ACK on a flow that has not closed, with another sequence number than the SYN that
opened it, is a candidate reuse: the gateway does not see every FIN (packets without payload
and bypassed connections are not queued), so a client port reused after its old connection
ended looks like this. The flow is replaced when the server answers that SYN with a SYN+ACK
acknowledging it (its own TCP took it as a new connection), or at once when the kernel vouches
for the SYN (``kernel_checked_syn``: inline, only SYNs that conntrack found to open a new
connection are queued). The same holds for a flow that has closed, unless the kernel vouches,
the SYN comes from the former server or repeats the old SYN's number: a reset or FIN the server
never got (its TTL ran out on the way, say) must not let a SYN the server ignores start a new
flow numbered otherwise.
A flow the engine blocked (``Flow.blocked``) that has not closed is replaced only on the
server's word, kernel or not: its resets replaced the packets after conntrack, so conntrack
still holds the connection ESTABLISHED and queues a SYN on its ports without vouching for it
(gateway/firewall/render.py, the "blocked" connmark). A payload-less SYN from the client with
another sequence number is remembered (``reuse_syn``; the engine lets that SYN through) and
the server's SYN+ACK acknowledging it replaces the flow. A server whose connection survived
the reset answers with a challenge ACK instead, and the flow stays blocked: a client cannot
restart inspection in the middle of a connection the server still holds.
A FIN or RST closes the flow only when ``close_check`` (the TCP normaliser,
gateway/flow/normalize.py) finds it one the receiver would act on.
A SYN+ACK that opens a flow names its sender the server, unless it is sent to a known service
port from a port that is not one: a client that sends a SYN+ACK before its SYN does not turn
the connection round. A SYN injected into a live connection draws a challenge ACK instead,
and conntrack keeps it in the old connection: it changes nothing, so an attacker cannot reset
the inspection state of a connection that way (as in Suricata's session-reuse check).

Keys: TCP/UDP on (proto, addresses, ports); ICMP/ICMPv6 echo request/reply on the
identifier (as both ports), other ICMP and other protocols on addresses with ports 0.
Non-first IP fragments have ports 0 and so form their own address-only flow.

What it guarantees:
- At most ``max_flows`` flows; when full, a flow is evicted to make room: a closed TCP flow,
  else a non-TCP flow (ICMP and others, then UDP), else an open TCP flow, each class least
  recently seen first. A new flow is always made (the engine applies `limits.flow_table`:
  an event, or refusing the new flow); an evicted flow that comes back is a new flow picked
  up mid-stream.
- Idle timeouts per class: TCP open (``tcp_idle``), TCP closed after FIN both ways or RST
  (``tcp_closed_idle``, shorter), UDP (``udp_idle``), anything else (``other_idle``). Each class
  is an OrderedDict in last-seen order, so expiry and eviction cost O(flows removed).
- ``on_evict(flow)`` is called exactly once for every flow that leaves the table for any
  reason (evicted when full, expired, replaced by a new connection on the same ports);
  ``expire()`` additionally returns the flows it removed.
- ``flow_id`` is a stable, unique (per table, below 2**52 flows) 52-bit integer: a counter
  scrambled by an odd multiplier and XORed with a random per-table salt, so ids are not
  guessable across restarts yet fit JSON/EVE consumers that hold integers as doubles.
- Per-direction packet and L4-payload byte counts are updated by ``lookup``.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Final, NamedTuple

from gateway.config import EngineSettings
from gateway.decode.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet
from gateway.flow.reassembly import SEQ_MOD, StreamReassembler
from gateway.vocabulary import (
    ICMP_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TO_CLIENT,
    TO_SERVER,
    Action,
    Direction,
)

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TCP_CLOSED_IDLE",
    "FLOW_ID_BITS",
    "NO_STREAMS",
    "Flow",
    "FlowKey",
    "FlowTable",
    "Streams",
]

FLOW_ID_BITS: Final = 52
_FLOW_ID_MASK: Final = (1 << FLOW_ID_BITS) - 1
_FLOW_ID_MULT: Final = 0x9E3779B97F4B5  # odd: multiplication is a bijection modulo 2**52
DEFAULT_TCP_CLOSED_IDLE: Final = 10.0  # seconds a TCP flow is kept after FIN both ways / RST
DEFAULT_MAX_PENDING: Final = EngineSettings().max_pending  # declared as engine.max_pending

_ICMP_ECHO_REQUEST: Final = frozenset(((PROTO_ICMP, 8), (PROTO_ICMPV6, 128)))
_ICMP_ECHO_REPLY: Final = frozenset(((PROTO_ICMP, 0), (PROTO_ICMPV6, 129)))

_KeyTuple = tuple[int, str, int, str, int]  # proto, client, client_port, server, server_port
# A flow's TCP reassemblers, indexed by Direction (None: that direction is not reassembled).
Streams = tuple[StreamReassembler | None, StreamReassembler | None]
NO_STREAMS: Final[Streams] = (None, None)  # shared by every flow without reassembly


class _Class(enum.IntEnum):
    """Idle-timeout classes; each has its own LRU list."""

    TCP_OPEN = 0
    TCP_CLOSED = 1
    UDP = 2
    OTHER = 3


# Which flows a full table evicts first: closed TCP flows (nothing more to inspect), then
# the stateless classes (a UDP or ICMP flow picked up again loses no stream state), then open
# TCP flows; within a class the least recently seen.
_EVICTION_ORDER: Final = (_Class.TCP_CLOSED, _Class.OTHER, _Class.UDP, _Class.TCP_OPEN)
# The classes as plain constants for the per-packet code (an enum member looked up on its
# class costs about 70 ns on Python 3.11: gateway/vocabulary.py, DIRECTIONS).
_TCP_OPEN: Final = _Class.TCP_OPEN
_TCP_CLOSED: Final = _Class.TCP_CLOSED
_UDP: Final = _Class.UDP
_OTHER: Final = _Class.OTHER


def _reverse(pkt: Packet) -> _KeyTuple:
    """The key of the packet's flow as seen from its receiver."""
    return (pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)


class FlowKey(NamedTuple):
    """A flow's identity, oriented client -> server. A named tuple, not the house's frozen
    dataclass: it is also the flow's key in the table's dicts, where it equals (and hashes as)
    the plain tuple a packet's lookup builds, so a flow holds one key object instead of two
    (issue 16: memory per flow)."""

    proto: int
    client: str
    client_port: int
    server: str
    server_port: int


class Flow:
    """One bidirectional flow (mutable; owned by its FlowTable, state by the engine)."""

    __slots__ = (
        "_cls",
        "blocked",
        "bytes_to_client",
        "bytes_to_server",
        "fin_to_client",
        "fin_to_server",
        "final",
        "first_seen",
        "flow_id",
        "inspection",
        "key",
        "last_seen",
        "pkts_to_client",
        "pkts_to_server",
        "reuse_syn",
        "rst",
        "streams",
        "syn_seq",
        "tcp",
    )

    def __init__(self, key: FlowKey, flow_id: int, now: float, cls: _Class) -> None:
        self.key = key
        self.flow_id = flow_id
        self.first_seen = now
        self.last_seen = now
        self.pkts_to_server = 0
        self.pkts_to_client = 0
        self.bytes_to_server = 0  # L4 payload bytes
        self.bytes_to_client = 0
        self.streams: Streams = NO_STREAMS  # replaced, never changed in place
        self.inspection: object | None = None  # matcher per-flow state, owned by the engine
        self.tcp: object | None = None  # TCP normaliser state (gateway/flow/normalize.py)
        self.blocked: Action | None = None
        self.final = False
        self.fin_to_server = False
        self.fin_to_client = False
        self.rst = False
        self.syn_seq: int | None = None  # sequence number of the client's SYN, when seen
        self.reuse_syn: int | None = None  # a later SYN with another sequence number (unconfirmed)
        self._cls = cls

    @property
    def closed(self) -> bool:
        """TCP: RST seen, or FIN seen in both directions."""
        return self.rst or (self.fin_to_server and self.fin_to_client)

    def __repr__(self) -> str:
        k = self.key
        return (
            f"Flow(id={self.flow_id}, proto={k.proto}, {k.client}:{k.client_port} -> "
            f"{k.server}:{k.server_port}, pkts={self.pkts_to_server}/{self.pkts_to_client})"
        )


class FlowTable:
    """Bounded table of flows with per-class idle timeouts and LRU eviction."""

    def __init__(
        self,
        max_flows: int,
        tcp_idle: float,
        udp_idle: float,
        *,
        tcp_closed_idle: float = DEFAULT_TCP_CLOSED_IDLE,
        other_idle: float | None = None,
        stream_depth: Mapping[Direction, int] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_evict: Callable[[Flow], None] | None = None,
        salt: int | None = None,
        server_ports: Callable[[int, int], bool] | None = None,
        kernel_checked_syn: bool = False,
        close_check: Callable[[Flow, Packet, Direction], bool] | None = None,
    ) -> None:
        """Create an empty table.

        stream_depth: when given, every TCP flow is created with a StreamReassembler per
        direction (max_depth from this mapping, max_pending as given) in ``flow.streams``;
        otherwise ``streams`` is NO_STREAMS and the caller sets it.
        salt: mixed into flow ids; random when None (pass one for reproducible tests).
        server_ports: `server_ports(proto, port)` is True for a port a service is known to
            listen on (the engine passes "a rule covers it"). Used only to orient a flow picked
            up mid-stream or a UDP flow: when exactly one side's port is a known service port,
            that side is the server, whatever the port numbers' order (a backdoor shell on 4444
            talking to a client on port 1793 is still the 4444 side's flow).
        kernel_checked_syn: every payload-less SYN that reaches the table was found by the
            kernel's conntrack to open a new connection (inline: the queue rule takes only
            ctstate NEW SYNs; see gateway/firewall/render.py), so one with another sequence
            number than the flow's own SYN replaces the flow at once. False (captures): it
            waits for the server's SYN+ACK.
        close_check: `close_check(flow, pkt, direction)` is False for a FIN or RST that does
            not close the flow (see the module comment); None: every FIN and RST counts.
        """
        if max_flows < 1:
            raise ValueError(f"max_flows must be >= 1, got {max_flows}")
        for name, value in (
            ("tcp_idle", tcp_idle),
            ("udp_idle", udp_idle),
            ("tcp_closed_idle", tcp_closed_idle),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        self.max_flows = max_flows
        self._timeouts = {
            _Class.TCP_OPEN: tcp_idle,
            _Class.TCP_CLOSED: min(tcp_closed_idle, tcp_idle),
            _Class.UDP: udp_idle,
            _Class.OTHER: udp_idle if other_idle is None else other_idle,
        }
        self._stream_depth = dict(stream_depth) if stream_depth is not None else None
        self._max_pending = max_pending
        self._on_evict = on_evict
        self._server_ports = server_ports
        self._kernel_checked_syn = kernel_checked_syn
        self._close_check = close_check
        self._salt = (
            int.from_bytes(os.urandom(7), "big") & _FLOW_ID_MASK if salt is None else salt
        ) & _FLOW_ID_MASK
        self._counter = 0
        self._flows: dict[_KeyTuple, Flow] = {}
        self._lru: dict[_Class, OrderedDict[_KeyTuple, Flow]] = {c: OrderedDict() for c in _Class}
        self.created = 0
        self.evicted = 0  # removed because the table was full
        self.expired = 0  # removed because idle

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, key: FlowKey) -> Flow | None:
        """The flow with this key, if present (does not touch its LRU position)."""
        return self._flows.get(key)

    def lookup(self, pkt: Packet, now: float) -> tuple[Flow, Direction]:
        """Find or create the packet's flow; count the packet; return (flow, direction)."""
        proto = pkt.proto
        sport = pkt.sport
        dport = pkt.dport
        itype = -1
        if proto in ICMP_PROTOS:
            itype = pkt.icmp_type
            if (proto, itype) in _ICMP_ECHO_REQUEST or (proto, itype) in _ICMP_ECHO_REPLY:
                ident = int.from_bytes(pkt.payload[:2], "big") if len(pkt.payload) >= 2 else 0
                sport = dport = ident
        fwd: _KeyTuple = (proto, pkt.src, sport, pkt.dst, dport)
        flow = self._flows.get(fwd)
        direction = TO_SERVER
        if flow is None:
            rev: _KeyTuple = (proto, pkt.dst, dport, pkt.src, sport)
            flow = self._flows.get(rev)
            direction = TO_CLIENT
            if flow is None:
                # made by this very packet: a SYN that made it has nothing to replace
                flow, direction = self._create(pkt, now, fwd, rev, itype)
            elif proto == PROTO_TCP and pkt.flags & TCP_SYN:
                flow, direction = self._syn_on_flow(pkt, now, flow, direction, fwd)
        elif proto == PROTO_TCP and pkt.flags & TCP_SYN:
            flow, direction = self._syn_on_flow(pkt, now, flow, direction, fwd)
        flow.last_seen = now
        if direction is TO_SERVER:
            flow.pkts_to_server += 1
            flow.bytes_to_server += len(pkt.payload)
        else:
            flow.pkts_to_client += 1
            flow.bytes_to_client += len(pkt.payload)
        if (
            proto == PROTO_TCP
            and pkt.flags & (TCP_FIN | TCP_RST)
            and (self._close_check is None or self._close_check(flow, pkt, direction))
        ):
            if pkt.flags & TCP_RST:
                flow.rst = True
            elif direction is TO_SERVER:
                flow.fin_to_server = True
            else:
                flow.fin_to_client = True
            if flow.closed and flow._cls is _TCP_OPEN:
                del self._lru[_TCP_OPEN][flow.key]
                flow._cls = _TCP_CLOSED
                self._lru[_TCP_CLOSED][flow.key] = flow
                return flow, direction
        self._lru[flow._cls].move_to_end(flow.key)
        return flow, direction

    def _syn_on_flow(
        self, pkt: Packet, now: float, flow: Flow, direction: Direction, fwd: _KeyTuple
    ) -> tuple[Flow, Direction]:
        """A SYN or SYN+ACK on a flow found in the table: the flow it belongs to (see the
        module comment on port reuse)."""
        if pkt.flags & TCP_ACK:  # SYN+ACK: does the server confirm a new connection?
            pending = flow.reuse_syn
            if pending is None or direction is not TO_CLIENT:
                return flow, direction
            if pkt.ack != (pending + 1) % SEQ_MOD:
                return flow, direction
            self._remove(flow)
            return self._create_tcp(now, _reverse(pkt), pending)
        if flow.closed and (
            self._kernel_checked_syn
            or direction is TO_CLIENT
            or pkt.seq == flow.syn_seq  # the same numbering: nothing for a stale RST to gain
        ):
            self._remove(flow)  # a new connection reusing the ports of a finished one
            return self._create(pkt, now, fwd, _reverse(pkt), -1)
        if direction is TO_SERVER and pkt.seq == flow.syn_seq:
            return flow, direction  # the same SYN again (retransmitted)
        if flow.blocked is not None:
            # The kernel queues every SYN on a blocked connection's ports (conntrack never saw
            # the resets, so it cannot vouch): only the server's SYN+ACK proves its old
            # connection gone, so only that replaces the flow.
            if direction is TO_SERVER and not pkt.payload:
                flow.reuse_syn = pkt.seq
            return flow, direction
        if self._kernel_checked_syn and not pkt.payload:
            # conntrack found a new connection (from either side: a flow picked up mid-stream
            # may have its sides the wrong way round); the SYN orients the new flow
            self._remove(flow)
            return self._create(pkt, now, fwd, _reverse(pkt), -1)
        if direction is TO_SERVER:
            flow.reuse_syn = pkt.seq  # replaced once the server's SYN+ACK confirms it
        return flow, direction

    def _create_tcp(self, now: float, client: _KeyTuple, client_isn: int) -> tuple[Flow, Direction]:
        """A new TCP flow for a connection whose client SYN (ISN `client_isn`) was seen earlier;
        returns it with the direction of a packet from the server."""
        flow = self._new_flow(now, _TCP_OPEN, client, PROTO_TCP)
        flow.syn_seq = client_isn
        stream = flow.streams[TO_SERVER]
        if stream is not None:
            stream.receive(client_isn, b"", syn=True)
        return flow, TO_CLIENT

    def expire(self, now: float) -> list[Flow]:
        """Remove and return every flow idle for longer than its class's timeout."""
        out: list[Flow] = []
        for cls, lru in self._lru.items():
            deadline = now - self._timeouts[cls]
            while lru:
                flow = next(iter(lru.values()))
                if flow.last_seen > deadline:
                    break
                self._remove(flow)
                self.expired += 1
                out.append(flow)
        return out

    def remove(self, flow: Flow) -> None:
        """Forget a flow now (on_evict is called)."""
        if self._flows.get(flow.key) is flow:
            self._remove(flow)

    def _create(
        self, pkt: Packet, now: float, fwd: _KeyTuple, rev: _KeyTuple, itype: int
    ) -> tuple[Flow, Direction]:
        proto = pkt.proto
        if proto == PROTO_TCP:
            syn_ack = pkt.flags & (TCP_SYN | TCP_ACK)
            if syn_ack == TCP_SYN:
                sender_is_client = True
            elif syn_ack == TCP_SYN | TCP_ACK:
                sender_is_client = self._to_service_only(proto, pkt.sport, pkt.dport)
            else:
                sender_is_client = self._sender_is_client(proto, pkt.sport, pkt.dport)
            cls = _TCP_OPEN
        elif proto == PROTO_UDP:
            sender_is_client = self._sender_is_client(proto, pkt.sport, pkt.dport)
            cls = _UDP
        else:
            sender_is_client = (proto, itype) not in _ICMP_ECHO_REPLY
            cls = _OTHER
        tkey, direction = (fwd, TO_SERVER) if sender_is_client else (rev, TO_CLIENT)
        flow = self._new_flow(now, cls, tkey, proto)
        if proto == PROTO_TCP and pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
            flow.syn_seq = pkt.seq
        return flow, direction

    def _new_flow(self, now: float, cls: _Class, tkey: _KeyTuple, proto: int) -> Flow:
        """Make room (evicting the least recently seen flows) and add a flow keyed `tkey`."""
        while len(self._flows) >= self.max_flows:
            self._evict_oldest()
        self._counter += 1
        flow_id = ((self._counter * _FLOW_ID_MULT) & _FLOW_ID_MASK) ^ self._salt
        key = FlowKey(*tkey)
        flow = Flow(key, flow_id, now, cls)
        depths = self._stream_depth
        if proto == PROTO_TCP and depths is not None:
            flow.streams = (
                StreamReassembler(depths.get(Direction.TO_SERVER, 0), self._max_pending),
                StreamReassembler(depths.get(Direction.TO_CLIENT, 0), self._max_pending),
            )
        self._flows[key] = flow
        self._lru[cls][key] = flow
        self.created += 1
        return flow

    def _sender_is_client(self, proto: int, sport: int, dport: int) -> bool:
        """No handshake seen: a known service port marks the server, else the lower port."""
        known = self._server_ports
        if known is not None:
            to_service, from_service = known(proto, dport), known(proto, sport)
            if to_service != from_service:
                return to_service
        return sport >= dport

    def _to_service_only(self, proto: int, sport: int, dport: int) -> bool:
        """The destination is a known service port and the source is not."""
        known = self._server_ports
        return known is not None and known(proto, dport) and not known(proto, sport)

    def _evict_oldest(self) -> None:
        """Make room for one flow: the least recently seen of the first class in
        _EVICTION_ORDER that holds any (see the module comment)."""
        for cls in _EVICTION_ORDER:
            lru = self._lru[cls]
            if lru:
                self._remove(next(iter(lru.values())))
                self.evicted += 1
                return
        raise AssertionError("table reported full but holds no flows")

    def _remove(self, flow: Flow) -> None:
        del self._flows[flow.key]
        del self._lru[flow._cls][flow.key]
        if self._on_evict is not None:
            self._on_evict(flow)
