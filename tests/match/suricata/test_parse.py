"""Tests for gateway/match/suricata/parse.py: rule lines, quoting, continuations."""

from __future__ import annotations

import re

import pytest

from gateway.match.rules import parse_content
from gateway.match.suricata.parse import (
    format_content,
    parse_rule,
    parse_rules_text,
    unescape,
    unquote,
)


def test_parse_quoting_escapes_continuations_and_disabled_rules() -> None:
    text = (
        'alert tcp any any -> $HOME_NET [139,445] (msg:"a \\"quoted\\" \\; msg"; '
        'content:"|FF|SMB\\;|3b|"; sid:7; rev:2;)\n'
        "# a plain comment\n"
        '# alert tcp any any -> any 80 (msg:"off"; content:"x"; sid:8;)\n'
        'alert udp any any -> any 53 (msg:"cont"; \\\n  content:"y"; sid:9;)\n'
        "alert tcp garbage\n"
    )
    rules, problems = parse_rules_text(text, "t.rules")
    assert [r.sid for r in rules] == [7, 8, 9]
    assert [r.enabled for r in rules] == [True, False, True]
    assert rules[0].get("msg") == '"a \\"quoted\\" \\; msg"'
    assert rules[0].get("content") == '"|FF|SMB\\;|3b|"'
    assert rules[0].dst_ports == "[139,445]" and rules[2].line == 4
    assert len(problems) == 1 and problems[0].line == 6 and "no (options)" in problems[0].reason


def test_header_words_and_bare_options() -> None:
    rule = parse_rule(
        'DROP TCP $EXTERNAL_NET [1024: ,2000] <> $HOME_NET any (nocase; sid: 12 ; msg:"a;b";)'
    )
    assert (rule.action, rule.protocol, rule.src_ports, rule.bidirectional) == (
        "drop",
        "tcp",
        "[1024: ,2000]",
        True,
    )
    assert [(o.name, o.value) for o in rule.options] == [
        ("nocase", None),
        ("sid", "12"),
        ("msg", '"a;b"'),
    ]
    assert rule.sid == 12 and rule.get("nocase") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("alert tcp any any -> any 80 (sid:1;", "no (options)"),
        ("alert tcp any any any 80 (sid:1;)", "header has 6 words"),
        ("alert tcp any any => any 80 (sid:1;)", "direction '=>'"),
        ('alert tcp any any -> any 80 (sid:1; msg:"x)', "'msg' is not terminated"),
        ("alert tcp any any -> any 80 (s!d:1;)", "bad option name"),
    ],
)
def test_malformed_rules_say_what(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_rule(text)


def test_quoting_helpers() -> None:
    assert unquote(' !"a\\"b" ') == ('a\\"b', True)
    assert unquote("plain") == ("plain", False)
    assert unescape('a\\"b\\;c\\\\') == 'a"b;c\\'
    data = bytes(range(256))
    assert parse_content(format_content(data)) == data
    assert format_content(b'a"b;c') == "a|22|b|3B|c"
