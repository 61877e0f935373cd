"""Tests for gateway/commands/rules.py (`vpatch rules validate|list|show|enable|disable|
import-suricata|export-suricata`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.match.rules import default_rule_dir


def test_validate_bundled_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "Hyperscan databases" in out


def test_validate_reports_every_problem_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: 5\ntitle: t\nseverity: high\naction: block\nprotocol: tcp\nports: [80]\n"
        "patterns:\n  - content: '|GG|'\n"
    )
    assert main(["rules", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4: action 'block' must be one of: alert, drop, reset" in err
    assert f"{bad}:8: content '|GG|'" in err


def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "9000100" in out and "CVE-2017-0144" in out
    assert main(["rules", "show", "9000100", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["patterns"] == [{"content": "VPATCH-TEST-EXPLOIT-7f3a", "nocase": False}]
    rule_file = default_rule_dir() / "vpatch-test-split.yaml"
    id_line = rule_file.read_text().splitlines().index("id: 9000100") + 1
    assert shown["cve"] == ["CVE-0000-0001"] and shown["file"] == f"{rule_file}:{id_line}"
    assert main(["rules", "show", "12345"]) == 1
    assert "no rule with id 12345" in capsys.readouterr().err


def test_show_renders_binary_content_in_suricata_syntax(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "id: 5\ntitle: t\nseverity: high\naction: alert\nprotocol: tcp\nports: [445]\n"
        "patterns:\n  - content: '|FF|SMB|32 00|a\\|b'\n"
    )
    assert main(["rules", "show", "5", str(path), "--json"]) == 0
    pattern = json.loads(capsys.readouterr().out)["patterns"][0]["content"]
    assert pattern == "|FF|SMB2|00|a|7C|b"


def test_validate_reports_problems_of_several_files_and_loads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = "id: {id}\ntitle: t\nseverity: high\naction: alert\nprotocol: tcp\nports: [80]\n"
    (tmp_path / "a.yaml").write_text(good.format(id=1) + "patterns:\n  - content: x\n")
    (tmp_path / "b.yaml").write_text(good.format(id=1) + "patterns:\n  - content: y\n")
    (tmp_path / "c.yaml").write_text(
        good.format(id=3) + "app: http\nconditions:\n  - field: http.nope\n    content: x\n"
    )
    assert main(["rules", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b.yaml'}:1: id 1 already used at {tmp_path / 'a.yaml'}:1" in err
    assert f"{tmp_path / 'c.yaml'}:9: unknown field 'http.nope'" in err
    assert "2 problems" in err


def test_list_filters_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list", "--json", "--cve", "CVE-2014-0160"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed and all("CVE-2014-0160" in r["cve"] for r in listed)
    assert {r["app"] for r in listed} == {"tls"}
    assert main(["rules", "list", "--app", "smb", "--severity", "critical"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(" smb " in line and " critical " in line for line in lines)
    assert main(["rules", "show", "9000100"]) == 0
    text = capsys.readouterr().out
    assert "title:" in text and "VPATCH-TEST-EXPLOIT-7f3a" in text


def test_enable_disable_write_assignments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.policy.assignments import Assignments
    from gateway.policy.hosts import Hosts
    from gateway.policy.store import Store

    db = tmp_path / "policy.db"
    with Store(db) as store:
        Hosts(store).create_group("legacy", "old boxes", actor="test")
    assert main(["rules", "disable", "9000100", "--database", str(db)]) == 0
    assert main(["rules", "enable", "9000100", "--host", "198.18.0.20", "--mode", "detect",
                 "--database", str(db), "--reason", "staged"]) == 0  # fmt: skip
    assert main(["rules", "disable", "9000100", "--group", "legacy", "--database", str(db)]) == 0
    assert "reload to apply" in capsys.readouterr().out
    with Store(db) as store:
        got = {(a.scope, a.mode, a.source) for a in Assignments(store).list_assignments(9000100)}
        host = Hosts(store).host_by_address("198.18.0.20")
    assert got == {("global", "off", "cli"), ("host", "detect", "cli"), ("group", "off", "cli")}
    assert host is not None
    assert main(["rules", "enable", "424242", "--database", str(db)]) == 1
    assert main(["rules", "disable", "9000100", "--group", "nope", "--database", str(db)]) == 2


def test_import_suricata_writes_files_that_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.rules"
    src.write_text(
        'alert http any any -> $HOME_NET any (msg:"uri"; flow:established,to_server; '
        'http.uri; content:"/etc/passwd"; reference:cve,2021-41773; sid:1000001; rev:1;)\n'
        'alert tcp any any -> any 445 (msg:"jump"; content:"|FF|SMB"; byte_jump:2,0; '
        "sid:1000002;)\n"
        '# alert tcp any any -> any 80 (msg:"off"; content:"x"; sid:1000003;)\n'
    )
    out = tmp_path / "out"
    assert main(["rules", "import-suricata", str(src), "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"skipped sid 1000002 ({src}:2): keyword byte_jump" in report
    assert "2 rules (1 commented-out rules seen), 1 imported, 1 not imported" in report
    assert sorted(p.name for p in out.iterdir()) == ["suricata-1000001.yaml"]
    assert main(["rules", "validate", str(out)]) == 0
    assert main(["rules", "show", "1000001", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["cve"] == ["CVE-2021-41773"] and shown["app"] == "http"
    assert shown["ports"] == [80, 8000, 8008, 8080] and shown["default_mode"] == "detect"
    # stdout form: one `rules:` document
    assert main(["rules", "import-suricata", str(src), "--include-disabled"]) == 0
    captured = capsys.readouterr()
    (tmp_path / "one.yaml").write_text(captured.out)
    assert main(["rules", "validate", str(tmp_path / "one.yaml")]) == 0
    assert "3 rules" in captured.err and "2 imported" in captured.err


def test_export_suricata_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vpatch.rules"
    assert main(["rules", "export-suricata", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()
    assert "sid:9000100;" in text and "# vpatch: rule " in text and "not exported:" in text
