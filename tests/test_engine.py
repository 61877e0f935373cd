"""Tests for gateway/engine.py over scapy-built flows (real bytes through the real decoder,
flow table, reassembler and Hyperscan) and over the EternalBlue capture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from gateway.config import LimitsConfig
from gateway.decode.packet import Packet
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.intake.pcap import read_capture
from gateway.match.rules import DIRECTIONS, Pattern, Rule, RuleSet, default_rule_dir, load_rules
from gateway.verdict import Decision
from gateway.vocabulary import Action, Direction, LimitPolicy

CLIENT, SERVER = "198.18.0.10", "198.18.0.20"
MARKER = b"VPATCH-TEST-EXPLOIT-7f3a"


def rule(
    rule_id: int,
    expr: bytes,
    action: Action = Action.RESET,
    ports: tuple[int, ...] = (80,),
    protocol: str = "tcp",
    direction: str = "to_server",
) -> Rule:
    return Rule(
        id=rule_id,
        title=f"test rule {rule_id}",
        cves=("CVE-0000-0001",),
        severity="high",
        action=action,
        protocol=protocol,
        ports=ports,
        directions=DIRECTIONS[direction],
        patterns=(Pattern("content", expr),),
        references=(),
        path=Path("test.yaml"),
    )


@dataclass
class Conn:
    """A TCP connection seen by the engine: builds real IP packets and feeds them in."""

    engine: Engine
    sport: int = 40000
    dport: int = 80
    client: str = CLIENT
    server: str = SERVER
    v6: bool = False
    cseq: int = 1000
    sseq: int = 5000
    now: float = 100.0
    decisions: list[Decision] = field(default_factory=list)

    def _ip(self, to_server: bool) -> IP | IPv6:
        src, dst = (self.client, self.server) if to_server else (self.server, self.client)
        return IPv6(src=src, dst=dst) if self.v6 else IP(src=src, dst=dst)

    def send(self, flags: str, seq: int, payload: bytes = b"", to_server: bool = True) -> Decision:
        sport, dport = (self.sport, self.dport) if to_server else (self.dport, self.sport)
        ack = self.sseq + 1 if to_server else self.cseq + 1
        pkt = self._ip(to_server) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
        if payload:
            pkt = pkt / Raw(payload)
        self.now += 0.001
        decision = self.engine.process_ip(bytes(pkt), self.now)
        self.decisions.append(decision)
        return decision

    def handshake(self) -> None:
        assert self.send("S", self.cseq).action is Action.ACCEPT
        assert self.send("SA", self.sseq, to_server=False).action is Action.ACCEPT
        assert self.send("A", self.cseq + 1).action is Action.ACCEPT

    def data(self, offset: int, payload: bytes) -> Decision:
        """Client data at stream offset `offset` (0 = first byte after the SYN)."""
        return self.send("PA", self.cseq + 1 + offset, payload)

    def reply(self, offset: int, payload: bytes) -> Decision:
        return self.send("PA", self.sseq + 1 + offset, payload, to_server=False)


def engine_with(*rules: Rule, **config: object) -> Engine:
    return Engine(RuleSet(rules), EngineConfig(**config))  # type: ignore[arg-type]


def test_split_marker_over_three_segments_resets_the_third_and_the_rest() -> None:
    engine = Engine(load_rules([default_rule_dir()]))
    c = Conn(engine)
    c.handshake()
    req = b"GET /?q=" + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    cut1, cut2 = 8 + 7, 8 + 15
    assert c.data(0, req[:cut1]) == Decision(Action.ACCEPT)
    assert c.data(cut1, req[cut1:cut2]) == Decision(Action.ACCEPT)
    d = c.data(cut2, req[cut2:])
    assert d.action is Action.RESET and not d.final
    (event,) = d.events
    assert event.signature_id == 9000100 and event.cves == ("CVE-0000-0001",)
    assert (event.src_ip, event.src_port, event.dest_ip, event.dest_port) == (
        CLIENT,
        40000,
        SERVER,
        80,
    )
    assert event.blocked and event.rule_action is Action.RESET and event.timestamp == c.now
    # every later packet of the flow, both ways, gets the same action and no new event
    later = [
        c.data(len(req), b"more"),
        c.reply(0, b"HTTP/1.1 200 OK\r\n"),
        c.data(cut2, req[cut2:]),
    ]
    assert all(x == Decision(Action.RESET) for x in later)
    assert engine.stats.events == 1 and engine.stats.flows_blocked == 1
    assert engine.stats.blocked_packets == 4
    assert engine.stats.streams_open == 0  # closed when blocked


def test_benign_flow_accepted_until_depth_then_final() -> None:
    engine = engine_with(rule(1, MARKER), depth_to_server=100)
    c = Conn(engine)
    c.handshake()
    assert c.data(0, b"A" * 60) == Decision(Action.ACCEPT)
    d = c.data(60, b"B" * 60)  # crosses the 100-byte depth
    assert d.action is Action.ACCEPT and d.final
    # bytes past the depth are not inspected: the marker there passes
    assert c.data(120, MARKER) == Decision(Action.ACCEPT, final=True)
    assert engine.stats.events == 0 and engine.stats.flows_final == 1
    assert engine.stats.streams_open == 0


def test_uncovered_port_is_final_at_once_without_identification() -> None:
    engine = engine_with(rule(1, MARKER), identify_any_port=False)
    c = Conn(engine, dport=8080)
    assert c.send("S", c.cseq) == Decision(Action.ACCEPT, final=True)
    assert c.data(0, MARKER) == Decision(Action.ACCEPT, final=True)
    assert engine.stats.flows_inspected == 0


def test_uncovered_port_is_final_once_no_protocol_with_rules_is_found() -> None:
    """A port no rule lists: inspected until identification finds nothing (SSH both ways),
    then final at once (the kernel bypasses the rest)."""
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine, dport=2222)
    c.handshake()
    assert c.reply(0, b"SSH-2.0-OpenSSH_9.6\r\n") == Decision(Action.ACCEPT, done_to_client=True)
    assert c.data(0, b"SSH-2.0-PuTTY_0.81\r\n" + MARKER) == Decision(Action.ACCEPT, final=True)
    assert c.data(40, MARKER) == Decision(Action.ACCEPT, final=True)
    assert engine.stats.events == 0 and engine.stats.streams_open == 0


@pytest.mark.parametrize("port", [8081, 2222, 445])
def test_http_rule_follows_http_to_any_port(port: int) -> None:
    """The marker rule lists port 80 only; HTTP carrying it on another port (one no rule
    lists, or one where SMB is expected) is identified by content and reset."""
    engine = engine_with(rule(1, MARKER), rule(2, b"\xffSMB", ports=(445,)))
    c = Conn(engine, dport=port)
    c.handshake()
    req = b"GET /?q=" + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert c.data(0, req[:12]) == Decision(Action.ACCEPT)
    d = c.data(12, req[12:])
    assert d.action is Action.RESET
    assert [e.signature_id for e in d.events] == [1]


def test_marker_inside_the_identifying_bytes_fires_once() -> None:
    """The rescan of the first bytes with the HTTP followers' rules fires the marker once,
    in the packet that identified the protocol."""
    engine = engine_with(rule(1, MARKER), rule(3, b"GET /", ports=(2222,)))
    c = Conn(engine, dport=2222)
    c.handshake()
    d = c.data(0, b"GET /" + MARKER + b" HTTP/1.1\r\n\r\n")
    assert d.action is Action.RESET
    assert sorted(e.signature_id for e in d.events) == [1, 3]
    assert engine.stats.app_rebinds == 1


def test_to_client_only_rule_ignores_requests_but_catches_responses() -> None:
    engine = engine_with(rule(1, b"SECRET", action=Action.DROP, direction="to_client"))
    c = Conn(engine)
    c.handshake()
    # requests are not inspected at all: the kernel may stop queueing that direction
    request = c.data(0, b"GET /SECRET HTTP/1.0\r\n\r\n")
    assert request == Decision(Action.ACCEPT, done_to_server=True)
    d = c.reply(0, b"HTTP/1.0 200 OK\r\n\r\nSECRET")
    assert d.action is Action.DROP and d.events[0].direction is Direction.TO_CLIENT
    assert d.events[0].src_port == 80 and d.events[0].dest_port == 40000


def test_out_of_order_gap_filler_is_the_packet_blocked() -> None:
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    req = b"POST /x HTTP/1.1\r\n\r\n" + MARKER + b"tail"
    a, b = 10, 10 + len(MARKER) // 2 + 20
    assert c.data(b, req[b:]) == Decision(Action.ACCEPT)  # held: gap before it
    assert c.data(a, req[a:b]) == Decision(Action.ACCEPT)  # still a gap at 0..a
    d = c.data(0, req[:a])  # fills the gap: marker becomes contiguous
    assert d.action is Action.RESET and d.events


def test_overlap_with_other_bytes_resets_the_flow() -> None:
    """Harmless bytes arrive first, the exploit later for the same sequence range: the server
    may keep either copy (Windows the first, Linux the last), so the engine resets the flow at
    the second copy (gateway/flow/normalize.py), with the normaliser's limit event under
    `limits.normalizer: alert` (none by default), and the exploit's copy is never forwarded."""
    engine = engine_with(rule(1, MARKER), limits=LimitsConfig(normalizer=LimitPolicy.ALERT))
    c = Conn(engine)
    c.handshake()
    prefix = b"GET /"
    harmless = b"X" * len(MARKER)
    assert c.data(len(prefix) + len(MARKER), b" HTTP/1.1\r\n\r\n").action is Action.ACCEPT
    assert c.data(len(prefix), harmless).action is Action.ACCEPT  # held out of order
    refused = c.data(len(prefix), MARKER)  # another copy: refused
    assert refused.action is Action.RESET
    assert [(e.signature_id, e.limit, e.blocked) for e in refused.events] == [
        (9300016, "normalizer", True)
    ]
    assert c.data(0, prefix) == Decision(Action.RESET)  # the flow stays blocked, no new event
    stats = engine.stats.as_dict()
    assert stats["events"] == 1 and stats["norm_conflict"] == 1
    assert stats["limit_normalizer"] == 1


