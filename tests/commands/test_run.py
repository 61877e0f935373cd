"""`vpatch run`: start-up errors, --print-rules, --cleanup, worker supervision, exit cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.control.server import control_request

REPO = Path(__file__).resolve().parents[2]
TEST_RULE = REPO / "rules" / "vpatch-test-split.yaml"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def vpatch(
    *args: str, ns: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "gateway.cli", *args],
        check=False, capture_output=True, text=True, timeout=timeout, env=_env(),
    )  # fmt: skip


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"protected_hosts: [198.18.0.20, '2001:2::20']\nrules: [{TEST_RULE}]\n"
        f"events: {{sqlite: null, jsonl: {tmp_path / 'eve.json'}}}\n"
        f"control: {{socket: {tmp_path / 'control.sock'}}}\n" + extra
    )
    return path


def test_print_rules(tmp_path: Path) -> None:
    r = vpatch("run", "-c", str(_config(tmp_path, "fail_policy: closed\n")), "--print-rules")
    assert r.returncode == 0, r.stderr
    assert "add vpatch-tcp-srv 80" in r.stdout
    assert "add vpatch-hosts6 2001:2::20/128" in r.stdout
    # closed: no bypass; two queues, flows spread by hash
    assert "-A VPATCH-QUEUE -m mark --mark 0x4000001 -j NFQUEUE --queue-num 1\n" in r.stdout


def test_config_error_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("queues:\n  first: 0\n  cuont: 2\n")
    r = vpatch("run", "-c", str(bad), "--print-rules")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"vpatch run: error: {bad}:3: queues.cuont: unknown key "
        "(allowed: balance, count, first, max_len, verdict_batch)"
    )


def test_bad_rule_fails_fast(tmp_path: Path) -> None:
    rule = tmp_path / "bad-rule.yaml"
    rule.write_text("id: 1\ntitle: broken\naction: explode\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"protected_hosts: [198.18.0.20]\nrules: [{rule}]\n")
    r = vpatch("run", "-c", str(cfg), "--print-rules")
    assert r.returncode == 2
    assert str(rule) in r.stderr


def _ours(ns: str) -> list[str]:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = subprocess.run(
            ["ip", "netns", "exec", ns, tool], check=False, capture_output=True, text=True
        ).stdout
        out += [x for x in text.splitlines() if "VPATCH" in x]
    sets = subprocess.run(
        ["ip", "netns", "exec", ns, "ipset", "list", "-n"],
        check=False,
        capture_output=True,
        text=True,
    )
    return out + [x for x in sets.stdout.split() if x.startswith("vpatch-")]


def _start(ns: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while b"vpatch run: ready" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.netns
def test_restart_budget_exhausted_exits_and_removes_rules(ns: str, tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, "queues: {first: 3, count: 1}\nworkers: {max_restarts: 1, restart_delay: 0}\n"
    )
    log = tmp_path / "run.log"
    proc = _start(ns, cfg, log)
    try:
        assert _ours(ns)
        sock = tmp_path / "control.sock"
        for round_ in range(2):
            deadline = time.monotonic() + 30
            while True:
                q = control_request(sock, "status")["queues"]["3"]
                if q["bound"] and q["alive"]:
                    break
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            os.kill(q["pid"], signal.SIGKILL)
            if round_ == 0:
                deadline = time.monotonic() + 30
                while control_request(sock, "status")["queues"]["3"]["restarts"] < 1:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
        assert proc.wait(30) == 2
        text = log.read_text()
        assert "died 2 times" in text and "giving up" in text
        assert _ours(ns) == []
    finally:
        _stop(proc)


@pytest.mark.netns
def test_status_over_control_socket_and_sigterm(ns: str, tmp_path: Path) -> None:
    proc = _start(ns, _config(tmp_path), tmp_path / "run.log")
    try:
        status = control_request(tmp_path / "control.sock", "status")
        assert set(status["queues"]) == {"0", "1"}
        assert all(q["bound"] == 1 for q in status["queues"].values())
        assert json.dumps(status)  # JSON-ready for the UI
    finally:
        _stop(proc)
    assert proc.returncode == 0
    assert _ours(ns) == []


@pytest.mark.netns
def test_cleanup_when_nothing_there(ns: str, tmp_path: Path) -> None:
    r = vpatch("run", "--cleanup", "-c", str(_config(tmp_path)), ns=ns)
    assert r.returncode == 0, r.stderr
    assert "nothing to remove" in r.stdout
