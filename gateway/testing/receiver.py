"""A model of a server's receive path, to judge evasions: which bytes would the application read?

`Receiver(target, server, port)` is fed raw IP datagrams (`feed`), those the client sent and
those the server itself sent, and keeps `stream`: the bytes the server application would read
from its one TCP connection on `port`. It is a reference, deliberately simple and independent
of the gateway's own decoder and reassembler, and follows the standards where Linux and Windows
follow them. `Target` fixes the choices where they differ.

The model, in the order a datagram meets it:
1. IP. The TTL / hop limit must exceed `target.hops`, the routers between the gateway and the
   server (each router drops a datagram whose TTL would reach 0). An IPv4 header checksum must
   verify. IPv6 extension headers are walked (RFC 8200 section 4: hop-by-hop only first;
   destination options and routing headers with Segments Left 0, any number of them); an
   unknown header drops the datagram. Fragments (IPv4, RFC 791; IPv6, RFC 8200 section 4.5)
   are reassembled per `target.frag4` / `frag6`: FIRST keeps the bytes that came first, LAST
   the ones that came last, DISCARD drops the whole datagram on any overlap other than an exact
   duplicate (Linux since 4.19 for IPv4; RFC 5722 for IPv6). Fragment timeouts are not modelled.
2. TCP checksum over the pseudo-header must verify. A checksum left for offload (the
   pseudo-header sum alone) is wrong like any other: offload completes it before the wire.
3. Connection (RFC 9293 section 3.10.7): in LISTEN only a SYN without ACK opens it; data on a
   SYN is not delivered (no TCP Fast Open cookie was ever issued). The server's ISS, window and
   SND.NXT come from the datagrams the server sent (its SYN+ACK and data). Then, for each
   client segment: PAWS (RFC 7323 section 5: a timestamp older than TS.Recent drops the
   segment once both SYNs carried timestamps; a segment without one is accepted, as Linux
   does); RST: per `target.rst`, EXACT (RFC 5961 section 3: only SEG.SEQ = RCV.NXT resets,
   Linux, Windows since Vista) or IN_WINDOW (RFC 793: any in-window RST, Windows Server 2003);
   a SYN on the synchronized connection changes nothing (RFC 5961 section 4: challenge ACK);
   the sequence acceptability test against RCV.NXT and the server's advertised window; no ACK
   flag: dropped; an ACK of data never sent, or older than SND.UNA minus the largest window
   (RFC 5961 section 5): dropped. Bytes outside the window are trimmed.
4. Urgent data (RFC 9293 section 3.8.5, BSD reading as Linux with tcp_stdurg=0 and Windows):
   the urgent byte is the one before SEG.SEQ + urgent pointer (at SEG.SEQ when the pointer is
   0); a later mark replaces an earlier one not yet reached. Without `target.urgent_inline`
   (SO_OOBINLINE off, the default of both) that byte is taken out of the stream.
5. Out-of-order bytes wait; a byte that arrives again before delivery keeps its first copy or
   takes the new one per `target.overlap` (Windows keeps the first; Linux replaces queued
   segments a new one covers). Delivered bytes never change. The application reads at once.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Final

from gateway.testing.wire import ACK, RST, SYN, URG, ones_sum

__all__ = [
    "LINUX",
    "TARGETS",
    "WINDOWS",
    "FragPolicy",
    "OverlapPolicy",
    "Receiver",
    "RstPolicy",
    "Target",
]

MOD: Final = 1 << 32
HALF: Final = 1 << 31
MAX_WINDOW: Final = 65535  # largest window without window scaling (no plan here scales)


class FragPolicy(enum.Enum):
    FIRST = "first"
    LAST = "last"
    DISCARD = "discard"


class OverlapPolicy(enum.Enum):
    FIRST = "first"
    LAST = "last"


class RstPolicy(enum.Enum):
    EXACT = "exact"  # RFC 5961
    IN_WINDOW = "in-window"  # RFC 793


@dataclass(frozen=True, slots=True)
class Target:
    """How one kind of server resolves what the standards leave open."""

    name: str
    overlap: OverlapPolicy
    frag4: FragPolicy
    frag6: FragPolicy = FragPolicy.DISCARD
    rst: RstPolicy = RstPolicy.EXACT
    urgent_inline: bool = False
    hops: int = 1  # routers between the gateway and the server


LINUX: Final = Target("linux", OverlapPolicy.LAST, FragPolicy.DISCARD)
WINDOWS: Final = Target(
    "windows-2003", OverlapPolicy.FIRST, FragPolicy.FIRST, rst=RstPolicy.IN_WINDOW
)
TARGETS: Final = (LINUX, WINDOWS)


class _State(enum.Enum):
    LISTEN = "listen"
    SYN_RCVD = "syn-rcvd"
    ESTABLISHED = "established"
    CLOSED = "closed"


def _diff(a: int, b: int) -> int:
    """a - b in sequence space, -2**31 .. 2**31 - 1."""
    d = (a - b) % MOD
    return d - MOD if d >= HALF else d


@dataclass(slots=True)
class _Frags:
    parts: dict[int, int] = field(default_factory=dict)  # offset -> byte
    spans: set[tuple[int, int]] = field(default_factory=set)
    total: int | None = None
    header: bytes = b""  # IPv4 header / IPv6 next header of the offset-0 fragment
    dead: bool = False


def _timestamp(options: bytes) -> tuple[int, int] | None:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        size = options[i + 1]
        if kind == 8 and size == 10 and i + 10 <= len(options):
            val, ecr = struct.unpack_from("!II", options, i + 2)
            return int(val), int(ecr)
        i += size
    return None


class Receiver:
    """The server side of one TCP connection, as its application would read it."""

    def __init__(self, target: Target, server: str, port: int) -> None:
        self.target = target
        self.server = ipaddress.ip_address(server).packed
        self.port = port
        self.state = _State.LISTEN
        self.reset = False
        self._stream = bytearray()
        self._frags: dict[tuple[bytes, bytes, int, int], _Frags] = {}
        self._irs = 0
        self._pos = 0  # stream offset of RCV.NXT (bytes delivered + urgent bytes taken out)
        self._held: dict[int, int] = {}  # stream offset -> byte, not yet delivered
        self._urgent: int | None = None  # stream offset of the pending urgent byte
        self._iss: int | None = None
        self._snd_nxt = 0
        self._snd_una = 0
        self._window = MAX_WINDOW
        self._ts_ok = False
        self._ts_recent = 0

    @property
    def stream(self) -> bytes:
        return bytes(self._stream)

    @property
    def rcv_nxt(self) -> int:
        return (self._irs + 1 + self._pos) % MOD

    # ------------------------------------------------------------------------- IP

    def feed(self, datagram: bytes) -> None:
        """One datagram on the wire past the gateway (either direction)."""
        if not datagram:
            return
        if datagram[0] >> 4 == 4:
            self._ipv4(datagram)
        elif datagram[0] >> 4 == 6:
            self._ipv6(datagram)

    def _ipv4(self, d: bytes) -> None:
        if len(d) < 20:
            return
        ihl = (d[0] & 15) * 4
        total = struct.unpack_from("!H", d, 2)[0]
        if ihl < 20 or total < ihl or total > len(d) or ones_sum(d[:ihl]) != 0xFFFF:
            return
        if d[8] <= self.target.hops:
            return
        d = d[:total]
        ident, frag = struct.unpack_from("!HH", d, 4)
        src, dst, proto = d[12:16], d[16:20], d[9]
        if proto != 6:
            return
        if frag & 0x3FFF == 0:
            self._tcp(src, dst, d[ihl:])
            return
        whole = self._fragment(
            (src, dst, ident, 4), (frag & 0x1FFF) * 8, bool(frag & 0x2000), d[ihl:], b""
        )
        if whole is not None:
            self._tcp(src, dst, whole)

    def _ipv6(self, d: bytes) -> None:
        if len(d) < 40:
            return
        plen, nh, hop = struct.unpack_from("!HBB", d, 4)
        if 40 + plen > len(d) or hop <= self.target.hops:
            return
        src, dst = d[8:24], d[24:40]
        end = 40 + plen
        pos = 40
        first = True
        while nh != 6:
            if pos + 8 > end:
                return
            if nh == 44:  # fragment header
                nxt, offflags, ident = struct.unpack_from("!BxHI", d, pos)
                whole = self._fragment(
                    (src, dst, ident, 6),
                    offflags & 0xFFF8,
                    bool(offflags & 1),
                    d[pos + 8 : end],
                    bytes([nxt]),
                )
                if whole is not None:
                    self._ipv6(
                        struct.pack("!IHBB", 6 << 28, len(whole), nxt, hop) + src + dst + whole
                    )
                return
            if nh not in (0, 43, 60) or (nh == 0 and not first):
                return
            nxt, hlen = d[pos], d[pos + 1]
            if nh == 43 and d[pos + 3] != 0:  # Segments Left: not the final destination
                return
            nh, pos, first = nxt, pos + (hlen + 1) * 8, False
        if pos <= end:
            self._tcp(src, dst, d[pos:end])

    def _fragment(
        self, key: tuple[bytes, bytes, int, int], off: int, more: bool, data: bytes, nh: bytes
    ) -> bytes | None:
        """Add one fragment; the reassembled payload once complete."""
        policy = self.target.frag4 if key[3] == 4 else self.target.frag6
        q = self._frags.setdefault(key, _Frags())
        if q.dead:
            return None
        span = (off, off + len(data))
        if span in q.spans and policy is FragPolicy.DISCARD:
            return None  # an exact duplicate is ignored
        overlap = any(off + i in q.parts for i in range(len(data)))
        if overlap and policy is FragPolicy.DISCARD:
            q.dead = True
            q.parts.clear()
            return None
        q.spans.add(span)
        for i, byte in enumerate(data):
            if policy is FragPolicy.LAST or off + i not in q.parts:
                q.parts[off + i] = byte
        if not more:
            q.total = off + len(data)
        if q.total is None or any(i not in q.parts for i in range(q.total)):
            return None
        del self._frags[key]
        return bytes(q.parts[i] for i in range(q.total))

    # ------------------------------------------------------------------------- TCP

    def _tcp(self, src: bytes, dst: bytes, seg: bytes) -> None:
        if len(seg) < 20:
            return
        sport, dport, seq, ack, off, flags, window, _csum, urp = struct.unpack_from(
            "!HHIIBBHHH", seg
        )
        hlen = (off >> 4) * 4
        if hlen < 20 or hlen > len(seg):
            return
        if len(src) == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
        else:
            pseudo = src + dst + struct.pack("!I3xB", len(seg), 6)
        if ones_sum(pseudo + seg) != 0xFFFF:
            return
        ts = _timestamp(seg[20:hlen])
        data = seg[hlen:]
        if src == self.server and sport == self.port:
            self._sent(seq, flags, data, window, ts)
        elif dst == self.server and dport == self.port:
            self._receive(seq, ack, flags, data, urp, ts)

    def _sent(
        self, seq: int, flags: int, data: bytes, window: int, ts: tuple[int, int] | None
    ) -> None:
        """A segment the server sent: its ISS, SND.NXT and advertised window."""
        if flags & SYN:
            self._iss = seq
            self._snd_una = seq
            self._snd_nxt = (seq + 1) % MOD
            self._ts_ok = self._ts_ok and ts is not None
        end = (seq + len(data) + (1 if flags & SYN else 0)) % MOD
        if _diff(end, self._snd_nxt) > 0:
            self._snd_nxt = end
        if not flags & RST:
            self._window = window

    def _receive(
        self, seq: int, ack: int, flags: int, data: bytes, urp: int, ts: tuple[int, int] | None
    ) -> None:
        if self.state is _State.CLOSED:
            return
        if self.state is _State.LISTEN:
            if flags & (SYN | ACK | RST) == SYN:
                self._irs = seq
                self.state = _State.SYN_RCVD
                self._ts_ok = ts is not None
                self._ts_recent = ts[0] if ts is not None else 0
            return  # data on a SYN is never delivered; an ACK or RST draws a reset or nothing
        if self._ts_ok and ts is not None and not flags & RST and _diff(ts[0], self._ts_recent) < 0:
            return  # PAWS
        start = _diff(seq, self.rcv_nxt)
        wnd = self._window
        # with data: some byte of the segment falls in RCV.NXT .. RCV.NXT + RCV.WND - 1
        acceptable = start < wnd and start + len(data) > 0 if data else 0 <= start < max(wnd, 1)
        if flags & RST:
            if (self.target.rst is RstPolicy.EXACT and start == 0) or (
                self.target.rst is RstPolicy.IN_WINDOW and 0 <= start < max(wnd, 1)
            ):
                self.state = _State.CLOSED
                self.reset = True
            return
        if flags & SYN or not acceptable or not flags & ACK:
            return
        if self.state is _State.SYN_RCVD:
            if self._iss is None or ack != (self._iss + 1) % MOD:
                return
            self.state = _State.ESTABLISHED
        elif _diff(ack, self._snd_nxt) > 0 or _diff(ack, self._snd_una) < -MAX_WINDOW:
            return
        if _diff(ack, self._snd_una) > 0:
            self._snd_una = ack
        if flags & URG:
            self._mark_urgent(start + (urp - 1 if urp else 0))
        if ts is not None and start <= 0 and _diff(ts[0], self._ts_recent) >= 0:
            self._ts_recent = ts[0]
        self._place(start, data[: max(0, wnd - start)])

    def _mark_urgent(self, rel: int) -> None:
        """`rel`: the urgent byte relative to RCV.NXT."""
        at = self._pos + rel
        if rel < 0 or (self._urgent is not None and at <= self._urgent):
            return
        self._urgent = at

    def _place(self, start: int, data: bytes) -> None:
        """Bytes at `start` relative to RCV.NXT (may be negative: old bytes are dropped)."""
        held = self._held
        if (
            start <= 0
            and not held
            and (self._urgent is None or self._urgent >= self._pos + start + len(data))
        ):
            fresh = data[-start:]
            self._stream += fresh  # in order, nothing waiting: the common case, at once
            self._pos += len(fresh)
            return
        last = self.target.overlap is OverlapPolicy.LAST
        for i in range(max(0, -start), len(data)):
            at = self._pos + start + i
            if last or at not in held:
                held[at] = data[i]
        while self._pos in held:
            byte = held.pop(self._pos)
            if self._urgent == self._pos and not self.target.urgent_inline:
                self._urgent = None
            else:
                self._stream.append(byte)
            self._pos += 1
