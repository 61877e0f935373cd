"""Recommendation: version constraints, feature matching, assign/keep/unassign with evidence,
against the test rules in tests/data/lifecycle/ (which carry `affected`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import RuleError
from gateway.scan.probes import Evidence, FeatureCheck, Finding
from gateway.scan.recommend import (
    RecAction,
    load_affected,
    recommend,
    version_key,
    version_matches,
)
from gateway.scan.scanner import ScanResult

RULES = Path(__file__).resolve().parents[1] / "data" / "lifecycle"


@pytest.mark.parametrize(
    ("version", "constraint", "expected"),
    [
        ("6.0", "<=6.0", True),
        ("6.0", "<6.0", False),
        ("2.4.49", ">=2.4.49,<2.4.51", True),
        ("2.4.51", ">=2.4.49,<2.4.51", False),
        ("9.18.49-1~deb12u3", ">=9.18.0,<9.19", True),
        ("1.22.1", "<1.23", True),
        ("1.23", "<1.23", False),
        ("1.22.1", "!=1.22.1", False),
        ("4.17.12", "4.17.12", True),
        ("9.2p1", ">9.2", False),
        ("10", ">9.99", True),
    ],
)
def test_version_matches(version: str, constraint: str, expected: bool) -> None:
    assert version_matches(version, constraint) is expected


def test_version_key_and_bad_constraint() -> None:
    assert version_key("9.18.49-1~deb12u3-Debian") == (9, 18, 49)
    assert version_key("unknown") == ()
    with pytest.raises(RuleError, match="'~>1.0'"):
        version_matches("1.0", "~>1.0")


def _smb(smb1: bool) -> Finding:
    return Finding(
        445,
        "tcp",
        "smb",
        "samba",
        "4.17.12",
        features=(
            FeatureCheck(
                "smb1",
                smb1,
                Evidence("SMB1 NEGOTIATE", "accepted" if smb1 else "connection closed"),
            ),
        ),
        evidence=(Evidence("SMB1 SESSION_SETUP_ANDX", "NativeLanMan 'Samba 4.17.12'"),),
    )


def _nginx(version: str, dav: bool) -> Finding:
    return Finding(
        80,
        "tcp",
        "http",
        "nginx",
        version,
        features=(FeatureCheck("webdav", dav, Evidence("HTTP MKCOL", "409")),),
        evidence=(Evidence("HTTP GET /", f"Server: nginx/{version}"),),
    )


def _result(*findings: Finding) -> ScanResult:
    return ScanResult("198.18.0.20", 0.0, 1.0, (80, 445), findings, ())


def test_load_affected_reads_test_rules() -> None:
    rules = {r.rule_id: r for r in load_affected([RULES])}
    assert set(rules) >= {9105001, 9105002, 9105003, 9105004, 9105005, 9105006}
    assert rules[9105005].affected[0].versions == ("<=6.0",)
    assert rules[9105001].affected[0].features == ("smb1",)


def test_load_affected_names_file_and_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: 5\ntitle: x\naffected:\n  - product: nginx\n    versions: ['=>1']\n")
    with pytest.raises(RuleError, match=r"bad\.yaml: rule 5: affected\[0\]"):
        load_affected([bad])


def test_assign_keep_unassign_with_evidence() -> None:
    rules = load_affected([RULES])
    recs = {r.rule_id: r for r in recommend(_result(_smb(True), _nginx("1.22.1", False)), rules)}
    assert recs[9105001].action is RecAction.ASSIGN
    assert any("accepted" in e.saw for e in recs[9105001].evidence)
    assert recs[9105003].action is RecAction.ASSIGN  # nginx < 1.23
    assert 9105002 not in recs  # no WebDAV seen
    assert 9105005 not in recs and 9105006 not in recs  # IIS; nginx < 1.20
    # SMB1 refused afterwards: the assigned SMB1 rule is recommended for removal, with why
    later = {
        r.rule_id: r
        for r in recommend(
            _result(_smb(False), _nginx("1.22.1", True)), rules, assigned=[9105001, 9105003]
        )
    }
    assert later[9105001].action is RecAction.UNASSIGN
    assert any("smb1 absent: connection closed" in e.saw for e in later[9105001].evidence)
    assert later[9105003].action is RecAction.KEEP
    assert later[9105002].action is RecAction.ASSIGN


def test_unassign_when_product_gone_or_patched() -> None:
    rules = load_affected([RULES])
    recs = {
        r.rule_id: r
        for r in recommend(_result(_nginx("1.25.0", False)), rules, assigned=[9105001, 9105003])
    }
    assert recs[9105003].action is RecAction.UNASSIGN
    assert any("outside <1.23" in e.saw for e in recs[9105003].evidence)
    assert recs[9105001].action is RecAction.UNASSIGN
    assert any("no service identified as" in e.saw for e in recs[9105001].evidence)


def test_generic_smb_server_is_judged_by_its_features() -> None:
    """An SMB server refusing SMB1 does not reveal Samba/Windows; smb1 absence still retires."""
    rules = load_affected([RULES])
    generic = Finding(
        445,
        "tcp",
        "smb",
        "smb",
        None,
        features=(FeatureCheck("smb1", False, Evidence("SMB1 NEGOTIATE", "connection closed")),),
    )
    recs = {r.rule_id: r for r in recommend(_result(generic), rules, assigned=[9105001])}
    assert recs[9105001].action is RecAction.UNASSIGN
    assert any("smb1 absent" in e.saw for e in recs[9105001].evidence)