def test_overlap_exploit_first_then_other_bytes_resets_the_flow() -> None:
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    prefix = b"GET /"
    harmless = b"X" * len(MARKER)
    assert c.data(len(prefix), MARKER).action is Action.ACCEPT  # held out of order
    assert c.data(len(prefix), harmless).action is Action.RESET  # another copy: refused
    assert c.data(0, prefix) == Decision(Action.RESET)


def test_retransmission_with_different_bytes_after_delivery_resets_the_flow() -> None:
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    harmless = b"GET /" + b"X" * len(MARKER)
    assert c.data(0, harmless) == Decision(Action.ACCEPT)
    assert c.data(0, harmless) == Decision(Action.ACCEPT)  # the same bytes again: fine
    assert c.data(0, b"GET /" + MARKER) == Decision(Action.RESET)  # other bytes: refused
    assert engine.stats.events == 0 and engine.stats.as_dict()["limit_normalizer"] == 1


def test_alert_rule_passes_and_reports_once() -> None:
    engine = engine_with(rule(7, b"probe", action=Action.ALERT))
    c = Conn(engine)
    c.handshake()
    d = c.data(0, b"probe probe")
    assert d.action is Action.ALERT and not d.events[0].blocked
    assert c.data(11, b"probe") == Decision(Action.ACCEPT)
    assert engine.stats.events == 1 and engine.stats.flows_blocked == 0


