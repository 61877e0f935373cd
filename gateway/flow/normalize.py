"""TCP normalisation for inspected flows: only what the receiver would accept is inspected and
forwarded, and no byte the gateway inspected can be replaced by another one (sans-I/O).

An inline gateway need not guess how the server resolves ambiguous traffic (Ptacek & Newsham
1998): it can remove the ambiguity (Handley, Paxson & Kreibich 2001). This module decides, per
TCP segment, one of three things, and counts every decision by reason (`Normalizer.counts`):
- pass: the segment goes on to reassembly and inspection;
- DROP the segment (the flow goes on): the receiver would drop it too, so dropping it changes
  nothing for a well-behaved sender and removes what an insertion attack relies on;
- RESET the flow: the segment carries bytes that differ from bytes already inspected (held or
  delivered): whichever copy the server keeps, it may not be the inspected one. The segment
  is dropped and the flow reset (no rewrite: the intake forwards packets or not, it does not
  rewrite their payload).

The rules, in the order they apply:
1. `intact` (every TCP datagram, before the flow table sees it, so that a packet the server
   never gets cannot open, close or re-seed a flow): the IPv4 header checksum and the TCP
   checksum (RFC 9293 section 3.1, pseudo-header of RFC 791 / RFC 8200 section 8.1) must
   verify. A TCP checksum equal to the pseudo-header sum alone, with the segment's length or
   with length 0, is checksum offload not yet completed (Linux CHECKSUM_PARTIAL, as captured on
   the sending host or queued with NFQUEUE's GSO flag), not an error: it passes. In AUTO mode
   (captures, like Suricata's checksum-validation auto) wrong checksums pass while they are a
   tenth or more of those seen, or before any right one: captures whose addresses were
   rewritten or anonymised keep the old checksums (counted in `checksum_ignored`).
2. `admit` (segments of inspected flows): data on a SYN is dropped (no Fast Open cookie is ever
   seen through the gateway; Linux and Windows do not deliver it either, and the sender
   retransmits the data after the handshake); data without ACK is dropped (RFC 9293 section
   3.10.7.4); PAWS (RFC 7323 section 5) once both SYNs carried timestamps: a segment whose
   TSval is older than the last one accepted in order is dropped (the gateway's TS.Recent is
   never ahead of the receiver's, so nothing the receiver would take is dropped); data before
   the stream's first byte, or starting beyond the largest window the receiver can have
   offered (65535, scaled by its window scale when both SYNs carried one, RFC 7323 section 2)
   past the next byte expected, is dropped: the receiver cannot take it. So is an
   out-of-order segment starting beyond the right edge of the furthest window the receiver
   was seen to offer (the gateway may miss window updates: pure ACKs are not queued, so data
   in order beyond that edge passes; a dropped out-of-order segment is retransmitted by its
   sender once the hole before it is filled). Junk sent ahead, out of the server's window,
   is thus never held and inspected before the real bytes come.
3. `receive` (reassembly): the reassembler (gateway/flow/reassembly.py, first-wins) reports
   any byte that differs from one held or delivered within its history, or that belongs to a
   hole it skipped (gateway/engine.py, `limits.stream_hole`): RESET. Except a keep-alive
   probe's shape (one byte at the sequence number before the next one expected, no SYN, FIN
   or RST, as Suricata recognises it) with a byte other than the last one delivered: Windows
   fills its probes so, and resetting would end every idle connection it probes. Such a
   segment is dropped instead (`keepalive`): a receiver that has the byte loses nothing, one
   that lacks it (its copy was an insertion that expired on the way) never gets another. An
   out-of-order segment the reassembler cannot hold within its bounds is dropped (the sender
   retransmits it). Urgent data (RFC 9293 section 3.8.5, read as Linux and Windows read it:
   the urgent byte is the one before SEG.SEQ + urgent pointer, the one at SEG.SEQ when the
   pointer is 0; a later mark replaces one not yet reached): the urgent byte is taken out of
   the bytes inspected, as the server's socket takes it out of the stream (SO_OOBINLINE off,
   the default). A server reading urgent data inline would read that byte: such services
   should not be protected by rules that a single byte can split.

Kernel-checked (`Normalizer(kernel_checked=True)`, the inline queue with `firewall.drop_invalid`
and conntrack strict, gateway/intake/nfqueue.py `conntrack_lax`): the kernel rules drop what
conntrack finds INVALID before it is queued, which covers rule 1 (conntrack verifies the TCP
checksum with the same offload exception, the IP stack the IPv4 header checksum) and the
window edges of rule 2 (tcp_in_window: sequence numbers beyond the receiver's advertised
window, with scaling, and acknowledgments of unsent data). Those two are skipped then; the
rest (SYN data, data without ACK, PAWS, before-stream, the largest possible window, conflicts,
urgent data, closing) still runs: conntrack does not check them.

What it guarantees: every decision is counted by reason; state is per flow (`Flow.tcp`),
a few integers per direction; nothing here raises on any packet (a packet whose headers are not
available, e.g. built by hand without `raw`, passes the checksum rule untested).
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from gateway.decode.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_URG, Packet
from gateway.flow.reassembly import SEQ_MOD, StreamReassembler
from gateway.flow.table import Flow
from gateway.vocabulary import Direction

__all__ = ["MAX_WINDOW_SCALE", "ChecksumMode", "Normalizer", "Reason", "TcpState", "Verdict"]

MAX_WINDOW_SCALE: Final = 14  # RFC 7323 section 2.3
_HALF: Final = SEQ_MOD // 2
_OPT_WSCALE: Final = 3
_OPT_TIMESTAMP: Final = 8
_TS = struct.Struct("!I")
_OTHER: Final = (Direction.TO_CLIENT, Direction.TO_SERVER)  # the other way, by Direction


class ChecksumMode(enum.Enum):
    """Which datagrams with a wrong checksum `intact` refuses."""

    VERIFY = "verify"  # every one (the inline queue: these are the checksums on the wire)
    AUTO = "auto"  # captures: every one, unless a tenth or more of those seen were wrong


class Verdict(enum.Enum):
    """What becomes of a segment."""

    PASS = "pass"
    DROP = "drop"  # this segment only
    RESET = "reset"  # the flow


class Reason(enum.Enum):
    """Why a segment was dropped, a flow reset, or a byte taken out."""

    IP_CHECKSUM = "ip_checksum"
    TCP_CHECKSUM = "tcp_checksum"
    SYN_DATA = "syn_data"
    NO_ACK = "no_ack"
    PAWS = "paws"
    BEFORE_STREAM = "before_stream"
    BEYOND_WINDOW = "beyond_window"
    PENDING_FULL = "pending_full"
    CHECKSUM_IGNORED = "checksum_ignored"  # wrong, passed in AUTO mode
    CONFLICT = "conflict"  # the flow is reset
    HOLE_LATE = "hole_late"  # bytes of a skipped hole came after all: the flow is reset
    URGENT = "urgent"  # an urgent byte taken out of the inspected bytes
    KEEPALIVE = "keepalive"  # a keep-alive probe with another byte: dropped, not a reset


def _diff(a: int, b: int) -> int:
    """a - b in sequence space (-2**31 .. 2**31 - 1)."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= _HALF else d


