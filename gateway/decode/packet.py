"""Packet decoding: link layer, IPv4/IPv6, TCP/UDP/ICMP/ICMPv6 headers -> Packet.

What it does: turns one captured frame (``parse_frame``) or one raw IP datagram as NFQUEUE hands
it over (``parse_ip``) into an immutable ``Packet`` record, with precompiled ``struct.Struct``
objects and ``unpack_from`` at offsets (no scapy, no per-packet allocation beyond the record, the
two printable addresses, which a bounded cache of address pairs usually supplies, and one
payload slice).

What it guarantees:
- Only ``DecodeError`` escapes (``UnsupportedFrame``, a subclass, for well-formed frames that
  simply do not carry IP, such as ARP or STP); its message names the layer, the offset and the
  length or value that is wrong.
- Lengths in headers are honoured and checked against the bytes present: IPv4 total length
  (RFC 791 section 3.1) and IPv6 payload length (RFC 8200 section 3) bound the datagram, so
  trailing Ethernet padding never becomes payload; a datagram shorter than its header claims
  is an error, not a silently shorter payload. An IPv4 total length of 0 is read as "TSO
  segment, length = bytes present", as captured on hosts with segmentation offload.
- IPv4 fragments (RFC 791): a non-first fragment (offset != 0) yields ``fragment=True`` with
  ports 0 and the raw fragment data as payload; a first fragment (offset 0, more fragments)
  is parsed normally and marked ``first_fragment=True``.
- IPv6 extension headers (RFC 8200 section 4: hop-by-hop, routing, fragment, destination
  options; also AH, RFC 4302) are walked to the end of the chain, however many there are, as a
  receiver does (RFC 8200 section 4.1: any number, any order); each is at least 8 bytes, so
  the walk is bounded by the datagram's length. Fragments are marked as for IPv4. Next header
  59 (no next header) yields an empty payload.
- ``raw``, ``l3`` and ``l4`` give the bytes the packet was decoded from, where its IP header
  starts and (TCP only) where its TCP header starts, for the checks that need the headers
  themselves (gateway/flow/normalize.py, gateway/flow/defrag.py); no copy is made.
- TCP (RFC 9293 section 3.1): the data offset is checked (>= 5 words, within the segment).
  UDP (RFC 768): the length field is checked and honoured (except in a first fragment).
  ICMP (RFC 792) / ICMPv6 (RFC 4443 section 2.1): type and code; the payload is the body after
  type, code and checksum.
- Link layers: Ethernet with up to ``MAX_VLAN_TAGS`` 802.1Q / 802.1ad (QinQ) tags, Linux cooked
  capture v1 and v2, BSD NULL and LOOP, raw IP (DLT 101, 12, 14) and DLT 228/229.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from gateway.errors import DecodeError
from gateway.vocabulary import ICMP_PROTOS, PROTO_TCP, PROTO_UDP

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "LINKTYPE_RAW_BSD12",
    "LINKTYPE_RAW_BSD14",
    "MAX_VLAN_TAGS",
    "TCP_ACK",
    "TCP_CWR",
    "TCP_ECE",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "TCP_URG",
    "DecodeError",
    "Packet",
    "UnsupportedFrame",
    "parse_frame",
    "parse_ip",
]

# TCP flag bits (RFC 9293 section 3.1, byte 13 of the header).
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
TCP_URG: Final = 0x20
TCP_ECE: Final = 0x40
TCP_CWR: Final = 0x80

# IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
_PROTO_HOPOPT: Final = 0
_PROTO_ROUTING: Final = 43
_PROTO_FRAGMENT: Final = 44
_PROTO_AH: Final = 51
_PROTO_NONE: Final = 59
_PROTO_DSTOPTS: Final = 60

# Link-layer header types (tcpdump.org "LINK-LAYER HEADER TYPES").
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW_BSD12: Final = 12  # DLT_RAW on some BSDs
LINKTYPE_RAW_BSD14: Final = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

# Bounds.
MAX_VLAN_TAGS: Final = 4  # stacked 802.1Q/802.1ad tags accepted before the frame is refused

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN_TAGS: Final = frozenset((0x8100, 0x88A8, 0x9100))
_ETH_MIN_TYPE: Final = 0x0600  # below: an 802.3 length field, not an EtherType
# BSD NULL/LOOP address families meaning IPv4 / IPv6 (BSD, Linux, FreeBSD, Darwin values).
_AF_IPV4: Final = frozenset((2,))
_AF_IPV6: Final = frozenset((10, 24, 28, 30))

_IPV4_HDR = struct.Struct("!BxHxxHxB")  # ver/ihl, total length, flags/fragment offset, protocol
_IPV6_HDR = struct.Struct("!4xHBx")  # payload length, next header
_TCP_HDR = struct.Struct("!HHIIBB")  # ports, seq, ack, data offset, flags
_PORTS = struct.Struct("!HHH")  # UDP ports and length
_ICMP_HDR = struct.Struct("!BB")
_U16 = struct.Struct("!H")
_EXT_HDR = struct.Struct("!BB")  # next header, header extension length
_FRAG6_HDR = struct.Struct("!BxH")  # next header, offset/flags
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct("!I")

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_ntop = socket.inet_ntop
# (source, destination) as printed, by the header's address bytes: inet_ntop twice costs more
# than the rest of the IPv4 header's decoding, and a gateway sees the same few address pairs
# again and again. Bounded: emptied when it reaches ADDRESS_PAIRS entries (about 1 MiB).
ADDRESS_PAIRS: Final = 4096
_pairs: dict[bytes, tuple[str, str]] = {}


def _addresses(family: int, key: bytes) -> tuple[str, str]:
    """The printed (source, destination) of `key`, the two addresses' bytes back to back."""
    pair = _pairs.get(key)
    if pair is None:
        if len(_pairs) >= ADDRESS_PAIRS:
            _pairs.clear()
        half = len(key) // 2
        pair = _pairs[key] = (_ntop(family, key[:half]), _ntop(family, key[half:]))
    return pair


