"""`vpatch install-network` (issue 14.1): the bridge in systemd-networkd or ifupdown format, the
sysctls and br_netfilter at boot, written into a temporary root; fail-closed ports that only the
gateway's unit brings up; the gateway config told the mode; uninstall leaves nothing. Then the
rendered sysctl file applied inside a network namespace (`sysctl -p`) with a bridge: the
configuration it produces passes `vpatch run`'s check, and the same namespace with the file's
bridge-nf-call-iptables line at 0 is refused (the gateway started by hand on the installed
files, since systemd cannot run here)."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.forwarding import ForwardingMode
from gateway.install.network import InstallError, NetFormat, NetworkPlan, render_network

REPO = Path(__file__).resolve().parents[2]
TEST_RULE = REPO / "rules" / "vpatch-test-split.yaml"


def vpatch(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
        timeout=60, check=False, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


def ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_networkd_bridge_fail_closed_then_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/vpatch").mkdir(parents=True)
    (root / "etc/vpatch/gateway.yaml").write_text("fail_policy: closed\n")
    r = vpatch("install-network", "--ports", "enp1s0", "enp2s0", "--fail-closed",
               "--root", str(root), "--config", "/etc/vpatch/gateway.yaml")  # fmt: skip
    assert r.returncode == 0, r.stderr
    net = root / "etc/systemd/network"
    assert ini(net / "50-vpatch-br0.netdev")["NetDev"]["Kind"] == "bridge"
    assert ini(net / "50-vpatch-br0.network")["Network"]["LinkLocalAddressing"] == "no"
    for port in ("enp1s0", "enp2s0"):
        unit = ini(net / f"50-vpatch-{port}.network")
        assert unit["Network"]["Bridge"] == "br0"
        assert unit["Link"]["ActivationPolicy"] == "manual"  # networkd never brings it up
    dropin = ini(root / "etc/systemd/system/vpatch.service.d/bridge-ports.conf")
    assert dropin["Service"]["ExecStartPost"].endswith("link set dev enp2s0 up")
    assert (root / "etc/modules-load.d/br_netfilter.conf").read_text().splitlines()[
        -1
    ] == "br_netfilter"
    sysctl = (root / "etc/sysctl.d/90-vpatch.conf").read_text()
    assert "net.bridge.bridge-nf-call-iptables = 1" in sysctl
    assert "net.bridge.bridge-nf-call-ip6tables = 1" in sysctl
    config = load_config(root / "etc/vpatch/gateway.yaml")
    assert config.network.mode is ForwardingMode.BRIDGE and config.fail_policy.value == "closed"

    r = vpatch("install-network", "--uninstall", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert files(root) == {"etc/vpatch/gateway.yaml"}


def test_ifupdown_and_routed(tmp_path: Path) -> None:
    plan = NetworkPlan(ForwardingMode.BRIDGE, "br1", ("eth1", "eth2"), NetFormat.IFUPDOWN, True)
    out = render_network(plan)
    stanza = out["etc/network/interfaces.d/vpatch-br1"]
    assert "bridge_ports eth1 eth2" in stanza and "pre-up systemctl is-active" in stanza
    assert not any(k.startswith("etc/systemd") for k in out)
    routed = render_network(NetworkPlan(ForwardingMode.ROUTED))
    assert list(routed) == ["etc/sysctl.d/90-vpatch.conf"]
    assert "net.ipv4.ip_forward = 1" in routed["etc/sysctl.d/90-vpatch.conf"]
    for bad in (NetworkPlan(ForwardingMode.BRIDGE, ports=("eth1",)),
                NetworkPlan(ForwardingMode.BRIDGE, ports=("eth1", "eth1")),
                NetworkPlan(ForwardingMode.BRIDGE, ports=("eth1", "bad name")),
                NetworkPlan(ForwardingMode.AUTO)):  # fmt: skip
        with pytest.raises(InstallError):
            render_network(bad)


@pytest.mark.netns
def test_installed_sysctls_pass_the_check_and_a_zero_is_refused(ns: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = vpatch("install-network", "--ports", "vp0", "vp1", "--root", str(root),
               "--config", "/etc/vpatch/gateway.yaml")  # fmt: skip
    assert r.returncode == 0, r.stderr
    cfg = root / "etc/vpatch/gateway.yaml"
    cfg.write_text(cfg.read_text() + (
        f"protected_hosts: [198.18.0.20]\nrules: [{TEST_RULE}]\nqueues: {{first: 9, count: 1}}\n"
        f"events: {{sqlite: null, jsonl: null}}\ncontrol: {{socket: {tmp_path / 'c.sock'}}}\n"
        f"policy: {{database: {tmp_path / 'vpatch.db'}}}\n"
    ))  # fmt: skip
    sysctl = root / "etc/sysctl.d/90-vpatch.conf"
    netns = ["ip", "netns", "exec", ns]
    subprocess.run([*netns, "ip", "link", "add", "br0", "type", "bridge"], check=True)
    # as at a boot where the sysctl file was not applied: both calls off
    for key in ("iptables", "ip6tables"):
        subprocess.run([*netns, "sysctl", "-q", "-w", f"net.bridge.bridge-nf-call-{key}=0"],
                       check=True)  # fmt: skip
    r = subprocess.run([*netns, sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, check=False,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert r.returncode == 2 and "net.bridge.bridge-nf-call-iptables is 0" in r.stderr, r.stderr
    # what systemd-sysctl does at boot with the installed file
    applied = subprocess.run([*netns, "sysctl", "-p", str(sysctl)], capture_output=True, text=True,
                             check=False)  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert "bridge-nf-call-iptables = 1" in applied.stdout
    ok = subprocess.run([*netns, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables",
                         "/proc/sys/net/bridge/bridge-nf-call-ip6tables"],
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert ok.stdout.split() == ["1", "1"]