class _Side:
    """What the normaliser knows about one sender."""

    __slots__ = ("edge", "syn", "syn_ts", "ts_recent", "ttl", "urgent", "wscale")

    def __init__(self) -> None:
        self.edge: int | None = None  # right edge of the last window it was seen to offer
        self.syn = False  # its SYN (or SYN+ACK) was seen
        self.ttl: int | None = None  # TTL / hop limit of that SYN
        self.syn_ts = False  # its SYN carried a timestamp
        self.ts_recent: int | None = None  # last TSval accepted in order
        self.wscale: int | None = None  # window scale offered in its SYN
        self.urgent: int | None = None  # sequence number of its pending urgent byte


class TcpState:
    """Per-flow normalisation state (`Flow.tcp`): `sides` indexed by the sender's Direction
    (TO_SERVER: the client, TO_CLIENT: the server)."""

    __slots__ = ("sides", "ts_ok")

    def __init__(self) -> None:
        self.sides = (_Side(), _Side())
        self.ts_ok = False  # both SYNs carried timestamps: PAWS applies

    def max_window(self, receiver: Direction) -> int:
        """The largest window the side sending in direction `receiver` can ever offer."""
        if not (self.sides[0].syn and self.sides[1].syn):
            return 65535 << MAX_WINDOW_SCALE  # a SYN not seen: assume the most
        mine, theirs = self.sides[receiver].wscale, self.sides[_OTHER[receiver]].wscale
        if mine is None or theirs is None:
            return 65535
        return 65535 << min(mine, MAX_WINDOW_SCALE)


