"""gateway/lifecycle/nflog.py without a socket: `parse_messages` on netlink datagrams laid out as
the kernel sends them (linux/netfilter/nfnetlink_log.h, netlink(7)): prefix, payload, group
(big-endian res_id) and family of every packet message; other messages, attribute flag bits,
padding and damage; and never an exception on any bytes. Also the configuration request the
reader sends. The reader on a real NFLOG socket runs in the lab (tests/lifecycle/
test_modes_lab.py: `vpatch hosts monitor`)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP  # type: ignore[import-untyped]

from gateway.lifecycle.nflog import (
    NFULA_CFG_CMD,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    NFULNL_CFG_CMD_BIND,
    LoggedPacket,
    _attr,
    _config_msg,
    parse_datagram,
    parse_messages,
)

PACKET_MSG = (4 << 8) | 0  # NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET
PKT = bytes(IP(src="198.18.0.10", dst="198.18.0.20") / TCP(sport=40000, dport=80, flags="S"))


def _nlmsg(
    group: int,
    attrs: list[tuple[int, bytes]],
    kind: int = PACKET_MSG,
    family: int = socket.AF_INET,
) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(group))
    for akind, data in attrs:
        a = struct.pack("=HH", 4 + len(data), akind) + data
        body += a + b"\x00" * (-len(a) % 4)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_parse_messages_reads_prefix_and_payload_of_each_message() -> None:
    data = _nlmsg(17, [(1, b"\x08\x00\x03\x00"), (10, b"vpatch-learn\x00"), (9, PKT)])
    data += _nlmsg(18, [(9, PKT[:40])])
    got = parse_messages(data + b"\x01\x02")  # trailing garbage is ignored
    assert [(g.group, g.prefix, g.payload) for g in got] == [
        (17, "vpatch-learn", PKT),
        (18, "", PKT[:40]),
    ]


def test_group_family_and_odd_lengths() -> None:
    payload = PKT[:41]  # not a multiple of 4: the attribute is padded, the next one aligned
    data = _nlmsg(0x1234, [(NFULA_PAYLOAD, payload), (NFULA_PREFIX, b"p\x00")], family=10)
    data += _nlmsg(65535, [(NFULA_PREFIX, b"x\x00\x00"), (NFULA_PAYLOAD, b"\x60")])
    assert parse_messages(data) == [
        LoggedPacket(0x1234, 10, "p", payload),
        LoggedPacket(65535, socket.AF_INET, "x", b"\x60"),
    ]


def test_attribute_flag_bits_are_ignored() -> None:
    # NLA_F_NESTED (0x8000) and NLA_F_NET_BYTEORDER (0x4000) are not part of the type
    data = _nlmsg(5, [(NFULA_PREFIX | 0x4000, b"a\x00"), (NFULA_PAYLOAD | 0x8000, PKT)])
    assert parse_messages(data) == [LoggedPacket(5, socket.AF_INET, "a", PKT)]


def test_other_messages_and_messages_without_payload_are_skipped() -> None:
    config = _nlmsg(5, [(NFULA_PAYLOAD, PKT)], kind=(4 << 8) | 1)
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    no_payload = _nlmsg(5, [(NFULA_PREFIX, b"only a prefix\x00")])
    empty_payload = _nlmsg(5, [(NFULA_PAYLOAD, b"")])
    good = _nlmsg(6, [(NFULA_PAYLOAD, PKT)])
    got = parse_messages(config + error + no_payload + empty_payload + good)
    assert got == [LoggedPacket(6, socket.AF_INET, "", PKT)]


def test_damage_stops_at_the_damaged_message_and_keeps_the_earlier_ones() -> None:
    good = _nlmsg(1, [(NFULA_PAYLOAD, PKT)])
    expected = [LoggedPacket(1, socket.AF_INET, "", PKT)]
    truncated = _nlmsg(2, [(NFULA_PAYLOAD, PKT)])[:-10]  # its length says more than is there
    assert parse_messages(good + truncated) == expected
    short = struct.pack("=IHHII", 8, PACKET_MSG, 0, 0, 0)  # length below the header's
    assert parse_messages(good + short + good) == expected
    assert parse_messages(good[:15]) == []


def test_a_broken_attribute_ends_that_message_attributes() -> None:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(3))
    body += _attr(NFULA_PAYLOAD, PKT)
    body += struct.pack("=HH", 2, NFULA_PREFIX)  # attribute length below its own header
    body += _attr(NFULA_PREFIX, b"never read\x00")
    msg = struct.pack("=IHHII", 16 + len(body), PACKET_MSG, 0, 0, 0) + body
    assert parse_messages(msg + _nlmsg(4, [(NFULA_PAYLOAD, b"E")])) == [
        LoggedPacket(3, socket.AF_INET, "", PKT),
        LoggedPacket(4, socket.AF_INET, "", b"E"),
    ]


def test_config_request_layout() -> None:
    attr = _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
    assert attr == struct.pack("=HH", 5, NFULA_CFG_CMD) + b"\x01" + b"\x00" * 3  # padded to 4
    msg = _config_msg(300, 7, attr)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), (4 << 8) | 1, 0x1 | 0x4, 7, 0)
    family, version, res_id = struct.unpack_from("=BBH", msg, 16)
    assert (family, version) == (socket.AF_UNSPEC, 0)
    assert msg[18:20] == (300).to_bytes(2, "big") and socket.ntohs(res_id) == 300
    assert msg[20:] == attr


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_never_raises_on_any_bytes(data: bytes) -> None:
    for packet in parse_messages(data):
        assert packet.payload and 0 <= packet.group <= 0xFFFF


@pytest.mark.parametrize("cut", [1, 4, 16, 19, 20, 23])
def test_every_cut_of_a_datagram_yields_a_prefix_of_its_packets(cut: int) -> None:
    one = _nlmsg(9, [(NFULA_PREFIX, b"vpatch-lockdown\x00"), (NFULA_PAYLOAD, PKT)])
    data = one * 3
    whole = parse_messages(data)
    assert len(whole) == 3
    for end in range(0, len(data) + 1, cut):
        got = parse_messages(data[:end])
        assert got == whole[: len(got)] and len(got) == end // len(one)


def test_malformed_messages_are_counted() -> None:
    good = _nlmsg(1, [(NFULA_PAYLOAD, PKT)])
    no_payload = _nlmsg(5, [(NFULA_PREFIX, b"only a prefix\x00")])
    config = _nlmsg(5, [(NFULA_PAYLOAD, PKT)], kind=(4 << 8) | 1)  # not a packet: not counted
    assert parse_datagram(good + no_payload + config + good) == (
        [LoggedPacket(1, socket.AF_INET, "", PKT)] * 2,
        1,
    )
    truncated = _nlmsg(2, [(NFULA_PAYLOAD, PKT)])[:-10]
    assert parse_datagram(good + truncated)[1] == 1
    assert parse_datagram(good + b"\x01\x02") == ([LoggedPacket(1, socket.AF_INET, "", PKT)], 1)
    assert parse_datagram(b"") == ([], 0)
