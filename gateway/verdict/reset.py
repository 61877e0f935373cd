"""Build the TCP resets of the RESET verdict: pure functions, bytes in, bytes out.

- `build_tcp_rst(...)`: one IPv4 (RFC 791) or IPv6 (RFC 8200) datagram carrying a TCP segment
  (RFC 9293 section 3.1) with RST (and ACK when an acknowledgment number is given), no payload,
  no options, with correct IP header and TCP checksums (RFC 1071; pseudo-headers of RFC 9293
  section 3.1 and RFC 8200 section 8.1).
- `rst_to_server(pkt)`: what replaces the offending client segment: same addresses and ports,
  seq = that segment's seq (inside the server's receive window, so RFC 9293 section 3.10.7.3
  / RFC 5961 accept it), RST|ACK.
- `rst_to_client(pkt)`: a reset from the server's address to the client: seq = the offending
  segment's acknowledgment number (the next byte the client expects from the server), ack =
  the end of the offending segment.
- `build_ethernet(...)`: the frame carrying the client's reset out of the input interface.
Nothing here raises except ValueError for addresses that are not IP addresses.
"""

from __future__ import annotations

import ipaddress
import struct

from gateway.decode.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet
from gateway.vocabulary import PROTO_TCP

DEFAULT_TTL = 64
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data: one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_tcp_rst(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int | None = None,
    ttl: int = DEFAULT_TTL,
) -> bytes:
    """An IP datagram with a bare TCP RST (RST|ACK when `ack` is given)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"address families differ: {src} -> {dst}")
    flags = TCP_RST | (TCP_ACK if ack is not None else 0)
    tcp_len = _TCP.size
    tcp_no_sum = _TCP.pack(
        sport, dport, seq & 0xFFFFFFFF, (ack or 0) & 0xFFFFFFFF, 5 << 4, flags, 0, 0, 0
    )
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, PROTO_TCP, tcp_len)
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", tcp_len, PROTO_TCP)
    tcp_sum = checksum(pseudo + tcp_no_sum)
    tcp = tcp_no_sum[:16] + struct.pack("!H", tcp_sum) + tcp_no_sum[18:]
    if s.version == 4:
        hdr = _IPV4.pack(0x45, 0, 20 + tcp_len, 0, 0x4000, ttl, PROTO_TCP, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + tcp
    return _IPV6.pack(6 << 28, tcp_len, PROTO_TCP, ttl, s.packed, d.packed) + tcp


def _segment_end(pkt: Packet) -> int:
    """Sequence number just past the segment (SYN and FIN each count as one)."""
    length = (
        len(pkt.payload) + (1 if pkt.flags & TCP_SYN else 0) + (1 if pkt.flags & TCP_FIN else 0)
    )
    return (pkt.seq + length) & 0xFFFFFFFF


def rst_to_server(pkt: Packet, ttl: int = DEFAULT_TTL) -> bytes:
    """Replacement for the offending client->server segment: a reset the server accepts."""
    return build_tcp_rst(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.seq, pkt.ack, ttl)


def rst_to_client(pkt: Packet, ttl: int = DEFAULT_TTL) -> bytes:
    """A reset from the server's address back to the client that sent `pkt`."""
    return build_tcp_rst(pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.ack, _segment_end(pkt), ttl)


def build_ethernet(dst_mac: bytes, src_mac: bytes, ip_datagram: bytes) -> bytes:
    """An Ethernet II frame around an IP datagram (type from the IP version nibble)."""
    if len(dst_mac) != 6 or len(src_mac) != 6:
        raise ValueError(f"MAC addresses must be 6 bytes, got {dst_mac!r} / {src_mac!r}")
    etype = ETH_P_IP if ip_datagram[0] >> 4 == 4 else ETH_P_IPV6
    return dst_mac + src_mac + struct.pack("!H", etype) + ip_datagram