def _ttl(pkt: Packet) -> int | None:
    """The TTL (IPv4) or hop limit (IPv6) of the datagram, if its header is at hand."""
    raw = pkt.raw
    if not raw:
        return None
    return raw[pkt.l3 + (8 if pkt.version == 4 else 7)]


_NOP_NOP_TS: Final = b"\x01\x01\x08\x0a"  # NOP, NOP, timestamp option of 10 bytes


def _options(pkt: Packet) -> tuple[int | None, int | None]:
    """(window scale, TSval) from the packet's TCP options (None where absent)."""
    raw, l4 = pkt.raw, pkt.l4
    if not raw or len(raw) < l4 + 20:
        return None, None
    end = l4 + (raw[l4 + 12] >> 4) * 4
    i = l4 + 20
    if end == i + 12 and raw[i : i + 4] == _NOP_NOP_TS:  # what Linux and Windows send on data
        return None, _TS.unpack_from(raw, i + 4)[0]
    wscale = tsval = None
    while i < end:
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or raw[i + 1] < 2:
            break
        size = raw[i + 1]
        if kind == _OPT_WSCALE and size == 3 and i + 3 <= end:
            wscale = raw[i + 2]
        elif kind == _OPT_TIMESTAMP and size == 10 and i + 10 <= end:
            tsval = _TS.unpack_from(raw, i + 2)[0]
        i += size
    return wscale, tsval


