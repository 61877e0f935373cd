"""Tests for gateway/match/suricata/export.py: vpatch rules -> Suricata 7 rules that Suricata
accepts (`suricata -T`) and that import back to the same meaning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.match.conditions import ContentItem, content_regex
from gateway.match.rules import build_rule, default_rule_dir, load_rules
from gateway.match.suricata.compare import rule_differences
from gateway.match.suricata.export import export_rule, export_rules, items_from_content_regex
from gateway.match.suricata.importer import dump_rule, import_rules
from gateway.match.suricata.parse import parse_rules_text

SYNTHETIC = """
rules:
  - {id: 1, title: 'raw "chain"; with quotes', severity: high, action: drop, protocol: tcp,
     ports: [445], cve: [CVE-2017-0144],
     conditions: [{field: raw, match: [{content: "|FF|SMB|32|", offset: 4, depth: 5},
                                       {content: "ab", nocase: true, distance: 3, within: 9}]}]}
  - {id: 2, title: http, severity: critical, action: reset, protocol: tcp, ports: [80, 8080],
     app: http, default_mode: detect,
     conditions: [{field: http.method, equals: POST, nocase: true},
                  {field: http.uri, content: "/cgi-bin/", nocase: true},
                  {field: http.uri, length: true, gt: 100},
                  {field: http.header.user-agent, regex: '^\\s*\\(\\s*\\)\\s*\\{'},
                  {not: {field: http.header.host, content: "intranet"}},
                  {field: http.body, regex: 'a;b"c', nocase: true}]}
  - {id: 3, title: dns, severity: low, action: alert, protocol: udp, ports: [53], app: dns,
     direction: to_server,
     conditions: [{field: dns.qname, content: "evil"}, {field: dns.qname, equals: "x.example."}]}
  - {id: 4, title: reply, severity: medium, action: alert, protocol: tcp, ports: [4444],
     direction: to_client, patterns: [{regex: '^C:\\\\>', nocase: true}]}
"""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=1, max_size=6),
            st.booleans(),
            st.integers(0, 20),
            st.one_of(st.none(), st.integers(0, 20)),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_items_from_content_regex_inverts_content_regex(
    parts: list[tuple[bytes, bool, int, int | None]],
) -> None:
    items: list[ContentItem] = []
    for i, (data, nocase, a, b) in enumerate(parts):
        if i == 0:
            items.append(ContentItem(data, nocase, a or None, None if b is None else b + len(data)))
        else:
            items.append(
                ContentItem(data, nocase, None, None, a, None if b is None else a + b + len(data))
            )
    expr = content_regex(tuple(items))
    back = items_from_content_regex(expr)
    if back is None:  # mixed-case letters inside one nocase literal etc.: falls back to pcre
        return
    assert content_regex(back) == expr


def test_what_cannot_be_exported_says_why() -> None:
    base = {"id": 7, "title": "t", "severity": "low", "action": "alert", "protocol": "tcp",
            "ports": [80], "app": "http"}  # fmt: skip
    cases = [
        ([{"any": [{"field": "http.uri", "content": "a"}, {"field": "http.uri", "content": "b"}]}],
         "any: alternatives have no single-rule Suricata equivalent"),
        ([{"field": "http.header.x-odd", "content": "a"}],
         "field http.header.x-odd: no Suricata 7 sticky buffer"),
        ([{"field": "http.uri", "ne": "/"}], "field http.uri: `ne` comparison has no Suricata 7"),
        ([{"not": {"field": "http.uri", "content": "a", "offset": 2}}],
         "not: a negated content with modifiers"),
    ]  # fmt: skip
    for conditions, why in cases:
        rule = build_rule({**base, "conditions": conditions}, "x.yaml", 1)
        text, reason = export_rule(rule)
        assert text is None and reason.startswith(why), reason


def _export_roundtrip(ruleset_paths: list[Path], tmp_path: Path) -> tuple[Path, int]:
    original = load_rules(ruleset_paths)
    lines, written, _ = export_rules(original)
    out = tmp_path / "exported.rules"
    out.write_text("\n".join(lines) + "\n")
    rules, problems = parse_rules_text(out.read_text(), str(out))
    assert not problems
    report = import_rules(rules)
    assert len(report.converted) == written, [c.reasons for c in report.skipped]
    back = tmp_path / "back"
    back.mkdir()
    for conv in report.converted:
        (back / f"{conv.sid}.yaml").write_text(dump_rule(conv.rule or {}))
    again = load_rules([back])
    for rule in again:
        assert rule_differences(original.by_id[rule.id], rule) == [], rule.id
    return out, written


def test_export_synthetic_forms_suricata_accepts_and_round_trip(
    tmp_path: Path, suricata_accepts: Callable[[Path], None]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.yaml").write_text(SYNTHETIC)
    out, written = _export_roundtrip([src], tmp_path)
    assert written == 4
    text = out.read_text()
    assert "drop tcp any any -> any 445" in text and "reject http" in text
    assert 'http.method; content:"post"; nocase; startswith; endswith' in text
    assert 'content:!"intranet"' in text and "urilen:>100" in text
    suricata_accepts(out)


def test_export_bundled_rules_suricata_accepts(
    tmp_path: Path, suricata_accepts: Callable[[Path], None]
) -> None:
    out, written = _export_roundtrip([default_rule_dir()], tmp_path)
    assert written >= 1
    assert "not exported:" in out.read_text()  # structural rules are skipped, with the reason
    suricata_accepts(out)


def test_imported_corpus_rules_export_and_round_trip(
    tmp_path: Path,
    corpus_rules: Callable[[str], Path],
    suricata_accepts: Callable[[Path], None],
) -> None:
    path = corpus_rules("etopen-target-cves.rules")
    rules, _ = parse_rules_text(path.read_text(), str(path))
    report = import_rules(rules)
    src = tmp_path / "imported"
    src.mkdir()
    for conv in report.converted:
        (src / f"{conv.sid}.yaml").write_text(yaml.safe_dump(conv.rule, sort_keys=False))
    out, written = _export_roundtrip([src], tmp_path)
    assert written == len(report.converted)
    suricata_accepts(out)
