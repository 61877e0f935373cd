"""gateway/decode/packet.py's cache of printed address pairs: the same addresses as
inet_ntop gives, for IPv4 and IPv6, and never more than ADDRESS_PAIRS entries."""

from __future__ import annotations

import ipaddress

from gateway.decode import packet
from gateway.decode.packet import ADDRESS_PAIRS, parse_ip
from gateway.testing.wire import ACK, Seg, build


def _datagram(src: str, dst: str) -> bytes:
    (datagram,) = build(Seg(src, dst, 40000, 80, 1, 1, ACK, b"x"))
    return datagram


def test_addresses_are_printed_as_inet_ntop_prints_them_from_a_bounded_cache() -> None:
    base = ipaddress.ip_address("198.18.0.0")
    for n in range(ADDRESS_PAIRS + 10):
        src, dst = str(base + n), str(base + 65536 + n % 7)
        pkt = parse_ip(_datagram(src, dst))
        assert (pkt.src, pkt.dst) == (src, dst)
        assert len(packet._pairs) <= ADDRESS_PAIRS
    again = parse_ip(_datagram("198.18.0.5", "198.18.1.1"))  # cached or not: the same
    assert (again.src, again.dst) == ("198.18.0.5", "198.18.1.1")


def test_ipv6_pairs_do_not_meet_ipv4_pairs() -> None:
    src, dst = "2001:2::10", "2001:2::20"
    pkt = parse_ip(_datagram(src, dst))
    assert (pkt.src, pkt.dst) == (src, dst)
    back = parse_ip(_datagram(dst, src))
    assert (back.src, back.dst) == (dst, src)
