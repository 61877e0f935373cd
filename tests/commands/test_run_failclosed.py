"""What the kernel does while systemd restarts a failed gateway (issue 14.2, docs/install.md):
under fail_policy closed a gateway that gives up (restart budget spent) leaves its rules in
place, so the queue without a reader drops what it would inspect; the unit's ExecStopPost
(`vpatch run --cleanup --stop-post`) keeps them too while $SERVICE_RESULT says the service
failed, and removes them after a requested stop (`success`). fail_policy open is unchanged:
every exit removes the rules (tests/commands/test_run.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.control.server import control_request
from tests.commands.test_run import REPO, _config, _ours, _start, _stop


def cleanup(ns: str, cfg: Path, result: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "gateway.cli", "run", "--cleanup",
         "--stop-post", "-c", str(cfg)], capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO), SERVICE_RESULT=result),
    )  # fmt: skip


@pytest.mark.netns
def test_fail_closed_keeps_its_rules_through_a_failure(ns: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "fail_policy: closed\nqueues: {first: 4, count: 1}\n"
                  "workers: {max_restarts: 0, restart_delay: 0, standby: false}\n")  # fmt: skip
    log = tmp_path / "run.log"
    proc = _start(ns, cfg, log)
    try:
        rules = _ours(ns)
        assert any("NFQUEUE" in r for r in rules)
        pid = control_request(tmp_path / "control.sock", "status")["queues"]["4"]["pid"]
        os.kill(pid, signal.SIGKILL)  # one death is past a budget of 0: the gateway gives up
        assert proc.wait(30) == 2, log.read_text()
    finally:
        _stop(proc)
    assert "kernel rules left in place (fail_policy closed)" in log.read_text()
    assert _ours(ns) == rules  # the queue stays, with no reader: its packets are dropped
    kept = cleanup(ns, cfg, "exit-code")
    assert kept.returncode == 0 and "kernel rules kept" in kept.stdout, kept.stdout + kept.stderr
    assert _ours(ns) == rules
    removed = cleanup(ns, cfg, "success")  # a requested stop: the rules go
    assert removed.returncode == 0, removed.stderr
    assert _ours(ns) == []


@pytest.mark.netns
def test_a_requested_stop_removes_the_rules_under_fail_closed(ns: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "fail_policy: closed\nqueues: {first: 6, count: 1}\n")
    proc = _start(ns, cfg, tmp_path / "run.log")
    assert _ours(ns)
    _stop(proc)
    assert proc.returncode == 0 and _ours(ns) == []
