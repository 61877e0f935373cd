"""Tests for gateway/flow/table.py: orientation, counting, expiry and eviction on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.decode.packet import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    DecodeError,
    Packet,
    parse_frame,
)
from gateway.flow.table import FLOW_ID_BITS, NO_STREAMS, Flow, FlowKey, FlowTable
from gateway.intake.pcap import read_capture
from gateway.vocabulary import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Action, Direction

C = "198.18.0.10"
S = "198.18.0.20"
CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"


def tcp(src: str, sport: int, dst: str, dport: int, flags: int, payload: bytes = b"") -> Packet:
    return Packet(4, src, dst, PROTO_TCP, sport, dport, flags, 1, 1, payload)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"") -> Packet:
    return Packet(4, src, dst, PROTO_UDP, sport, dport, 0, 0, 0, payload)


def icmp(src: str, dst: str, itype: int, ident: int) -> Packet:
    body = ident.to_bytes(2, "big") + b"\x00\x01ping"
    return Packet(4, src, dst, PROTO_ICMP, 0, 0, 0, 0, 0, body, itype, 0)


def table(**kw: object) -> tuple[FlowTable, list[Flow]]:
    gone: list[Flow] = []
    args: dict[str, object] = {"max_flows": 100, "tcp_idle": 600.0, "udp_idle": 60.0}
    args.update(kw)
    return FlowTable(on_evict=gone.append, salt=12345, **args), gone  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "client", "client_port", "direction"),
    [
        (tcp(C, 40000, S, 80, TCP_SYN), C, 40000, Direction.TO_SERVER),
        (tcp(S, 80, C, 40000, TCP_SYN | TCP_ACK), C, 40000, Direction.TO_CLIENT),
        (tcp(C, 40000, S, 80, TCP_ACK | TCP_PSH), C, 40000, Direction.TO_SERVER),  # mid-stream
        (tcp(S, 80, C, 40000, TCP_ACK), C, 40000, Direction.TO_CLIENT),  # mid-stream, reply first
        (tcp(C, 80, S, 40000, TCP_SYN), C, 80, Direction.TO_SERVER),  # SYN beats port order
        (udp(C, 5353, S, 53), C, 5353, Direction.TO_SERVER),
        (udp(S, 53, C, 5353), C, 5353, Direction.TO_CLIENT),
        (icmp(C, S, 8, 77), C, 77, Direction.TO_SERVER),  # echo request: sender is client
        (icmp(S, C, 0, 77), C, 77, Direction.TO_CLIENT),  # echo reply: receiver is client
    ],
)
def test_who_is_the_client(
    first: Packet, client: str, client_port: int, direction: Direction
) -> None:
    ft, _ = table()
    flow, d = ft.lookup(first, 0.0)
    assert (flow.key.client, flow.key.client_port) == (client, client_port)
    assert d is direction


def test_both_directions_share_one_flow_and_are_counted() -> None:
    ft, _ = table()
    f1, d1 = ft.lookup(tcp(C, 40000, S, 80, TCP_SYN), 1.0)
    f2, d2 = ft.lookup(tcp(S, 80, C, 40000, TCP_SYN | TCP_ACK), 1.1)
    f3, d3 = ft.lookup(tcp(C, 40000, S, 80, TCP_ACK | TCP_PSH, b"GET /"), 1.2)
    assert f1 is f2 is f3
    assert (d1, d2, d3) == (Direction.TO_SERVER, Direction.TO_CLIENT, Direction.TO_SERVER)
    assert (f1.pkts_to_server, f1.pkts_to_client) == (2, 1)
    assert (f1.bytes_to_server, f1.bytes_to_client) == (5, 0)
    assert (f1.first_seen, f1.last_seen) == (1.0, 1.2)
    assert f1.key == FlowKey(PROTO_TCP, C, 40000, S, 80)
    assert ft.get(f1.key) is f1
    assert len(ft) == 1


def test_flow_ids_unique_stable_and_52_bit() -> None:
    ft, _ = table(max_flows=5000)
    ids = set()
    for port in range(1024, 1024 + 3000):
        flow, _ = ft.lookup(udp(C, port, S, 53), 0.0)
        assert 0 <= flow.flow_id < 2**FLOW_ID_BITS
        ids.add(flow.flow_id)
        again, _ = ft.lookup(udp(S, 53, C, port), 0.0)
        assert again.flow_id == flow.flow_id
    assert len(ids) == 3000
    first = [
        FlowTable(10, 600, 60, salt=salt).lookup(udp(C, 1, S, 2), 0.0)[0].flow_id for salt in (1, 2)
    ]
    assert first[0] != first[1]  # the salt changes the id sequence


def test_idle_expiry_per_protocol_with_fake_clock() -> None:
    ft, gone = table(tcp_idle=100.0, udp_idle=10.0, tcp_closed_idle=5.0)
    t_open, _ = ft.lookup(tcp(C, 40000, S, 80, TCP_SYN), 0.0)
    t_closed, _ = ft.lookup(tcp(C, 40001, S, 80, TCP_SYN), 0.0)
    u, _ = ft.lookup(udp(C, 5353, S, 53), 0.0)
    ft.lookup(tcp(C, 40001, S, 80, TCP_FIN | TCP_ACK), 1.0)
    assert not t_closed.closed
    ft.lookup(tcp(S, 80, C, 40001, TCP_FIN | TCP_ACK), 1.0)
    assert t_closed.closed

    assert ft.expire(5.9) == []
    assert ft.expire(6.0) == [t_closed]  # closed: 5 s after its last packet
    assert ft.expire(9.9) == []
    assert ft.expire(10.0) == [u]
    assert ft.expire(99.9) == []
    assert ft.expire(100.0) == [t_open]
    assert gone == [t_closed, u, t_open]  # on_evict saw every one, once
    assert len(ft) == 0 and ft.expired == 3


def test_activity_postpones_expiry() -> None:
    ft, _ = table(udp_idle=10.0)
    u, _ = ft.lookup(udp(C, 5353, S, 53), 0.0)
    ft.lookup(udp(S, 53, C, 5353), 8.0)
    assert ft.expire(15.0) == []
    assert ft.expire(18.0) == [u]


def test_rst_closes_immediately() -> None:
    ft, _ = table(tcp_closed_idle=2.0)
    f, _ = ft.lookup(tcp(C, 40000, S, 80, TCP_ACK), 0.0)
    ft.lookup(tcp(S, 80, C, 40000, TCP_RST), 1.0)
    assert f.closed and f.rst
    assert ft.expire(3.0) == [f]


def test_lru_eviction_when_full() -> None:
    """Evicted first: closed TCP flows, then UDP/other flows, then open TCP flows, each class
    least recently seen first."""
    ft, gone = table(max_flows=3)
    a, _ = ft.lookup(udp(C, 1001, S, 53), 1.0)
    b, _ = ft.lookup(tcp(C, 1002, S, 80, TCP_SYN), 2.0)
    c, _ = ft.lookup(udp(C, 1003, S, 53), 3.0)
    ft.lookup(udp(S, 53, C, 1001), 4.0)  # a is now the most recent
    d, _ = ft.lookup(udp(C, 1004, S, 53), 5.0)  # evicts c: a UDP flow before the older TCP b
    assert gone == [c]
    assert len(ft) == 3 and ft.evicted == 1
    e, _ = ft.lookup(tcp(C, 1005, S, 80, TCP_SYN), 6.0)  # evicts a, the older UDP flow
    assert gone == [c, a]
    ft.lookup(tcp(C, 1005, S, 80, TCP_RST), 7.0)  # e closes
    f, _ = ft.lookup(udp(C, 1006, S, 53), 8.0)  # evicts e: closed, although the most recent
    assert gone == [c, a, e]
    g, _ = ft.lookup(tcp(C, 1007, S, 80, TCP_SYN), 9.0)  # evicts d, then b goes last
    assert gone == [c, a, e, d]
    assert {fl.key for fl in ft} == {b.key, f.key, g.key}
    assert ft.get(b.key) is b and ft.get(c.key) is None


def test_new_syn_on_closed_flow_starts_a_new_flow() -> None:
    ft, gone = table()
    old, _ = ft.lookup(tcp(C, 40000, S, 80, TCP_SYN), 0.0)
    ft.lookup(tcp(C, 40000, S, 80, TCP_RST), 1.0)
    new, d = ft.lookup(tcp(C, 40000, S, 80, TCP_SYN), 2.0)
    assert new is not old and new.flow_id != old.flow_id
    assert gone == [old]
    assert d is Direction.TO_SERVER and new.pkts_to_server == 1
    assert len(ft) == 1


def test_icmp_echo_keyed_on_identifier() -> None:
    ft, _ = table()
    a, _ = ft.lookup(icmp(C, S, 8, 1), 0.0)
    b, _ = ft.lookup(icmp(C, S, 8, 2), 0.0)
    a2, d = ft.lookup(icmp(S, C, 0, 1), 0.1)
    assert a is not b and a2 is a and d is Direction.TO_CLIENT


def test_stream_reassemblers_created_for_tcp_only() -> None:
    ft, _ = table(stream_depth={Direction.TO_SERVER: 100, Direction.TO_CLIENT: 0}, max_pending=50)
    t, _ = ft.lookup(tcp(C, 40000, S, 80, TCP_SYN), 0.0)
    u, _ = ft.lookup(udp(C, 5353, S, 53), 0.0)
    assert None not in t.streams
    assert t.streams[Direction.TO_SERVER].max_depth == 100
    assert t.streams[Direction.TO_SERVER].max_pending == 50
    assert t.streams[Direction.TO_CLIENT].depth_reached
    assert u.streams == NO_STREAMS
    plain, _ = table()
    t2, _ = plain.lookup(tcp(C, 40000, S, 80, TCP_SYN), 0.0)
    assert t2.streams == NO_STREAMS


def test_invalid_bounds_rejected() -> None:
    with pytest.raises(ValueError, match="max_flows must be >= 1, got 0"):
        FlowTable(0, 600, 60)
    with pytest.raises(ValueError, match="udp_idle"):
        FlowTable(10, 600, 0)


def test_corpus_capture_flows_are_consistent() -> None:
    path = CORPORA / "attacks" / "eternalblue-success-unpatched-win7.pcap"
    if not path.exists():
        pytest.skip(f"corpus file {path} missing")
    ft, gone = table(max_flows=10_000)
    packets = 0
    for rec in read_capture(path):
        try:
            pkt = parse_frame(rec.data, rec.linktype)
        except DecodeError:
            continue
        flow, d = ft.lookup(pkt, rec.timestamp)
        packets += 1
        if pkt.proto == PROTO_TCP and pkt.dport == 445:
            assert d is Direction.TO_SERVER and flow.key.server_port == 445
    counted = sum(f.pkts_to_server + f.pkts_to_client for f in ft)
    assert counted == packets
    assert gone == []


def test_service_port_hint_orients_mid_stream_flows() -> None:
    """Without a handshake the lower port is taken as the server, unless exactly one side's
    port is a known service port (Blaster's shell on 4444 answering a client on port 1793)."""
    from scapy.layers.inet import IP, TCP

    from gateway.decode.packet import parse_ip

    def mid_stream(sport: int, dport: int) -> Packet:
        return parse_ip(bytes(IP(src="198.18.0.10", dst="198.18.0.20")
                              / TCP(sport=sport, dport=dport, flags="PA") / b"x"))  # fmt: skip

    plain = FlowTable(10, 60, 60, salt=1)
    flow, direction = plain.lookup(mid_stream(4444, 1793), 0.0)
    assert flow.key.server_port == 1793 and direction is Direction.TO_SERVER
    hinted = FlowTable(10, 60, 60, salt=1, server_ports=lambda proto, port: port == 4444)
    flow, direction = hinted.lookup(mid_stream(4444, 1793), 0.0)
    assert flow.key.server_port == 4444 and direction is Direction.TO_CLIENT
    flow, direction = hinted.lookup(mid_stream(1793, 4444), 1.0)
    assert flow.key.server_port == 4444 and direction is Direction.TO_SERVER
    # both or neither side known: the port order decides, as without the hint
    both = FlowTable(10, 60, 60, salt=1, server_ports=lambda proto, port: True)
    assert both.lookup(mid_stream(4444, 1793), 0.0)[0].key.server_port == 1793


def tcp_seq(
    src: str, sport: int, dst: str, dport: int, flags: int, seq: int, ack: int = 0
) -> Packet:
    return Packet(4, src, dst, PROTO_TCP, sport, dport, flags, seq, ack, b"")


def test_port_reuse_on_an_open_flow_needs_the_servers_syn_ack() -> None:
    ft, gone = table()
    old, _ = ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 0.0)
    assert ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 0.5)[0] is old  # retransmitted
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_ACK | TCP_PSH, 1001, 1), 1.0)
    # a SYN with another ISN: a candidate, the old flow stays until the server confirms
    assert ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 9000), 2.0)[0] is old
    # a challenge ACK, then a SYN+ACK acknowledging some other sequence number: still the old
    assert ft.lookup(tcp_seq(S, 80, C, 40000, TCP_ACK, 1, 1001), 2.1)[0] is old
    assert ft.lookup(tcp_seq(S, 80, C, 40000, TCP_SYN | TCP_ACK, 50, 1001), 2.2)[0] is old
    assert gone == []
    # the server's SYN+ACK for the new ISN: a new flow, same orientation, ISN anchored
    new, d = ft.lookup(tcp_seq(S, 80, C, 40000, TCP_SYN | TCP_ACK, 50, 9001), 2.3)
    assert new is not old and gone == [old] and len(ft) == 1
    assert d is Direction.TO_CLIENT and new.key.client == C and new.key.client_port == 40000
    assert new.syn_seq == 9000


