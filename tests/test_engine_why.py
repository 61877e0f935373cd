"""Engine exceptions (host / port / URI scoped, expiring on the packet clock) and the event's
"why" (field, condition, excerpt), over real packets through the real engine."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from scapy.layers.inet import IP, UDP

from gateway.engine import Engine
from gateway.events.eve import to_eve
from gateway.match.explain import MAX_EXCERPT
from gateway.match.rules import Pattern, RuleSet, default_rule_dir, load_rules
from gateway.policy.compiled import CompiledPolicy
from gateway.verdict.judge import MAX_REARM_ROUNDS
from gateway.vocabulary import Action
from tests.test_engine import CLIENT, MARKER, SERVER, Conn, app_rules, rule

HTTP_URI_RULE = """\
id: 7101
title: marker in the URI (http field)
severity: high
action: reset
protocol: tcp
ports: [80, 8080]
app: http
conditions:
  - field: http.uri
    content: "vpatch-test-exploit"
"""

HTTP_COMPARE_RULE = """\
id: 7102
title: too many headers
severity: medium
action: drop
protocol: tcp
ports: [80]
app: http
conditions:
  - field: http.header_count
    gt: 3
"""


@dataclass(frozen=True)
class Exc:
    """An exception record as the store gives it (gateway.policy.exceptions.PolicyException)."""

    id: int
    rule_id: int | None
    host: str
    port: int | None = None
    uri: str | None = None
    expires_at: float | None = None


def policy(*exceptions: Exc) -> CompiledPolicy:
    return CompiledPolicy((), (), (), exceptions)


def request(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: lab\r\n" + extra + b"\r\n"


def fire(engine: Engine, payload: bytes, sport: int, dport: int = 80, now: float = 100.0) -> Action:
    c = Conn(engine, sport=sport, dport=dport, now=now)
    c.handshake()
    return c.data(0, payload).action


def marker_engine(*exceptions: Exc) -> Engine:
    return Engine(
        load_rules([default_rule_dir() / "vpatch-test-split.yaml"]), policy=policy(*exceptions)
    )


# ------------------------------------------------------------------------ exceptions


def test_uri_exception_on_a_raw_rule_passes_that_uri_only() -> None:
    engine = marker_engine(Exc(1, 9000100, SERVER, uri="/VPATCH-TEST-EXPLOIT-7f3a"))
    assert fire(engine, request("/VPATCH-TEST-EXPLOIT-7f3a"), 40001) is Action.ACCEPT
    # the same path with a query: an exception URI without "?" ignores the query
    assert fire(engine, request("/VPATCH-TEST-EXPLOIT-7f3a?a=1"), 40002) is Action.ACCEPT
    assert fire(engine, request("/other?" + MARKER.decode()), 40003) is Action.RESET
    assert engine.stats.events_excepted == 2 and engine.stats.events == 1


def test_raw_rule_excused_for_one_uri_still_fires_on_the_next_keep_alive_request() -> None:
    # A Hyperscan stream reports each pattern once: without the restart after the excused
    # match, the second request on the connection would pass unchecked.
    engine = marker_engine(Exc(1, 9000100, SERVER, uri="/VPATCH-TEST-EXPLOIT-7f3a"))
    c = Conn(engine, sport=40001)
    c.handshake()
    first = request("/VPATCH-TEST-EXPLOIT-7f3a")
    assert c.data(0, first).action is Action.ACCEPT
    second = request("/other?q=" + MARKER.decode())
    cut = len(second) // 2  # the marker split over two segments, after the restart
    assert c.data(len(first), second[:cut]).action is Action.ACCEPT
    d = c.data(len(first) + cut, second[cut:])
    assert d.action is Action.RESET and d.events[0].signature_id == 9000100
    assert engine.stats.events_excepted == 1 and engine.stats.raw_rearms == 1


def test_raw_rule_excused_request_pipelined_with_an_exploit_in_one_segment() -> None:
    engine = marker_engine(Exc(1, 9000100, SERVER, uri="/VPATCH-TEST-EXPLOIT-7f3a"))
    excused = request("/VPATCH-TEST-EXPLOIT-7f3a")
    assert fire(engine, excused * 3, 40001) is Action.ACCEPT  # all three excused
    assert engine.stats.events_excepted == 3
    d_action = fire(engine, excused * 2 + request("/x?" + MARKER.decode()), 40002)
    assert d_action is Action.RESET and engine.stats.events == 1


def test_a_flood_of_excused_matches_in_one_packet_stops_being_excused() -> None:
    engine = marker_engine(Exc(1, 9000100, SERVER, uri="/VPATCH-TEST-EXPLOIT-7f3a"))
    excused = request("/VPATCH-TEST-EXPLOIT-7f3a")
    assert fire(engine, excused * (MAX_REARM_ROUNDS + 4), 40001) is Action.RESET
    assert engine.stats.events_excepted == MAX_REARM_ROUNDS


def test_restart_keeps_what_other_rules_had_matched() -> None:
    # rule 2 needs "alpha" then "omega"; "alpha" comes before the excused match of rule 1,
    # "omega" after it: rule 2 still fires
    both = replace(
        rule(2, b"alpha"), patterns=(Pattern("content", b"alpha"), Pattern("content", b"omega"))
    )
    engine = Engine(RuleSet((rule(1, MARKER), both)), policy=policy(Exc(1, 1, SERVER, uri="/ok")))
    c = Conn(engine, sport=40001)
    c.handshake()
    first = request("/ok", b"X-A: alpha " + MARKER + b"\r\n")
    assert c.data(0, first).action is Action.ACCEPT
    d = c.data(len(first), request("/next", b"X-B: omega\r\n"))
    assert d.action is Action.RESET and [e.signature_id for e in d.events] == [2]


def test_raw_match_ending_at_the_end_of_a_head_is_judged_by_that_request_uri() -> None:
    # the pattern ends with the blank line of the first request; the excused URI is that of
    # the request pipelined right after it, which must not excuse the first one
    end_of_head = rule(9101, b"X-Evil: 1\r\n\r\n")
    engine = Engine(RuleSet((end_of_head,)), policy=policy(Exc(1, 9101, SERVER, uri="/ok")))
    payload = request("/attack", b"X-Evil: 1\r\n") + request("/ok")
    assert fire(engine, payload, 40001) is Action.RESET
    assert fire(engine, request("/ok", b"X-Evil: 1\r\n"), 40002) is Action.ACCEPT


def test_uri_prefix_exception_and_other_rule_or_host_not_covered() -> None:
    engine = marker_engine(Exc(1, 9000100, SERVER, uri="/app/*"), Exc(2, 1234, SERVER))
    assert fire(engine, request("/app/x/" + MARKER.decode()), 40001) is Action.ACCEPT
    assert fire(engine, request("/application/" + MARKER.decode()), 40002) is Action.RESET
    other_host = marker_engine(Exc(1, 9000100, "198.18.0.99", uri="/app/*"))
    assert fire(other_host, request("/app/" + MARKER.decode()), 40003) is Action.RESET


def test_uri_exception_does_not_apply_when_the_uri_is_unknown() -> None:
    # the marker in a request body far from any request line in the same bytes: URI unknown
    engine = marker_engine(Exc(1, 9000100, SERVER, uri="/upload"))
    c = Conn(engine, sport=40001)
    c.handshake()
    head = b"POST /upload HTTP/1.1\r\nHost: lab\r\nContent-Length: 30\r\n\r\n"
    assert c.data(0, head).action is Action.ACCEPT
    assert c.data(len(head), b"xx" + MARKER + b"xxxx").action is Action.RESET


def test_port_exception_and_host_cidr_exception() -> None:
    rules = RuleSet((rule(9100, MARKER, ports=(80, 8080)),))
    engine = Engine(rules, policy=policy(Exc(1, 9100, SERVER, port=8080)))
    assert fire(engine, request("/" + MARKER.decode()), 40001, dport=8080) is Action.ACCEPT
    assert fire(engine, request("/" + MARKER.decode()), 40002, dport=80) is Action.RESET
    every_rule = Engine(rules, policy=policy(Exc(2, None, "198.18.0.0/24")))
    assert fire(every_rule, request("/" + MARKER.decode()), 40003) is Action.ACCEPT


def test_exception_expires_on_the_packet_clock_without_reload() -> None:
    engine = marker_engine(Exc(1, 9000100, SERVER, expires_at=150.0))
    assert fire(engine, request("/" + MARKER.decode()), 40001, now=149.0) is Action.ACCEPT
    assert fire(engine, request("/" + MARKER.decode()), 40002, now=150.5) is Action.RESET


def test_http_field_rule_uses_the_normalised_uri(tmp_path: Path) -> None:
    rules = app_rules(tmp_path, HTTP_URI_RULE)
    engine = Engine(rules, policy=policy(Exc(1, 7101, SERVER, uri="/safe/vpatch-test-exploit")))
    assert fire(engine, request("/SAFE/./x/../%76patch-test-exploit"), 40001) is Action.ACCEPT
    assert fire(engine, request("/unsafe/vpatch-test-exploit"), 40002) is Action.RESET


def test_keep_alive_excepted_request_then_blocked_request_on_another_uri(tmp_path: Path) -> None:
    engine = Engine(
        app_rules(tmp_path, HTTP_URI_RULE),
        policy=policy(Exc(1, 7101, SERVER, uri="/ok/vpatch-test-exploit")),
    )
    c = Conn(engine, sport=40001)
    c.handshake()
    first = request("/ok/vpatch-test-exploit")
    assert c.data(0, first).action is Action.ACCEPT
    assert c.data(len(first), request("/no/vpatch-test-exploit")).action is Action.RESET


# ------------------------------------------------------------------------ why


def test_raw_event_records_pattern_and_excerpt_around_the_match_end() -> None:
    engine = marker_engine()
    c = Conn(engine, sport=40001)
    c.handshake()
    body = request("/" + "a" * 100 + MARKER.decode() + "\x00<script>")
    d = c.data(0, body)
    (event,) = d.events
    assert event.field == "raw"
    assert event.condition == 'content "VPATCH-TEST-EXPLOIT-7f3a"'
    assert MARKER in event.excerpt and len(event.excerpt) <= MAX_EXCERPT
    # 48 bytes up to the match end, 16 after it
    assert event.excerpt == (b"a" * 24 + MARKER + b"\x00<script> HTTP/1")
    assert event.http_url.startswith(b"/aaaa") and event.http_url.endswith(b"<script>")
    eve = to_eve(event)
    assert eve["vpatch"]["field"] == "raw"
    assert "\\x00<script>" in eve["vpatch"]["excerpt"]
    assert eve["http"]["url"].endswith("\\x00<script>")


def test_raw_match_split_over_segments_excerpt_ends_at_the_match() -> None:
    engine = marker_engine()
    c = Conn(engine, sport=40001)
    c.handshake()
    req = request("/?q=" + MARKER.decode())
    cut = req.index(MARKER) + 10
    c.data(0, req[:cut])
    (event,) = c.data(cut, req[cut:]).events
    # only the second segment is at hand: the excerpt is its part up to and after the match end
    assert event.excerpt.startswith(MARKER[10:])
    assert event.http_url == b""  # the request line was in the earlier segment


def test_field_event_records_field_condition_and_value(tmp_path: Path) -> None:
    engine = Engine(app_rules(tmp_path, HTTP_URI_RULE))
    (event,) = [e for e in [fire_events(engine, request("/x/VPATCH-TEST-EXPLOIT"))] for e in e]
    assert event.field == "http.uri"
    assert event.condition == 'content "vpatch-test-exploit"'
    assert event.excerpt == b"/x/vpatch-test-exploit"
    assert event.http_url == b"/x/VPATCH-TEST-EXPLOIT"


def test_compare_condition_shows_the_value(tmp_path: Path) -> None:
    engine = Engine(app_rules(tmp_path, HTTP_COMPARE_RULE))
    (event,) = fire_events(engine, request("/", b"A: 1\r\nB: 2\r\nC: 3\r\n"))
    assert (event.field, event.condition, event.excerpt) == (
        "http.header_count",
        "http.header_count gt 3",
        b"4",
    )


def test_udp_datagram_event_locates_the_match() -> None:
    engine = Engine(RuleSet((rule(9200, b"EVIL", protocol="udp", ports=(53,)),)))
    data = b"x" * 80 + b"EVIL" + b"y" * 40
    pkt = IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53) / data
    (event,) = engine.process_ip(bytes(pkt), 1.0).events
    assert event.field == "raw" and event.excerpt == (b"x" * 44 + b"EVIL" + b"y" * 16)


def fire_events(engine: Engine, payload: bytes) -> tuple[object, ...]:
    c = Conn(engine, sport=41000)
    c.handshake()
    return c.data(0, payload).events  # type: ignore[return-value]
