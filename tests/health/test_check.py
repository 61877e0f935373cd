"""gateway/health/check.py and `vpatch health check`: a real control socket (ControlServer
answering `status`), a real webhook receiver, the state file in tmp_path. Held: an alert
only when a condition changes (raised, then resolved), severity-filtered per channel, kept
and sent at the next check when the receiver failed; a failed rule-pack update is alerted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gateway.alerts.channels import save_channel
from gateway.cli import main
from gateway.config import load_config
from gateway.control.server import ControlServer
from gateway.health.check import run_check
from gateway.policy.store import Store
from gateway.rulepack import record_update
from tests.alerts.conftest import wait_for
from tests.health.test_checks import status


def config(tmp_path: Path, **health: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "control": {"socket": str(tmp_path / "run" / "control.sock")},
        "policy": {"database": str(tmp_path / "policy.db")},
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": None},
        "rule_pack": {"dir": str(tmp_path / "packs")},
        "health": {"state": str(tmp_path / "health-state.json"), **health},
    }))  # fmt: skip
    return path


def channel(tmp_path: Path, url: str, name: str = "hook", min_severity: int = 3) -> None:
    with Store(tmp_path / "policy.db") as store:
        save_channel(store, {"name": name, "kind": "webhook", "url": url,
                             "min_severity": min_severity}, "test")  # fmt: skip


def bodies(webhook: Any) -> list[dict[str, Any]]:
    return [json.loads(body) for _headers, body in webhook.requests]


def test_unreachable_then_resolved_once_each(tmp_path: Path, webhook: Any) -> None:
    cfg = load_config(config(tmp_path))
    channel(tmp_path, webhook.url)
    server = ControlServer(cfg.control.socket, {"status": lambda _r: status()})
    server.start()
    try:
        first = run_check(cfg)
        assert first.failing == {} and first.sent == 0
    finally:
        server.stop()
    down = run_check(cfg)
    assert [c.condition.value for c in down.changes] == ["gateway_unreachable"]
    got = bodies(webhook)
    assert len(got) == 1 and got[0]["type"] == "health" and got[0]["severity"] == 1
    assert got[0]["title"] == "health: gateway unreachable"
    assert got[0]["event"]["health"] == {
        **got[0]["event"]["health"],
        "condition": "gateway_unreachable",
        "state": "failing",
    }
    assert run_check(cfg).changes == ()  # still down: no second alert
    assert len(webhook.requests) == 1
    server = ControlServer(cfg.control.socket, {"status": lambda _r: status(uptime=5)})
    server.start()
    try:
        back = run_check(cfg)
    finally:
        server.stop()
    titles = sorted(b["title"] for b in bodies(webhook)[1:])
    assert titles == ["health: gateway restarted", "resolved: gateway unreachable"]
    assert back.state.conditions  # every condition has a state


def test_undelivered_alert_sent_at_the_next_check(tmp_path: Path, webhook: Any) -> None:
    cfg = load_config(config(tmp_path))
    channel(tmp_path, webhook.url)
    webhook.status = 500
    failed = run_check(cfg)
    assert failed.sent == 0 and failed.undelivered == 1 and len(webhook.requests) == 1
    webhook.status = 204
    again = run_check(cfg)
    assert again.changes == () and again.sent == 1 and again.undelivered == 0
    assert bodies(webhook)[-1]["title"] == "health: gateway unreachable"


def test_severity_filter_and_rule_update(tmp_path: Path, webhook: Any) -> None:
    cfg = load_config(config(tmp_path))
    channel(tmp_path, webhook.url, "critical-only", min_severity=1)
    server = ControlServer(cfg.control.socket, {"status": lambda _r: status()})
    server.start()
    try:
        run_check(cfg)
        record_update(cfg.rule_pack.dir, "https://packs.example/p.tgz", "SHA-256 mismatch")
        result = run_check(cfg)
        assert [c.condition.value for c in result.changes] == ["rule_update"]
        assert result.sent == 0  # severity 2 is not for a channel that takes only 1
        channel(tmp_path, webhook.url, "all")
        record_update(cfg.rule_pack.dir, "https://packs.example/p.tgz")  # it worked now
        resolved = run_check(cfg)
    finally:
        server.stop()
    assert [c.condition.value for c in resolved.changes] == ["rule_update"]
    assert [b["title"] for b in wait_for(bodies(webhook))] == ["resolved: rule update failed"]
    assert "SHA-256 mismatch" in bodies(webhook)[0]["text"]


def test_command_exit_status_and_show(tmp_path: Path, capsys: Any) -> None:
    path = config(tmp_path)
    assert main(["health", "check", "-c", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert list(out["failing"]) == ["gateway_unreachable"] and out["changes"][0]["failing"]
    assert main(["health", "show", "-c", str(path)]) == 1
    assert "gateway_unreachable: no control socket" in capsys.readouterr().out
    cfg = load_config(path)
    server = ControlServer(cfg.control.socket, {"status": lambda _r: status()})
    server.start()
    try:
        assert main(["health", "check", "-c", str(path)]) == 0
    finally:
        server.stop()
    assert "resolved: gateway_unreachable" in capsys.readouterr().out
