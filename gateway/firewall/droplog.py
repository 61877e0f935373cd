"""How the kernel reports what the firewall policy and the host modes refuse: the NFLOG
targets of our filter-table rules and the prefixes that say which rule logged a packet.

Pure (no commands; imports only the events' vocabulary). Used by
gateway/firewall/policy.py (firewall rules `deny`, `reject`, `log`), gateway/firewall/hostmodes.py
(setup protection's refusals, lockdown's unlearned connections) and, on the reading side, by
gateway/firewall/dropevents.py and the lifecycle monitor.

Guarantees (a limit is a decision):
- Every logging rule is bounded in the kernel: `-m limit --limit LOG_RATE/second
  --limit-burst LOG_BURST` per rule line, so a flood copies at most LOG_BURST + LOG_RATE x
  seconds packets per line to userspace, whatever its rate. The refusing rule that follows the
  logging rule (DROP/REJECT) has no limit: its kernel counter counts every refused packet, the
  logging rule's counter the logged ones; the difference is what the rate limit suppressed
  (gateway/firewall/dropcount.py reads both).
- Each copy is the packet's first NFLOG_SNAPLEN bytes (IP + TCP/UDP headers).
- Prefixes: `vpatch-fw-ACTION-ID` (firewall rule ID, ACTION deny | reject | log),
  `vpatch-setup-in` / `vpatch-setup-out` (setup protection), `vpatch-lockdown` and
  `vpatch-learn` (host modes; groups of their own). `parse_prefix` reads them back and answers
  None for anything else (a prefix another tool wrote).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.events.eve import DropReason

__all__ = [
    "DROP_LOG_GROUP",
    "LOG_BURST",
    "LOG_RATE",
    "NFLOG_SNAPLEN",
    "LogPrefix",
    "fw_prefix",
    "nflog_target",
    "parse_prefix",
]

DROP_LOG_GROUP: Final = 19  # firewall rules and setup protection (host modes: 17 learn, 18 lock)
LOG_RATE: Final = 100  # packets per second one logging rule line copies to userspace
LOG_BURST: Final = 200  # ... and at once after a quiet time
NFLOG_SNAPLEN: Final = 128  # bytes of each logged packet (IP + TCP/UDP headers)
FW_PREFIX: Final = "vpatch-fw-"
SETUP_PREFIX: Final = "vpatch-setup-"


@dataclass(frozen=True, slots=True)
class LogPrefix:
    """A parsed NFLOG prefix: who logged, the firewall rule's id and action (firewall only),
    the direction seen from the protected host (setup: "in" or "out")."""

    reason: DropReason
    rule_id: int = 0
    action: str = ""  # deny | reject | log (firewall), "reject" (setup)
    direction: str = ""


def fw_prefix(action: str, rule_id: int) -> str:
    return f"{FW_PREFIX}{action}-{rule_id}"


def nflog_target(group: int, prefix: str) -> str:
    """The rate-limited NFLOG match and target, to follow a rule's own matches."""
    return (
        f"-m limit --limit {LOG_RATE}/second --limit-burst {LOG_BURST} -j NFLOG "
        f"--nflog-group {group} --nflog-prefix {prefix} --nflog-size {NFLOG_SNAPLEN}"
    )


def parse_prefix(prefix: str) -> LogPrefix | None:
    """The LogPrefix of one of our prefixes, None for any other text."""
    if prefix.startswith(FW_PREFIX):
        action, _, rule = prefix[len(FW_PREFIX) :].partition("-")
        if action in ("deny", "reject", "log") and rule.isdigit() and len(rule) < 19:
            return LogPrefix(DropReason.FIREWALL, int(rule), action)
        return None
    if prefix.startswith(SETUP_PREFIX):
        direction = prefix[len(SETUP_PREFIX) :]
        if direction in ("in", "out"):
            return LogPrefix(DropReason.SETUP, 0, "reject", direction)
    return None
