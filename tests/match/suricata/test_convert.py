"""Tests for gateway/match/suricata/convert.py and elements.py: one Suricata rule -> one vpatch
rule (checked by the real validator and by Hyperscan on sample bytes), or named reasons."""

from __future__ import annotations

import hyperscan
import pytest

from gateway.match.conditions import Match, matches_of, reference_match
from gateway.match.rules import Rule, build_rule
from gateway.match.suricata.convert import convert
from gateway.match.suricata.export import items_from_content_regex
from gateway.match.suricata.parse import parse_rule


def _convert_one(text: str) -> Rule:
    """Convert one Suricata rule and build the result with the real validator."""
    conv = convert(parse_rule(text, "t.rules", 1))
    assert conv.rule is not None, conv.reasons
    return build_rule(conv.rule, conv.source, conv.line)


def _reasons(text: str) -> tuple[str, ...]:
    conv = convert(parse_rule(text))
    assert conv.rule is None
    return conv.reasons


def _hs(expr: bytes, data: bytes, nocase: bool = False) -> bool:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    flags = hyperscan.HS_FLAG_DOTALL | (hyperscan.HS_FLAG_CASELESS if nocase else 0)
    db.compile(expressions=[expr], ids=[0], flags=[flags])
    hits: list[int] = []
    db.scan(data, match_event_handler=lambda *a: hits.append(1) or None)
    return bool(hits)


def _matches(rule: Rule) -> list[Match]:
    return matches_of(rule.conditions)


def test_content_chain_keeps_suricata_distance_within() -> None:
    # Suricata counts `within` from the distance: |08| exactly 8 bytes after the end of "AB".
    rule = _convert_one(
        'alert tcp any any -> any 445 (msg:"m"; flow:to_server,established; '
        'content:"|FF|SMB"; offset:4; depth:4; content:"AB"; distance:2; within:2; '
        'content:"|08|"; distance:8; within:1; reference:cve,2017-0144; '
        "classtype:attempted-admin; sid:100; rev:3;)"
    )
    assert rule.id == 100 and rule.ports == (445,) and rule.direction == "to_server"
    assert rule.cves == ("CVE-2017-0144",) and rule.severity == "high"
    assert rule.default_mode.value == "detect" and rule.app == "raw"
    assert str(rule.path) == "t.rules" and rule.line == 1
    items = items_from_content_regex(rule.patterns[0].expr)
    assert items is not None
    hit = b"\0\0\0\0\xffSMB\0\0AB" + b"x" * 8 + b"\x08"
    assert reference_match(items, hit) and _hs(rule.patterns[0].expr, hit)
    late = b"\0\0\0\0\xffSMB\0\0AB" + b"x" * 9 + b"\x08"
    assert not reference_match(items, late) and not _hs(rule.patterns[0].expr, late)
    assert not _hs(rule.patterns[0].expr, b"\0\0\0\0\0\xffSMB\0\0AB" + b"x" * 8 + b"\x08")


def test_http_buffers_modifiers_pcre_flags_and_named_header() -> None:
    rule = _convert_one(
        'alert http any any -> $HOME_NET any (msg:"web"; flow:established,to_server; '
        'content:"POST"; http_method; content:"/cgi-bin/"; http_uri; nocase; '
        'http.header; content:"User-Agent|3a| () {"; '
        'pcre:"/x=\\d+$/Ui"; urilen:>10; sid:200;)'
    )
    assert rule.app == "http" and rule.ports == (80, 8000, 8008, 8080)
    conds = repr(rule.conditions)
    assert "http.method" in conds and "http.header.user-agent" in conds
    assert "Compare(field='http.uri', op='gt', value=10" in conds and "length=True" in conds
    leaves = {m.field: m for m in _matches(rule)}
    assert _hs(leaves["http.header.user-agent"].expr, b"() { :;}; echo")
    assert not _hs(leaves["http.header.user-agent"].expr, b"Mozilla () {")
    uri_regexes = [m for m in _matches(rule) if m.field == "http.uri" and m.regex]
    assert uri_regexes and uri_regexes[0].nocase is False
    assert _hs(uri_regexes[0].expr, b"/A?X=12") and not _hs(uri_regexes[0].expr, b"/a?x=12\n1")