def test_port_reuse_anchors_the_client_stream_at_the_new_isn() -> None:
    ft, _ = table(stream_depth={Direction.TO_SERVER: 1000, Direction.TO_CLIENT: 1000})
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 0.0)
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 7000), 1.0)
    new, _ = ft.lookup(tcp_seq(S, 80, C, 40000, TCP_SYN | TCP_ACK, 50, 7001), 1.1)
    stream = new.streams[Direction.TO_SERVER]
    assert stream.isn == 7000 and stream.next_seq == 7001
    assert stream.receive(7006, b"world") == b""  # out of order: held, not taken as the start
    assert stream.receive(7001, b"hello") == b"helloworld"


def test_kernel_checked_syn_replaces_at_once_and_orients_the_new_flow() -> None:
    gone: list[Flow] = []
    ft = FlowTable(100, 600.0, 60.0, on_evict=gone.append, salt=1, kernel_checked_syn=True)
    # picked up mid-stream with the sides the wrong way round (no handshake seen, no service
    # port known: the lower port is taken for the server)
    old, _ = ft.lookup(tcp_seq(S, 8080, C, 1000, TCP_ACK | TCP_PSH, 5, 1), 0.0)
    assert old.key.client == S
    again, _ = ft.lookup(tcp_seq(S, 8080, C, 1000, TCP_ACK | TCP_PSH, 6, 1), 0.1)
    assert again is old
    new, d = ft.lookup(tcp_seq(C, 1000, S, 8080, TCP_SYN, 7000), 1.0)
    assert new is not old and gone == [old] and d is Direction.TO_SERVER
    assert new.key.client == C and new.syn_seq == 7000
    assert ft.lookup(tcp_seq(C, 1000, S, 8080, TCP_SYN, 7000), 1.5)[0] is new  # retransmitted
    # a SYN carrying data is never taken on the kernel's word (the payload rule queues it too)
    with_data = Packet(4, C, S, PROTO_TCP, 1000, 8080, TCP_SYN, 9000, 0, b"x")
    assert ft.lookup(with_data, 2.0)[0] is new and new.reuse_syn == 9000


