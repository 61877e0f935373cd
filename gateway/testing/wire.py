"""Raw IPv4/IPv6 TCP datagrams with every field an evasion needs to control (tests, benchmarks).

`Seg` describes one TCP segment as a sender means it: addresses, ports, sequence and
acknowledgment numbers, flags, window, urgent pointer, timestamp option, and how it is put on
the wire: TTL / hop limit, a good, wrong or offload-partial TCP checksum, a wrong IPv4 header
checksum, IPv6 extension headers, IP fragmentation (tiny, reversed, with an overlapping junk
fragment). `build(seg)` returns the datagram(s).

Guarantees: everything not asked to be wrong is well formed: IPv4 (RFC 791) or IPv6
(RFC 8200) by the address family, TCP (RFC 9293 section 3.1) with options padded to 32-bit
words, checksums over the RFC 9293 / RFC 8200 section 8.1 pseudo-headers. Extension headers are
8 bytes each: hop-by-hop and destination options hold one PadN option, a routing header has an
unassigned type with Segments Left 0 (RFC 8200 section 4.4: the receiver ignores it). An IPv6
first fragment holds the whole header chain and the TCP header (RFC 7112). Nothing here sends
anything; the code is independent of gateway.decode (its TCP flag values are its own), so a
decoder bug cannot hide in it; the protocol number is gateway.vocabulary's.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, replace
from typing import Final

from gateway.vocabulary import PROTO_TCP

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "Checksum",
    "FragOverlap",
    "Fragmenting",
    "Seg",
    "build",
    "junk",
    "ones_sum",
]

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20

IPPROTO_FRAGMENT: Final = 44


class Checksum(enum.Enum):
    """How the TCP checksum field is filled."""

    GOOD = "good"
    BAD = "bad"  # wrong (the correct value plus one)
    PARTIAL = "partial"  # the folded pseudo-header sum only: what a sender with checksum
    # offload (Linux CHECKSUM_PARTIAL) leaves for the NIC to complete


class FragOverlap(enum.Enum):
    """A junk copy of the fragment(s) holding the TCP payload, overlapping the real ones."""

    NONE = "none"
    REAL_FIRST = "real-first"  # real fragments but the last, the junk copy, the last fragment


@dataclass(frozen=True, slots=True)
class Fragmenting:
    """Cut the datagram into IP fragments of `size` payload bytes (a multiple of 8)."""

    size: int = 8
    reverse: bool = False
    overlap: FragOverlap = FragOverlap.NONE


@dataclass(frozen=True, slots=True)
class Seg:
    """One TCP segment and how it goes on the wire."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    data: bytes = b""
    window: int = 65535
    urg: int = 0
    ts: tuple[int, int] | None = None  # (TSval, TSecr), RFC 7323
    mss: int | None = None
    checksum: Checksum = Checksum.GOOD
    ip_checksum_bad: bool = False
    ttl: int = 64  # TTL / hop limit as the gateway sees the datagram
    ident: int = 0  # IPv4 identification / IPv6 fragment identification
    frag: Fragmenting | None = None
    ext: tuple[int, ...] = ()  # IPv6 extension headers before TCP: 0, 43 or 60 each

    def with_data(self, data: bytes) -> Seg:
        return replace(self, data=data)


def junk(data: bytes) -> bytes:
    """Bytes of the same length that differ from `data` at every position."""
    return bytes(0x58 if b != 0x58 else 0x59 for b in data)  # "X", or "Y" where "X" was


def ones_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of `data` (RFC 1071), folded, 0..0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, PROTO_TCP, length)
    return src + dst + struct.pack("!I3xB", length, PROTO_TCP)


def _options(seg: Seg) -> bytes:
    out = b""
    if seg.mss is not None:
        out += struct.pack("!BBH", 2, 4, seg.mss)
    if seg.ts is not None:
        out += b"\x01\x01" + struct.pack("!BBII", 8, 10, seg.ts[0] & 0xFFFFFFFF, seg.ts[1])
    return out + b"\x00" * (-len(out) % 4)


def _tcp(seg: Seg, src: bytes, dst: bytes) -> bytes:
    opts = _options(seg)
    doff = (20 + len(opts)) // 4
    header = (
        struct.pack(
            "!HHIIBBHHH",
            seg.sport,
            seg.dport,
            seg.seq & 0xFFFFFFFF,
            seg.ack & 0xFFFFFFFF,
            doff << 4,
            seg.flags,
            seg.window,
            0,
            seg.urg,
        )
        + opts
    )
    pseudo = _pseudo(src, dst, len(header) + len(seg.data))
    if seg.checksum is Checksum.PARTIAL:
        csum = ones_sum(pseudo)
    else:
        csum = ~ones_sum(pseudo + header + seg.data) & 0xFFFF
        if seg.checksum is Checksum.BAD:
            csum = (csum + 1) & 0xFFFF or 1
    return header[:16] + struct.pack("!H", csum) + header[18:] + seg.data


