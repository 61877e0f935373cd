"""Tests for gateway/match/conditions.py and the rule language in gateway/match/rules.py:
every operator and combinator through a real Matcher (Hyperscan block-mode field databases),
validation errors with file:line, and a hypothesis check that the compiled Hyperscan form of
content modifiers equals their direct definition (reference_match)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import hyperscan
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode import registry
from gateway.errors import RuleError
from gateway.match.conditions import ContentItem, content_regex, reference_match
from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, load_rules
from gateway.vocabulary import Mode

HEAD = """\
id: {id}
title: test {id}
severity: high
action: reset
protocol: tcp
ports: [80]
app: {app}
"""


def rule_file(tmp_path: Path, conditions: str, app: str = "http", rid: int = 1) -> Path:
    path = tmp_path / f"r{rid}.yaml"
    path.write_text(
        HEAD.format(id=rid, app=app) + "conditions:\n" + textwrap.indent(conditions, "  ")
    )
    return path


def one_rule(tmp_path: Path, conditions: str, app: str = "http") -> tuple[Matcher, Rule]:
    ruleset = load_rules([rule_file(tmp_path, conditions, app)])
    return Matcher(ruleset), ruleset.rules[0]


def fires(
    tmp_path: Path, conditions: str, fields: dict[str, int | bytes], app: str = "http"
) -> bool:
    matcher, rule = one_rule(tmp_path, conditions, app)
    group = matcher.group(6, 0, 80)
    assert group is not None
    return rule in matcher.evaluate(group.apps[app], fields)


REQ = {
    "http.method": b"POST",
    "http.uri": b"/cgi-bin/test.cgi",
    "http.uri.raw": b"/cgi-bin/%74est.cgi",
    "http.header.user-agent": b"() { :; }; /bin/id",
    "http.header_count": 3,
}

# (conditions YAML, fires on REQ?)
CASES = [
    ("- field: http.method\n  equals: POST\n", True),
    ("- field: http.method\n  equals: post\n", False),
    ("- field: http.method\n  equals: post\n  nocase: true\n", True),
    ("- field: http.method\n  ne: GET\n", True),
    ("- field: http.method\n  in: [GET, HEAD]\n", False),
    ("- field: http.method\n  in: [GET, POST]\n", True),
    ("- field: http.header_count\n  gt: 2\n", True),
    ("- field: http.header_count\n  gt: 3\n", False),
    ("- field: http.header_count\n  ge: 3\n", True),
    ("- field: http.header_count\n  lt: 3\n", False),
    ("- field: http.header_count\n  le: 3\n", True),
    ("- field: http.header_count\n  plus: 1\n  equals: 4\n", True),
    ("- field: http.uri\n  length: true\n  gt: 16\n", True),
    ("- field: http.uri\n  length: true\n  gt: 17\n", False),
    ("- field: http.uri\n  content: /cgi-bin/\n", True),
    ("- field: http.uri\n  content: /CGI-BIN/\n", False),
    ("- field: http.uri\n  content: /CGI-BIN/\n  nocase: true\n", True),
    ("- field: http.uri\n  content: cgi\n  offset: 1\n  depth: 3\n", True),
    ("- field: http.uri\n  content: cgi\n  offset: 2\n", True),  # the .cgi at 14
    ("- field: http.uri\n  content: cgi\n  offset: 2\n  depth: 10\n", False),
    ("- field: http.uri\n  content: test\n  depth: 12\n", False),
    ("- field: http.uri.raw\n  content: '%74'\n", True),
    (
        "- field: http.uri\n  match:\n    - content: /cgi-bin/\n"
        "    - content: .cgi\n      distance: 4\n      within: 8\n",
        True,
    ),
    (
        "- field: http.uri\n  match:\n    - content: /cgi-bin/\n"
        "    - content: .cgi\n      distance: 5\n",
        False,
    ),
    (
        "- field: http.uri\n  match:\n    - content: /cgi-bin/\n"
        "    - content: .cgi\n      within: 7\n",
        False,
    ),
    ("- field: http.header.user-agent\n  regex: '^\\(\\)\\s*\\{'\n", True),
    ("- field: http.header.user-agent\n  regex: '^\\(\\)\\s*\\['\n", False),
    ("- field: http.header.referer\n  content: x\n", False),  # absent field
    ("not:\n  field: http.header.referer\n  content: x\n", True),
    (
        "any:\n  - field: http.method\n    equals: GET\n  - field: http.uri\n    content: test\n",
        True,
    ),
    (
        "any:\n  - field: http.method\n    equals: GET\n  - field: http.uri\n    content: nope\n",
        False,
    ),
    (
        "all:\n  - field: http.method\n    equals: POST\n"
        "  - not:\n      field: http.uri\n      content: test\n",
        False,
    ),
    ("- field: http.header_count\n  equals: {field: http.header_count}\n", True),
    ("- field: http.header_count\n  plus: 1\n  gt: {field: http.header_count}\n", True),
    ("- field: http.header_count\n  gt: {field: http.header_count, plus: 1}\n", False),
]


@pytest.mark.parametrize(("conditions", "expected"), CASES)
def test_every_operator_on_a_request(tmp_path: Path, conditions: str, expected: bool) -> None:
    assert fires(tmp_path, conditions, REQ) is expected


def test_heartbleed_form_compares_two_fields(tmp_path: Path) -> None:
    cond = (
        "- field: tls.heartbeat.encrypted\n  equals: 0\n"
        "- field: tls.heartbeat.payload_length\n  plus: 19\n  gt: {field: tls.record_length}\n"
    )
    base = {"tls.heartbeat.encrypted": 0, "tls.record_length": 3}
    assert fires(tmp_path, cond, {**base, "tls.heartbeat.payload_length": 0x4000}, "tls")
    assert not fires(
        tmp_path, cond, {**base, "tls.record_length": 40, "tls.heartbeat.payload_length": 21}, "tls"
    )
    assert fires(
        tmp_path, cond, {**base, "tls.record_length": 40, "tls.heartbeat.payload_length": 22}, "tls"
    )


def test_raw_conditions_become_stream_patterns(tmp_path: Path) -> None:
    path = rule_file(
        tmp_path,
        "- field: raw\n  content: '|FF|SMB'\n  offset: 4\n  depth: 4\n"
        "- field: smb.command\n  equals: 0x32\n",
        app="smb",
    )
    path.write_text(path.read_text().replace("ports: [80]", "ports: [445]"))
    rule = load_rules([path]).rules[0]
    assert len(rule.patterns) == 1 and rule.patterns[0].kind == "regex"
    assert rule.conditions is not None
    assert rule.default_mode is Mode.PREVENT and rule.app == "smb"


def test_legacy_patterns_still_load() -> None:
    from gateway.match.rules import default_rule_dir

    rules = load_rules([default_rule_dir()])
    assert all(r.app == "raw" or r.conditions is not None for r in rules)


BAD = [
    ("- field: http.nope\n  equals: 1\n", 9, "unknown field 'http.nope'"),
    ("- field: smb.command\n  equals: 1\n", 9, "unknown field 'smb.command'"),
    ("- field: http.method\n  gt: 3\n", 10, "gt on the string field"),
    ("- field: http.header_count\n  equals: x\n", 10, "is a number"),
    ("- field: http.header_count\n  content: x\n", 9, "is a number: use a comparison"),
    ("- field: http.uri\n  content: ab\n  depth: 1\n", 11, "depth 1 is shorter than the content"),
    (
        "- field: http.uri\n  content: ab\n  distance: 1\n",
        11,
        "distance/within on a single content",
    ),
    (
        "- field: http.uri\n  match:\n    - content: a\n    - content: b\n      offset: 3\n",
        13,
        "offset/depth only on the first item",
    ),
    (
        "- field: http.uri\n  match:\n    - content: a\n    - content: bc\n      within: 1\n",
        13,
        "within 1 is shorter",
    ),
    ("- field: http.uri\n  regex: 'a('\n", 10, "rejected by Hyperscan"),
    ("- field: http.uri\n  content: '|4|'\n", 10, "odd number of hex digits"),
    ("- field: http.uri\n  content: a\n  equals: b\n", 9, "exactly one of"),
    ("- field: http.uri\n  bogus: 1\n  content: a\n", 10, "unknown condition key 'bogus'"),
    ("any:\n  - field: raw\n    content: a\n", 10, "only be members of the top-level `all`"),
    ("not:\n  field: raw\n  content: a\n", 10, "only be members of the top-level `all`"),
    ("- all: []\n", 9, "`all` must be a non-empty list"),
    ("- field: http.header_count\n  gt: {field: http.uri}\n", 10, "are of different kinds"),
    ("- field: http.method\n  in: []\n", 10, "in must be a non-empty list"),
    ("- field: http.uri\n  content: x\n  offset: -1\n", 11, "offset '-1' must be an integer"),
]


@pytest.mark.parametrize(("conditions", "line", "reason"), BAD)
def test_validation_names_file_line_and_reason(
    tmp_path: Path, conditions: str, line: int, reason: str
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        HEAD.format(id=2, app="http") + "conditions:\n  - field: http.method\n    equals: GET\n"
    )
    path = rule_file(tmp_path, conditions)
    with pytest.raises(RuleError) as info:
        load_rules([good, path])
    msg = str(info.value)
    assert "nothing loaded" in msg
    assert f"{path}:{line}: " in msg and reason in msg, msg


def test_rule_level_keys_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(
        HEAD.format(id=3, app="gopher")
        + "default_mode: maybe\n"
        + "affected:\n  - versions: ['<=6.0']\n"
        + "samples:\n  - kind: evil\n    to_server: x\n  - kind: attack\n"
        + "conditions:\n  - field: raw\n    content: x\n"
    )
    with pytest.raises(RuleError) as info:
        load_rules([path])
    msg = str(info.value)
    assert f"{path}:7: app 'gopher' must be one of: raw," in msg
    assert f"{path}:8: default_mode 'maybe' must be one of: off, detect, prevent" in msg
    assert f"{path}:10: affected entry needs a product name" in msg
    assert f"{path}:12: sample kind must be one of: attack, benign" in msg
    assert f"{path}:14: a sample needs to_server/to_client bytes or a pcap" in msg


def test_app_must_run_over_the_protocol(tmp_path: Path) -> None:
    path = rule_file(tmp_path, "- field: http.method\n  equals: GET\n")
    path.write_text(path.read_text().replace("protocol: tcp", "protocol: udp"))
    with pytest.raises(RuleError, match=rf"{path}:7: app 'http' does not run over udp"):
        load_rules([path])


def test_samples_affected_and_mode_are_loaded(tmp_path: Path) -> None:
    path = rule_file(tmp_path, "- field: http.method\n  equals: GET\n")
    path.write_text(
        path.read_text()
        + "default_mode: detect\n"
        + "affected:\n  - product: microsoft-iis\n    versions: ['<=6.0']\n    features: [webdav]\n"
        + "samples:\n  - kind: attack\n    to_server: 'GET / HTTP/1.0|0d 0a 0d 0a|'\n"
        + "  - kind: benign\n    hex_to_server: '504f5354'\n"
    )
    rule = load_rules([path]).rules[0]
    assert rule.default_mode is Mode.DETECT
    assert rule.affected[0].product == "microsoft-iis" and rule.affected[0].features == ("webdav",)
    assert rule.samples[0].to_server == b"GET / HTTP/1.0\r\n\r\n"
    assert rule.samples[1].kind == "benign" and rule.samples[1].to_server == b"POST"


# --- the compiled form of content modifiers equals their definition --------------------------

_items = st.builds(
    ContentItem,
    data=st.lists(st.sampled_from(b"aAb\x00|"), min_size=1, max_size=3).map(bytes),
    nocase=st.booleans(),
)


@st.composite
def sequences(draw: st.DrawFn) -> tuple[ContentItem, ...]:
    first = draw(_items)
    offset = draw(st.none() | st.integers(0, 6))
    depth = draw(st.none() | st.integers(len(first.data), 10))
    items = [ContentItem(first.data, first.nocase, offset, depth)]
    for _ in range(draw(st.integers(0, 2))):
        nxt = draw(_items)
        distance = draw(st.none() | st.integers(0, 4))
        within = draw(st.none() | st.integers((distance or 0) + len(nxt.data), 10))
        items.append(ContentItem(nxt.data, nxt.nocase, None, None, distance, within))
    return tuple(items)


def _hs_matches(expr: bytes, data: bytes) -> bool:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=[expr],
        ids=[0],
        flags=[hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH],
    )
    hits: list[int] = []
    db.scan(data, match_event_handler=lambda *a: hits.append(1))
    return bool(hits)


@settings(max_examples=300, deadline=None)
@given(items=sequences(), data=st.lists(st.sampled_from(b"aAbB\x00|x"), max_size=24).map(bytes))
def test_compiled_content_equals_reference(items: tuple[ContentItem, ...], data: bytes) -> None:
    assert _hs_matches(content_regex(items), data) == reference_match(items, data)


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 5),
    uri=st.binary(max_size=20),
    method=st.sampled_from([b"GET", b"POST", b"", b"\xff"]),
    drop=st.sets(st.sampled_from(list(REQ))),
)
def test_evaluator_never_raises_on_any_record(
    tmp_path_factory: pytest.TempPathFactory, count: int, uri: bytes, method: bytes, drop: set[str]
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    fields: dict[str, int | bytes] = {
        **REQ,
        "http.header_count": count,
        "http.uri": uri,
        "http.method": method,
    }
    for name in drop:
        fields.pop(name, None)
    for conditions, _ in CASES[::5]:
        fires(tmp, conditions, fields)


def test_a_pattern_on_a_field_also_matches_its_variants(tmp_path: Path) -> None:
    """A record may carry variants of a byte-string field (registry.variant_key: the URI as
    another server decodes it): a content or regex leaf holds on any of them, comparisons look
    at the field's own value only."""
    fields: dict[str, int | bytes] = {
        "http.uri.raw": b"/prot%%63%30%%61%66ected",
        registry.variant_key("http.uri.raw", 1): b"/prot%c0%afected",
    }
    assert fires(tmp_path, "- field: http.uri.raw\n  content: '%c0%af'\n", fields)
    assert fires(tmp_path, "- field: http.uri.raw\n  regex: '^/prot%c0'\n", fields)
    assert not fires(tmp_path, "- field: http.uri.raw\n  equals: /prot%c0%afected\n", fields)
    assert not fires(tmp_path, "- not:\n    field: http.uri.raw\n    content: '%c0%af'\n", fields)
    # a variant past a missing one is not looked at (they are numbered from 1 without gaps)
    gap = {"http.uri.raw": b"/a", registry.variant_key("http.uri.raw", 2): b"/%c0%af"}
    assert not fires(tmp_path, "- field: http.uri.raw\n  content: '%c0%af'\n", gap)
