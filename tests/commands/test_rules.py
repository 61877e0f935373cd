"""Tests for gateway/commands/rules.py (`vpatch rules validate|list|show`)."""

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
    assert main(["rules", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: action 'block' must be one of: alert, drop, reset" in err
    assert f"{bad}:8: content '|GG|'" in err


def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "9000100" in out and "CVE-2017-0144" in out
    assert main(["rules", "show", "9000100"]) == 0
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
    assert main(["rules", "show", "5", str(path)]) == 0
    pattern = json.loads(capsys.readouterr().out)["patterns"][0]["content"]
    assert pattern == "|FF|SMB2|00|a|7C|b"
