"""The engine's limits (gateway/flow/limits.py): every bound has a policy and an event.

Holes (issue 15 point 12): a segment the kernel passed without queueing it (fail-open, queue
full) is a hole the engine never sees; the bytes after it must not stay uninspected.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP

from gateway.config import HostLimits, LimitsConfig, parse_config
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.rules import RuleSet, load_rules
from gateway.verdict import Decision
from gateway.verdict.limiter import HOLE_RETRY
from gateway.vocabulary import Action, Limit, LimitPolicy
from tests.test_engine import MARKER, SERVER, Conn, engine_with, rule

REQUEST = b"GET /page HTTP/1.1\r\nHost: lab\r\n\r\n"
EXPLOIT = b"GET /?q=" + MARKER + b" HTTP/1.1\r\nHost: lab\r\n\r\n"


def _sids(decision: object) -> list[int]:
    return [e.signature_id for e in getattr(decision, "events", ())]


def _keep_alive_with_hole(engine: Engine) -> tuple[Conn, int]:
    """A keep-alive connection with two requests inspected, then one the engine never sees
    (the kernel passed it while the queue was full); returns the connection and the stream
    offset after the unseen request."""
    c = Conn(engine)
    c.handshake()
    assert c.data(0, REQUEST).action is Action.ACCEPT
    assert c.data(len(REQUEST), REQUEST).action is Action.ACCEPT
    return c, 3 * len(REQUEST)  # the third request never reached the engine


ALERT_HOLES = LimitsConfig(stream_hole=LimitPolicy.ALERT)


def test_a_hole_does_not_end_inspection_of_a_keep_alive_connection() -> None:
    engine = engine_with(rule(1, MARKER), limits=ALERT_HOLES)
    c, after = _keep_alive_with_hole(engine)
    c.now += 5.0  # the flood is over; the connection was quiet meanwhile
    first = c.data(after, EXPLOIT)  # held behind the hole: not passed on uninspected
    assert first.action is Action.DROP
    c.now += HOLE_RETRY + 0.1
    retransmitted = c.data(after, EXPLOIT)  # the client retransmits it: the hole is skipped
    assert retransmitted.action is Action.RESET
    assert sorted(_sids(retransmitted)) == [1, 9300013]
    stats = engine.stats.as_dict()
    assert stats["limit_stream_hole"] == 1


def test_a_hole_is_skipped_without_an_event_by_default() -> None:
    """The default (`pass`): the hole is skipped and counted, the exploit after it blocked."""
    engine = engine_with(rule(1, MARKER))
    c, after = _keep_alive_with_hole(engine)
    c.now += 5.0
    assert c.data(after, EXPLOIT).action is Action.DROP
    c.now += HOLE_RETRY + 0.1
    d = c.data(after, EXPLOIT)
    assert d.action is Action.RESET and _sids(d) == [1]
    assert engine.stats.as_dict()["limit_stream_hole"] == 1


def test_a_hole_resynchronises_the_http_decoder() -> None:
    """After the hole the HTTP decoder starts again at the next request line: field rules
    keep working on the requests after it."""
    rules = load_rules([Path("rules")])
    engine = Engine(rules, EngineConfig(limits=ALERT_HOLES))
    c, after = _keep_alive_with_hole(engine)
    # the unseen bytes end in the middle of a request: what follows is its tail, then more
    tail = b"Accept: */*\r\n\r\n"
    shellshock = b"GET /cgi-bin/x HTTP/1.1\r\nHost: lab\r\nUser-Agent: () { :; }; /bin/id\r\n\r\n"
    c.now += 5.0
    assert c.data(after, tail + shellshock).action is Action.DROP
    c.now += HOLE_RETRY + 0.1
    d = c.data(after, tail + shellshock)
    assert d.action is Action.RESET
    assert 9300013 in _sids(d) and any(e.cves for e in d.events)


def test_late_bytes_of_a_skipped_hole_reset_the_flow() -> None:
    engine = engine_with(rule(1, MARKER), limits=ALERT_HOLES)
    c, after = _keep_alive_with_hole(engine)
    c.now += 5.0
    assert c.data(after, REQUEST).action is Action.DROP
    c.now += HOLE_RETRY + 0.1
    skipped = c.data(after, REQUEST)
    assert skipped.action is Action.ALERT and _sids(skipped) == [9300013]
    late = c.data(2 * len(REQUEST), EXPLOIT[: len(REQUEST)])  # the hole's bytes, after all
    assert late.action is Action.RESET and _sids(late) == [9300013]
    assert engine.stats.as_dict()["norm_hole_late"] == 1


def test_keep_alive_probe_is_not_a_conflict() -> None:
    """Windows' keep-alive probe repeats the last byte's sequence number with another byte:
    it is dropped (a receiver that has the byte discards it anyway), the flow goes on."""
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    assert c.data(0, REQUEST).action is Action.ACCEPT
    assert c.data(len(REQUEST) - 1, b"\x00") == Decision(Action.DROP)
    assert c.data(len(REQUEST) - 1, b"\n").action is Action.ACCEPT  # the same byte again
    assert c.data(len(REQUEST), EXPLOIT).action is Action.RESET
    assert engine.stats.as_dict()["norm_keepalive"] == 1


def test_ordinary_reordering_is_not_a_hole() -> None:
    """Out-of-order data within hole_wait passes (the receiver holds it too) and the segment
    that fills the gap is judged on the whole."""
    engine = engine_with(rule(1, MARKER))
    c = Conn(engine)
    c.handshake()
    head, rest = EXPLOIT[:10], EXPLOIT[10:]
    assert c.data(10, rest).action is Action.ACCEPT
    filler = c.data(0, head)
    assert filler.action is Action.RESET and _sids(filler) == [1]
    assert engine.stats.as_dict()["limit_stream_hole"] == 0


def test_a_hole_under_policy_reset_resets_the_flow() -> None:
    limits = LimitsConfig(stream_hole=LimitPolicy.RESET)
    engine = engine_with(rule(1, MARKER), limits=limits)
    c, after = _keep_alive_with_hole(engine)
    c.now += 5.0
    assert c.data(after, REQUEST).action is Action.DROP
    c.now += HOLE_RETRY + 0.1
    d = c.data(after, REQUEST)
    assert d.action is Action.RESET and _sids(d) == [9300013] and d.events[0].blocked


# --- stream depth ----------------------------------------------------------------------------

SMB_NEGOTIATE = bytes.fromhex(
    "0000002fff534d4272000000001807c80000000000000000000000000100020003000400000c00024e54204c"
    "4d20302e313200"
)
SMB_ECHO = SMB_NEGOTIATE[:8] + b"\x2b" + SMB_NEGOTIATE[9:]


def _smb_rules(tmp_path: Path) -> RuleSet:
    (tmp_path / "echo.yaml").write_text(
        "rules:\n"
        "  - id: 77\n"
        "    title: test SMB echo\n"
        "    severity: high\n"
        "    action: reset\n"
        "    protocol: tcp\n"
        "    app: smb\n"
        "    ports: [445]\n"
        "    direction: to_server\n"
        "    conditions:\n"
        "      - field: smb.command\n"
        "        equals: 0x2b\n",
        encoding="utf-8",
    )
    return load_rules([tmp_path])


def _smb_past_the_depth(engine: Engine) -> object:
    c = Conn(engine, dport=445)
    c.handshake()
    offset = 0
    while offset < 3000:  # three times the depth of harmless messages
        d = c.data(offset, SMB_NEGOTIATE)
        assert d.action is not Action.RESET
        offset += len(SMB_NEGOTIATE)
    return c.data(offset, SMB_ECHO)


def test_a_decoded_stream_is_inspected_past_the_depth(tmp_path: Path) -> None:
    """inspect-start (the default): an SMB message after any amount of others is checked."""
    engine = Engine(_smb_rules(tmp_path), EngineConfig(depth_to_server=1000))
    d = _smb_past_the_depth(engine)
    assert getattr(d, "action", None) is Action.RESET and _sids(d) == [77]
    assert engine.stats.as_dict()["limit_stream_depth"] == 1


def test_stream_depth_policies_per_host(tmp_path: Path) -> None:
    """A `hosts:` override gives one server `alert`: its stream stops at the depth with an
    event naming the limit; other servers keep the default."""
    override = HostLimits(
        (ipaddress.ip_network(SERVER),), ((Limit.STREAM_DEPTH, LimitPolicy.ALERT),)
    )
    config = EngineConfig(depth_to_server=1000, limits=LimitsConfig(hosts=(override,)))
    engine = Engine(_smb_rules(tmp_path), config)
    d = _smb_past_the_depth(engine)
    assert getattr(d, "action", None) is Action.ACCEPT and getattr(d, "final", False)
    c = engine.stats.as_dict()
    assert c["limit_stream_depth"] == 1 and c["events"] == 1
    other = Engine(_smb_rules(tmp_path), EngineConfig(depth_to_server=1000))
    assert other.limits.for_server(SERVER).stream_depth is LimitPolicy.INSPECT_START
    assert engine.limits.for_server("198.18.0.99").stream_depth is LimitPolicy.INSPECT_START


def test_stream_depth_reset(tmp_path: Path) -> None:
    limits = LimitsConfig(stream_depth=LimitPolicy.RESET)
    engine = Engine(_smb_rules(tmp_path), EngineConfig(depth_to_server=1000, limits=limits))
    c = Conn(engine, dport=445)
    c.handshake()
    decisions = [c.data(i * len(SMB_NEGOTIATE), SMB_NEGOTIATE) for i in range(25)]
    reset = [d for d in decisions if d.action is Action.RESET]
    assert reset and _sids(reset[0]) == [9300010] and not reset[1:][0].events


# --- pending, flow table, defragmentation ----------------------------------------------------


def test_pending_bound_alert() -> None:
    limits = LimitsConfig(pending=LimitPolicy.ALERT)
    engine = engine_with(rule(1, MARKER), max_pending=100, limits=limits)
    c = Conn(engine)
    c.handshake()
    assert c.data(10, b"x" * 80).action is Action.ACCEPT  # held
    d = c.data(100, b"y" * 80)  # past the bound: dropped, its sender retransmits it
    assert d.action is Action.DROP and _sids(d) == [9300012]
    assert c.data(200, b"z" * 80).action is Action.DROP  # dropped again, no second event
    assert engine.stats.as_dict()["limit_pending"] == 2


def test_a_full_flow_table_evicts_with_an_event_or_refuses() -> None:
    engine = engine_with(rule(1, MARKER), max_flows=2)
    for port in (41000, 41001):
        Conn(engine, sport=port).handshake()
    third = Conn(engine, sport=41002)
    d = third.send("S", third.cseq)
    assert d.action is Action.ALERT and _sids(d) == [9300014]
    assert third.data(0, EXPLOIT).action is Action.RESET  # the new flow is inspected
    refusing = engine_with(
        rule(1, MARKER), max_flows=2, limits=LimitsConfig(flow_table=LimitPolicy.RESET)
    )
    for port in (41000, 41001):
        Conn(refusing, sport=port).handshake()
    late = Conn(refusing, sport=41002)
    refused = late.send("S", late.cseq)
    assert refused.action is Action.RESET and refused.events[0].limit == "flow_table"


def test_flow_table_eviction_order_prefers_closed_flows() -> None:
    quiet = LimitsConfig(flow_table=LimitPolicy.PASS)
    engine = engine_with(rule(1, MARKER), max_flows=2, limits=quiet)
    old = Conn(engine, sport=41000)
    old.handshake()
    closed = Conn(engine, sport=41001)
    closed.handshake()
    closed.send("R", closed.cseq + 1)  # closed: evicted first, although seen last
    Conn(engine, sport=41002).handshake()
    ports = sorted(f.key.client_port for f in engine.table)
    assert ports == [41000, 41002]


def test_defrag_bounds_come_from_the_configuration() -> None:
    config = parse_config("engine: {defrag_datagrams: 7, defrag_fragments: 9, defrag_timeout: 5}")
    engine = Engine(RuleSet([]), EngineConfig.from_gateway(config))
    assert (engine.defrag.max_datagrams, engine.defrag.max_fragments) == (7, 9)
    assert engine.defrag.timeout == 5


def test_limits_configuration_hosts() -> None:
    config = parse_config(
        "limits:\n"
        "  stream_hole: pass\n"
        "  hosts:\n"
        "    - hosts: [198.18.0.0/16]\n"
        "      stream_hole: reset\n"
        "    - hosts: [198.18.0.20]\n"
        "      stream_hole: alert\n"
        "      flow_table: reset\n"
    )
    engine = Engine(RuleSet([]), EngineConfig.from_gateway(config))
    exact = engine.limits.for_server("198.18.0.20")
    assert (exact.stream_hole, exact.flow_table) == (LimitPolicy.ALERT, LimitPolicy.RESET)
    assert engine.limits.for_server("198.18.1.1").stream_hole is LimitPolicy.RESET
    assert engine.limits.for_server("2001:db8::1").stream_hole is LimitPolicy.PASS
    assert engine.limits.for_server("not an address").stream_hole is LimitPolicy.PASS


def test_a_decoded_udp_flow_is_inspected_past_its_depth(tmp_path: Path) -> None:
    """udp_depth inspect-start (the default): DNS queries after the depth are still decoded;
    under `pass` the flow is done at the depth."""
    (tmp_path / "dns.yaml").write_text(
        "rules:\n"
        "  - id: 78\n"
        "    title: test DNS name\n"
        "    severity: high\n"
        "    action: drop\n"
        "    protocol: udp\n"
        "    app: dns\n"
        "    ports: [53]\n"
        "    direction: to_server\n"
        "    conditions:\n"
        "      - field: dns.qname\n"
        "        content: evil\n",
        encoding="utf-8",
    )
    rules = load_rules([tmp_path])

    def query(name: str) -> bytes:
        dns = DNS(id=1, rd=1, qd=DNSQR(qname=name))
        return bytes(IP(src="198.18.0.10", dst=SERVER) / UDP(sport=5353, dport=53) / dns)

    for policy, blocked in ((LimitPolicy.INSPECT_START, True), (LimitPolicy.PASS, False)):
        config = EngineConfig(depth_to_server=200, limits=LimitsConfig(udp_depth=policy))
        engine = Engine(rules, config)
        for i in range(10):  # about 300 bytes of harmless queries
            assert engine.process_ip(query(f"host{i}.example"), 100.0 + i).action is Action.ACCEPT
        last = engine.process_ip(query("evil.example"), 110.0)
        assert (last.action is Action.DROP) is blocked, policy
        assert engine.stats.as_dict()["limit_udp_depth"] >= 1


def _form_post(params: bytes) -> bytes:
    return (
        b"POST /form HTTP/1.1\r\nHost: lab\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(params)).encode() + b"\r\n\r\n" + params
    )


PADDED_FORM = _form_post(b"&".join(b"p%d=1" % i for i in range(1100)) + b"&last=2")
PADDED_QUERY = b"GET /?" + b"x=" + b"A" * 70000 + b"&q=1 HTTP/1.1\r\nHost: lab\r\n\r\n"


def test_a_derived_field_cut_by_padding_is_a_limit_with_an_event() -> None:
    """Padding that pushes a parameter or a header out of a derived field (issue 10 point 2:
    derived-field caps) raises `limits.field` (default alert) naming the field, once per flow;
    an ordinary form raises nothing."""
    rules = load_rules([Path("rules")])
    for request, field in (
        (PADDED_FORM, b"http.body_params: parameters past 1024"),
        (PADDED_QUERY, b"http.query: bytes past"),
    ):
        engine = Engine(rules, EngineConfig())
        c = Conn(engine)
        c.handshake()
        pieces = [request[i : i + 30000] for i in range(0, len(request), 30000)]
        for i, piece in enumerate(pieces):
            d = c.data(30000 * i, piece)
        assert d.action is Action.ALERT, (field, d)
        (event,) = d.events
        assert event.signature_id == 9300018
        assert event.limit == "field" and field.decode() in event.condition
        assert engine.stats.as_dict()["limit_field"] == 1
        again = c.data(len(request), PADDED_FORM)  # the same flow: no second event
        assert not again.events
    engine = Engine(rules, EngineConfig())
    c = Conn(engine)
    c.handshake()
    plain = _form_post(b"&".join(b"p%d=1" % i for i in range(1000)))
    assert c.data(0, plain) == Decision(Action.ACCEPT)
    assert engine.stats.as_dict()["limit_field"] == 0


def test_a_derived_field_cut_under_policy_reset_or_pass() -> None:
    rules = load_rules([Path("rules")])
    engine = Engine(rules, EngineConfig(limits=LimitsConfig(field=LimitPolicy.RESET)))
    c = Conn(engine)
    c.handshake()
    d = c.data(0, PADDED_FORM)
    assert d.action is Action.RESET and _sids(d) == [9300018]
    engine = Engine(rules, EngineConfig(limits=LimitsConfig(field=LimitPolicy.PASS)))
    c = Conn(engine)
    c.handshake()
    assert c.data(0, PADDED_FORM) == Decision(Action.ACCEPT)
    assert engine.stats.as_dict()["limit_field"] == 1
