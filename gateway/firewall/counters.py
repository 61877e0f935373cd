"""Read the kernel's counters of packets that were to be queued but passed uninspected.

What it does: `read_uninspected(backend, prefix, queued_bit)` runs `iptables-save -c -t mangle`
(and the ip6tables one) and returns the packet and byte counters of the rule render.py puts
first in PREFIX-POST, `-m mark --mark Q/Q -j RETURN`: packets that still carry the "queued"
mark bit after the queue hook, i.e. that the kernel passed on without a worker's verdict.
Both ways the kernel does that keep the packet mark and go on to the next hook
(net/netfilter/nfnetlink_queue.c `__nfqnl_enqueue_packet`: a full queue, or an undeliverable
packet message, with NFQA_CFG_F_FAIL_OPEN -> `nf_reinject(entry, NF_ACCEPT)`;
net/netfilter/nf_queue.c `nf_queue`: no reader (-ESRCH) with --queue-bypass -> the next hook
entry), so mangle POSTROUTING sees them. With fail_policy closed these cases are drops
instead (the kernel's own `queue_dropped` / `user_dropped`, gateway/intake/queuestats.py) and
the counter stays 0, except for packets a worker saw but failed on (its catch-all verdict keeps
the bit: they were not inspected either).

What it guarantees: parsing is pure (`parse_uninspected`); reading never raises (a tool that
fails or is missing gives `available = False` and zeros). The counters start at 0 when the
rules are applied (each `vpatch run`) and are not reset by `reload`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.errors import FirewallError
from gateway.firewall.apply import BackendInfo, run_cmd

__all__ = ["Uninspected", "parse_uninspected", "read_uninspected"]

_COUNTED: Final = re.compile(r"^\[(\d+):(\d+)\] (-A \S+ .*)$")


@dataclass(frozen=True, slots=True)
class Uninspected:
    """Packets and bytes passed by the kernel without a verdict, summed over both families."""

    packets: int = 0
    bytes: int = 0
    available: bool = False  # False: the counters could not be read

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "uninspected_packets": self.packets,
            "uninspected_bytes": self.bytes,
            "uninspected_available": self.available,
        }


def _rule(prefix: str, queued_bit: int) -> str:
    return f"-A {prefix}-POST -m mark --mark {queued_bit:#x}/{queued_bit:#x} -j RETURN"


def parse_uninspected(save_text: str, prefix: str, queued_bit: int) -> tuple[int, int] | None:
    """(packets, bytes) of the counting rule in `iptables-save -c` text; None if absent."""
    wanted = _rule(prefix, queued_bit)
    for line in save_text.splitlines():
        m = _COUNTED.match(line)
        if m and m.group(3) == wanted:
            return int(m.group(1)), int(m.group(2))
    return None


def read_uninspected(
    backend: BackendInfo, prefix: str, queued_bit: int, netns: str | None = None
) -> Uninspected:
    """Both families' counters (a family without our rules counts 0)."""
    packets = nbytes = 0
    found = False
    for family in (4, 6):
        try:
            proc = run_cmd([backend.save(family), "-c", "-t", "mangle"], netns)
        except FirewallError:
            return Uninspected()
        counted = parse_uninspected(proc.stdout, prefix, queued_bit)
        if counted is not None:
            found = True
            packets += counted[0]
            nbytes += counted[1]
    return Uninspected(packets, nbytes, found)
