"""IP fragment reassembly for inspection (sans-I/O): the engine inspects whole datagrams.

Inline, the kernel's conntrack reassembles before NFQUEUE and this never runs; captures
(`vpatch replay`) and in-process use hand the engine fragments, which would otherwise pass
uninspected. `Defragmenter.add(pkt, now)` takes a decoded fragment (IPv4, RFC 791; IPv6, RFC
8200 section 4.5; `Packet.fragment` or `Packet.first_fragment`) and answers:
- (ACCEPT, None): held, the datagram is not complete; the fragment may pass, since a receiver
  cannot use it without the rest, and the rest is what the verdict is given on;
- (ACCEPT, datagram): this fragment completes it: the reassembled datagram (an IPv4 header
  with the length and checksum set, or an IPv6 header whose next header is the upper layer,
  then the payload) is to be inspected, and its verdict given to this fragment;
- (DROP, None): refused. A fragment whose bytes differ from bytes already received for the
  same offsets (the overlap evasions of Ptacek & Newsham, which receivers resolve differently:
  first copy, last copy, or dropping the datagram as Linux and RFC 5722 do) marks the
  datagram poisoned: this and every later fragment of it are dropped, so no receiver
  completes it. So are fragments past the bounds below.
Exact or agreeing overlaps are harmless and pass.

Bounds (a limit is a decision; configured as engine.defrag_*, the engine raises the
`limits.defrag` event): at most `max_datagrams` incomplete datagrams (a fragment of a
new one past that is dropped, counted in `refused`, as is an IPv4 fragment whose header
checksum is wrong: its receiver drops it); a datagram over 65535 bytes or in more than
`max_fragments` pieces is poisoned;
an incomplete or poisoned datagram is forgotten `timeout` seconds after its first fragment,
longer than the receivers wait (Linux 30 s, Windows 60 s), so a fragment the gateway no longer
remembers cannot complete a datagram at the server either. Counters: `held`, `completed`,
`poisoned`, `refused`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final

from gateway.config import EngineSettings
from gateway.decode.packet import Packet
from gateway.vocabulary import Action

__all__ = [
    "DEFAULT_MAX_DATAGRAMS",
    "DEFAULT_TIMEOUT",
    "MAX_DATAGRAM",
    "MAX_FRAGMENTS",
    "Defragmenter",
]

DEFAULT_MAX_DATAGRAMS: Final = EngineSettings().defrag_datagrams  # engine.defrag_datagrams
DEFAULT_TIMEOUT: Final = EngineSettings().defrag_timeout  # seconds, engine.defrag_timeout
MAX_DATAGRAM: Final = 65535  # bytes of fragmentable payload
MAX_FRAGMENTS: Final = EngineSettings().defrag_fragments  # per datagram, engine.defrag_fragments
_EXT: Final = frozenset((0, 43, 60, 51))  # IPv6 headers before a fragment header

_Key = tuple[int, bytes, bytes, int, int]  # version, src, dst, protocol (IPv4), id


class _Datagram:
    __slots__ = ("first_seen", "header", "next_header", "pieces", "poisoned", "total")

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.pieces: dict[int, bytes] = {}  # offset -> bytes, as received (may overlap)
        self.total: int | None = None  # payload length, once the last fragment is seen
        self.header = b""  # IPv4: the offset-0 fragment's header
        self.next_header = 0  # IPv6: the upper-layer protocol
        self.poisoned = False


def _fragment(pkt: Packet) -> tuple[_Key, int, bool, bytes, bytes, int] | None:
    """(key, offset, more, data, IPv4 header, IPv6 next header) of a decoded fragment."""
    raw, l3 = pkt.raw, pkt.l3
    if not raw:
        return None
    if pkt.version == 4:
        ihl = (raw[l3] & 0x0F) * 4
        total, ident, field = struct.unpack_from("!HHH", raw, l3 + 2)
        key = (4, raw[l3 + 12 : l3 + 16], raw[l3 + 16 : l3 + 20], raw[l3 + 9], ident)
        data = raw[l3 + ihl : l3 + total]
        return key, (field & 0x1FFF) * 8, bool(field & 0x2000), data, raw[l3 : l3 + ihl], 0
    plen = struct.unpack_from("!H", raw, l3 + 4)[0]
    end = l3 + 40 + plen
    nh, pos = raw[l3 + 6], l3 + 40
    while nh in _EXT and pos + 8 <= end:
        size = (raw[pos + 1] + 2) * 4 if nh == 51 else (raw[pos + 1] + 1) * 8
        nh, pos = raw[pos], pos + size
    if nh != 44 or pos + 8 > end:
        return None
    nxt, offflags, ident = struct.unpack_from("!BxHI", raw, pos)
    key = (6, raw[l3 + 8 : l3 + 24], raw[l3 + 24 : l3 + 40], 0, ident)
    return key, offflags & 0xFFF8, bool(offflags & 1), raw[pos + 8 : end], b"", nxt


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Defragmenter:
    """Fragments in, whole datagrams out (see the module comment)."""

    def __init__(
        self,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        timeout: float = DEFAULT_TIMEOUT,
        max_fragments: int = MAX_FRAGMENTS,
    ) -> None:
        self.max_datagrams = max_datagrams
        self.timeout = timeout
        self.max_fragments = max_fragments
        self._open: OrderedDict[_Key, _Datagram] = OrderedDict()  # by first fragment's time
        self.held = 0
        self.completed = 0
        self.poisoned = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, pkt: Packet, now: float) -> tuple[Action, bytes | None]:
        self._expire(now)
        parsed = _fragment(pkt)
        if parsed is None:
            return Action.ACCEPT, None  # no headers at hand: nothing to reassemble with
        key, off, more, data, header, nxt = parsed
        if header and _checksum(header) != 0:
            self.refused += 1
            return Action.DROP, None
        dg = self._open.get(key)
        if dg is None:
            if len(self._open) >= self.max_datagrams:
                self.refused += 1
                return Action.DROP, None
            dg = self._open[key] = _Datagram(now)
        if dg.poisoned:
            return Action.DROP, None
        if not self._place(dg, off, more, data, self.max_fragments):
            dg.poisoned = True
            dg.pieces.clear()
            self.poisoned += 1
            return Action.DROP, None
        if off == 0:
            dg.header, dg.next_header = header, nxt
        whole = self._whole(dg)
        if whole is None:
            self.held += 1
            return Action.ACCEPT, None
        del self._open[key]
        self.completed += 1
        if key[0] == 4:
            ihl = len(dg.header)
            head = bytearray(dg.header)
            head[2:4] = (ihl + len(whole)).to_bytes(2, "big")
            head[6:8] = bytes(2)
            head[10:12] = bytes(2)
            head[10:12] = _checksum(bytes(head)).to_bytes(2, "big")
            return Action.ACCEPT, bytes(head) + whole
        head6 = struct.pack("!IHBB", 6 << 28, len(whole), dg.next_header, 64)
        return Action.ACCEPT, head6 + key[1] + key[2] + whole

    @staticmethod
    def _place(dg: _Datagram, off: int, more: bool, data: bytes, max_fragments: int) -> bool:
        """Add one fragment; False when it contradicts what the datagram already holds."""
        end = off + len(data)
        if end > MAX_DATAGRAM or (more and len(data) % 8):
            return False
        if not more:
            if dg.total is not None and dg.total != end:
                return False
            dg.total = end
        if dg.total is not None and end > dg.total:
            return False
        for o, held in dg.pieces.items():
            a, b = max(o, off), min(o + len(held), end)
            if a < b and held[a - o : b - o] != data[a - off : b - off]:
                return False
        if len(data) > len(dg.pieces.get(off, b"")):
            if off not in dg.pieces and len(dg.pieces) >= max_fragments:
                return False
            dg.pieces[off] = data
        return True

    @staticmethod
    def _whole(dg: _Datagram) -> bytes | None:
        if dg.total is None:
            return None
        out = bytearray(dg.total)
        covered = 0
        for off in sorted(dg.pieces):
            data = dg.pieces[off]
            if off > covered:
                return None
            out[off : off + len(data)] = data
            covered = max(covered, off + len(data))
        return bytes(out) if covered >= dg.total else None

    def _expire(self, now: float) -> None:
        deadline = now - self.timeout
        while self._open:
            key, dg = next(iter(self._open.items()))
            if dg.first_seen > deadline:
                break
            del self._open[key]
