"""Tests for gateway/match/rules.py: loading, validation with file:line, content syntax."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from gateway.errors import RuleError, RuleProblem
from gateway.match.rules import (
    ANY_PORT,
    MAX_PATTERNS_PER_RULE,
    Pattern,
    RuleSet,
    build_rule,
    default_rule_dir,
    load_rules,
    parse_content,
)
from gateway.match.suricata import export_rule
from gateway.vocabulary import Action, Direction

GOOD = """\
id: 9100001
title: test rule
cve: [CVE-2017-0144]
severity: high
action: drop
protocol: tcp
ports: [445, 139]
direction: to_server
patterns:
  - content: "|FF|SMB|32|"
  - regex: 'abc.{2}d'
    nocase: true
references: [https://example.invalid/ref]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_rules_load_and_include_eternalblue() -> None:
    rs = load_rules([default_rule_dir()])
    assert 9000100 in rs.by_id
    split = rs.by_id[9000100]
    assert split.patterns == (Pattern("content", b"VPATCH-TEST-EXPLOIT-7f3a", False),)
    assert split.action is Action.RESET and split.ports == (80,)
    eternal = [r for r in rs if "CVE-2017-0144" in r.cves]
    assert eternal and all(set(r.ports) == {139, 445} for r in eternal)
    assert all(r.action is Action.RESET for r in eternal)


def test_good_rule_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", GOOD)
    (rule,) = load_rules([path]).rules
    assert rule.id == 9100001 and rule.title == "test rule"
    assert rule.cves == ("CVE-2017-0144",)
    assert rule.action is Action.DROP and rule.protocol == "tcp" and rule.proto_number == 6
    assert rule.ports == (139, 445)
    assert rule.patterns == (
        Pattern("content", b"\xffSMB2", False),
        Pattern("regex", b"abc.{2}d", True),
    )
    assert rule.path == path and rule.line == 1
    assert rule.references == ("https://example.invalid/ref",)


def test_defaults_for_optional_keys(tmp_path: Path) -> None:
    text = "\n".join(
        line
        for line in GOOD.splitlines()
        if not line.startswith(("cve", "direction", "references"))
    )
    (rule,) = load_rules([write(tmp_path, "r.yaml", text)]).rules
    assert rule.direction == "to_server" and rule.cves == () and rule.references == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("|FF|SMB|32|", b"\xffSMB2"),
        ("|ff 53 4d 42|", b"\xffSMB"),
        ("|41||42|", b"AB"),
        ("a\\|b", b"a|b"),
        ("a\\\\b", b"a\\b"),
        ('say \\"hi\\"\\;', b'say "hi";'),
        ("GET /", b"GET /"),
        ("caf\u00e9", "caf\u00e9".encode()),
        ("|0d 0a|Host:", b"\r\nHost:"),
    ],
)
def test_parse_content(text: str, expected: bytes) -> None:
    assert parse_content(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("|4|", "odd number of hex digits"),
        ("|zz|", "not a hex digit"),
        ("|41", "not closed"),
        ("abc\\", "trailing backslash"),
        ("|4 1|", "split by a space"),
    ],
)
def test_parse_content_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_content(text)


def test_every_problem_reported_with_file_and_line(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        """\
id: 9100002
title: bad rule
severity: extreme
action: reset
protocol: tcp
ports: [445, 70000]
colour: red
cve: [CVE-2017]
patterns:
  - content: "|4|"
  - regex: 'a(b'
  - content: "x"
    regex: "y"
""",
    )
    with pytest.raises(RuleError) as info:
        load_rules([bad])
    msg = str(info.value)
    assert f"{bad}:3: severity 'extreme' must be one of" in msg
    assert f"{bad}:6: port '70000' must be an integer 1..65535" in msg
    assert f"{bad}:7: unknown key 'colour'" in msg
    assert f"{bad}:8: cve 'CVE-2017' is not of the form" in msg
    assert f"{bad}:10: content '|4|': odd number of hex digits" in msg
    assert f"{bad}:11: regex 'a(b' rejected by Hyperscan" in msg
    assert f"{bad}:12: a pattern needs exactly one of" in msg
    assert msg.startswith("7 problems")
    # the same as data, in the message's order
    problems = info.value.problems
    assert [(p.path, p.line) for p in problems] == [(bad, n) for n in (3, 6, 7, 8, 10, 11, 12)]
    assert problems[1] == RuleProblem(bad, 6, "port '70000' must be an integer 1..65535")
    assert msg.endswith("\n  ".join(str(p) for p in problems))
    assert (info.value.path, info.value.line) == (bad, 3)
    assert info.value.reason.startswith("severity 'extreme' must be one of")


def test_missing_keys_wrong_types_and_duplicate_keys(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yml",
        "id: true\ntitle: ''\ntitle: again\naction: alert\nprotocol: sctp\nports: 445\n",
    )
    with pytest.raises(RuleError) as info:
        load_rules([bad])
    msg = str(info.value)
    assert f"{bad}:3: duplicate key 'title'" in msg
    # duplicate keys stop the rest of this rule's checks: fix them first
    bad.write_text("id: true\ntitle: ''\naction: alert\nprotocol: sctp\nports: 445\n")
    with pytest.raises(RuleError) as info:
        load_rules([bad])
    msg = str(info.value)
    assert f"{bad}:1: id 'true' must be an integer" in msg
    assert f"{bad}:2: title '' must be a non-empty string" in msg
    assert f"{bad}:4: protocol 'sctp' must be one of: tcp, udp" in msg
    assert f"{bad}:5: ports must be `any` or a non-empty list" in msg
    assert f"{bad}:1: missing required key 'severity'" in msg
    assert f"{bad}:1: a rule needs `conditions` (or the older `patterns`)" in msg


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "syntax.yaml", "id: 1\ntitle: [unclosed\nseverity: low\n")
    with pytest.raises(RuleError, match=rf"{bad}:\d+: YAML syntax"):
        load_rules([bad])