class UnsupportedFrame(DecodeError):
    """A well-formed frame that carries no IP datagram (ARP, STP, unknown link type...)."""


if TYPE_CHECKING:
    from dataclasses import dataclass as _record
else:

    def _record(**options: Any) -> Any:
        """A dataclass frozen for the type checker only (mypy rejects any assignment to its
        fields): at run time a frozen dataclass's __init__ sets each field through
        object.__setattr__, which for the 17 fields of a Packet costs about 2.5 us of the 12
        an inspected keep-alive request costs the engine (bench/README.md, 2026-12-07 perf).
        Hash and equality stay those of the frozen class (unsafe_hash)."""
        return dataclass(**(options | {"frozen": False, "unsafe_hash": True}))


@_record(frozen=True, slots=True)
class Packet:
    """One decoded IP datagram (immutable: frozen for the type checker, see `_record`).

    sport/dport are 0 for ICMP and non-first fragments; flags/seq/ack are 0 except for TCP;
    icmp_type/icmp_code are -1 except for ICMP/ICMPv6; payload is the L4 payload (TCP/UDP data,
    ICMP body after type/code/checksum; the fragment data for a non-first fragment).
    fragment: a non-first fragment; first_fragment: offset 0 with more fragments to come.
    raw: the buffer decoded (frame or datagram), l3: offset of the IP header in it, l4: offset
    of the TCP header (TCP only, else 0).
    """

    version: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    flags: int
    seq: int
    ack: int
    payload: bytes
    icmp_type: int = -1
    icmp_code: int = -1
    fragment: bool = False
    first_fragment: bool = False
    raw: bytes = field(default=b"", compare=False, repr=False)
    l3: int = field(default=0, compare=False, repr=False)
    l4: int = field(default=0, compare=False, repr=False)


def parse_ip(data: bytes) -> Packet:
    """Decode a raw IPv4 or IPv6 datagram (as NFQUEUE delivers it)."""
    if data and data[0] >> 4 == 4:  # the common case without _parse_ip_at's call
        return _parse_ipv4(data, 0)
    return _parse_ip_at(data, 0)


def parse_frame(data: bytes, linktype: int) -> Packet:
    """Decode a captured frame of the given pcap link type down to its IP datagram."""
    if linktype == LINKTYPE_ETHERNET:
        return _parse_ethernet(data)
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14):
        return _parse_ip_at(data, 0)
    if linktype == LINKTYPE_IPV4:
        return _parse_ipv4(data, 0)
    if linktype == LINKTYPE_IPV6:
        return _parse_ipv6(data, 0)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            raise DecodeError(
                f"linux-sll: frame of {len(data)} bytes is shorter than its 16-byte header"
            )
        return _parse_ethertype(data, 14, "linux-sll")
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            raise DecodeError(
                f"linux-sll2: frame of {len(data)} bytes is shorter than its 20-byte header"
            )
        return _parse_ethertype_value(data, _U16.unpack_from(data, 0)[0], 0, 20, "linux-sll2")
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return _parse_null(data, linktype)
    raise UnsupportedFrame(f"link layer: link type {linktype} is not supported")


def _parse_ethernet(data: bytes) -> Packet:
    if len(data) < 14:
        raise DecodeError(
            f"ethernet: frame of {len(data)} bytes is shorter than its 14-byte header"
        )
    return _parse_ethertype(data, 12, "ethernet")


