"""gateway/match/explain.py on its own: the condition text, the excerpt window and the field it
names, for raw matches and for field conditions (rules written as YAML and loaded as the gateway
loads them, and the rule pack's own rules on records its decoders produce), escaping, the
request target of a raw match, and every bound (MAX_EXCERPT, MAX_CONDITION_TEXT, MAX_TARGET,
MAX_REQUEST_SEARCH). The engine's use of it over real packets is in tests/test_engine_why.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode import bundled, registry  # noqa: F401 (bundled registers the decoders)
from gateway.events.eve import escape_bytes
from gateway.match.conditions import All, ContentItem, Match
from gateway.match.explain import (
    EXCERPT_AFTER,
    EXCERPT_BEFORE,
    MAX_CONDITION_TEXT,
    MAX_EXCERPT,
    MAX_REQUEST_SEARCH,
    MAX_TARGET,
    Why,
    explain_fields,
    explain_raw,
    request_target,
)
from gateway.match.rules import Pattern, Rule, default_rule_dir, load_rules
from gateway.vocabulary import PROTO_TCP, Action, Direction

HEAD = """\
id: 7300
title: explain test
severity: high
action: drop
protocol: tcp
ports: [80]
app: http
conditions:
"""


def field_rule(tmp_path: Path, conditions: str, head: str = HEAD) -> Rule:
    """One rule with these `conditions:` lines (indented two spaces), loaded as the gateway does."""
    path = tmp_path / "explain.yaml"
    path.write_text(head + conditions)
    (rule,) = load_rules([path]).rules
    return rule


def raw_rule(*patterns: Pattern) -> Rule:
    return Rule(
        id=7400,
        title="raw explain test",
        cves=(),
        severity="high",
        action=Action.DROP,
        protocol="tcp",
        ports=(80,),
        directions=frozenset({Direction.TO_SERVER}),
        patterns=patterns,
        references=(),
        path=Path("explain.yaml"),
    )


def pack_rule(rule_id: int) -> Rule:
    (rule,) = [r for r in load_rules([default_rule_dir()]).rules if r.id == rule_id]
    return rule


# ------------------------------------------------------------------------ escape_bytes


def test_escape_keeps_printable_ascii_doubles_the_backslash_and_hexes_the_rest() -> None:
    assert escape_bytes(b"GET /a b~") == "GET /a b~"
    assert escape_bytes(b"a\\b") == "a\\\\b"
    assert escape_bytes(b"\x00\x1f\x7f\x80\xff") == "\\x00\\x1f\\x7f\\x80\\xff"
    assert escape_bytes(b"\r\n\t") == "\\x0d\\x0a\\x09"
    assert escape_bytes(b"") == ""


@pytest.mark.parametrize("value", [b"\\", b"\x00\xff", "é".encode(), b'"<>&', b"\\x41"])
def test_eve_excerpt_is_an_ascii_escape(value: bytes) -> None:
    text = escape_bytes(value)
    assert text.isascii() and all(0x20 <= ord(ch) < 0x7F for ch in text)
    assert text.encode().decode("unicode_escape").encode("latin-1") == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_escape_is_printable_and_reversible_for_any_bytes(value: bytes) -> None:
    text = escape_bytes(value)
    assert all(0x20 <= ord(ch) < 0x7F for ch in text)
    assert text.encode().decode("unicode_escape").encode("latin-1") == value


# ------------------------------------------------------------------------ explain_raw


def test_raw_content_condition_in_suricata_syntax() -> None:
    rule = raw_rule(Pattern("content", b"EVIL"), Pattern("content", b'a|b"c;d\\e\x00\x01f', True))
    assert explain_raw(rule, 0, b"xEVIL", 5) == Why("raw", 'content "EVIL"', b"xEVIL")
    why = explain_raw(rule, 1, b"", None)
    # the bytes that end or break a Suricata content string are hex runs
    assert why.condition == 'content "a|7C|b|22|c|3B|d|5C|e|00 01|f" nocase'


def test_raw_regex_condition_is_escaped() -> None:
    rule = raw_rule(Pattern("regex", b"^GET \\x2f\xff", nocase=True))
    assert explain_raw(rule, 0, b"", None).condition == "regex /^GET \\\\x2f\\xff/ nocase"


@pytest.mark.parametrize("index", [None, 2, -1, 99])
def test_raw_without_a_valid_pattern_index_counts_the_patterns(index: int | None) -> None:
    rule = raw_rule(Pattern("content", b"a"), Pattern("content", b"b"))
    assert explain_raw(rule, index, b"ab", 2).condition == "2 raw patterns"
    assert explain_raw(raw_rule(), index, b"ab", 2).condition == ""


def test_raw_condition_text_is_cut_at_max_condition_text() -> None:
    rule = raw_rule(Pattern("content", b"A" * 500), Pattern("regex", b"B" * 500))
    for index in (0, 1):
        text = explain_raw(rule, index, b"", None).condition
        assert len(text) == MAX_CONDITION_TEXT and text.endswith("...")
    short = raw_rule(Pattern("content", b"A" * (MAX_CONDITION_TEXT - len('content ""'))))
    text = explain_raw(short, 0, b"", None).condition
    assert len(text) == MAX_CONDITION_TEXT and not text.endswith("...")


def test_raw_excerpt_window_around_the_match_end() -> None:
    data = bytes(range(200))
    rule = raw_rule(Pattern("content", b"x"))
    # in the middle: EXCERPT_BEFORE bytes up to the end, EXCERPT_AFTER after it
    assert (
        explain_raw(rule, 0, data, 100).excerpt == data[100 - EXCERPT_BEFORE : 100 + EXCERPT_AFTER]
    )
    # near the start: fewer bytes before, still at most MAX_EXCERPT
    assert explain_raw(rule, 0, data, 10).excerpt == data[: 10 + EXCERPT_AFTER]
    # at the end of the data: nothing after it
    assert explain_raw(rule, 0, data, 200).excerpt == data[200 - EXCERPT_BEFORE :]
    assert explain_raw(rule, 0, b"abc", 3).excerpt == b"abc"


@pytest.mark.parametrize(("end", "expected"), [(None, "tail"), (0, b""), (-5, b""), (201, b"")])
def test_raw_excerpt_with_an_unknown_or_impossible_end(end: int | None, expected: object) -> None:
    data = bytes(range(200))
    excerpt = explain_raw(raw_rule(Pattern("content", b"x")), 0, data, end).excerpt
    assert excerpt == (data[-MAX_EXCERPT:] if expected == "tail" else expected)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400),
    st.one_of(st.none(), st.integers(-1000, 1000)),
    st.one_of(st.none(), st.integers(-3, 3)),
)
def test_raw_never_raises_and_keeps_its_bounds(
    data: bytes, end: int | None, index: int | None
) -> None:
    rule = raw_rule(Pattern("content", b"\x00" * 300), Pattern("regex", b"(unclosed"))
    why = explain_raw(rule, index, data, end)
    assert why.field == "raw"
    assert len(why.excerpt) <= MAX_EXCERPT and len(why.condition) <= MAX_CONDITION_TEXT
    assert why.excerpt in data
    if end is not None and 0 < end <= len(data):
        assert data[end - 1 : end] in why.excerpt  # the last byte of the match is shown


# ------------------------------------------------------------------------ explain_fields


def test_content_leaf_names_the_field_and_shows_the_window_around_the_match(
    tmp_path: Path,
) -> None:
    rule = field_rule(tmp_path, '  - field: http.uri\n    content: "EVIL"\n')
    value = b"x" * 100 + b"EVIL" + b"y" * 100
    why = explain_fields(rule, {"http.uri": value, "http.method": b"GET"})
    assert why == Why("http.uri", 'content "EVIL"', b"x" * 44 + b"EVIL" + b"y" * 16)
    assert len(why.excerpt) == MAX_EXCERPT


def test_a_match_in_a_variant_shows_the_variant(tmp_path: Path) -> None:
    rule = field_rule(tmp_path, '  - field: http.uri.raw\n    content: "%c0%af"\n')
    fields: dict[str, int | bytes] = {
        "http.uri.raw": b"/%%63%30%%61%66",
        registry.variant_key("http.uri.raw", 1): b"/%c0%af",
    }
    assert explain_fields(rule, fields) == Why("http.uri.raw", 'content "%c0%af"', b"/%c0%af")


def test_content_with_offset_uses_the_occurrence_the_rule_matched(tmp_path: Path) -> None:
    rule = field_rule(tmp_path, '  - field: http.uri\n    content: "AB"\n    offset: 10\n')
    value = b"AB" + b"-" * 20 + b"AB" + b"z" * 30
    why = explain_fields(rule, {"http.uri": value})
    # the "AB" at 0 lies before the offset: the window ends 16 bytes after the one at 22
    assert why.excerpt == value[: 24 + EXCERPT_AFTER] and why.excerpt.endswith(b"AB" + b"z" * 16)


def test_content_sequence_uses_the_first_item_that_starts_a_full_match(tmp_path: Path) -> None:
    conditions = (
        "  - field: http.uri\n"
        "    match:\n"
        '      - content: "key="\n'
        '      - content: "../"\n'
        "        distance: 0\n"
        "        within: 6\n"
    )
    rule = field_rule(tmp_path, conditions)
    value = b"key=" + b"a" * 40 + b"&key=" + b"../" + b"q" * 60
    why = explain_fields(rule, {"http.uri": value})
    first_full = value.index(b"&key=") + 1  # the first "key=" has no "../" within 6 bytes
    assert why.excerpt == value[first_full + 4 - EXCERPT_BEFORE : first_full + 4 + EXCERPT_AFTER]
    assert why.condition == 'content "key=" then content "../"'


def test_nocase_content_is_found_whatever_the_case(tmp_path: Path) -> None:
    rule = field_rule(tmp_path, '  - field: http.uri\n    content: "evil"\n    nocase: true\n')
    why = explain_fields(rule, {"http.uri": b"/" + b"p" * 60 + b"EvIl" + b"s" * 30})
    assert why.condition == 'content "evil" nocase'
    assert why.excerpt.endswith(b"EvIl" + b"s" * EXCERPT_AFTER)


def test_regex_leaf_excerpt_ends_after_the_python_match(tmp_path: Path) -> None:
    rule = field_rule(tmp_path, "  - field: http.header.user-agent\n    regex: '\\(\\)\\s*\\{'\n")
    value = b"M" * 70 + b"() {" + b" :;}; /bin/id" * 3
    why = explain_fields(rule, {"http.header.user-agent": value})
    end = value.index(b"{") + 1
    assert why.field == "http.header.user-agent"
    assert why.condition == "regex /\\\\(\\\\)\\\\s*\\\\{/"
    assert why.excerpt == value[end - EXCERPT_BEFORE : end + EXCERPT_AFTER]


def test_regex_python_cannot_compile_still_explains_with_the_first_bytes() -> None:
    # Hyperscan said it matched; Python re does not speak this expression: the leaf counts as
    # holding and the excerpt is the start of the value
    leaf = Match("http.uri", 0, b"(?<bad", False, regex=b"(?<bad")
    rule = replace(raw_rule(), app="http", conditions=All((leaf,)))
    value = bytes(range(256)) * 2
    assert explain_fields(rule, {"http.uri": value}) == Why(
        "http.uri", "regex /(?<bad/", value[:MAX_EXCERPT]
    )


def test_pattern_leaves_are_preferred_to_comparisons_that_also_hold(tmp_path: Path) -> None:
    conditions = (
        "  - field: http.header_count\n    gt: 1\n"
        '  - field: http.method\n    equals: "POST"\n'
        '  - field: http.uri\n    content: "cmd"\n'
    )
    rule = field_rule(tmp_path, conditions)
    fields = {"http.header_count": 5, "http.method": b"POST", "http.uri": b"/cmd.exe"}
    assert explain_fields(rule, fields) == Why("http.uri", 'content "cmd"', b"/cmd.exe")


def test_the_first_comparison_that_holds_is_named_with_its_value(tmp_path: Path) -> None:
    conditions = (
        '  - field: http.method\n    equals: "PUT"\n  - field: http.header_count\n    gt: 3\n'
    )
    rule = field_rule(tmp_path, conditions)
    fields = {"http.method": b"POST", "http.header_count": 12}
    # the method leaf does not hold on this record: the header count explains it, in decimal
    assert explain_fields(rule, fields) == Why("http.header_count", "http.header_count gt 3", b"12")


def test_negated_and_raw_leaves_are_never_named(tmp_path: Path) -> None:
    conditions = (
        '  - field: raw\n    content: "GET"\n'
        '  - not:\n      field: http.uri\n      content: "/safe"\n'
        '  - field: http.method\n    equals: "GET"\n'
    )
    rule = field_rule(tmp_path, conditions)
    why = explain_fields(rule, {"http.uri": b"/safe/x", "http.method": b"GET"})
    assert why == Why("http.method", 'http.method equals "GET"', b"GET")


def test_no_leaf_holds_names_the_first_leaf(tmp_path: Path) -> None:
    conditions = (
        '  - field: http.uri\n    content: "needle"\n  - field: http.body_length\n    gt: 100\n'
    )
    rule = field_rule(tmp_path, conditions)
    value = b"h" * 100
    why = explain_fields(rule, {"http.uri": value, "http.body_length": 3})
    assert why == Why("http.uri", 'content "needle"', value[:MAX_EXCERPT])
    # the field is not in the record at all: no excerpt
    assert explain_fields(rule, {}) == Why("http.uri", 'content "needle"', b"")


def test_a_rule_without_field_conditions_names_its_app() -> None:
    assert explain_fields(replace(raw_rule(), app="http"), {"http.uri": b"/"}) == Why(
        "http", "", b""
    )
    raw_leaf = Match("raw", 0, b"x", False, items=(ContentItem(b"x"),))
    only_raw = replace(raw_rule(), app="http", conditions=All((raw_leaf,)))
    assert explain_fields(only_raw, {"raw": b"x"}) == Why("http", "", b"")


@pytest.mark.parametrize(
    ("condition", "text"),
    [
        (
            "field: http.uri\n    length: true\n    plus: 2\n    ge: 4096",
            "length(http.uri) + 2 ge 4096",
        ),
        (
            'field: http.version\n    ne: "HTTP/0.9"\n    nocase: true',
            'http.version ne "http/0.9" nocase',
        ),
        ('field: http.method\n    equals: "a|5c 00 22|b"', r'http.method equals "a\\\x00"b"'),
        ('field: http.method\n    in: ["HEAD", "GET"]', "http.method in [GET, HEAD]"),
        (
            "field: http.header_count\n    in: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
            "http.header_count in [1, 10, 2, 3, 4, 5, 6, 7, ...]",
        ),
        (
            "field: http.body_length\n    plus: 19\n    gt: {field: http.header_count, plus: 1}",
            "http.body_length + 19 gt http.header_count + 1",
        ),
        (
            "field: http.body_length\n    lt: {field: http.header_count}",
            "http.body_length lt http.header_count",
        ),
    ],
)
def test_comparison_texts(tmp_path: Path, condition: str, text: str) -> None:
    rule = field_rule(tmp_path, "  - " + condition + "\n")
    assert explain_fields(rule, {}).condition == text


def test_rule_pack_heartbleed_on_the_tls_records_of_its_own_attack_sample() -> None:
    rule = pack_rule(9010070)
    (attack,) = [s for s in rule.samples if s.kind == "attack"]
    tls = registry.get("tls")
    assert tls is not None
    records = tls.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(attack.to_server)
    (heartbeat,) = [r for r in records if "tls.heartbeat.payload_length" in r.fields]
    why = explain_fields(rule, heartbeat.fields)
    assert why == Why("tls.heartbeat.encrypted", "tls.heartbeat.encrypted equals 0", b"0")


def test_rule_pack_ms08_067_on_the_dcerpc_record_of_its_own_attack_sample() -> None:
    rule = pack_rule(9001010)
    (attack,) = [s for s in rule.samples if s.kind == "attack"]
    smb = registry.get("smb")
    assert smb is not None
    records = smb.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(attack.to_server)
    (call,) = [r for r in records if r.app == "dcerpc" and r.fields.get("dcerpc.opnum") == 0x1F]
    why = explain_fields(rule, call.fields)
    stub = call.fields["dcerpc.stub"]
    assert isinstance(stub, bytes)
    climb = "\\..\\..".encode("utf-16-le")
    end = stub.index(climb) + len(climb)
    # the stub regex (a pattern leaf) is named, not the interface/opnum comparisons before it
    assert why.field == "dcerpc.stub" and why.condition.startswith("regex /\\\\x5c\\\\x00")
    assert why.excerpt == stub[max(0, end - EXCERPT_BEFORE) : end + EXCERPT_AFTER]
    assert climb in why.excerpt


def test_fields_never_raise_and_keep_their_bounds(tmp_path: Path) -> None:
    conditions = (
        "  - any:\n"
        '      - field: http.uri\n        content: "|00|"\n        offset: 3\n        depth: 40\n'
        "      - field: http.uri\n        regex: '[\\x80-\\xff]{2}'\n"
        "      - field: http.method\n        length: true\n        gt: 5\n"
        "      - field: http.header_count\n        gt: {field: http.body_length}\n"
        '  - not:\n      field: http.method\n      in: ["OPTIONS"]\n'
    )
    rule = field_rule(tmp_path, conditions)
    names = ["http.uri", "http.method", "http.header_count", "http.body_length"]
    values = st.one_of(st.binary(max_size=300), st.integers(-(2**40), 2**40))

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(names), values))
    def run(fields: dict[str, int | bytes]) -> None:
        why = explain_fields(rule, fields)
        assert why.field in names[:3]
        assert len(why.excerpt) <= MAX_EXCERPT and len(why.condition) <= MAX_CONDITION_TEXT
        value = fields.get(why.field)
        if isinstance(value, bytes):
            assert why.excerpt in value
        elif isinstance(value, int):
            assert why.excerpt == str(value).encode()
        else:
            assert why.excerpt == b""

    run()


# ------------------------------------------------------------------------ request_target


def req(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: lab\r\n\r\n"


def test_target_of_the_last_request_line_before_the_end() -> None:
    data = req(b"/first") + b"POST /second?a=1 HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"
    assert request_target(data, len(data)) == b"/second?a=1"
    assert request_target(data, data.index(b"hello") + 2) == b"/second?a=1"
    # a match that ends before the second request line belongs to the first request
    assert request_target(data, data.index(b"POST")) == b"/first"
    assert request_target(data, 3) == b"/first"  # the line starts before the end


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world\r\n",
        b"get /lower HTTP/1.1\r\n",  # methods are upper case
        b"xGET /x HTTP/1.1\r\n",  # not at a line start
        b"GET /x FTP/1.1\r\n",
        b"GE /x HTTP/1.1\r\n",  # methods have three or more characters
        b"GET  HTTP/1.1\r\n",
    ],
)
def test_no_request_line_no_target(data: bytes) -> None:
    assert request_target(data, len(data)) is None


def test_target_end_outside_the_data_is_clamped() -> None:
    data = req(b"/a")
    assert request_target(data, 10**6) == b"/a"
    assert request_target(data, -4) is None and request_target(data, 0) is None


def test_target_is_cut_at_max_target() -> None:
    long = b"/" + b"x" * (3 * MAX_TARGET)
    assert request_target(req(long), 10) == long[:MAX_TARGET]


def test_request_line_further_back_than_max_request_search_is_not_seen() -> None:
    head = b"POST /upload HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"
    data = head + b"b" * MAX_REQUEST_SEARCH
    assert request_target(data, len(head) + MAX_REQUEST_SEARCH - 60) == b"/upload"
    assert request_target(data, len(data)) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(-10, 400))
def test_target_never_raises(data: bytes, end: int) -> None:
    found = request_target(b"GET /x HTTP/1.1\n" + data, end)
    assert found is None or (0 < len(found) <= MAX_TARGET and b" " not in found)