def _ipv4_header(seg: Seg, src: bytes, dst: bytes, length: int, frag_field: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + length,
        seg.ident & 0xFFFF,
        frag_field,
        seg.ttl,
        PROTO_TCP,
        0,
        src,
        dst,
    )
    csum = ~ones_sum(header) & 0xFFFF
    if seg.ip_checksum_bad:
        csum = (csum + 1) & 0xFFFF or 1
    return header[:10] + struct.pack("!H", csum) + header[12:]


def _ext_chain(types: tuple[int, ...], last: int) -> bytes:
    """Extension headers of 8 bytes each, chained to `last` (the upper-layer protocol)."""
    out = b""
    for i, kind in enumerate(types):
        nxt = types[i + 1] if i + 1 < len(types) else last
        if kind == 43:  # routing header, unassigned type 253, Segments Left 0
            out += struct.pack("!BBBB4x", nxt, 0, 253, 0)
        else:  # hop-by-hop / destination options: one PadN option of 4 zero bytes
            out += struct.pack("!BBBB4x", nxt, 0, 1, 4)
    return out


def _ipv6_header(seg: Seg, src: bytes, dst: bytes, length: int, nh: int) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, length, nh, seg.ttl, src, dst)


def build(seg: Seg) -> list[bytes]:
    """The datagram(s) carrying `seg` (several when it is fragmented)."""
    src = ipaddress.ip_address(seg.src).packed
    dst = ipaddress.ip_address(seg.dst).packed
    tcp = _tcp(seg, src, dst)
    if len(src) == 4:
        if seg.frag is None:
            return [_ipv4_header(seg, src, dst, len(tcp), 0x4000) + tcp]
        return _fragments_v4(seg, src, dst, tcp)
    chain = _ext_chain(seg.ext, PROTO_TCP)
    first_nh = seg.ext[0] if seg.ext else PROTO_TCP
    if seg.frag is None:
        body = chain + tcp
        return [_ipv6_header(seg, src, dst, len(body), first_nh) + body]
    return _fragments_v6(seg, src, dst, chain + tcp, first_nh, len(chain) + (tcp[12] >> 4) * 4)


def _pieces(body: bytes, frag: Fragmenting, first: int) -> list[tuple[int, bytes]]:
    """(offset, bytes) fragments of `body`: the first at least `first` bytes, then `size`."""
    size = max(8, frag.size - frag.size % 8)
    first = max(size, -(-first // 8) * 8)
    cuts = [(0, body[:first])]
    cuts += [(off, body[off : off + size]) for off in range(first, len(body), size)]
    return cuts


def _order(
    frag: Fragmenting, cuts: list[tuple[int, bytes]], data_at: int
) -> list[tuple[int, bytes]]:
    """Fragment order on the wire, with the overlapping junk copy if asked for: it covers the
    payload fragments except the one sent last (which completes the datagram), so a receiver
    keeping the first copy of each byte rebuilds the real datagram."""
    out = list(reversed(cuts)) if frag.reverse else list(cuts)
    if frag.overlap is not FragOverlap.REAL_FIRST or len(out) < 2:
        return out
    body = b"".join(data for _, data in cuts)
    last = out[-1][0]
    starts = [off for off, data in cuts if 0 < off != last and off + len(data) > data_at]
    if not starts:
        return out
    start = starts[0]
    end = last if last > start else len(body)
    keep = max(0, data_at - start)
    fake = body[start : start + keep] + junk(body[start + keep : end])
    return out[:-1] + [(start, fake)] + out[-1:]


def _fragments_v4(seg: Seg, src: bytes, dst: bytes, tcp: bytes) -> list[bytes]:
    assert seg.frag is not None
    header_len = (tcp[12] >> 4) * 4
    cuts = _pieces(tcp, seg.frag, 8)
    out = []
    for off, data in _order(seg.frag, cuts, header_len):
        more = off + len(data) < len(tcp)
        field = (0x2000 if more else 0) | (off // 8)
        out.append(_ipv4_header(seg, src, dst, len(data), field) + data)
    return out


def _fragments_v6(
    seg: Seg, src: bytes, dst: bytes, body: bytes, first_nh: int, headers: int
) -> list[bytes]:
    assert seg.frag is not None
    cuts = _pieces(body, seg.frag, headers)
    out = []
    for off, data in _order(seg.frag, cuts, headers):
        more = off + len(data) < len(body)
        fh = struct.pack("!BxHI", first_nh, off | int(more), seg.ident & 0xFFFFFFFF)
        out.append(_ipv6_header(seg, src, dst, 8 + len(data), IPPROTO_FRAGMENT) + fh + data)
    return out