class Normalizer:
    """The rules above for one engine; `counts` by reason."""

    def __init__(
        self, checksums: ChecksumMode = ChecksumMode.VERIFY, kernel_checked: bool = False
    ) -> None:
        self.checksums = checksums
        # the kernel dropped segments with a wrong checksum or outside conntrack's window
        # before queueing them (see "Kernel-checked" above): rule 1 and the window edges of
        # rule 2 are left to it
        self.kernel_checked = kernel_checked
        self.counts: dict[str, int] = {r.value: 0 for r in Reason}
        self.last: Reason | None = None  # the reason of the last refusal (for its event)
        self._right = 0  # datagrams whose checksums verified
        self._wrong = 0

    def _count(self, reason: Reason) -> None:
        self.counts[reason.value] += 1
        self.last = reason

    # ------------------------------------------------------------------ 1. checksums

    def intact(self, pkt: Packet) -> bool:
        """False (and counted) when the receiver would discard the datagram for a checksum."""
        raw, l3, l4 = pkt.raw, pkt.l3, pkt.l4
        if self.kernel_checked or not raw or l4 <= l3 or pkt.first_fragment:
            return True  # checked by the kernel; no headers at hand; a fragment is checked
            # once reassembled
        seg_end = l4 + (raw[l4 + 12] >> 4) * 4 + len(pkt.payload)
        # One's complement sums as big integers modulo 0xFFFF (RFC 1071: 2**16 = 1 there),
        # written out here because this runs for every inspected data segment.
        if pkt.version == 4:
            if int.from_bytes(raw[l3 : l3 + (raw[l3] & 0x0F) * 4], "big") % 0xFFFF:
                return self._wrong_one(Reason.IP_CHECKSUM)
            pseudo = (int.from_bytes(raw[l3 + 12 : l3 + 20], "big") + 6) % 0xFFFF
        else:
            pseudo = (int.from_bytes(raw[l3 + 8 : l3 + 40], "big") + 6) % 0xFFFF
        length = seg_end - l4
        segment = int.from_bytes(raw[l4:seg_end], "big")
        if length & 1:
            segment <<= 8
        if (pseudo + length + segment) % 0xFFFF == 0:
            self._right += 1
            return True
        field = int.from_bytes(raw[l4 + 16 : l4 + 18], "big") % 0xFFFF
        if field in ((pseudo + length) % 0xFFFF, pseudo):
            return True  # offload: the pseudo-header sum, with the length or with 0
        return self._wrong_one(Reason.TCP_CHECKSUM)

    def _wrong_one(self, reason: Reason) -> bool:
        self._wrong += 1
        if self.checksums is ChecksumMode.AUTO and (
            not self._right or self._wrong * 10 >= self._right + self._wrong
        ):
            self._count(Reason.CHECKSUM_IGNORED)
            return True
        self._count(reason)
        return False

    # ------------------------------------------------------------------ 2. admission

    def admit(self, flow: Flow, pkt: Packet, d: Direction, reasm: StreamReassembler | None) -> bool:
        """False (counted) when the segment is to be dropped; learns from SYNs."""
        state = flow.tcp
        if not isinstance(state, TcpState):
            state = flow.tcp = TcpState()
        side = state.sides[d]
        flags = pkt.flags
        # options matter on a SYN (window scale, timestamps offered) and for PAWS
        wscale = tsval = None
        if flags & TCP_SYN:
            wscale, tsval = _options(pkt)
        elif state.ts_ok:
            raw, i = pkt.raw, pkt.l4 + 20
            if raw and raw[i - 8] >> 4 == 8 and raw[i : i + 4] == _NOP_NOP_TS:
                tsval = _TS.unpack_from(raw, i + 4)[0]  # what Linux and Windows send on data
            else:
                wscale, tsval = _options(pkt)
        if flags & TCP_ACK and not self.kernel_checked:
            self._offered(state, side, pkt, bool(flags & TCP_SYN))
        if flags & TCP_SYN:
            if pkt.payload:
                self._count(Reason.SYN_DATA)
                return False
            side.syn = True
            side.ttl = _ttl(pkt)
            side.wscale = wscale
            side.syn_ts = tsval is not None
            side.ts_recent = tsval
            if flags & TCP_ACK:
                state.ts_ok = tsval is not None and state.sides[_OTHER[d]].syn_ts
            return True
        if pkt.payload and not flags & TCP_ACK:
            self._count(Reason.NO_ACK)
            return False
        if (
            reasm is not None
            and reasm.next_seq is None
            and d is Direction.TO_SERVER
            and flow.syn_seq is not None
        ):
            reasm.receive(flow.syn_seq, b"", syn=True)  # the flow began at a SYN+ACK
        rel = None
        if reasm is not None and reasm.next_seq is not None:
            rel = _diff(pkt.seq, reasm.next_seq)
        if state.ts_ok and tsval is not None and not flags & TCP_RST:
            recent = side.ts_recent
            if recent is not None and _diff(tsval, recent) < 0:
                self._count(Reason.PAWS)
                return False
            if rel is None or rel <= 0:
                side.ts_recent = tsval
        if rel is None or rel == 0 or not pkt.payload or reasm is None:
            return True  # in order (the common case) or nothing to place
        if reasm.isn is not None and reasm.position + rel < 0:
            self._count(Reason.BEFORE_STREAM)
            return False
        receiver = _OTHER[d]
        edge = state.sides[receiver].edge
        if rel >= state.max_window(receiver) or (
            rel > 0 and edge is not None and _diff(pkt.seq, edge) >= 0
        ):
            self._count(Reason.BEYOND_WINDOW)
            return False
        return True

    @staticmethod
    def _offered(state: TcpState, side: _Side, pkt: Packet, syn: bool) -> None:
        """The window `side` offers with this segment: its right edge, if the furthest yet."""
        raw, l4 = pkt.raw, pkt.l4
        if not raw or not l4:
            return
        window = int.from_bytes(raw[l4 + 14 : l4 + 16], "big")
        scales = state.sides[0].wscale, state.sides[1].wscale
        if not syn and side.wscale is not None and None not in scales:
            window <<= min(side.wscale, MAX_WINDOW_SCALE)  # RFC 7323 section 2.3
        edge = (pkt.ack + window) % SEQ_MOD
        if side.edge is None or _diff(edge, side.edge) > 0:
            side.edge = edge

    # ------------------------------------------------------------------ 3. reassembly

    def receive(
        self, flow: Flow, pkt: Packet, d: Direction, reasm: StreamReassembler
    ) -> tuple[Verdict, bytes]:
        """The verdict on the segment and the bytes it makes contiguous, to inspect."""
        state = flow.tcp
        side = state.sides[d] if isinstance(state, TcpState) else None
        if side is not None and pkt.flags & TCP_URG and reasm.next_seq is not None:
            raw, l4 = pkt.raw, pkt.l4
            pointer = int.from_bytes(raw[l4 + 18 : l4 + 20], "big") if raw else 0
            at = (pkt.seq + (pointer - 1 if pointer else 0)) % SEQ_MOD
            if _diff(at, reasm.next_seq) >= 0 and (
                side.urgent is None or _diff(at, side.urgent) > 0
            ):
                side.urgent = at
        if (
            len(pkt.payload) == 1
            and reasm.next_seq is not None
            and (pkt.seq + 1) % SEQ_MOD == reasm.next_seq
            and not pkt.flags & (TCP_SYN | TCP_FIN | TCP_RST)
            and reasm.last_byte not in (None, pkt.payload)
        ):
            self._count(Reason.KEEPALIVE)  # a keep-alive probe's byte: dropped, flow goes on
            return Verdict.DROP, b""
        conflicts = reasm.overlaps_conflicting
        late = reasm.late_holes
        data = reasm.receive(pkt.seq, pkt.payload, bool(pkt.flags & TCP_SYN))
        if reasm.overlaps_conflicting != conflicts:
            self._count(Reason.HOLE_LATE if reasm.late_holes != late else Reason.CONFLICT)
            return Verdict.RESET, b""
        if reasm.refused:
            self._count(Reason.PENDING_FULL)
            return Verdict.DROP, b""
        if data and side is not None and side.urgent is not None and reasm.next_seq is not None:
            k = _diff(side.urgent, (reasm.next_seq - len(data)) % SEQ_MOD)
            if 0 <= k < len(data):
                data = data[:k] + data[k + 1 :]
                side.urgent = None
                self._count(Reason.URGENT)
        return Verdict.PASS, data

    # ------------------------------------------------------------------ closing

    def closes(self, flow: Flow, pkt: Packet, d: Direction) -> bool:
        """Whether a FIN or RST closes the flow in the gateway's view (FlowTable's
        `close_check`): not when its sequence number is one the receiver would not act on
        (RST: not RCV.NXT, RFC 5961 section 3; FIN: before RCV.NXT or beyond any window), nor
        when its TTL is below that of the sender's SYN (an insertion that expires before the
        receiver). Such a segment passes; the flow stays open (its idle timeout applies)."""
        stream = flow.streams[d]
        if stream is not None and stream.next_seq is not None:
            rel = _diff(pkt.seq, stream.next_seq)
            if pkt.flags & TCP_RST:
                if rel != 0:
                    return False
            elif rel < 0 or rel >= 65535 << MAX_WINDOW_SCALE:
                return False
        state = flow.tcp
        if isinstance(state, TcpState):
            ttl, syn_ttl = _ttl(pkt), state.sides[d].ttl
            if ttl is not None and syn_ttl is not None and ttl < syn_ttl:
                return False
        return True