def test_a_new_isn_on_a_closed_flow_needs_the_servers_syn_ack() -> None:
    """A reset the server never got (TTL-limited, say) closes the flow in the gateway's view
    only; a SYN with another ISN then must not start a new flow numbered otherwise until the
    server confirms it."""
    ft, gone = table()
    old, _ = ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 0.0)
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_RST, 1001), 1.0)
    assert old.closed
    assert ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 9000), 2.0)[0] is old
    new, _ = ft.lookup(tcp_seq(S, 80, C, 40000, TCP_SYN | TCP_ACK, 50, 9001), 2.1)
    assert new is not old and gone == [old] and new.syn_seq == 9000


def test_syn_ack_sent_to_a_service_port_does_not_turn_the_flow_round() -> None:
    ft = FlowTable(10, 60, 60, salt=1, server_ports=lambda proto, port: port == 80)
    flow, d = ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN | TCP_ACK, 5, 7), 0.0)
    assert flow.key.server_port == 80 and d is Direction.TO_SERVER
    # an ordinary SYN+ACK from the service port names its sender the server
    other, d = ft.lookup(tcp_seq(S, 80, C, 40001, TCP_SYN | TCP_ACK, 5, 7), 0.0)
    assert other.key.server_port == 80 and d is Direction.TO_CLIENT


