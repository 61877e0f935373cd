"""RST builders: parsed back with scapy, checksums recomputed and compared."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from gateway.decode.packet import parse_ip
from gateway.verdict.reset import (
    build_ethernet,
    build_tcp_rst,
    checksum,
    rst_to_client,
    rst_to_server,
)


def _recomputed(pkt: IP | IPv6) -> tuple[int | None, int]:
    """(IP checksum or None, TCP checksum) as scapy computes them from scratch."""
    fresh = pkt.copy()
    if IP in fresh:
        del fresh[IP].chksum
    del fresh[TCP].chksum
    fresh = fresh.__class__(bytes(fresh))
    return (fresh[IP].chksum if IP in fresh else None), fresh[TCP].chksum


@pytest.mark.parametrize(
    ("src", "dst", "layer"),
    [("198.18.0.10", "198.18.0.20", IP), ("2001:db8::10", "2001:db8::20", IPv6)],
)
def test_rst_fields_and_checksums(src: str, dst: str, layer: type) -> None:
    raw = build_tcp_rst(src, dst, 40000, 80, 0xFFFFFFF0, 12345)
    pkt = layer(raw)
    assert pkt.src == src and pkt.dst == dst
    assert pkt[TCP].sport == 40000 and pkt[TCP].dport == 80
    assert pkt[TCP].seq == 0xFFFFFFF0 and pkt[TCP].ack == 12345
    assert pkt[TCP].flags == "RA"
    assert len(pkt[TCP].payload) == 0
    ip_sum, tcp_sum = _recomputed(pkt)
    assert pkt[TCP].chksum == tcp_sum
    if layer is IP:
        assert pkt[IP].chksum == ip_sum
        assert pkt[IP].len == 40 and pkt[IP].proto == 6
    else:
        assert pkt[IPv6].plen == 20 and pkt[IPv6].nh == 6


def test_rst_without_ack_is_bare_rst() -> None:
    pkt = IP(build_tcp_rst("198.18.0.10", "198.18.0.20", 1, 2, 7))
    assert pkt[TCP].flags == "R" and pkt[TCP].ack == 0


def test_mixed_families_rejected() -> None:
    with pytest.raises(ValueError, match="families"):
        build_tcp_rst("198.18.0.10", "2001:db8::20", 1, 2, 3)


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (complement 220d).
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF


def test_resets_derived_from_offending_segment() -> None:
    offending = bytes(
        IP(src="198.18.0.10", dst="198.18.0.20")
        / TCP(sport=41000, dport=80, seq=1000, ack=5000, flags="PA")
        / b"GET /VPATCH-TEST-EXPLOIT"
    )
    pkt = parse_ip(offending)
    to_server = IP(rst_to_server(pkt))
    assert (to_server.src, to_server.dst) == ("198.18.0.10", "198.18.0.20")
    assert (to_server[TCP].sport, to_server[TCP].dport) == (41000, 80)
    assert to_server[TCP].seq == 1000 and to_server[TCP].flags == "RA"
    to_client = IP(rst_to_client(pkt))
    assert (to_client.src, to_client.dst) == ("198.18.0.20", "198.18.0.10")
    assert (to_client[TCP].sport, to_client[TCP].dport) == (80, 41000)
    assert to_client[TCP].seq == 5000
    assert to_client[TCP].ack == 1000 + len(b"GET /VPATCH-TEST-EXPLOIT")
    assert to_client[TCP].chksum == _recomputed(to_client)[1]


def test_ethernet_frame() -> None:
    ip = build_tcp_rst("2001:db8::20", "2001:db8::10", 80, 41000, 1, 2)
    frame = Ether(build_ethernet(b"\x02" * 6, b"\x04" * 6, ip))
    assert frame.dst == "02:02:02:02:02:02" and frame.src == "04:04:04:04:04:04"
    assert frame.type == 0x86DD and IPv6 in frame
    with pytest.raises(ValueError):
        build_ethernet(b"\x02", b"\x04" * 6, ip)