def _parse_ethertype(data: bytes, type_off: int, layer: str) -> Packet:
    """Follow the EtherType at type_off (through VLAN tags) to the IP datagram."""
    return _parse_ethertype_value(
        data, _U16.unpack_from(data, type_off)[0], type_off, type_off + 2, layer
    )


def _parse_ethertype_value(data: bytes, etype: int, type_off: int, off: int, layer: str) -> Packet:
    tags = 0
    while etype in _ETH_VLAN_TAGS:
        tags += 1
        if tags > MAX_VLAN_TAGS:
            raise DecodeError(f"{layer}: more than {MAX_VLAN_TAGS} VLAN tags (offset {off})")
        if len(data) < off + 4:
            raise DecodeError(
                f"{layer}: VLAN tag at offset {off} needs 4 bytes, frame has {len(data)}"
            )
        type_off = off + 2
        etype = _U16.unpack_from(data, type_off)[0]
        off += 4
    if etype == _ETH_IPV4:
        return _parse_ipv4(data, off)
    if etype == _ETH_IPV6:
        return _parse_ipv6(data, off)
    if etype < _ETH_MIN_TYPE:
        raise UnsupportedFrame(f"{layer}: 802.3 length field {etype} at offset {type_off}, not IP")
    raise UnsupportedFrame(f"{layer}: EtherType 0x{etype:04x} at offset {type_off} is not IP")


def _parse_null(data: bytes, linktype: int) -> Packet:
    layer = "null" if linktype == LINKTYPE_NULL else "loop"
    if len(data) < 4:
        raise DecodeError(f"{layer}: frame of {len(data)} bytes is shorter than its 4-byte header")
    # NULL stores the family in the capturing host's byte order, LOOP in network order;
    # real files of both kinds exist with either, so accept both readings.
    le = _U32_LE.unpack_from(data, 0)[0]
    be = _U32_BE.unpack_from(data, 0)[0]
    if le in _AF_IPV4 or be in _AF_IPV4:
        return _parse_ipv4(data, 4)
    if le in _AF_IPV6 or be in _AF_IPV6:
        return _parse_ipv6(data, 4)
    raise UnsupportedFrame(f"{layer}: address family {le} at offset 0 is not IPv4 or IPv6")


def _parse_ip_at(data: bytes, off: int) -> Packet:
    if len(data) <= off:
        raise DecodeError(f"ip: no bytes at offset {off} (datagram of {len(data)} bytes)")
    version = data[off] >> 4
    if version == 4:
        return _parse_ipv4(data, off)
    if version == 6:
        return _parse_ipv6(data, off)
    raise DecodeError(f"ip: version {version} at offset {off} is neither 4 nor 6")


def _parse_ipv4(data: bytes, off: int) -> Packet:
    avail = len(data) - off
    if avail < 20:
        raise DecodeError(f"ipv4: {avail} bytes at offset {off}, header needs 20")
    ver_ihl, total, frag, proto = _IPV4_HDR.unpack_from(data, off)
    if ver_ihl >> 4 != 4:
        raise DecodeError(f"ipv4: version {ver_ihl >> 4} at offset {off} is not 4")
    hlen = (ver_ihl & 0x0F) * 4
    if hlen < 20:
        raise DecodeError(
            f"ipv4: header length {hlen} (IHL {hlen // 4}) at offset {off} is below 20"
        )
    if total == 0:  # TSO: the NIC fills the length in later; use what was captured
        total = avail
    if total < hlen:
        raise DecodeError(
            f"ipv4: total length {total} at offset {off + 2} is below the header length {hlen}"
        )
    if total > avail:
        raise DecodeError(
            f"ipv4: total length {total} at offset {off + 2} exceeds the {avail} bytes present"
        )
    src, dst = _addresses(_AF_INET, data[off + 12 : off + 20])
    start = off + hlen
    end = off + total
    if frag & 0x1FFF:
        return Packet(
            4, src, dst, proto, 0, 0, 0, 0, 0, data[start:end], fragment=True, raw=data, l3=off
        )
    return _parse_l4(data, 4, src, dst, proto, start, end, bool(frag & 0x2000), off)