def test_close_check_decides_which_fin_and_rst_close() -> None:
    seen: list[tuple[int, Direction]] = []

    def check(flow: Flow, pkt: Packet, d: Direction) -> bool:
        seen.append((pkt.seq, d))
        return pkt.seq == 1001

    ft = FlowTable(10, 60, 60, salt=1, close_check=check)
    flow, _ = ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 0.0)
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_RST, 99999), 1.0)
    assert not flow.closed
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_RST, 1001), 2.0)
    assert flow.closed and seen == [(99999, Direction.TO_SERVER), (1001, Direction.TO_SERVER)]


def test_a_blocked_flow_is_replaced_only_on_the_servers_syn_ack() -> None:
    """Inline, the kernel queues every SYN on a blocked connection's ports (conntrack never saw
    the resets), so such a SYN is not on conntrack's word: a reused client port gets a new
    flow once the server answers it, while a server that kept the old connection (it answers
    with a challenge ACK) keeps the flow blocked, its inspection state and all."""
    gone: list[Flow] = []
    ft = FlowTable(100, 600.0, 60.0, on_evict=gone.append, salt=1, kernel_checked_syn=True)
    old, _ = ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 0.0)
    ft.lookup(tcp_seq(C, 40000, S, 80, TCP_ACK | TCP_PSH, 1001, 1), 1.0)
    old.blocked = Action.RESET
    # the old SYN again: nothing new
    assert ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 1000), 1.5)[0] is old
    assert old.reuse_syn is None
    # a new ISN: remembered, the blocked flow stays
    assert ft.lookup(tcp_seq(C, 40000, S, 80, TCP_SYN, 9000), 2.0)[0] is old
    assert old.reuse_syn == 9000 and gone == []
    # the server still holds the old connection: a challenge ACK, nothing changes
    assert ft.lookup(tcp_seq(S, 80, C, 40000, TCP_ACK, 1, 1001), 2.1)[0] is old
    # a SYN with data on it is never remembered
    with_data = Packet(4, C, S, PROTO_TCP, 40000, 80, TCP_SYN, 9500, 0, b"x")
    assert ft.lookup(with_data, 2.2)[0] is old and old.reuse_syn == 9000
    # the server's SYN+ACK for the new ISN: a new flow, not blocked
    new, d = ft.lookup(tcp_seq(S, 80, C, 40000, TCP_SYN | TCP_ACK, 50, 9001), 2.3)
    assert new is not old and gone == [old] and new.blocked is None
    assert d is Direction.TO_CLIENT and new.syn_seq == 9000
