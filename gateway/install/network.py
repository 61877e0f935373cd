"""The boot-time network configuration of a gateway (`vpatch install-network`).

`render_network(plan)` returns the files (path under the target root -> text) that make a
transparent bridge or a router survive a reboot, in the system's own format; `write_files(files,
root)` puts them under `root` (/ on a real machine, a temporary directory in tests).

Bridge (`NetworkPlan.mode` bridge):
- /etc/modules-load.d/br_netfilter.conf: br_netfilter is loaded at boot (systemd-modules-load
  runs before systemd-sysctl, and systemd's udev rule applies net.bridge.* again when the module
  loads later);
- /etc/sysctl.d/90-vpatch.conf: bridge-nf-call-iptables/ip6tables = 1 (bridged traffic passes
  the iptables hooks where the queue sits), arptables 0, no IPv6 on the bridge and its ports;
- systemd-networkd: <bridge>.netdev (STP off, no forward delay) and a .network for the bridge
  (no address, no DHCP, no IPv6 link-local: the gateway is invisible) and for each port; or
  ifupdown: /etc/network/interfaces.d/vpatch-<bridge> (bridge-utils' bridge_ports);
- ordering: vpatch.service is `Before=network-pre.target` (the unit file), so networkd or
  ifupdown bring the bridge up only once the gateway is ready (Type=notify: its rules are
  applied and its workers bound). Ordering alone does not stop the bridge when the gateway
  failed to start, so under `fail_closed` the ports are not brought up by the network manager
  (networkd `ActivationPolicy=manual`; ifupdown: the bridge's `pre-up` requires vpatch.service
  active) and a drop-in for vpatch.service (`vpatch.service.d/bridge-ports.conf`) sets them up
  once the gateway is ready. The gateway never going up then means nothing is forwarded.

Router (`routed`): /etc/sysctl.d/90-vpatch.conf with IPv4 and IPv6 forwarding; the addresses
and routes stay the administrator's (their existing configuration).

Every file starts with a comment naming vpatch, so `--uninstall` and an admin can tell ours.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import VpatchError
from gateway.forwarding import BRIDGE_CALLS, IP6_FORWARD, IP_FORWARD, ForwardingMode

HEADER = "# written by `vpatch install-network` (docs/install.md); remove with --uninstall\n"
IFACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")  # IFNAMSIZ - 1 characters
NETWORKD_DIR = "etc/systemd/network"
IFUPDOWN_DIR = "etc/network/interfaces.d"
SYSCTL_FILE = "etc/sysctl.d/90-vpatch.conf"
MODULES_FILE = "etc/modules-load.d/br_netfilter.conf"
DROPIN_FILE = "etc/systemd/system/vpatch.service.d/bridge-ports.conf"
IP = "/sbin/ip"  # iproute2 ships it there and in /bin, merged /usr or not


class InstallError(VpatchError):
    """The install step cannot do what was asked (names the value and why)."""


class NetFormat(enum.Enum):
    """Which network manager's files to write."""

    NETWORKD = "networkd"  # systemd-networkd .netdev/.network
    IFUPDOWN = "ifupdown"  # /etc/network/interfaces.d (needs bridge-utils)


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    mode: ForwardingMode  # BRIDGE or ROUTED
    bridge: str = "br0"
    ports: tuple[str, ...] = ()
    fmt: NetFormat = NetFormat.NETWORKD
    fail_closed: bool = False

    def check(self) -> None:
        if self.mode is ForwardingMode.AUTO:
            raise InstallError("install-network: --mode must be bridge or routed, not auto")
        if self.mode is ForwardingMode.ROUTED:
            return
        if len(self.ports) < 2:
            raise InstallError(f"install-network: a bridge needs two ports, got {list(self.ports)}")
        for name in (self.bridge, *self.ports):
            if not IFACE_NAME.match(name):
                raise InstallError(f"install-network: {name!r} is not an interface name")
        if self.bridge in self.ports or len(set(self.ports)) != len(self.ports):
            raise InstallError(
                f"install-network: bridge {self.bridge!r} and ports {list(self.ports)} must "
                "all differ"
            )