def test_reset_wins_over_drop_and_alert_in_the_same_packet() -> None:
    engine = engine_with(
        rule(1, b"aaa", action=Action.ALERT), rule(2, b"bbb", action=Action.DROP), rule(3, b"ccc")
    )
    c = Conn(engine)
    c.handshake()
    d = c.data(0, b"aaa bbb ccc")
    assert d.action is Action.RESET
    assert {(e.signature_id, e.blocked) for e in d.events} == {(1, False), (2, True), (3, True)}


def test_mid_stream_pickup_and_ipv6() -> None:
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine, client="2001:db8::10", server="2001:db8::20", v6=True)
    assert c.data(0, b"xx" + MARKER[:10]) == Decision(Action.ACCEPT)
    d = c.data(12, MARKER[10:])
    assert d.action is Action.RESET and d.events[0].src_ip == "2001:db8::10"


def test_udp_rule_blocks_datagram_and_flow() -> None:
    engine = engine_with(
        rule(5, b"\x00\xfa\x00\xff", action=Action.DROP, ports=(53,), protocol="udp")
    )
    dgram = IP(src=CLIENT, dst=SERVER) / UDP(sport=5353, dport=53)
    assert engine.process_ip(bytes(dgram / Raw(b"normal query")), 1.0) == Decision(Action.ACCEPT)
    d = engine.process_ip(bytes(dgram / Raw(b"q\x00\xfa\x00\xffq")), 2.0)
    assert d.action is Action.DROP and d.events[0].proto == 17
    assert engine.process_ip(bytes(dgram / Raw(b"normal")), 3.0) == Decision(Action.DROP)


def test_udp_depth_makes_flow_final() -> None:
    engine = engine_with(rule(5, b"evil", ports=(53,), protocol="udp"), depth_to_server=20)
    dgram = IP(src=CLIENT, dst=SERVER) / UDP(sport=5353, dport=53)
    assert engine.process_ip(bytes(dgram / Raw(b"x" * 15)), 1.0) == Decision(Action.ACCEPT)
    assert engine.process_ip(bytes(dgram / Raw(b"x" * 15)), 1.1) == Decision(
        Action.ACCEPT, final=True
    )


def test_undecodable_and_internal_errors_follow_fail_policy() -> None:
    for fail_open, expected in ((True, Action.ACCEPT), (False, Action.DROP)):
        engine = engine_with(rule(1, MARKER), fail_open=fail_open)
        assert engine.process_ip(b"\x45\x00\x00", 1.0).action is expected
        assert engine.process_ip(b"", 1.0).action is expected
        assert engine.stats.decode_errors == 2
        # a packet record the pipeline cannot handle (seq is not an int): caught and counted
        broken = Packet(4, CLIENT, SERVER, 6, 40000, 80, 0x18, "seq", 0, b"data")  # type: ignore[arg-type]
        assert engine.process(broken, 1.0).action is expected
        assert engine.stats.internal_errors == 1
        # ARP etc. in a capture: not IP, accepted whatever the policy
        arp = b"\xff" * 6 + b"\x00\x0c\x29\xa3\x01\xb7" + b"\x08\x06" + b"\x00" * 28
        assert engine.process_frame(arp, 1, 1.0).action is Action.ACCEPT
        assert engine.stats.unsupported_frames == 1


def test_icmp_is_accepted_final() -> None:
    engine = engine_with(rule(1, MARKER))
    from scapy.layers.inet import ICMP

    pkt = IP(src=CLIENT, dst=SERVER) / ICMP() / Raw(MARKER)
    assert engine.process_ip(bytes(pkt), 1.0) == Decision(Action.ACCEPT, final=True)