def _parse_ipv6(data: bytes, off: int) -> Packet:
    avail = len(data) - off
    if avail < 40:
        raise DecodeError(f"ipv6: {avail} bytes at offset {off}, header needs 40")
    if data[off] >> 4 != 6:
        raise DecodeError(f"ipv6: version {data[off] >> 4} at offset {off} is not 6")
    plen, nh = _IPV6_HDR.unpack_from(data, off)
    if plen == 0 and nh == _PROTO_HOPOPT:  # possibly a jumbogram (RFC 2675): use what is present
        plen = avail - 40
    if 40 + plen > avail:
        raise DecodeError(
            f"ipv6: payload length {plen} at offset {off + 4} exceeds "
            f"the {avail - 40} bytes present"
        )
    src, dst = _addresses(_AF_INET6, data[off + 8 : off + 40])
    end = off + 40 + plen
    pos = off + 40
    more_fragments = False
    while nh in (_PROTO_HOPOPT, _PROTO_ROUTING, _PROTO_DSTOPTS, _PROTO_FRAGMENT, _PROTO_AH):
        if end - pos < 8:
            raise DecodeError(
                f"ipv6: extension header {nh} at offset {pos} needs 8 bytes, {end - pos} left"
            )
        if nh == _PROTO_FRAGMENT:
            nh, offflags = _FRAG6_HDR.unpack_from(data, pos)
            pos += 8
            if offflags & 0xFFF8:
                return Packet(
                    6, src, dst, nh, 0, 0, 0, 0, 0, data[pos:end], fragment=True, raw=data, l3=off
                )
            more_fragments = bool(offflags & 1)
            continue
        nxt, hlen = _EXT_HDR.unpack_from(data, pos)
        size = (hlen + 2) * 4 if nh == _PROTO_AH else (hlen + 1) * 8
        if pos + size > end:
            raise DecodeError(
                f"ipv6: extension header {nh} at offset {pos} of {size} bytes exceeds the "
                f"{end - pos} bytes left"
            )
        nh = nxt
        pos += size
    if nh == _PROTO_NONE:
        return Packet(6, src, dst, nh, 0, 0, 0, 0, 0, b"")
    return _parse_l4(data, 6, src, dst, nh, pos, end, more_fragments, off)


def _parse_l4(
    data: bytes,
    version: int,
    src: str,
    dst: str,
    proto: int,
    start: int,
    end: int,
    more_fragments: bool,
    l3: int,
) -> Packet:
    avail = end - start
    if more_fragments and avail < (20 if proto == PROTO_TCP else 8):
        # a first fragment too short for its transport header (RFC 1858 tiny fragments): what
        # it holds is inspected once the datagram is reassembled (gateway/flow/defrag.py)
        sport = dport = 0
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(data, start)[:2]
        return Packet(
            version, src, dst, proto, sport, dport, 0, 0, 0, b"",
            first_fragment=True, raw=data, l3=l3,
        )  # fmt: skip
    if proto == PROTO_TCP:
        if avail < 20:
            raise DecodeError(f"tcp: {avail} bytes at offset {start}, header needs 20")
        sport, dport, seq, ack, doff, flags = _TCP_HDR.unpack_from(data, start)
        hlen = (doff >> 4) * 4
        if hlen < 20:
            raise DecodeError(f"tcp: data offset {hlen // 4} at offset {start + 12} is below 5")
        if hlen > avail and more_fragments:  # the options go on in the next fragment
            return Packet(
                version, src, dst, proto, sport, dport, flags, seq, ack, b"",
                first_fragment=True, raw=data, l3=l3,
            )  # fmt: skip
        if hlen > avail:
            raise DecodeError(
                f"tcp: header length {hlen} at offset {start + 12} exceeds the {avail} bytes "
                f"of the segment"
            )
        # every field by position (icmp_type, icmp_code, fragment, first_fragment, raw, l3,
        # l4): keyword arguments cost about 180 ns more per packet
        return Packet(
            version, src, dst, proto, sport, dport, flags, seq, ack, data[start + hlen : end],
            -1, -1, False, more_fragments, data, l3, start,
        )  # fmt: skip
    if proto == PROTO_UDP:
        if avail < 8:
            raise DecodeError(f"udp: {avail} bytes at offset {start}, header needs 8")
        sport, dport, ulen = _PORTS.unpack_from(data, start)
        if more_fragments or (ulen == 0 and version == 6):
            ulen = avail  # first fragment, or IPv6 jumbogram (RFC 2675 section 4)
        elif ulen < 8 or ulen > avail:
            raise DecodeError(
                f"udp: length {ulen} at offset {start + 4} is outside 8..{avail} bytes present"
            )
        return Packet(
            version, src, dst, proto, sport, dport, 0, 0, 0, data[start + 8 : start + ulen],
            -1, -1, False, more_fragments, data, l3,
        )  # fmt: skip
    if proto in ICMP_PROTOS:
        if avail < 4:
            raise DecodeError(f"icmp: {avail} bytes at offset {start}, header needs 4")
        itype, icode = _ICMP_HDR.unpack_from(data, start)
        return Packet(version, src, dst, proto, 0, 0, 0, 0, 0, data[start + 4 : end], itype, icode)
    # Any other transport (GRE, ESP, SCTP...): addresses and protocol only.
    return Packet(version, src, dst, proto, 0, 0, 0, 0, 0, data[start:end])
