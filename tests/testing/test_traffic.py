"""gateway/testing/traffic.py: the constructed packets parsed back by scapy (an independent
implementation): IPv4/TCP/UDP checksums, the handshake, sequence and acknowledgement numbers of
the client's segments in the caller's order, the server's data cut at MAX_SEGMENT, the closing
FIN/ACKs; the pcap file read back by the gateway's reader; replay_packets through a real
Engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP  # type: ignore[import-untyped]

from gateway.engine import Engine
from gateway.intake.pcap import read_capture
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.traffic import (
    CLIENT,
    CLIENT_ISN,
    MAX_SEGMENT,
    SERVER,
    SERVER_ISN,
    Segment,
    contiguous,
    replay_packets,
    tcp_session,
    udp_exchange,
    write_pcap,
)

MARKER = b"VPATCH-TEST-EXPLOIT-7f3a"  # rules/vpatch-test-split.yaml


def checksums_ok(raw: bytes) -> bool:
    """scapy recomputes the IPv4 and transport checksums and finds the ones we wrote."""
    pkt = IP(raw)
    layer = pkt[TCP] if TCP in pkt else pkt[UDP]
    written = (pkt.chksum, layer.chksum)
    del pkt.chksum
    del layer.chksum
    again = IP(bytes(pkt))
    return written == (again.chksum, (again[TCP] if TCP in again else again[UDP]).chksum)


def test_contiguous() -> None:
    data = bytes(range(256)) * 12
    segments = contiguous(data)
    assert [s.offset for s in segments] == [0, MAX_SEGMENT, 2 * MAX_SEGMENT]
    assert b"".join(s.data for s in segments) == data
    assert all(0 < len(s.data) <= MAX_SEGMENT for s in segments)
    assert contiguous(b"abcde", 2) == [Segment(0, b"ab"), Segment(2, b"cd"), Segment(4, b"e")]
    assert contiguous(b"") == []


def test_tcp_session_handshake_data_and_close() -> None:
    to_client = b"S" * (MAX_SEGMENT + 10)
    packets = tcp_session(contiguous(b"hello world"), to_client, sport=41000, dport=8080)
    parsed = [IP(p) for p in packets]
    assert all(checksums_ok(p) for p in packets)
    assert all(
        p.len == len(raw) and p.ttl == 64 and p.flags == "DF"
        for p, raw in zip(parsed, packets, strict=True)
    )
    flags = [str(p[TCP].flags) for p in parsed]
    assert flags == ["S", "SA", "A", "PA", "PA", "PA", "FA", "FA", "A"]
    c2s = [p for p in parsed if p.src == CLIENT]
    assert all(p.dst == SERVER and (p.sport, p.dport) == (41000, 8080) for p in c2s)
    syn, synack, ack, data, s1, s2, fin1, fin2, last = parsed
    assert (syn.seq, synack.seq, synack.ack) == (CLIENT_ISN, SERVER_ISN, CLIENT_ISN + 1)
    assert (ack.seq, ack.ack) == (CLIENT_ISN + 1, SERVER_ISN + 1)
    assert bytes(data[TCP].payload) == b"hello world" and data.seq == CLIENT_ISN + 1
    assert bytes(s1[TCP].payload) + bytes(s2[TCP].payload) == to_client
    assert len(s1[TCP].payload) == MAX_SEGMENT and s2.seq == SERVER_ISN + 1 + MAX_SEGMENT
    assert s1.ack == CLIENT_ISN + 1 + 11
    end = SERVER_ISN + 1 + len(to_client)
    assert (fin1.seq, fin1.ack) == (CLIENT_ISN + 12, end)
    assert (fin2.seq, fin2.ack) == (end, CLIENT_ISN + 13)
    assert (last.seq, last.ack) == (CLIENT_ISN + 13, end + 1)
    assert len({p.id for p in parsed}) == len(parsed)  # distinct IP ids


def test_tcp_session_keeps_the_callers_order_overlaps_and_no_close() -> None:
    segments = [Segment(5, b"world"), Segment(0, b"hello"), Segment(3, b"XXXX")]
    packets = tcp_session(segments, close=False)
    parsed = [IP(p) for p in packets[3:]]
    assert [(p.seq - CLIENT_ISN - 1, bytes(p[TCP].payload)) for p in parsed] == [
        (5, b"world"),
        (0, b"hello"),
        (3, b"XXXX"),
    ]
    assert len(packets) == 6 and all(checksums_ok(p) for p in packets)


def test_udp_exchange() -> None:
    packets = udp_exchange(b"query", b"answer!", sport=40001, dport=1434)
    request, reply = (IP(p) for p in packets)
    assert all(checksums_ok(p) for p in packets)
    assert (request.src, request.sport, request.dst, request.dport) == (CLIENT, 40001, SERVER, 1434)
    assert (reply.src, reply.sport, reply.dst, reply.dport) == (SERVER, 1434, CLIENT, 40001)
    assert bytes(request[UDP].payload) == b"query" and bytes(reply[UDP].payload) == b"answer!"
    assert request[UDP].len == 8 + 5
    assert [IP(p).src for p in udp_exchange(b"", b"only a reply")] == [SERVER]
    assert udp_exchange(b"q") == udp_exchange(b"q", b"")[:1] and len(udp_exchange(b"q")) == 1


def test_odd_lengths_and_other_addresses_checksum() -> None:
    for size in (0, 1, 2, 3, 1399):
        packets = tcp_session(contiguous(b"x" * size), b"y" * size, client="198.18.7.9",
                              server="198.19.255.254")  # fmt: skip
        packets += udp_exchange(b"u" * (size + 1), b"v" * size)
        assert all(checksums_ok(p) for p in packets), size


def test_write_pcap_is_read_back_by_the_gateway_reader(tmp_path: Path) -> None:
    packets = tcp_session(contiguous(b"GET / HTTP/1.1\r\n\r\n"), b"HTTP/1.1 200 OK\r\n\r\n")
    path = write_pcap(tmp_path / "s.pcap", packets, start=1000.5)
    records = list(read_capture(path))
    assert [r.data for r in records] == packets
    assert {r.linktype for r in records} == {101}  # LINKTYPE_RAW
    assert [r.timestamp for r in records] == pytest.approx(
        [1000.5 + i * 0.001 for i in range(len(packets))]
    )


def test_replay_packets_through_the_engine() -> None:
    engine = Engine(load_rules([default_rule_dir() / "vpatch-test-split.yaml"]))
    attack = tcp_session(contiguous(b"GET /" + MARKER + b" HTTP/1.1\r\n\r\n", 7), dport=80)
    (event,) = replay_packets(engine, attack, start=2000.0)
    assert event.signature_id == 9000100 and event.src_ip == CLIENT and event.dest_port == 80
    assert 2000.0 <= event.timestamp < 2000.0 + len(attack) * 0.001
    assert (
        replay_packets(engine, tcp_session(contiguous(b"GET / HTTP/1.1\r\n\r\n"), sport=40001))
        == []
    )
