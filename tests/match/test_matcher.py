"""Tests for gateway/match/matcher.py: Hyperscan stream mode across chunks, nocase, regex,
AND of patterns, port and direction filtering, UDP block mode, stream lifecycle."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.match.expressions import literal_regex
from gateway.match.matcher import Matcher
from gateway.match.rules import DIRECTIONS, Pattern, Rule, RuleSet
from gateway.vocabulary import Action, Direction


def rule(
    rule_id: int,
    *patterns: Pattern,
    ports: tuple[int, ...] = (80,),
    protocol: str = "tcp",
    direction: str = "to_server",
) -> Rule:
    return Rule(
        id=rule_id,
        title=f"rule {rule_id}",
        cves=("CVE-0000-0001",),
        severity="high",
        action=Action.ALERT,
        protocol=protocol,
        ports=ports,
        directions=DIRECTIONS[direction],
        patterns=patterns,
        references=(),
        path=Path("test.yaml"),
    )


def content(data: bytes, nocase: bool = False) -> Pattern:
    return Pattern("content", data, nocase)


def regex(expr: bytes, nocase: bool = False) -> Pattern:
    return Pattern("regex", expr, nocase)


def scan_chunks(
    m: Matcher, chunks: list[bytes], port: int = 80, d: int = Direction.TO_SERVER
) -> list[set[int]]:
    """Scan chunks through one stream; the set of rule ids fired after each chunk."""
    group = m.group(6, d, port)
    assert group is not None
    state = m.open_stream(group)
    try:
        return [{r.id for r in m.scan_stream(state, c)} for c in chunks]
    finally:
        m.close_stream(state)


def test_literal_regex_escapes_everything_special() -> None:
    assert literal_regex(b"a.b*|\xff\x00_Z9") == b"a\\x2eb\\x2a\\x7c\\xff\\x00_Z9"


def test_pattern_split_over_three_chunks_fires_on_the_last() -> None:
    m = Matcher(RuleSet([rule(1, content(b"VPATCH-TEST-EXPLOIT-7f3a"))]))
    fired = scan_chunks(m, [b"GET /VPATCH-TE", b"ST-EXPL", b"OIT-7f3a HTTP/1.1\r\n", b"more"])
    assert fired == [set(), set(), {1}, set()]


def test_fires_once_per_stream_and_again_in_a_new_stream() -> None:
    m = Matcher(RuleSet([rule(1, content(b"evil"))]))
    assert scan_chunks(m, [b"evil", b"evil evil"]) == [{1}, set()]
    assert scan_chunks(m, [b"xx evil"]) == [{1}]


def test_one_byte_at_a_time() -> None:
    m = Matcher(RuleSet([rule(1, content(b"|needle|"))]))
    data = b"hay|needle|hay"
    fired = scan_chunks(m, [bytes((b,)) for b in data])
    assert [i for i, f in enumerate(fired) if f] == [data.index(b"|needle|") + 7]


def test_nocase_content() -> None:
    m = Matcher(RuleSet([rule(1, content(b"select", nocase=True)), rule(2, content(b"union"))]))
    assert scan_chunks(m, [b"SeLeCt * ", b"UNION"]) == [{1}, set()]
    assert scan_chunks(m, [b"union"]) == [{2}]


def test_regex_dotall_across_chunks_and_nocase() -> None:
    m = Matcher(
        RuleSet(
            [
                rule(1, regex(rb"\xffSMB\x32.{3}\x0e\x00")),
                rule(2, regex(rb"\(\)\s*\{\s*:;\s*\}", nocase=True)),
            ]
        )
    )
    assert scan_chunks(m, [b"\x00\xffSMB2\n", b"\r\n\x0e\x00"]) == [set(), {1}]
    assert scan_chunks(m, [b"User-Agent: () {", b" :; }; /bin/id"]) == [set(), {2}]


def test_and_of_patterns_in_any_order_same_stream_only() -> None:
    m = Matcher(RuleSet([rule(1, content(b"alpha"), content(b"beta"), regex(rb"gam+a"))]))
    assert scan_chunks(m, [b"beta", b"gammma", b"..al", b"pha"]) == [set(), set(), set(), {1}]
    # all three in one chunk
    assert scan_chunks(m, [b"alpha beta gamma"]) == [{1}]
    # split between two streams: never
    assert scan_chunks(m, [b"alpha beta"]) == [set()]
    assert scan_chunks(m, [b"gamma"]) == [set()]


def test_port_filtering_and_grouping() -> None:
    m = Matcher(
        RuleSet(
            [
                rule(1, content(b"one"), ports=(4000, 4001)),
                rule(2, content(b"two"), ports=(4001,)),
                rule(3, content(b"three"), ports=(53,), protocol="udp"),
            ]
        )
    )
    assert m.covers(6, 4000) and m.covers(6, 4001) and m.covers(17, 53)
    assert not m.covers(6, 443) and not m.covers(6, 53) and not m.covers(17, 4000)
    assert m.group(6, Direction.TO_SERVER, 443) is None
    assert scan_chunks(m, [b"one two"], port=4000) == [{1}]
    assert scan_chunks(m, [b"one two"], port=4001) == [{1, 2}]
    # 4000 and 4001 cover different rule sets: two TCP databases plus one UDP database
    assert m.stats.databases == 3


def test_raw_rules_follow_the_protocol_of_their_port() -> None:
    """A raw rule listing a well-known HTTP port (8080) follows HTTP: it joins the group of
    every port where HTTP is expected (80), and is what a flow switches to once identified as
    HTTP on a port no rule lists (gateway/match/follow.py)."""
    m = Matcher(
        RuleSet(
            [
                rule(1, content(b"one"), ports=(80, 8080)),
                rule(2, content(b"two"), ports=(8080,)),
                rule(3, content(b"four"), ports=(4000,)),
            ]
        )
    )
    assert scan_chunks(m, [b"one two four"], port=80) == [{1, 2}]
    base = m.unlisted(Direction.TO_SERVER)
    assert base.database is None and base.identify[Direction.TO_SERVER][0] == "http"
    http = base.follow[Direction.TO_SERVER]["http"]
    assert {m.ruleset.rules[i].id for i in http.rule_indices} == {1, 2}
    # port 4000 expects nothing: HTTP found there brings the HTTP followers in
    port_4000 = m.group(6, Direction.TO_SERVER, 4000)
    assert port_4000 is not None
    moved = port_4000.follow[Direction.TO_SERVER]["http"]
    assert {m.ruleset.rules[i].id for i in moved.rule_indices} == {1, 2, 3}
    # follow=False (engine.identify_any_port off): a rule applies on its own ports only
    listed = Matcher(m.ruleset, follow=False)
    assert scan_chunks(listed, [b"one two four"], port=80) == [{1}]
    assert listed.unlisted(Direction.TO_SERVER).follow[Direction.TO_SERVER] == {}


def test_same_port_set_shares_one_database() -> None:
    m = Matcher(RuleSet([rule(1, content(b"x"), ports=(139, 445))]))
    assert m.group(6, Direction.TO_SERVER, 139) is m.group(6, Direction.TO_SERVER, 445)
    assert m.stats.databases == 1


def test_direction_filtering() -> None:
    m = Matcher(
        RuleSet(
            [
                rule(1, content(b"request")),
                rule(2, content(b"response"), direction="to_client"),
                rule(3, content(b"either"), direction="both"),
            ]
        )
    )
    assert scan_chunks(m, [b"request response either"], d=Direction.TO_SERVER) == [{1, 3}]
    assert scan_chunks(m, [b"request response either"], d=Direction.TO_CLIENT) == [{2, 3}]


def test_udp_block_mode_per_datagram() -> None:
    m = Matcher(RuleSet([rule(1, content(b"tkey"), content(b"sig"), protocol="udp", ports=(53,))]))
    group = m.group(17, Direction.TO_SERVER, 53)
    assert group is not None and not group.stream_mode
    assert {r.id for r in m.scan_block(group, b"..tkey..sig..")} == {1}
    assert m.scan_block(group, b"..tkey..") == ()
    assert m.scan_block(group, b"..sig..") == ()  # no memory between datagrams
    with pytest.raises(ValueError):
        m.open_stream(group)


def test_close_stream_is_idempotent_and_counted() -> None:
    m = Matcher(RuleSet([rule(1, content(b"x"))]))
    group = m.group(6, Direction.TO_SERVER, 80)
    assert group is not None
    states = [m.open_stream(group) for _ in range(5)]
    assert m.streams_open == 5
    for s in states:
        m.close_stream(s)
        m.close_stream(s)
    assert m.streams_open == 0
    assert m.scan_stream(states[0], b"x") == ()  # a closed stream is never scanned


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.binary(max_size=64),
    suffix=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_any_segmentation_fires_exactly_once_when_the_marker_completes(
    prefix: bytes, suffix: bytes, cuts: list[int]
) -> None:
    marker = b"VPATCH-TEST-EXPLOIT-7f3a"
    data = prefix + marker + suffix
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    fired = scan_chunks(_SPLIT_MATCHER, chunks)
    hits = [i for i, f in enumerate(fired) if f]
    assert len(hits) == 1
    end = data.index(marker) + len(marker)
    assert points[hits[0]] < end <= points[hits[0] + 1]


_SPLIT_MATCHER = Matcher(RuleSet([rule(1, content(b"VPATCH-TEST-EXPLOIT-7f3a"))]))
