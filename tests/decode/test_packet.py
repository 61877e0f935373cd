"""Tests for gateway/decode/packet.py.

One shared table of cases (built with scapy, which is fine in tests) is decoded whole and as
every truncated prefix (the datagram equivalent of feeding one byte at a time: each prefix
must either decode to the same packet -- only padding was cut -- or raise DecodeError).
Real frames from the corpora are checked field by field against tshark's dissection, and
hypothesis checks that random and mutated bytes raise nothing but DecodeError.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether

from gateway.decode.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD12,
    LINKTYPE_RAW_BSD14,
    MAX_VLAN_TAGS,
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    DecodeError,
    Packet,
    UnsupportedFrame,
    parse_frame,
    parse_ip,
)
from gateway.intake.pcap import read_capture
from gateway.vocabulary import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
C4 = "198.18.0.10"
S4 = "198.18.0.20"
C6 = "2001:db8::10"
S6 = "2001:db8::20"


_MAC1 = "02:00:00:00:00:01"
_MAC2 = "02:00:00:00:00:02"


def _eth(**kw: Any) -> Ether:
    """Ethernet with explicit addresses (scapy would otherwise resolve the MAC on the host)."""
    return Ether(src=_MAC1, dst=_MAC2, **kw)


def _chain(first: Any, layer: Any, count: int) -> Any:
    pkt = first
    for _ in range(count):
        pkt = pkt / layer()
    return pkt


def _sll2(proto: int, ip: bytes) -> bytes:
    """Linux cooked capture v2 header (protocol, reserved, ifindex, hatype, pkttype, addr)."""
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\x02" * 6 + b"\0\0") + ip


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    linktype: int
    want: dict[str, Any] = field(default_factory=dict)


_TCP4 = IP(src=C4, dst=S4) / TCP(sport=40000, dport=80, flags="PA", seq=1000, ack=2000)
_GET = b"GET / HTTP/1.1\r\n\r\n"
_TCP4_WANT = {
    "version": 4,
    "src": C4,
    "dst": S4,
    "proto": PROTO_TCP,
    "sport": 40000,
    "dport": 80,
    "flags": TCP_PSH | TCP_ACK,
    "seq": 1000,
    "ack": 2000,
    "payload": _GET,
}

CASES = [
    Case("ipv4-tcp-raw", bytes(_TCP4 / _GET), LINKTYPE_RAW, _TCP4_WANT),
    Case("ipv4-tcp-dlt12", bytes(_TCP4 / _GET), LINKTYPE_RAW_BSD12, _TCP4_WANT),
    Case("ipv4-tcp-dlt14", bytes(_TCP4 / _GET), LINKTYPE_RAW_BSD14, _TCP4_WANT),
    Case("ipv4-tcp-dlt228", bytes(_TCP4 / _GET), LINKTYPE_IPV4, _TCP4_WANT),
    Case(
        "ether-ipv4-tcp-padded",  # a short segment: Ethernet pads to 60 bytes
        bytes(_eth() / IP(src=C4, dst=S4) / TCP(sport=40000, dport=80, flags="S", seq=7)).ljust(
            60, b"\xee"
        ),
        LINKTYPE_ETHERNET,
        {"proto": PROTO_TCP, "flags": TCP_SYN, "seq": 7, "payload": b""},
    ),
    Case(
        "ether-ipv4-udp-padded",
        bytes(_eth() / IP(src=C4, dst=S4) / UDP(sport=5353, dport=53) / b"q").ljust(60, b"\xee"),
        LINKTYPE_ETHERNET,
        {"proto": PROTO_UDP, "sport": 5353, "dport": 53, "payload": b"q"},
    ),
    Case(
        "ether-vlan-ipv4-tcp",
        bytes(_eth() / Dot1Q(vlan=10) / _TCP4 / _GET),
        LINKTYPE_ETHERNET,
        _TCP4_WANT,
    ),
    Case(
        "ether-qinq-ipv6-tcp",
        bytes(
            _eth()
            / Dot1AD(vlan=100)
            / Dot1Q(vlan=10)
            / IPv6(src=C6, dst=S6)
            / TCP(sport=50000, dport=443, flags="A", seq=2**32 - 1, ack=1)
            / b"tls"
        ),
        LINKTYPE_ETHERNET,
        {
            "version": 6,
            "src": C6,
            "dst": S6,
            "sport": 50000,
            "dport": 443,
            "seq": 2**32 - 1,
            "payload": b"tls",
        },
    ),
    Case(
        "ipv4-options-tcp-options",
        bytes(
            IP(src=C4, dst=S4, options=[b"\x01\x01\x01\x00"])
            / TCP(sport=1, dport=2, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])
            / b"data"
        ),
        LINKTYPE_RAW,
        {"sport": 1, "dport": 2, "payload": b"data"},
    ),
    Case(
        "ipv4-icmp-echo",
        bytes(IP(src=C4, dst=S4) / ICMP(type=8, id=0x1234, seq=1) / b"ping"),
        LINKTYPE_RAW,
        {"proto": PROTO_ICMP, "icmp_type": 8, "icmp_code": 0, "payload": b"\x12\x34\x00\x01ping"},
    ),
    Case(
        "ipv4-first-fragment",
        bytes(IP(src=C4, dst=S4, flags="MF", proto=17) / UDP(sport=53, dport=9, len=4000) / b"x"),
        LINKTYPE_RAW,
        {"proto": PROTO_UDP, "sport": 53, "dport": 9, "payload": b"x", "fragment": False},
    ),
    Case(
        "ipv4-later-fragment",
        bytes(IP(src=C4, dst=S4, frag=185, proto=6) / b"fragment-data"),
        LINKTYPE_RAW,
        {"proto": PROTO_TCP, "sport": 0, "dport": 0, "payload": b"fragment-data", "fragment": True},
    ),
    Case(
        "ipv6-ext-chain-udp",
        bytes(
            IPv6(src=C6, dst=S6)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting()
            / IPv6ExtHdrFragment(offset=0, m=0)
            / UDP(sport=1000, dport=53)
            / b"dns"
        ),
        LINKTYPE_RAW,
        {"version": 6, "proto": PROTO_UDP, "sport": 1000, "dport": 53, "payload": b"dns"},
    ),
    Case(
        "ipv6-later-fragment",
        bytes(IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=10, nh=6) / b"12345678"),
        LINKTYPE_IPV6,
        {"version": 6, "proto": PROTO_TCP, "payload": b"12345678", "fragment": True},
    ),
    Case(
        "ipv6-icmpv6-echo",
        bytes(IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=7, seq=9, data=b"hi")),
        LINKTYPE_RAW,
        {"proto": PROTO_ICMPV6, "icmp_type": 128, "payload": b"\x00\x07\x00\x09hi"},
    ),
    Case(
        "ipv6-no-next-header",
        bytes(IPv6(src=C6, dst=S6, nh=59)),
        LINKTYPE_RAW,
        {"proto": 59, "payload": b""},
    ),
    Case(
        "sll-ipv4-tcp",
        bytes(CookedLinux(proto=0x0800) / _TCP4 / _GET),
        LINKTYPE_LINUX_SLL,
        _TCP4_WANT,
    ),
    Case("sll2-ipv4-tcp", _sll2(0x0800, bytes(_TCP4 / _GET)), LINKTYPE_LINUX_SLL2, _TCP4_WANT),
    Case(
        "null-le-ipv4",
        struct.pack("<I", 2) + bytes(_TCP4 / _GET),
        LINKTYPE_NULL,
        _TCP4_WANT,
    ),
    Case(
        "loop-be-ipv6",
        struct.pack("!I", 30) + bytes(IPv6(src=C6, dst=S6) / UDP(sport=9, dport=7) / b"e"),
        LINKTYPE_LOOP,
        {"version": 6, "sport": 9, "dport": 7, "payload": b"e"},
    ),
    Case(
        "ipv4-other-proto-gre",
        bytes(IP(src=C4, dst=S4, proto=47) / b"\x00\x00\x08\x00"),
        LINKTYPE_RAW,
        {"proto": 47, "sport": 0, "payload": b"\x00\x00\x08\x00"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_whole(case: Case) -> None:
    pkt = parse_frame(case.frame, case.linktype)
    got = {k: getattr(pkt, k) for k in case.want}
    assert got == case.want


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_every_prefix(case: Case) -> None:
    full = parse_frame(case.frame, case.linktype)
    for n in range(len(case.frame)):
        try:
            pkt = parse_frame(case.frame[:n], case.linktype)
        except DecodeError:
            continue
        # a prefix may only decode when it cut trailing padding, and then identically
        assert pkt == full, f"prefix of {n} bytes decoded differently: {pkt}"


def test_parse_ip_equals_raw_frame() -> None:
    data = bytes(_TCP4 / _GET)
    assert parse_ip(data) == parse_frame(data, LINKTYPE_RAW)
    assert isinstance(parse_ip(data), Packet)


def test_ethernet_padding_never_becomes_payload() -> None:
    frame = bytes(_eth() / IP(src=C4, dst=S4) / TCP() / b"ab") + b"PADDING!" * 3
    assert parse_frame(frame, LINKTYPE_ETHERNET).payload == b"ab"


def test_tso_zero_total_length_uses_captured_bytes() -> None:
    raw = bytearray(bytes(_TCP4 / _GET))
    raw[2:4] = b"\0\0"
    assert parse_ip(bytes(raw)).payload == _GET


def _bad_ipv4(**kw: Any) -> bytes:
    raw = bytearray(bytes(_TCP4 / _GET))
    for off, value in kw.get("set", []):
        raw[off] = value
    return bytes(raw)


@pytest.mark.parametrize(
    ("frame", "linktype", "message"),
    [
        (b"", LINKTYPE_RAW, "ip: no bytes at offset 0"),
        (b"\x50" + b"\0" * 30, LINKTYPE_RAW, "ip: version 5 at offset 0"),
        (_bad_ipv4(set=[(0, 0x43)]), LINKTYPE_RAW, "ipv4: header length 12 (IHL 3) at offset 0"),
        (bytes(_TCP4 / _GET)[:-1], LINKTYPE_RAW, "ipv4: total length 58 at offset 2 exceeds"),
        (
            _bad_ipv4(set=[(2, 0), (3, 10)]),
            LINKTYPE_RAW,
            "ipv4: total length 10 at offset 2 is below",
        ),
        (_bad_ipv4(set=[(32, 0x40)]), LINKTYPE_RAW, "tcp: data offset 4 at offset 32 is below 5"),
        (_bad_ipv4(set=[(32, 0xF0)]), LINKTYPE_RAW, "tcp: header length 60 at offset 32 exceeds"),
        (
            bytes(IP(src=C4, dst=S4) / UDP(sport=1, dport=2, len=50) / b"x"),
            LINKTYPE_RAW,
            "udp: length 50 at offset 24",
        ),
        (bytes(IPv6(src=C6, dst=S6, plen=100) / b"x"), LINKTYPE_RAW, "ipv6: payload length 100"),
        (
            bytes(_chain(_eth(), Dot1Q, MAX_VLAN_TAGS + 1) / _TCP4),
            LINKTYPE_ETHERNET,
            f"ethernet: more than {MAX_VLAN_TAGS} VLAN tags",
        ),
        (b"\0" * 13, LINKTYPE_ETHERNET, "ethernet: frame of 13 bytes"),
        (b"\0" * 19, LINKTYPE_LINUX_SLL2, "linux-sll2: frame of 19 bytes"),
        (b"\x02\0\0", LINKTYPE_NULL, "null: frame of 3 bytes"),
    ],
)
def test_decode_errors_name_layer_and_offset(frame: bytes, linktype: int, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_frame(frame, linktype)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("frame", "linktype", "message"),
    [
        (
            bytes(_eth() / ARP(hwsrc=_MAC1, hwdst=_MAC2, psrc=C4, pdst=S4)),
            LINKTYPE_ETHERNET,
            "EtherType 0x0806 at offset 12",
        ),
        (bytes(_eth(type=100) / (b"x" * 50)), LINKTYPE_ETHERNET, "802.3 length field 100"),
        (struct.pack("<I", 7) + bytes(_TCP4), LINKTYPE_NULL, "address family 7"),
        (bytes(_TCP4), 147, "link type 147 is not supported"),
    ],
)
def test_non_ip_frames_are_unsupported(frame: bytes, linktype: int, message: str) -> None:
    with pytest.raises(UnsupportedFrame, match=message):
        parse_frame(frame, linktype)


# --- real frames from the corpora, checked against tshark ---------------------------------

_CORPUS_FILES = [
    "benign/http/connect-with-header.pcap",  # BSD NULL
    "benign/tls/irc-starttls.pcap",  # Linux SLL
    "benign/tls/openjdk-25.0.2-zeek.org.pcap",  # Linux SLL2
    "benign/http/basic-auth-with-colon.pcap",  # DLT 228
    "benign/dns/ech.pcap",  # raw IP
    "benign/smb/smb2-zero-byte-error-ioctl.pcapng",  # Ethernet, pcapng
    "attacks/heartbleed.pcap",
    "attacks/eternalblue-success-unpatched-win7.pcap",
]
_FIELDS = [
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "tcp.srcport",
    "udp.srcport",
    "tcp.dstport",
    "udp.dstport",
    "tcp.seq_raw",
    "tcp.flags",
    "tcp.payload",
    "udp.payload",
]


def _tshark(path: Path) -> list[dict[str, str]]:
    argv = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in _FIELDS:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [dict(zip(_FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("rel", _CORPUS_FILES)
def test_corpus_frames_match_tshark(rel: str) -> None:
    path = CORPORA / rel
    if not path.exists():
        pytest.skip(f"corpus file {path} missing")
    records = list(read_capture(path))
    rows = _tshark(path)
    assert len(rows) == len(records)
    checked = 0
    for rec, row in zip(records, rows, strict=True):
        if "," in row["ip.src"] + row["ipv6.src"]:
            continue  # tunnels / ICMP errors quoting a header: tshark lists several addresses
        try:
            pkt = parse_frame(rec.data, rec.linktype)
        except UnsupportedFrame:
            assert not row["ip.src"] and not row["ipv6.src"]
            continue
        assert pkt.src == (row["ip.src"] or row["ipv6.src"])
        assert pkt.dst == (row["ip.dst"] or row["ipv6.dst"])
        if pkt.proto == PROTO_TCP:
            assert (pkt.sport, pkt.dport) == (int(row["tcp.srcport"]), int(row["tcp.dstport"]))
            assert pkt.seq == int(row["tcp.seq_raw"])
            assert pkt.flags == int(row["tcp.flags"], 16) & 0xFF
            assert pkt.payload.hex() == row["tcp.payload"]
        elif pkt.proto == PROTO_UDP:
            assert (pkt.sport, pkt.dport) == (int(row["udp.srcport"]), int(row["udp.dstport"]))
            assert pkt.payload.hex() == row["udp.payload"]
        checked += 1
    assert checked > 0


# --- hypothesis: nothing but DecodeError ------------------------------------------------------

_LINKTYPES = [
    LINKTYPE_NULL,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_LOOP,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
]


def _decode_or_decode_error(data: bytes, linktype: int) -> None:
    try:
        pkt = parse_frame(data, linktype)
    except DecodeError:
        return
    assert len(pkt.payload) <= len(data)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(_LINKTYPES))
def test_random_bytes_raise_only_decode_error(data: bytes, linktype: int) -> None:
    _decode_or_decode_error(data, linktype)
    with contextlib.suppress(DecodeError):
        parse_ip(data)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(CASES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
)
def test_mutated_frames_raise_only_decode_error(case: Case, flips: list[tuple[int, int]]) -> None:
    data = bytearray(case.frame)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_or_decode_error(bytes(data), case.linktype)


def test_ipv6_extension_chain_of_any_length_is_walked() -> None:
    """A receiver walks any number of extension headers (RFC 8200 section 4.1), so the decoder
    does too: a long chain must not end in a decode error (accepted uninspected)."""
    chain = _chain(IPv6(src=C6, dst=S6), IPv6ExtHdrDestOpt, 40)
    pkt = parse_ip(bytes(chain / TCP(sport=40000, dport=80, flags="PA") / b"GET /"))
    assert (pkt.proto, pkt.dport, pkt.payload) == (PROTO_TCP, 80, b"GET /")
