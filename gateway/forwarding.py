"""Can traffic the gateway must inspect bypass netfilter here? (checked by `vpatch run`)

`check_forwarding(mode, sysctl, sysnet)` reads this network namespace's sysctls (/proc/sys) and
its interfaces (/sys/class/net) and returns a ForwardingCheck: the mode it judged (bridge or
routed), the problems found (each naming the sysctl and the value to set) and notes. Pure
reading, no side effect; the directories are parameters so tests can point it elsewhere.

What is checked, per deployment shape (docs/install.md):
- bridge: br_netfilter is loaded (/proc/sys/net/bridge exists) and
  net.bridge.bridge-nf-call-iptables and net.bridge.bridge-nf-call-ip6tables are 1. Otherwise
  bridged IPv4 or IPv6 frames never reach the iptables FORWARD/mangle hooks where the queue and
  the firewall policy sit: they cross the bridge uninspected. These sysctls are per network
  namespace on current kernels (a new namespace starts with 1).
- routed: net.ipv4.ip_forward is 1 (otherwise nothing is routed at all: not a bypass, but a
  gateway that forwards nothing is misconfigured just the same), and
  net.ipv6.conf.all.forwarding is noted when 0 (IPv6 is then not routed, so nothing of it
  bypasses).
- auto: bridge when an interface here is a bridge (/sys/class/net/*/bridge), else routed when
  IPv4 forwarding is on; with neither, nothing is forwarded so nothing can bypass (a note, no
  problem). A bridge that comes up after the gateway is seen by `status` (re-checked on every
  request), not by start-up: installed gateways set `network.mode: bridge` explicitly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.errors import VpatchError

SYSCTL_ROOT: Final = Path("/proc/sys")
SYSNET_ROOT: Final = Path("/sys/class/net")
BRIDGE_CALLS: Final = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
IP_FORWARD: Final = "net.ipv4.ip_forward"
IP6_FORWARD: Final = "net.ipv6.conf.all.forwarding"


class ForwardingError(VpatchError):
    """Traffic the gateway must inspect would bypass netfilter (names the sysctl to fix)."""


class ForwardingMode(enum.Enum):
    """How this gateway forwards the traffic it inspects (`network.mode`)."""

    AUTO = "auto"  # bridge if a bridge exists here, else routed
    BRIDGE = "bridge"  # transparent bridge with br_netfilter
    ROUTED = "routed"  # the protected subnet's router


class BypassPolicy(enum.Enum):
    """What `vpatch run` does when traffic could bypass inspection (`network.on_bypass`)."""

    REFUSE = "refuse"  # do not start; name the sysctl to fix
    WARN = "warn"  # start, warn loudly, report it in `status` (forwarding.ok false)


@dataclass(frozen=True, slots=True)
class ForwardingCheck:
    """The verdict on this namespace: `problems` empty means nothing bypasses netfilter."""

    mode: ForwardingMode  # the mode judged (never AUTO)
    configured: ForwardingMode
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "configured": self.configured.value,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def _read(sysctl: Path, key: str) -> str | None:
    try:
        return (sysctl / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def bridges(sysnet: Path = SYSNET_ROOT) -> list[str]:
    """The bridge interfaces of this namespace."""
    try:
        return sorted(p.name for p in sysnet.iterdir() if (p / "bridge").is_dir())
    except OSError:
        return []


def _bridge_problems(sysctl: Path) -> list[str]:
    if not (sysctl / "net" / "bridge").is_dir():
        return [
            "br_netfilter is not loaded (/proc/sys/net/bridge is missing): bridged traffic "
            "bypasses iptables; run `modprobe br_netfilter` and list it in "
            "/etc/modules-load.d/br_netfilter.conf"
        ]
    problems = []
    for key in BRIDGE_CALLS:
        value = _read(sysctl, key)
        if value != "1":
            family = "IPv6" if "ip6" in key else "IPv4"
            problems.append(
                f"{key} is {value}: bridged {family} bypasses iptables; set {key}=1 "
                "(sysctl -w, and in /etc/sysctl.d/)"
            )
    return problems


def check_forwarding(
    mode: ForwardingMode, sysctl: Path = SYSCTL_ROOT, sysnet: Path = SYSNET_ROOT
) -> ForwardingCheck:
    """Judge this namespace for `mode` (see the module docstring)."""
    found = bridges(sysnet)
    forward = _read(sysctl, IP_FORWARD)
    notes: list[str] = []
    judged = mode
    if mode is ForwardingMode.AUTO:
        if found:
            judged = ForwardingMode.BRIDGE
        elif forward == "1":
            judged = ForwardingMode.ROUTED
        else:
            notes.append("no bridge and IPv4 forwarding off: this namespace forwards nothing")
            return ForwardingCheck(ForwardingMode.ROUTED, mode, (), tuple(notes))
    if judged is ForwardingMode.BRIDGE:
        notes.append(f"bridges: {', '.join(found)}" if found else "no bridge yet")
        return ForwardingCheck(judged, mode, tuple(_bridge_problems(sysctl)), tuple(notes))
    problems = []
    if forward != "1":
        problems.append(
            f"{IP_FORWARD} is {forward}: nothing is routed through this gateway; set "
            f"{IP_FORWARD}=1 (sysctl -w, and in /etc/sysctl.d/)"
        )
    if _read(sysctl, IP6_FORWARD) != "1":
        notes.append(f"{IP6_FORWARD} is off: IPv6 is not routed (nothing of it bypasses)")
    return ForwardingCheck(judged, mode, tuple(problems), tuple(notes))


def enforce(check: ForwardingCheck, policy: BypassPolicy) -> list[str]:
    """ForwardingError listing every problem under `refuse`; under `warn`, the warning lines to
    log (empty when nothing bypasses)."""
    if check.ok:
        return []
    what = "; ".join(check.problems)
    if policy is BypassPolicy.REFUSE:
        raise ForwardingError(
            f"{check.mode.value} mode: traffic would bypass inspection: {what} "
            "(network.on_bypass: warn starts anyway)"
        )
    return [
        f"WARNING: {check.mode.value} mode: traffic may BYPASS inspection: {problem} "
        "(network.on_bypass: warn; `status` reports forwarding.ok false)"
        for problem in check.problems
    ]