def _sysctls(plan: NetworkPlan) -> str:
    if plan.mode is ForwardingMode.ROUTED:
        lines = [f"{IP_FORWARD} = 1", f"{IP6_FORWARD} = 1"]
    else:
        lines = [f"{key} = 1" for key in BRIDGE_CALLS]
        lines.append("net.bridge.bridge-nf-call-arptables = 0")
    return HEADER + "".join(f"{line}\n" for line in lines)


def _networkd(plan: NetworkPlan) -> dict[str, str]:
    br = plan.bridge
    files = {
        f"{NETWORKD_DIR}/50-vpatch-{br}.netdev": (
            f"{HEADER}[NetDev]\nName={br}\nKind=bridge\n\n[Bridge]\nSTP=no\nForwardDelaySec=0\n"
        ),
        f"{NETWORKD_DIR}/50-vpatch-{br}.network": (
            f"{HEADER}# the bridge has no address of any kind: the gateway is invisible\n"
            f"[Match]\nName={br}\n\n[Network]\nDHCP=no\nLinkLocalAddressing=no\n"
            "IPv6AcceptRA=no\nConfigureWithoutCarrier=yes\n"
        ),
    }
    policy = "manual" if plan.fail_closed else "up"
    for port in plan.ports:
        files[f"{NETWORKD_DIR}/50-vpatch-{port}.network"] = (
            f"{HEADER}[Match]\nName={port}\n\n[Link]\nActivationPolicy={policy}\n\n"
            f"[Network]\nBridge={br}\nDHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
    return files


def _ifupdown(plan: NetworkPlan) -> dict[str, str]:
    br = plan.bridge
    lines = [HEADER.rstrip("\n"), f"auto {br}", f"iface {br} inet manual",
             f"    bridge_ports {' '.join(plan.ports)}", "    bridge_stp off", "    bridge_fd 0",
             "    bridge_maxwait 0"]  # fmt: skip
    if plan.fail_closed:
        lines.append("    pre-up systemctl is-active --quiet vpatch.service")
    return {f"{IFUPDOWN_DIR}/vpatch-{br}": "\n".join(lines) + "\n"}


def _dropin(plan: NetworkPlan) -> str:
    ups = "".join(f"ExecStartPost={IP} link set dev {port} up\n" for port in plan.ports)
    return (
        f"{HEADER}# fail-closed: the bridge ports come up only once the gateway is ready\n"
        f"[Service]\n{ups}"
    )


def render_network(plan: NetworkPlan) -> dict[str, str]:
    """The files for `plan`: path relative to the target root -> content."""
    plan.check()
    files = {SYSCTL_FILE: _sysctls(plan)}
    if plan.mode is ForwardingMode.ROUTED:
        return files
    files[MODULES_FILE] = HEADER + "br_netfilter\n"
    files.update(_networkd(plan) if plan.fmt is NetFormat.NETWORKD else _ifupdown(plan))
    if plan.fail_closed and plan.fmt is NetFormat.NETWORKD:
        files[DROPIN_FILE] = _dropin(plan)
    return files


def write_files(files: dict[str, str], root: Path) -> list[Path]:
    """Write each file under root (directories made 0755, files 0644); the paths written."""
    written = []
    for rel, text in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written


def ours(root: Path) -> list[Path]:
    """Every file under root this module writes (recognised by its header)."""
    found = []
    patterns = (SYSCTL_FILE, MODULES_FILE, DROPIN_FILE, f"{NETWORKD_DIR}/50-vpatch-*",
                f"{IFUPDOWN_DIR}/vpatch-*")  # fmt: skip
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and path.read_text(errors="replace").startswith(HEADER):
                found.append(path)
    return found


def set_config_mode(config: Path, mode: ForwardingMode) -> bool:
    """Add `network: {mode: ...}` to a gateway config that has no `network` key (True when it
    was added; a config that says something already is left as it is)."""
    text = config.read_text() if config.exists() else ""
    if re.search(r"^network\s*:", text, re.MULTILINE):
        return False
    sep = "" if not text or text.endswith("\n") else "\n"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"{text}{sep}network: {{mode: {mode.value}}}  # vpatch install-network\n")
    return True
