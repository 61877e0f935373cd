"""The project's shared vocabulary: direction, policy mode, action and IP protocol numbers.

What it does: one type per concept that several layers speak about, so the packet path, the rule
loader, the policy, the events and the UI say it the same way:
- `Direction`: which way a packet travels within its flow (TO_SERVER / TO_CLIENT);
- `Mode`: how a rule applies to a server (OFF / DETECT / PREVENT, docs/policy.md "Modes");
- `Action`: a rule's action and the per-packet verdict (ACCEPT / ALERT / DROP / RESET);
- `Limit`: a bound of the packet path an attacker can reach with legal traffic, and
  `LimitPolicy`: what happens when it is reached (docs/architecture.md "Limits");
- `PROTO_*`: the IANA IP protocol numbers the gateway handles, `PROTO_NAMES` their lower-case
  names, `ICMP_PROTOS` the ICMP of either IP version.

What it guarantees:
- It imports nothing from the project, so every module may import it without an import cycle;
  no other module defines these types or a parallel spelling of them.
- `Direction` is an IntEnum, TO_SERVER == 0 and TO_CLIENT == 1, so it indexes per-direction
  lists and tuples directly. `Direction.label` is its spelling in rule YAML, the configuration,
  EVE JSON and the UI ("to_server" / "to_client"); `Direction.parse(label)` is the inverse and
  raises ValueError naming the value. `TO_SERVER`, `TO_CLIENT` and `DIRECTIONS` (both, in
  index order) are the same members, as module constants for the packet path.
- The values of `Mode`, `Action`, `Limit` and `LimitPolicy` are the strings stored in rule
  YAML, the policy database, the configuration, EVE JSON and the UI; `Mode(text)` /
  `Action(text)` parse them (ValueError otherwise).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "DIRECTIONS",
    "ICMP_PROTOS",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_NAMES",
    "PROTO_TCP",
    "PROTO_UDP",
    "TO_CLIENT",
    "TO_SERVER",
    "Action",
    "Direction",
    "Limit",
    "LimitPolicy",
    "Mode",
]

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58
# ICMP for IPv4 or IPv6 (a set: the packet path tests membership once per packet)
ICMP_PROTOS: Final = frozenset((PROTO_ICMP, PROTO_ICMPV6))
# lower-case names, as written in lifecycle lines and shown to people
PROTO_NAMES: Final = {
    PROTO_ICMP: "icmp",
    PROTO_TCP: "tcp",
    PROTO_UDP: "udp",
    PROTO_ICMPV6: "icmpv6",
}


class Direction(enum.IntEnum):
    """Which way a packet travels within its flow (an index: TO_SERVER 0, TO_CLIENT 1)."""

    TO_SERVER = 0
    TO_CLIENT = 1

    @property
    def label(self) -> str:
        """The spelling in rule YAML, configuration, EVE JSON and the UI: "to_server"."""
        return _LABELS[self]

    @classmethod
    def parse(cls, label: str) -> Direction:
        """The direction spelt `label` ("to_server" / "to_client"); ValueError otherwise."""
        found = _BY_LABEL.get(label)
        if found is None:
            raise ValueError(f"direction {label!r} is not to_server or to_client")
        return found


# The members as plain module constants, and in order. On Python 3.11 `Direction.TO_SERVER`
# goes through EnumType's __getattr__ slot (about 70 ns, against 10 for a global name) and
# `for d in Direction` through EnumType.__iter__ (about 450 ns): the packet path, which names
# a direction several times per packet, uses these instead (issue 16).
TO_SERVER: Final = Direction.TO_SERVER
TO_CLIENT: Final = Direction.TO_CLIENT
DIRECTIONS: Final = (TO_SERVER, TO_CLIENT)

_LABELS: Final = {Direction.TO_SERVER: "to_server", Direction.TO_CLIENT: "to_client"}
_BY_LABEL: Final = {label: d for d, label in _LABELS.items()}


class Mode(enum.Enum):
    """How a rule applies to a server (docs/policy.md "Modes")."""

    OFF = "off"  # not evaluated: a match is ignored
    DETECT = "detect"  # a match raises an event (alert.action "allowed", would_block)
    PREVENT = "prevent"  # a match applies the rule's own action


class Action(enum.Enum):
    """A rule's action (and the per-packet verdict)."""

    ACCEPT = "accept"
    ALERT = "alert"  # detect only: log, let through
    DROP = "drop"  # silently
    RESET = "reset"  # drop and send TCP RST to both ends

    @property
    def blocks(self) -> bool:
        return self in (Action.DROP, Action.RESET)


class Limit(enum.Enum):
    """A bound of the packet path that legal traffic can reach (gateway/flow/limits.py)."""

    STREAM_DEPTH = "stream_depth"  # a TCP direction reached its stream depth
    UDP_DEPTH = "udp_depth"  # a UDP flow direction reached its depth in bytes
    PENDING = "pending"  # out-of-order bytes past the reassembly bound (segment dropped)
    STREAM_HOLE = "stream_hole"  # a hole in a TCP stream was skipped (never seen bytes)
    FLOW_TABLE = "flow_table"  # the flow table was full when a new flow came
    DECODER = "decoder"  # an app decoder's own bounds or failure ended its direction
    FIELD = "field"  # a derived field (query, form parameters, header lines) was cut
    NORMALIZER = "normalizer"  # the TCP normaliser dropped a segment or reset a flow
    DEFRAG = "defrag"  # the IP defragmenter refused a fragment or a datagram


class LimitPolicy(enum.Enum):
    """What happens when a Limit is reached (the configuration's `limits:` section)."""

    INSPECT_START = "inspect-start"  # keep inspecting (the start of every unit) past it
    ALERT = "alert"  # the bound applies, an event names it
    RESET = "reset"  # an event names it and the flow is reset
    PASS = "pass"  # the bound applies, counted only (limit_* counters)
