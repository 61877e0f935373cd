"""gateway/forwarding.py and `vpatch run`'s refusal to start when forwarded traffic would bypass
netfilter (issue 14.1). The logic over sysctl/interface trees made here, then the real thing:
`vpatch run` in a network namespace whose own bridge-nf-call-* / ip_forward sysctls the test
sets (they are per namespace on this kernel: a new namespace starts with bridge-nf-call-* = 1
and ip_forward = 0, and setting them there leaves the root namespace alone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.control.server import control_request
from gateway.errors import VpatchError
from gateway.forwarding import (
    BypassPolicy,
    ForwardingError,
    ForwardingMode,
    check_forwarding,
    enforce,
)

REPO = Path(__file__).resolve().parents[1]
TEST_RULE = REPO / "rules" / "vpatch-test-split.yaml"


def tree(
    tmp_path: Path, values: dict[str, str], bridges: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    sysctl, sysnet = tmp_path / "sys", tmp_path / "net"
    for key, value in values.items():
        path = sysctl / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    for name in ("lo", "eth0", *bridges):
        (sysnet / name).mkdir(parents=True)
    for name in bridges:
        (sysnet / name / "bridge").mkdir()
    return sysctl, sysnet


GOOD_BRIDGE = {
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_forward": "0",
}


def test_bridge_with_br_netfilter_and_both_calls_on_is_ok(tmp_path: Path) -> None:
    check = check_forwarding(ForwardingMode.AUTO, *tree(tmp_path, GOOD_BRIDGE, ("br0",)))
    assert check.mode is ForwardingMode.BRIDGE and check.ok, check
    assert enforce(check, BypassPolicy.REFUSE) == []


@pytest.mark.parametrize("key", sorted(k for k in GOOD_BRIDGE if "bridge" in k))
def test_bridge_call_off_is_refused_naming_the_sysctl(tmp_path: Path, key: str) -> None:
    check = check_forwarding(
        ForwardingMode.AUTO, *tree(tmp_path, {**GOOD_BRIDGE, key: "0"}, ("br0",))
    )
    assert not check.ok and len(check.problems) == 1 and key in check.problems[0]
    with pytest.raises(ForwardingError, match=f"{key} is 0.*set {key}=1"):
        enforce(check, BypassPolicy.REFUSE)
    warnings = enforce(check, BypassPolicy.WARN)
    assert len(warnings) == 1 and "BYPASS" in warnings[0] and key in warnings[0]


def test_no_br_netfilter_is_refused_in_bridge_mode(tmp_path: Path) -> None:
    check = check_forwarding(ForwardingMode.BRIDGE, *tree(tmp_path, {"net.ipv4.ip_forward": "0"}))
    assert check.problems and "br_netfilter" in check.problems[0]
    assert "no bridge yet" in check.notes  # the bridge may come up after the gateway (boot)


def test_routed_needs_ip_forward(tmp_path: Path) -> None:
    dirs = tree(tmp_path, {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"})
    check = check_forwarding(ForwardingMode.ROUTED, *dirs)
    assert [p.split(" is ")[0] for p in check.problems] == ["net.ipv4.ip_forward"]
    # auto with neither a bridge nor forwarding: nothing is forwarded, so nothing bypasses
    assert check_forwarding(ForwardingMode.AUTO, *dirs).ok
    on = tree(tmp_path / "on", {"net.ipv4.ip_forward": "1"})
    assert check_forwarding(ForwardingMode.AUTO, *on).mode is ForwardingMode.ROUTED
    assert check_forwarding(ForwardingMode.AUTO, *on).ok


def test_forwarding_error_is_a_vpatch_error() -> None:
    assert issubclass(ForwardingError, VpatchError)


# -- the real `vpatch run` in a namespace ------------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _in_ns(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)


def _config(tmp_path: Path, network: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"protected_hosts: [198.18.0.20]\nrules: [{TEST_RULE}]\nqueues: {{first: 5, count: 1}}\n"
        f"events: {{sqlite: null, jsonl: null}}\ncontrol: {{socket: {tmp_path / 'c.sock'}}}\n"
        f"policy: {{database: {tmp_path / 'vpatch.db'}}}\nnetwork: {network}\n"
    )
    return path


def _run(ns: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, env=_env(), check=False,
    )  # fmt: skip


@pytest.mark.netns
def test_run_refuses_a_bridge_whose_ip6tables_call_is_off(ns: str, tmp_path: Path) -> None:
    _in_ns(ns, "ip", "link", "add", "br0", "type", "bridge")
    _in_ns(ns, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-ip6tables=0")
    before = Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables").read_text()
    r = _run(ns, _config(tmp_path, "{mode: auto}"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "net.bridge.bridge-nf-call-ip6tables is 0" in r.stderr, r.stderr
    assert "set net.bridge.bridge-nf-call-ip6tables=1" in r.stderr
    assert "iptables" not in r.stdout  # refused before any kernel rule (backend not probed)
    # the namespace's own sysctl: the root namespace kept its value
    assert Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables").read_text() == before


@pytest.mark.netns
def test_run_refuses_routed_mode_without_ip_forward(ns: str, tmp_path: Path) -> None:
    r = _run(ns, _config(tmp_path, "{mode: routed}"))
    assert r.returncode == 2 and "net.ipv4.ip_forward is 0" in r.stderr, r.stderr


@pytest.mark.netns
def test_warn_starts_and_status_reports_the_bypass(ns: str, tmp_path: Path) -> None:
    _in_ns(ns, "ip", "link", "add", "br0", "type", "bridge")
    _in_ns(ns, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0")
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "gateway.cli", "run", "-c",
             str(_config(tmp_path, "{mode: bridge, on_bypass: warn}"))],
            stdout=out, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"vpatch run: ready" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "WARNING: bridge mode: traffic may BYPASS" in log.read_text()
        fwd = control_request(tmp_path / "c.sock", "status")["forwarding"]
        assert fwd["ok"] is False and fwd["mode"] == "bridge"
        assert "net.bridge.bridge-nf-call-iptables" in fwd["problems"][0]
        # fixed while running: `status` checks again on each request
        _in_ns(ns, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
        assert control_request(tmp_path / "c.sock", "status")["forwarding"]["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, log.read_text()