def test_expiry_and_eviction_free_streams() -> None:
    quiet = LimitsConfig(flow_table=LimitPolicy.PASS)  # evictions counted, no events
    engine = engine_with(rule(1, MARKER), max_flows=3, tcp_idle=30.0, limits=quiet)
    conns = [Conn(engine, sport=41000 + i) for i in range(5)]
    for c in conns:
        c.handshake()
        c.data(0, b"hello")
    assert len(engine.table) == 3 and engine.stats.streams_open == 3  # 2 evicted, freed
    engine.expire(conns[-1].now + 31.0)
    assert len(engine.table) == 0 and engine.stats.streams_open == 0
    # the idle sweep also runs from the packet path as time moves on
    c = Conn(engine, sport=42000, now=1000.0)
    c.handshake()
    c2 = Conn(engine, sport=42001, now=2000.0)
    c2.handshake()
    assert len(engine.table) == 1 and engine.stats.streams_open == 1
    engine.close()
    assert engine.stats.streams_open == 0
    assert c2.data(0, MARKER) == Decision(Action.ACCEPT, final=True)


def test_swap_rules_applies_to_new_flows() -> None:
    engine = engine_with(rule(1, b"old-attack"))
    old = Conn(engine, sport=43000)
    old.handshake()
    engine.swap_rules(RuleSet([rule(2, b"new-attack")]))
    new = Conn(engine, sport=43001)
    new.handshake()
    assert old.data(0, b"old-attack").action is Action.RESET  # keeps the rules it started with
    assert new.data(0, b"old-attack").action is Action.ACCEPT
    assert new.data(10, b"new-attack").action is Action.RESET


@pytest.mark.parametrize("only", [9001001, 9001002])
def test_eternalblue_capture_fires_each_ms17_010_rule(corpora: Path, only: int) -> None:
    rules = load_rules([default_rule_dir()])
    engine = Engine(RuleSet([r for r in rules if r.id == only]))
    events = []
    for rec in read_capture(corpora / "attacks" / "eternalblue-success-unpatched-win7.pcap"):
        events.extend(engine.process_frame(rec.data, rec.linktype, rec.timestamp).events)
    assert events and {e.signature_id for e in events} == {only}
    assert all("CVE-2017-0144" in e.cves and e.dest_port == 445 and e.blocked for e in events)
    assert engine.stats.internal_errors == 0 and engine.stats.decode_errors == 0


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(6)))
def test_any_arrival_order_blocks_the_packet_that_completes_the_marker(order: list[int]) -> None:
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    req = b"GET /" + MARKER + b" HTTP/1.1\r\n\r\n"
    bounds = [0, 3, 9, 16, 22, 29, len(req)]
    segs = [(bounds[i], req[bounds[i] : bounds[i + 1]]) for i in range(6)]
    marker_end = req.index(MARKER) + len(MARKER)
    delivered_upto = 0
    have: set[int] = set()
    blocked_at = None
    for step, i in enumerate(order):
        d = c.data(*segs[i])
        have.add(i)
        while delivered_upto < 6 and delivered_upto in have:
            delivered_upto += 1
        contiguous = bounds[delivered_upto]
        if blocked_at is None and contiguous >= marker_end:
            blocked_at = step
            assert d.action is Action.RESET and len(d.events) == 1
        elif blocked_at is None:
            assert d == Decision(Action.ACCEPT)
        else:
            assert d == Decision(Action.RESET)
    assert blocked_at is not None and engine.stats.events == 1


def test_http_keep_alive_is_inspected_past_the_depth() -> None:
    # Suricata's stream bypass stops at the depth; a keep-alive connection carries many
    # requests, so every one of them must still be checked.
    engine = engine_with(rule(1, MARKER), depth_to_server=1000)
    c = Conn(engine)
    c.handshake()
    request = b"GET /page HTTP/1.1\r\nHost: lab\r\n\r\n"
    offset = 0
    while offset < 5000:  # five times the depth of harmless keep-alive requests
        assert c.data(offset, request) == Decision(Action.ACCEPT)
        offset += len(request)
    d = c.data(offset, b"GET /?q=" + MARKER + b" HTTP/1.1\r\n\r\n")
    assert d.action is Action.RESET and d.events[0].signature_id == 1


def test_non_http_stream_still_stops_at_the_depth() -> None:
    engine = engine_with(rule(1, MARKER), depth_to_server=1000)
    c = Conn(engine)
    c.handshake()
    assert c.data(0, b"\x00\x00\x00\x10" + b"\xffSMB" + b"x" * 1200).final
    assert c.data(1208, MARKER) == Decision(Action.ACCEPT, final=True)


def test_http_whole_connection_can_be_turned_off() -> None:
    engine = engine_with(rule(1, MARKER), depth_to_server=100, http_whole_connection=False)
    c = Conn(engine)
    c.handshake()
    assert c.data(0, b"GET / HTTP/1.1\r\n" + b"A" * 100).final


# --- app layer: decoded fields, identification, decoder failure, policy modes -----------------


def app_rules(tmp_path: Path, body: str) -> RuleSet:
    path = tmp_path / "app.yaml"
    path.write_text(body)
    return load_rules([path])