def test_nothing_loaded_when_one_file_is_bad(tmp_path: Path) -> None:
    write(tmp_path, "a-good.yaml", GOOD)
    write(tmp_path, "b-bad.yaml", GOOD.replace("9100001", "9100009").replace("high", "huge"))
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path])
    assert "b-bad.yaml:4: severity 'huge'" in str(info.value)
    assert "a-good.yaml" not in str(info.value)


def test_duplicate_ids_across_files_name_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", GOOD)
    second = write(tmp_path, "sub/b.yaml", GOOD) if (tmp_path / "sub").mkdir() is None else None
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path])
    assert f"{second}:1: id 9100001 already used at {first}:1" in str(info.value)


def test_list_form_and_ruleset_ports(tmp_path: Path) -> None:
    body = GOOD.replace("\n", "\n    ").rstrip()
    text = (
        "rules:\n  - " + body + "\n"
        "  - id: 9100003\n    title: udp\n    severity: low\n    action: alert\n"
        "    protocol: udp\n    ports: [53]\n    direction: both\n"
        "    patterns: [{content: x}]\n"
    )
    rs = load_rules([write(tmp_path, "multi.yaml", text)])
    assert [r.id for r in rs] == [9100001, 9100003]
    assert rs.by_id[9100003].line == 15
    assert rs.ports("tcp", Direction.TO_SERVER) == {139, 445}
    assert rs.ports(6, Direction.TO_CLIENT) == set()
    assert rs.ports("udp", Direction.TO_CLIENT) == {53}
    assert isinstance(rs, RuleSet) and len(rs) == 2


def test_list_form_must_be_alone(tmp_path: Path) -> None:
    bad = write(tmp_path, "m.yaml", "rules: []\nid: 1\n")
    with pytest.raises(RuleError, match="must hold nothing else"):
        load_rules([bad])


def test_too_many_patterns_and_missing_path(tmp_path: Path) -> None:
    many = "\n".join(f"  - content: p{i}" for i in range(MAX_PATTERNS_PER_RULE + 1))
    bad = write(tmp_path, "many.yaml", GOOD.split("patterns:")[0] + "patterns:\n" + many + "\n")
    with pytest.raises(RuleError, match=f"more than {MAX_PATTERNS_PER_RULE}"):
        load_rules([bad])
    with pytest.raises(RuleError, match="no such rule file"):
        load_rules([tmp_path / "absent"])


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"empty.yaml:1: empty file"):
        load_rules([write(tmp_path, "empty.yaml", "# nothing\n")])


def test_ports_any(tmp_path: Path) -> None:
    text = (
        "id: 77\ntitle: any port\nseverity: low\naction: alert\nprotocol: tcp\nports: any\n"
        "app: http\nconditions: [{field: http.method, equals: TRACE}]\n"
    )
    (rule,) = load_rules([write(tmp_path, "any.yaml", text)]).rules
    assert rule.any_port and rule.ports == ()
    assert RuleSet([rule]).ports("tcp", Direction.TO_SERVER) == {ANY_PORT}
    assert export_rule(rule)[0].split()[5] == "any"  # alert http any any -> any any
    bad = write(tmp_path, "any.yaml", text.replace("ports: any", "ports: all"))
    with pytest.raises(RuleError, match=r"any.yaml:6: ports must be `any` or a non-empty list"):
        load_rules([bad])


def test_build_rule_from_a_mapping_checks_what_the_loader_checks(tmp_path: Path) -> None:
    data = yaml.safe_load(GOOD)
    from_file = load_rules([write(tmp_path, "r.yaml", GOOD)]).rules[0]
    built = build_rule(data, "imported.rules", 42)
    assert built.path == Path("imported.rules") and built.line == 42
    assert replace(built, path=from_file.path, line=from_file.line) == from_file
    bad = {**data, "severity": "extreme", "ports": [445, 70000], "colour": "red"}
    bad["patterns"] = [{"regex": "a(b"}]
    with pytest.raises(RuleError) as info:
        build_rule(bad, "imported.rules", 42)
    assert [(p.path, p.line) for p in info.value.problems] == [(Path("imported.rules"), 42)] * 4
    assert [p.reason.split(" ", 1)[0] for p in info.value.problems] == [
        "unknown",
        "severity",
        "port",
        "regex",
    ]
    assert "imported.rules:42: port '70000' must be an integer 1..65535" in str(info.value)
    assert str(info.value).startswith("4 problems in rules, nothing loaded:")
    with pytest.raises(RuleError, match=r"imported.rules:42: not plain data: cannot represent"):
        build_rule({**data, "title": object()}, "imported.rules", 42)


def test_rule_error_without_a_place() -> None:
    err = RuleError("rule set: duplicate rule ids")
    assert err.problems == () and err.path is None and err.line == 0
    assert err.reason == str(err) == "rule set: duplicate rule ids"
    one = RuleError("x", [RuleProblem(Path("a.yaml"), 3, "why")])
    again = pickle.loads(pickle.dumps(one))
    assert str(again) == "x" and again.problems == one.problems
