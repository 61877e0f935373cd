"""Read the kernel's counters of what the firewall policy and the host modes refused and logged.

What it does: `read_drop_counts(backend, prefix)` runs `iptables-save -c -t filter` (and the
ip6tables one) and sums, per source of drop events, the packet counters of the logging rule
(`-j NFLOG`, rate-limited: gateway/firewall/droplog.py) and of the refusing rules after it
(`-j DROP` / `-j REJECT`): firewall rule N (`fw:N`, its lines carry `--comment fwN`), setup
protection (`setup:in`, `setup:out`) and lockdown (`lockdown`). `refused - logged` is what
the kernel's rate limit kept from the event log (`suppressed`); the events' `vpatch.count`
sums to `logged` (less what the reader lost, gateway/lifecycle/nflog.py `overruns`).

What it guarantees: parsing is pure (`parse_drop_counts`); reading never raises (a tool that
fails gives `available = False` and no counters). The counters start at 0 when the chains are
created (each `vpatch run`); a `reload` that rewrites a chain starts its counters again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from gateway.errors import FirewallError
from gateway.firewall.apply import BackendInfo, run_cmd

__all__ = ["DropCount", "DropCounts", "parse_drop_counts", "read_drop_counts"]

_COUNTED: Final = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")
_COMMENT: Final = re.compile(r'--comment "?fw(\d+)"?(?: |$)')


@dataclass(frozen=True, slots=True)
class DropCount:
    logged: int = 0  # packets copied to NFLOG (what the events count)
    refused: int = 0  # packets dropped or rejected

    @property
    def suppressed(self) -> int:
        """Refused packets the rate limit kept from the log (0 for `log` rules)."""
        return max(self.refused - self.logged, 0)


@dataclass(frozen=True, slots=True)
class DropCounts:
    counts: dict[str, DropCount] = field(default_factory=dict)
    available: bool = False  # False: the counters could not be read

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            key: {"logged": c.logged, "refused": c.refused, "suppressed": c.suppressed}
            for key, c in sorted(self.counts.items())
        }


def _key(chain: str, rest: str, prefix: str) -> str | None:
    """Which source of drop events a rule line of ours counts for (None: none)."""
    if chain == f"{prefix}-FW":
        m = _COMMENT.search(rest)
        return f"fw:{m.group(1)}" if m else None
    if chain == f"{prefix}-HM-SETUP-IN":
        return "setup:in"
    if chain == f"{prefix}-HM-SETUP-OUT":
        return "setup:out"
    if chain == f"{prefix}-HM-LOCK":
        return "lockdown"
    return None


def parse_drop_counts(save_text: str, prefix: str, into: dict[str, DropCount]) -> None:
    """Add the counters of `iptables-save -c` text to `into` (key -> DropCount)."""
    for line in save_text.splitlines():
        m = _COUNTED.match(line)
        if m is None:
            continue
        key = _key(m.group(3), m.group(4), prefix)
        if key is None:
            continue
        packets, rest = int(m.group(1)), m.group(4)
        old = into.get(key, DropCount())
        if "-j NFLOG" in rest:
            into[key] = DropCount(old.logged + packets, old.refused)
        elif "-j DROP" in rest or "-j REJECT" in rest:
            into[key] = DropCount(old.logged, old.refused + packets)


def read_drop_counts(backend: BackendInfo, prefix: str, netns: str | None = None) -> DropCounts:
    """Both families' counters, summed per key."""
    counts: dict[str, DropCount] = {}
    for family in (4, 6):
        try:
            proc = run_cmd([backend.save(family), "-c", "-t", "filter"], netns)
        except FirewallError:
            return DropCounts()
        parse_drop_counts(proc.stdout, prefix, counts)
    return DropCounts(counts, True)