HTTP_RULE = """\
id: 7001
title: shellshock-like header
severity: high
action: reset
protocol: tcp
ports: [80]
app: http
conditions:
  - field: http.header.user-agent
    regex: '^\\s*\\(\\s*\\)\\s*\\{'
"""


def test_http_header_condition_blocks_and_benign_passes(tmp_path: Path) -> None:
    engine = Engine(app_rules(tmp_path, HTTP_RULE))
    conn = Conn(engine)
    conn.handshake()
    ok = conn.send("PA", conn.cseq + 1, b"GET / HTTP/1.1\r\nUser-Agent: curl (){x}\r\n\r\n")
    assert ok.action is Action.ACCEPT
    bad = b"GET /2 HTTP/1.1\r\nUser-Agent: () { :; }; id\r\n\r\n"
    seq = conn.cseq + 1 + len(b"GET / HTTP/1.1\r\nUser-Agent: curl (){x}\r\n\r\n")
    got = conn.send("PA", seq, bad)
    assert got.action is Action.RESET and got.events[0].signature_id == 7001
    assert engine.stats.app_records >= 2


def test_http_condition_found_when_segmented_byte_by_byte(tmp_path: Path) -> None:
    engine = Engine(app_rules(tmp_path, HTTP_RULE))
    conn = Conn(engine)
    conn.handshake()
    bad = b"GET / HTTP/1.1\r\nUser-Agent: () { :; }; id\r\n\r\n"
    actions = [conn.send("PA", conn.cseq + 1 + i, bad[i : i + 1]).action for i in range(len(bad))]
    assert actions[-1] is Action.RESET and Action.RESET not in actions[:-1]


def test_decoder_error_keeps_raw_rules_and_counts(tmp_path: Path) -> None:
    rules = app_rules(
        tmp_path,
        "rules:\n  - id: 7001\n    title: ua\n    severity: high\n    action: reset\n"
        "    protocol: tcp\n    ports: [80]\n    app: http\n    conditions:\n"
        "      - field: http.header.user-agent\n        content: '() {'\n"
        "  - id: 7002\n    title: raw\n    severity: low\n    action: alert\n"
        "    protocol: tcp\n    ports: [80]\n    patterns: [{content: EVIL}]\n",
    )
    engine = Engine(rules)
    conn = Conn(engine)
    conn.handshake()
    first = b"GET / HTTP/1.1\r\nbad header line\r\n\r\n"
    conn.send("PA", conn.cseq + 1, first)
    assert engine.stats.app_decode_errors == 1
    got = conn.send("PA", conn.cseq + 1 + len(first), b"EVIL")
    assert got.action is Action.ALERT and got.events[0].signature_id == 7002


def test_a_malformed_request_does_not_blind_the_http_rules_after_it(tmp_path: Path) -> None:
    """A request the decoder refuses, then the exploit, in one segment and in the next."""
    malformed = b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n"
    bad = b"GET /2 HTTP/1.1\r\nUser-Agent: () { :; }; id\r\n\r\n"
    engine = Engine(app_rules(tmp_path, HTTP_RULE))
    conn = Conn(engine)
    conn.handshake()
    got = conn.send("PA", conn.cseq + 1, malformed + bad)
    assert got.action is Action.RESET and got.events[0].signature_id == 7001
    engine = Engine(app_rules(tmp_path, HTTP_RULE))
    conn = Conn(engine)
    conn.handshake()
    assert conn.send("PA", conn.cseq + 1, malformed).action is Action.ACCEPT
    got = conn.send("PA", conn.cseq + 1 + len(malformed), bad)
    assert got.action is Action.RESET and got.events[0].signature_id == 7001
    assert engine.stats.app_decode_errors == 1 and engine.stats.app_recoveries == 1


