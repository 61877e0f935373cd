"""Tests for gateway/commands/replay.py (`vpatch replay`) over the real capture corpora."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.intake.pcap import read_capture

ETERNALBLUE = Path("attacks") / "eternalblue-success-unpatched-win7.pcap"


def run_replay(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[dict[str, object]], str]:
    status = main(["replay", *args])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_eternalblue_capture_reports_cve_2017_0144(
    corpora: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, events, err = run_replay(capsys, str(corpora / ETERNALBLUE))
    assert status == 0 and err == ""
    assert events
    for eve in events:
        alert = eve["alert"]
        assert isinstance(alert, dict)
        assert "CVE-2017-0144" in alert["metadata"]["cve"]
        assert alert["action"] == "blocked" and eve["dest_port"] == 445
        assert eve["event_type"] == "alert" and eve["proto"] == "TCP" and eve["app_proto"] == "smb"
        assert str(eve["timestamp"]).startswith("2017-04-16T")  # capture time, not wall clock


def test_no_event_on_any_benign_capture(corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captures = sorted(
        p
        for p in (corpora / "benign").rglob("*")
        if p.is_file() and p.suffix in (".pcap", ".pcapng")
    )
    assert len(captures) > 100 and any(p.suffix == ".pcapng" for p in captures)
    status, events, err = run_replay(capsys, "--stats", *map(str, captures))
    assert events == [], [(e["src_ip"], e["alert"]) for e in events]
    stats = [json.loads(line) for line in err.splitlines()]
    assert len(stats) == len(captures) and status == 0
    assert sum(s["internal_errors"] for s in stats) == 0
    smb = [s for s in stats if "/smb/" in s["capture"]]
    assert sum(s["flows_inspected"] for s in smb) > 20  # the SMB rules really looked at them


def test_truncated_capture_reports_events_then_error_and_goes_on(
    corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = corpora / ETERNALBLUE
    records = list(read_capture(source))
    cut = records[30].offset + 30  # inside record 30, after the exploit's first packets
    truncated = tmp_path / "truncated.pcap"
    truncated.write_bytes(source.read_bytes()[:cut])
    status, events, err = run_replay(capsys, str(truncated), str(source))
    assert status == 2
    assert str(truncated) in err and "offset" in err and str(cut - 14) in err
    assert err.count("\n") == 1
    # events from before the damage, then the whole second file
    assert len(events) >= 2
    assert events[0]["timestamp"] == events[1]["timestamp"]


def test_missing_capture_and_eve_file(
    corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eve = tmp_path / "eve.json"
    status, events, err = run_replay(
        capsys, "--eve", str(eve), str(tmp_path / "absent.pcap"), str(corpora / ETERNALBLUE)
    )
    assert status == 2 and "absent.pcap" in err and events
    assert [json.loads(x) for x in eve.read_text().splitlines()] == events


def test_rules_option_and_bad_rules(
    corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_split = Path(__file__).resolve().parents[2] / "rules" / "vpatch-test-split.yaml"
    status, events, _ = run_replay(capsys, "--rules", str(only_split), str(corpora / ETERNALBLUE))
    assert status == 0 and events == []  # the SMB rules were not loaded
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: 1\n")
    status, events, err = run_replay(capsys, "--rules", str(bad), str(corpora / ETERNALBLUE))
    assert status == 2 and events == [] and f"{bad}:1: missing required key" in err


def test_command_line_entry_point(corpora: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "replay", str(corpora / ETERNALBLUE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert proc.returncode == 0 and "CVE-2017-0144" in proc.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "replay", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    ).stdout
    assert "--rules" in help_text and "--eve" in help_text and "PCAP" in help_text


def test_attacks_and_malformed_never_break_the_engine(
    corpora: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captures = sorted(
        p
        for sub in ("attacks", "malformed")
        for p in (corpora / sub).rglob("*")
        if p.is_file() and p.suffix in (".pcap", ".pcapng")
    )
    status, _events, err = run_replay(capsys, "--stats", *map(str, captures))
    stats = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(stats) == len(captures)
    assert sum(s["internal_errors"] for s in stats) == 0
    # malformed traffic exploits none of the target vulnerabilities: no virtual patch fires on it
    # (which attack capture yields which CVE is tests/rules/test_corpus.py's business)
    assert [s["capture"] for s in stats if s["events"] and "/malformed/" in s["capture"]] == []
    assert any(s["events"] for s in stats if "eternalblue" in s["capture"])
    assert status == 0  # every one of these captures reads to its end


def test_config_file_supplies_rules_and_depth(
    corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_split = Path(__file__).resolve().parents[2] / "rules" / "vpatch-test-split.yaml"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"rules: [{only_split}]\n")
    status, events, _ = run_replay(capsys, "-c", str(config), str(corpora / ETERNALBLUE))
    assert status == 0 and events == []
    config.write_text("stream_depth: {to_server: 100, to_client: 0}\n")  # bundled rules, tiny depth
    status, events, _ = run_replay(capsys, "-c", str(config), str(corpora / ETERNALBLUE))
    assert status == 0 and events == []  # the exploit sits past the first 100 bytes
    config.write_text("stream_depth: {to_server: 1048576, to_client: 0}\n")
    status, events, _ = run_replay(capsys, "-c", str(config), str(corpora / ETERNALBLUE))
    assert status == 0 and events
