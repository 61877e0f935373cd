"""Tests for gateway/match/suricata/importer.py: many rules, repeated sids, the validator's
verdict on each converted rule, the corpora's figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.match.rules import load_rules
from gateway.match.suricata.importer import dump_rule, import_rules
from gateway.match.suricata.parse import parse_rules_text


def test_any_ports_option_and_duplicate_sids() -> None:
    rules, _ = parse_rules_text(
        'alert tcp any any -> any any (msg:"jndi"; content:"${jndi:"; nocase; sid:5;)\n'
        'alert tcp any any -> any 80 (msg:"again"; content:"x"; sid:5;)\n'
    )
    report = import_rules(rules, any_ports=(80, 443))
    assert [c.sid for c in report.converted] == [5]
    assert report.converted[0].rule is not None and report.converted[0].rule["ports"] == [80, 443]
    assert report.skipped[0].reasons == ("sid: 5 repeated",)
    assert report.warning_histogram() == [("any ports", 1)]


def test_what_the_validator_refuses_is_skipped_with_its_reason() -> None:
    rules, _ = parse_rules_text(
        'alert tcp any any -> any 80 (content:"abcdef"; depth:2; sid:1;)\n'
        'alert tcp any any -> any 80 (pcre:"/a(b/"; sid:2;)\n'
        'alert tcp any any -> any 80 (content:"ok"; sid:3;)\n'
        'alert tcp any any -> any 80 (content:"a"; byte_jump:2,0; sid:4;)\n',
        "v.rules",
    )
    report = import_rules(rules)
    assert [c.sid for c in report.converted] == [3]
    hyperscan_says = "Missing close parenthesis for group started at index 0."
    assert [(c.sid, c.line, c.reasons) for c in report.skipped] == [
        (4, 4, ("keyword byte_jump",)),
        (1, 1, ("rejected by vpatch validation: depth 2 is shorter than the content",)),
        (2, 2, (f"pcre rejected by Hyperscan: {hyperscan_says}",)),
    ]
    assert report.histogram() == [
        ("keyword byte_jump", 1),
        ("pcre rejected by Hyperscan", 1),
        ("rejected by vpatch validation", 1),
    ]


def test_disabled_rules_are_counted_and_included_on_request() -> None:
    text = (
        '# alert tcp any any -> any 80 (content:"x"; sid:1;)\n'
        'alert tcp any any -> any 80 (content:"y"; sid:2;)\n'
    )
    rules, _ = parse_rules_text(text)
    report = import_rules(rules)
    assert (report.total, report.disabled_seen, len(report.converted)) == (1, 1, 1)
    report = import_rules(rules, include_disabled=True)
    assert (report.total, report.disabled_seen, len(report.converted)) == (2, 1, 2)


@pytest.mark.parametrize("name", ["etopen-target-cves.rules", "snort-community-target-cves.rules"])
def test_corpus_import_figures(
    name: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    corpus_rules: Callable[[str], Path],
) -> None:
    path = corpus_rules(name)
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