@pytest.mark.parametrize(("mode", "action"), [("detect", Action.ALERT), ("prevent", Action.RESET)])
def test_the_anomaly_rule_decides_what_a_refused_request_gets(
    tmp_path: Path, mode: str, action: Action
) -> None:
    ruleset = app_rules(
        tmp_path,
        "id: 9300001\ntitle: anomaly\nseverity: medium\naction: reset\n"
        f"default_mode: {mode}\nprotocol: tcp\nports: [80]\napp: http\n"
        "conditions:\n  - {field: http.anomaly, length: true, gt: 0}\n",
    )
    engine = Engine(ruleset)
    conn = Conn(engine)
    conn.handshake()
    got = conn.send("PA", conn.cseq + 1, b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n")
    assert got.action is action and got.events[0].signature_id == 9300001
    assert got.events[0].field == "http.anomaly" and b"bad header line" in got.events[0].excerpt


def test_unidentified_protocol_is_counted_not_decoded(tmp_path: Path) -> None:
    engine = Engine(app_rules(tmp_path, HTTP_RULE))
    conn = Conn(engine)
    conn.handshake()
    conn.send("PA", conn.cseq + 1, b"\x16\x03\x01\x00\x05hello")
    assert engine.stats.app_unidentified == 1 and engine.stats.app_records == 0


def test_heartbleed_condition_over_tls(tmp_path: Path) -> None:
    rules = app_rules(
        tmp_path,
        "id: 7003\ntitle: hb\nseverity: high\naction: drop\nprotocol: tcp\nports: [443]\n"
        "app: tls\nconditions:\n  - field: tls.heartbeat.encrypted\n    equals: 0\n"
        "  - field: tls.heartbeat.payload_length\n    plus: 19\n"
        "    gt: {field: tls.record_length}\n",
    )
    engine = Engine(rules)
    good = Conn(engine, dport=443)
    good.handshake()
    hb_ok = b"\x18\x03\x02\x00\x17\x01\x00\x04abcd" + b"p" * 16
    assert good.send("PA", good.cseq + 1, hb_ok).action is Action.ACCEPT
    bad = Conn(engine, dport=443, sport=40001)
    bad.handshake()
    assert bad.send("PA", bad.cseq + 1, b"\x18\x03\x02\x00\x03\x01\x40\x00").action is Action.DROP


def test_dns_udp_condition(tmp_path: Path) -> None:
    rules = app_rules(
        tmp_path,
        "id: 7004\ntitle: tkey\nseverity: high\naction: drop\nprotocol: udp\nports: [53]\n"
        "app: dns\nconditions:\n  - field: dns.rr.type\n    equals: 249\n"
        "  - field: dns.rr.section\n    ne: additional\n",
    )
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    engine = Engine(rules)
    ok = IP(src=CLIENT, dst=SERVER) / UDP(sport=5353, dport=53) / DNS(qd=DNSQR(qname="a.b"))
    assert engine.process_ip(bytes(ok), 1.0).action is Action.ACCEPT
    bad = (
        IP(src=CLIENT, dst=SERVER)
        / UDP(sport=5354, dport=53)
        / DNS(qd=DNSQR(qname="a.b", qtype=249), an=DNSRR(rrname="a.b", type=249, rdata=b"x"))
    )
    assert engine.process_ip(bytes(bad), 2.0).action is Action.DROP


def test_policy_modes_off_detect_prevent(tmp_path: Path) -> None:
    from gateway.policy.compiled import CompiledPolicy

    @dataclass(frozen=True)
    class A:
        rule_id: int
        scope: str
        scope_id: int | None
        mode: str

    @dataclass(frozen=True)
    class H:
        id: int
        address: str
        group_id: int | None

    bad = b"GET / HTTP/1.1\r\nUser-Agent: () { :; }; id\r\n\r\n"
    engine = Engine(app_rules(tmp_path, HTTP_RULE))
    for sport, mode, action in ((41000, "off", Action.ACCEPT), (41001, "detect", Action.ALERT)):
        engine.set_policy(CompiledPolicy([H(1, SERVER, None)], [], [A(7001, "host", 1, mode)]))
        conn = Conn(engine, sport=sport)
        conn.handshake()
        got = conn.send("PA", conn.cseq + 1, bad)
        assert got.action is action
        if mode == "detect":
            from gateway.events.eve import to_eve

            eve = to_eve(got.events[0])
            assert eve["alert"]["action"] == "allowed" and eve["vpatch"]["would_block"] is True
    engine.set_policy(CompiledPolicy([], [], [A(7001, "global", None, "prevent")]))
    conn = Conn(engine, sport=41002)
    conn.handshake()
    assert conn.send("PA", conn.cseq + 1, bad).action is Action.RESET


def test_eternalblue_capture_fires_field_rule(corpora: Path, tmp_path: Path) -> None:
    rules = app_rules(
        tmp_path,
        "id: 7005\ntitle: nt trans big\nseverity: high\naction: reset\nprotocol: tcp\n"
        "ports: [445]\napp: smb\nconditions:\n  - field: smb.command\n    equals: 0xa0\n"
        "  - field: smb.nt_trans.total_data_count\n    ge: 0x10000\n",
    )
    engine = Engine(rules)
    ids = set()
    for pcap in sorted((corpora / "attacks").rglob("eternalblue-success*.pcap")):
        for rec in read_capture(pcap):
            ids.update(
                e.signature_id
                for e in engine.process_frame(rec.data, rec.linktype, rec.timestamp).events
            )
    assert ids == {7005}
    assert engine.stats.internal_errors == 0


def _smb1(body: bytes) -> bytes:
    """A NetBIOS session message around an SMB1 message (RFC 1002 section 4.3.1)."""
    return b"\x00" + len(body).to_bytes(3, "big") + body


@pytest.mark.parametrize(
    ("request_bytes", "fired"),
    [
        # NT Trans (0xA0) request, WordCount 20, TotalDataCount 0x000103d0 (66512): EternalBlue
        (
            _smb1(
                b"\xffSMB\xa0"
                + b"\x00" * 4
                + b"\x18\x07\xc0"
                + b"\x00" * 12
                + b"\x00\x08\xff\xfe\x00\x08\x41\x00"
                + b"\x14\x01\x00\x00\x1e\x00\x00\x00\xd0\x03\x01\x00"
                + b"\x00" * 40
                + b"\x00\x00"
            ),
            {9001001},
        ),
        # the same with 976 bytes of data: legitimate
        (
            _smb1(
                b"\xffSMB\xa0"
                + b"\x00" * 4
                + b"\x18\x07\xc0"
                + b"\x00" * 12
                + b"\x00\x08\xff\xfe\x00\x08\x41\x00"
                + b"\x14\x01\x00\x00\x1e\x00\x00\x00\xd0\x03\x00\x00"
                + b"\x00" * 40
                + b"\x00\x00"
            ),
            set(),
        ),
        # Trans2 (0x32) with the setup word SESSION_SETUP (0x000e): EternalBlue / DoublePulsar
        (
            _smb1(
                b"\xffSMB\x32"
                + b"\x00" * 27
                + b"\x0f"
                + b"\x0c\x00"
                + b"\x00" * 24
                + b"\x01\x00\x0e\x00"
                + b"\x00\x00"
            ),
            {9001002},
        ),
        # Trans2 FIND_FIRST2 (0x0001): legitimate
        (
            _smb1(
                b"\xffSMB\x32"
                + b"\x00" * 27
                + b"\x0f"
                + b"\x0c\x00"
                + b"\x00" * 24
                + b"\x01\x00\x01\x00"
                + b"\x00\x00"
            ),
            set(),
        ),
    ],
    ids=["nt-trans-oversized", "nt-trans-normal", "trans2-session-setup", "trans2-find-first"],
)
def test_bundled_eternalblue_rules_describe_the_structure(
    request_bytes: bytes, fired: set[int]
) -> None:
    engine = Engine(load_rules([default_rule_dir()]))
    c = Conn(engine, dport=445)
    c.handshake()
    cut1, cut2 = 20, 45  # split across three segments
    decisions = [
        c.data(0, request_bytes[:cut1]),
        c.data(cut1, request_bytes[cut1:cut2]),
        c.data(cut2, request_bytes[cut2:]),
    ]
    got = {e.signature_id for d in decisions for e in d.events}
    assert got == fired
    assert (decisions[-1].action is Action.RESET) == bool(fired)


def test_one_direction_done_while_the_other_is_still_inspected() -> None:
    engine = engine_with(
        rule(1, MARKER),
        rule(2, b"VPATCH-TEST-RESPONSE", action=Action.ALERT, direction="to_client"),
        depth_to_server=100,
        depth_to_client=1000,
    )
    c = Conn(engine)
    c.handshake()
    assert c.data(0, b"\x00" * 60) == Decision(Action.ACCEPT)
    d = c.data(60, b"\x00" * 60)  # the request direction crosses its depth
    assert d == Decision(Action.ACCEPT, done_to_server=True) and not d.final
    assert c.data(120, b"\x00" * 60) == Decision(Action.ACCEPT, done_to_server=True)
    assert c.reply(0, b"HTTP/1.1 200 OK\r\n") == Decision(Action.ACCEPT)  # still inspected
    last = c.reply(17, b"x" * 1000)  # the response direction reaches its depth: all done
    assert last.final


def _http_field_rule(rule_id: int, needle: bytes) -> Rule:
    return load_rules_text(
        f"""
id: {rule_id}
title: header test {rule_id}
cve: [CVE-0000-0001]
severity: high
action: reset
protocol: tcp
app: http
ports: [80]
direction: to_server
conditions:
  all:
    - field: http.header.user-agent
      content: "{needle.decode()}"
"""
    )


def load_rules_text(text: str) -> Rule:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rule.yaml"
        path.write_text(text)
        (only,) = load_rules([path]).rules
        return only


def test_http_memo_skips_repeated_clean_requests_but_never_hides_a_match() -> None:
    engine = Engine(RuleSet((_http_field_rule(7, b"evil-agent"),)), EngineConfig())
    c = Conn(engine)
    c.handshake()
    clean = b"GET /1k.bin HTTP/1.1\r\nHost: lab\r\nUser-Agent: curl\r\n\r\n"
    offset = 0
    for _ in range(5):
        assert c.data(offset, clean).action is Action.ACCEPT
        offset += len(clean)
    assert engine.stats.http_memo_hits == 4  # decoded once, then remembered
    # pipelined pair, or a request with a body: never taken from the memo
    assert c.data(offset, clean + clean).action is Action.ACCEPT
    offset += 2 * len(clean)
    post = b"POST / HTTP/1.1\r\nHost: lab\r\nContent-Length: 2\r\n\r\nhi"
    assert c.data(offset, post).action is Action.ACCEPT
    offset += len(post)
    assert engine.stats.http_memo_hits == 4
    bad = clean.replace(b"curl", b"evil-agent")
    d = c.data(offset, bad)
    assert d.action is Action.RESET and d.events[0].signature_id == 7
    # new rules: a new rule group, so nothing remembered under the old one applies
    engine.swap_rules(RuleSet((_http_field_rule(8, b"curl"),)))
    c2 = Conn(engine, sport=40001)
    c2.handshake()
    d2 = c2.data(0, clean)
    assert d2.action is Action.RESET and d2.events[0].signature_id == 8


def test_http_memo_can_be_turned_off() -> None:
    engine = Engine(
        RuleSet((_http_field_rule(7, b"evil-agent"),)), EngineConfig(http_memo_entries=0)
    )
    c = Conn(engine)
    c.handshake()
    clean = b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n"
    for i in range(3):
        c.data(i * len(clean), clean)
    assert engine.stats.http_memo_hits == 0


def test_http_memo_follows_the_policy_for_the_server() -> None:
    """A rule switched off for this server is ignored, so the request is remembered as clean
    for this server; switching the rule on again (a new policy) must not be hidden by that."""
    from dataclasses import dataclass as _dc

    from gateway.policy.compiled import CompiledPolicy

    @_dc(frozen=True)
    class Host:
        id: int
        address: str
        group_id: int | None

    @_dc(frozen=True)
    class Assign:
        rule_id: int
        scope: str
        scope_id: int | None
        mode: str

    engine = Engine(RuleSet((_http_field_rule(7, b"curl"),)), EngineConfig())
    host = Host(1, SERVER, None)
    engine.set_policy(CompiledPolicy([host], [], [Assign(7, "host", 1, "off")]))
    c = Conn(engine)
    c.handshake()
    request = b"GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: curl\r\n\r\n"
    assert c.data(0, request).action is Action.ACCEPT
    assert c.data(len(request), request).action is Action.ACCEPT
    assert engine.stats.http_memo_hits == 1
    engine.set_policy(CompiledPolicy([host], [], [Assign(7, "host", 1, "prevent")]))
    d = c.data(2 * len(request), request)
    assert d.action is Action.RESET and d.events[0].signature_id == 7


@pytest.mark.parametrize("isn_shift", [100_000, -100_000])
def test_client_port_reused_without_a_seen_fin_is_inspected_from_its_first_request(
    isn_shift: int,
) -> None:
    # The gateway does not queue FINs (no payload) nor bypassed connections, so a client port
    # reused by a new connection arrives on a flow that never closed. The server's SYN+ACK
    # confirms the new connection: its first request is inspected at once (before, its bytes
    # sat out of order under the old sequence numbers, or were taken as old data).
    engine = engine_with(rule(1, MARKER), depth_to_server=100_000)
    old = Conn(engine, cseq=500_000)
    old.handshake()
    request = b"GET /page HTTP/1.1\r\nHost: lab\r\n\r\n"
    assert old.data(0, request) == Decision(Action.ACCEPT)
    new = Conn(engine, cseq=old.cseq + isn_shift, sseq=9000, now=old.now)
    new.handshake()
    d = new.data(0, b"GET /?q=" + MARKER + b" HTTP/1.1\r\n\r\n")
    assert d.action is Action.RESET and d.events[0].signature_id == 1
    assert engine.table.created == 2


def test_syn_injected_into_a_live_connection_does_not_reset_its_inspection() -> None:
    # A SYN with another sequence number inside a live connection draws a challenge ACK from
    # the server, not a SYN+ACK: the flow, its reassembly and its partial match stay.
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    req = b"GET /?q=" + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert c.data(0, req[:15]) == Decision(Action.ACCEPT)
    assert c.send("S", c.cseq + 777_777).action is Action.ACCEPT  # the injected SYN
    assert c.send("A", c.sseq + 1, to_server=False).action is Action.ACCEPT  # challenge ACK
    d = c.data(15, req[15:])
    assert d.action is Action.RESET and d.events[0].signature_id == 1
    assert engine.table.created == 1


def test_a_reused_port_after_a_block_is_a_new_flow_once_the_server_answers() -> None:
    """Inline (kernel-checked SYNs), the kernel queues a SYN on a reset connection's ports
    (render.py, the "blocked" connmark): that SYN passes, the server's SYN+ACK starts a new
    flow, inspected afresh, with its own event; no SYN+ACK, no new flow."""
    engine = engine_with(rule(1, MARKER), kernel_checked_syn=True)
    first = Conn(engine, sport=41000)
    first.handshake()
    blocked = first.data(0, b"GET /" + MARKER)
    assert blocked.action is Action.RESET and len(blocked.events) == 1
    second = Conn(engine, sport=41000, cseq=70000, sseq=90000)
    # passes, the flow stays; `reopening`: the intake keeps the kernel queueing the handshake
    assert second.send("S", second.cseq) == Decision(Action.ACCEPT, reopening=True)
    assert second.data(0, b"GET / HTTP/1.1\r\n").action is Action.RESET  # not confirmed yet
    assert second.send("SA", second.sseq, to_server=False).action is Action.ACCEPT
    assert second.send("A", second.cseq + 1).action is Action.ACCEPT
    assert second.data(0, b"GET / HTTP/1.1\r\n") == Decision(Action.ACCEPT)
    again = second.data(16, b"X: " + MARKER)
    assert again.action is Action.RESET and len(again.events) == 1
    assert again.events[0].flow_id != blocked.events[0].flow_id
    assert engine.stats.events == 2
    # a SYN with data on the blocked flow's ports never passes
    third = Conn(engine, sport=41000, cseq=123456)
    assert third.send("S", third.cseq, b"GET /").action is Action.RESET