def test_relative_pcre_and_byte_test_become_one_regex() -> None:
    rule = _convert_one(
        'alert smb $HOME_NET any -> any any (msg:"dp"; flow:from_server,established; '
        'content:"|FF|SMB2"; content:"|00 08|"; distance:4; within:2; '
        'pcre:"/^[\\x50-\\x59]/R"; byte_test:1,>,0x10,1,relative; sid:300;)'
    )
    assert rule.direction == "to_client" and rule.ports == (139, 445)
    expr = rule.patterns[0].expr
    assert _hs(expr, b"\xffSMB2....\x00\x08\x55z\x20")
    assert not _hs(expr, b"\xffSMB2....\x00\x08\x49z\x20")  # pcre byte out of range
    assert not _hs(expr, b"\xffSMB2....\x00\x08\x55z\x05")  # byte_test fails


def test_dns_dotprefix_and_negated_field_content() -> None:
    rule = _convert_one(
        'alert dns $HOME_NET any -> any any (msg:"c2"; dns.query; dotprefix; '
        'content:".evil.example"; nocase; endswith; content:!"safe"; sid:400;)'
    )
    assert rule.protocol == "udp" and rule.ports == (53,) and rule.app == "dns"
    m = _matches(rule)[0]
    assert _hs(m.expr, b"a.EVIL.example.") and _hs(m.expr, b"evil.example.")
    assert not _hs(m.expr, b"notevil.example.") and not _hs(m.expr, b"evil.example.org.")
    assert "Not(item=Match(field='dns.qname'" in repr(rule.conditions)


def test_metadata_ports_and_warnings() -> None:
    conv = convert(
        parse_rule(
            'reject tcp any any -> any [8000:8002,$SSH_PORTS] (msg:"a \\"b\\""; '
            'flow:to_server,no_stream; content:"x"; offset:2; '
            "metadata:cve CVE_2020_1234, signature_severity Critical, "
            "vpatch_default_mode prevent; reference:url,example.invalid; "
            "byte_test:2,=,0x4142,0,little; sid:9; rev:4;)",
            "dir/x.rules",
            7,
        )
    )
    assert conv.rule is not None and conv.sid == 9
    rule = conv.rule
    assert rule["title"] == 'a "b"' and rule["cve"] == ["CVE-2020-1234"]
    assert (rule["severity"], rule["action"], rule["default_mode"]) == (
        "critical",
        "reset",
        "prevent",
    )
    assert rule["ports"] == [22, 8000, 8001, 8002] and rule["references"] == [
        "url: example.invalid"
    ]
    assert rule["conditions"][1] == {"field": "raw", "content": "BA", "offset": 0, "depth": 2}
    assert rule["description"] == "Imported from x.rules:7 (sid 9 rev 4)."
    assert conv.warnings == (
        "flow no_stream: matched on the reassembled stream",
        "raw offset/depth: anchored at the stream start, not the packet",
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('alert tcp any any -> any 80 (content:"a"; byte_jump:2,0; sid:1;)', "keyword byte_jump"),
        ('alert tcp any any -> any 80 (content:"a"; flowbits:isset,x; sid:1;)', "flowbits: isset"),
        ('alert tcp any any -> any 80 (content:!"a"; sid:1;)', "negated match on the raw"),
        ('alert http any any -> any any (http.header; content:"() {"; sid:1;)', "http.header"),
        ('alert tcp any any -> any any (content:"a"; sid:1;)', "header: no server port"),
        ('alert tcp any any -> any !80 (content:"a"; sid:1;)', "negated ports"),
        ('alert icmp any any -> any any (content:"a"; sid:1;)', "protocol: icmp"),
        ('alert tcp any any -> any 80 (content:"a"; flowbits:noalert; sid:1;)', "noalert"),
        ('alert tcp any any -> any 80 (pcre:"/a/Q"; sid:1;)', "pcre flag: Q"),
        ('alert tcp any any -> any 80 (content:"a"; threshold:type both,count 5; sid:1;)', "rate"),
        ('pass tcp any any -> any 80 (content:"a"; sid:1;)', "action: pass"),
        ('alert tcp any any -> any 80 (content:"a"; nocase;)', "sid: missing"),
        ('alert tcp any any -> any 1:4000 (content:"a"; sid:1;)', "port range too wide"),
        ('alert tcp any any -> any 80 (content:"a"; distance:x; sid:1;)', "distance: 'x' is not"),
    ],
)
def test_unconvertible_constructs_are_named(text: str, reason: str) -> None:
    reasons = _reasons(text)
    assert any(reason in r for r in reasons), reasons


def test_every_unconvertible_option_is_named() -> None:
    assert _reasons(
        'alert tcp any any -> any 80 (nocase; content:"a"; byte_jump:2,0; stream_size:x; '
        'pcre:"/b/G"; sid:1;)'
    ) == (
        "nocase: modifier with no content before it",
        "keyword byte_jump",
        "keyword stream_size",
        "pcre flag: G (ungreedy) is not supported",
    )
