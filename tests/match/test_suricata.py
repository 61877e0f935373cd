"""Tests for gateway/match/suricata.py: parsing, conversion, export, round trip, the corpora."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import hyperscan
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.match.conditions import ContentItem, content_regex, reference_match
from gateway.match.rules import Rule, default_rule_dir, load_rules
from gateway.match.suricata import (
    convert,
    dump_rule,
    export_rules,
    import_rules,
    items_from_content_regex,
    parse_rule,
    parse_rules_text,
    rule_differences,
)

CORPUS_RULES = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "rules"
SURICATA = shutil.which("suricata")
SURICATA_YAML = """%YAML 1.1
---
vars:
  address-groups: {HOME_NET: "[198.18.0.0/15]", EXTERNAL_NET: "!$HOME_NET"}
  port-groups: {HTTP_PORTS: "80"}
default-rule-path: DIR
rule-files: []
default-log-dir: DIR
classification-file: /etc/suricata/classification.config
reference-config-file: /etc/suricata/reference.config
app-layer:
  protocols:
    http: {enabled: yes}
    dns: {tcp: {enabled: yes}, udp: {enabled: yes}}
logging: {outputs: [{console: {enabled: yes}}]}
"""


def _convert_one(text: str, tmp_path: Path) -> Rule:
    """Convert one Suricata rule and load the result with the real loader."""
    conv = convert(parse_rule(text))
    assert conv.rule is not None, conv.reasons
    path = tmp_path / f"r{conv.sid}.yaml"
    path.write_text(dump_rule(conv.rule))
    return load_rules([path]).rules[0]


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


# ----------------------------------------------------------------------------- parsing


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


# ----------------------------------------------------------------------------- conversion


def test_content_chain_keeps_suricata_distance_within(tmp_path: Path) -> None:
    # Suricata counts `within` from the distance: |08| exactly 8 bytes after the end of "AB".
    rule = _convert_one(
        'alert tcp any any -> any 445 (msg:"m"; flow:to_server,established; '
        'content:"|FF|SMB"; offset:4; depth:4; content:"AB"; distance:2; within:2; '
        'content:"|08|"; distance:8; within:1; reference:cve,2017-0144; '
        "classtype:attempted-admin; sid:100; rev:3;)",
        tmp_path,
    )
    assert rule.id == 100 and rule.ports == (445,) and rule.direction == "to_server"
    assert rule.cves == ("CVE-2017-0144",) and rule.severity == "high"
    assert rule.default_mode.value == "detect" and rule.app == "raw"
    items = items_from_content_regex(rule.patterns[0].expr)
    assert items is not None
    hit = b"\0\0\0\0\xffSMB\0\0AB" + b"x" * 8 + b"\x08"
    assert reference_match(items, hit) and _hs(rule.patterns[0].expr, hit)
    late = b"\0\0\0\0\xffSMB\0\0AB" + b"x" * 9 + b"\x08"
    assert not reference_match(items, late) and not _hs(rule.patterns[0].expr, late)
    assert not _hs(rule.patterns[0].expr, b"\0\0\0\0\0\xffSMB\0\0AB" + b"x" * 8 + b"\x08")


def test_http_buffers_modifiers_pcre_flags_and_named_header(tmp_path: Path) -> None:
    rule = _convert_one(
        'alert http any any -> $HOME_NET any (msg:"web"; flow:established,to_server; '
        'content:"POST"; http_method; content:"/cgi-bin/"; http_uri; nocase; '
        'http.header; content:"User-Agent|3a| () {"; '
        'pcre:"/x=\\d+$/Ui"; urilen:>10; sid:200;)',
        tmp_path,
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


def test_relative_pcre_and_byte_test_become_one_regex(tmp_path: Path) -> None:
    rule = _convert_one(
        'alert smb $HOME_NET any -> any any (msg:"dp"; flow:from_server,established; '
        'content:"|FF|SMB2"; content:"|00 08|"; distance:4; within:2; '
        'pcre:"/^[\\x50-\\x59]/R"; byte_test:1,>,0x10,1,relative; sid:300;)',
        tmp_path,
    )
    assert rule.direction == "to_client" and rule.ports == (139, 445)
    expr = rule.patterns[0].expr
    assert _hs(expr, b"\xffSMB2....\x00\x08\x55z\x20")
    assert not _hs(expr, b"\xffSMB2....\x00\x08\x49z\x20")  # pcre byte out of range
    assert not _hs(expr, b"\xffSMB2....\x00\x08\x55z\x05")  # byte_test fails


def test_dns_dotprefix_and_negated_field_content(tmp_path: Path) -> None:
    rule = _convert_one(
        'alert dns $HOME_NET any -> any any (msg:"c2"; dns.query; dotprefix; '
        'content:".evil.example"; nocase; endswith; content:!"safe"; sid:400;)',
        tmp_path,
    )
    assert rule.protocol == "udp" and rule.ports == (53,) and rule.app == "dns"
    m = _matches(rule)[0]
    assert _hs(m.expr, b"a.EVIL.example.") and _hs(m.expr, b"evil.example.")
    assert not _hs(m.expr, b"notevil.example.") and not _hs(m.expr, b"evil.example.org.")
    assert "Not(item=Match(field='dns.qname'" in repr(rule.conditions)


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
    ],
)
def test_unconvertible_constructs_are_named(text: str, reason: str) -> None:
    reasons = _reasons(text)
    assert any(reason in r for r in reasons), reasons


def test_any_ports_option_and_duplicate_sids() -> None:
    rules, _ = parse_rules_text(
        'alert tcp any any -> any any (msg:"jndi"; content:"${jndi:"; nocase; sid:5;)\n'
        'alert tcp any any -> any 80 (msg:"again"; content:"x"; sid:5;)\n'
    )
    report = import_rules(rules, any_ports=(80, 443))
    assert [c.sid for c in report.converted] == [5]
    assert report.converted[0].rule is not None and report.converted[0].rule["ports"] == [80, 443]
    assert report.skipped[0].reasons == ("sid: 5 repeated",)


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


# ----------------------------------------------------------------------------- corpora


@pytest.mark.parametrize("name", ["etopen-target-cves.rules", "snort-community-target-cves.rules"])
def test_corpus_import_figures(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = CORPUS_RULES / name
    if not path.is_file():
        pytest.skip(f"corpus file {path} is not here")
    rules, problems = parse_rules_text(path.read_text(), str(path))
    assert not problems
    report = import_rules(rules)
    for conv in report.converted:
        (tmp_path / f"s{conv.sid}.yaml").write_text(dump_rule(conv.rule or {}))
    loaded = load_rules([tmp_path])  # every written file validates
    assert len(loaded) == len(report.converted)
    assert all(c.reasons and c.sid for c in report.skipped)
    with capsys.disabled():
        print(
            f"\n{name}: {report.total} rules ({report.disabled_seen} commented out, not "
            f"counted), {len(report.converted)} imported, {len(report.skipped)} not; reasons: "
            + ", ".join(f"{k} {v}" for k, v in report.histogram())
        )
    assert len(report.converted) >= (80 if name.startswith("etopen") else 30)


# ----------------------------------------------------------------------------- export

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


def _suricata_test(rules_file: Path, tmp_path: Path) -> None:
    if SURICATA is None:
        if os.environ.get("CI"):  # scripts/test.sh installs it: CI must not skip this check
            pytest.fail("suricata is not installed although CI is set (scripts/install-bench.sh)")
        pytest.skip("suricata is not installed (scripts/install-bench.sh installs it)")
    conf = tmp_path / "suricata.yaml"
    conf.write_text(SURICATA_YAML.replace("DIR", str(tmp_path)))
    done = subprocess.run(
        [SURICATA, "-T", "-c", str(conf), "-S", str(rules_file), "-l", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_export_synthetic_forms_suricata_accepts_and_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.yaml").write_text(SYNTHETIC)
    out, written = _export_roundtrip([src], tmp_path)
    assert written == 4
    text = out.read_text()
    assert "drop tcp any any -> any 445" in text and "reject http" in text
    assert 'http.method; content:"post"; nocase; startswith; endswith' in text
    assert 'content:!"intranet"' in text and "urilen:>100" in text
    _suricata_test(out, tmp_path)


def test_export_bundled_rules_suricata_accepts(tmp_path: Path) -> None:
    out, written = _export_roundtrip([default_rule_dir()], tmp_path)
    assert written >= 1
    assert "not exported:" in out.read_text()  # structural rules are skipped, with the reason
    _suricata_test(out, tmp_path)


def test_imported_corpus_rules_export_and_round_trip(tmp_path: Path) -> None:
    path = CORPUS_RULES / "etopen-target-cves.rules"
    if not path.is_file():
        pytest.skip(f"corpus file {path} is not here")
    rules, _ = parse_rules_text(path.read_text(), str(path))
    report = import_rules(rules)
    src = tmp_path / "imported"
    src.mkdir()
    for conv in report.converted:
        (src / f"{conv.sid}.yaml").write_text(yaml.safe_dump(conv.rule, sort_keys=False))
    out, written = _export_roundtrip([src], tmp_path)
    assert written == len(report.converted)
    _suricata_test(out, tmp_path)


def _matches(rule: Rule) -> list[object]:
    from gateway.match.conditions import matches_of

    return matches_of(rule.conditions)  # type: ignore[return-value]
