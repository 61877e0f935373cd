"""Limits of the packet path: which policy applies to a server, and the event naming a limit.

A limit is a decision (DESIGN.md "Normalisation", STYLE.md 14): every bound that legal traffic
can reach (gateway.vocabulary `Limit`) has a policy (`LimitPolicy`: inspect-start, alert,
reset, pass) from the configuration's `limits:` section, overridden per server by its `hosts:`
entries (gateway/config.py `LimitsConfig`, docs/architecture.md "Limits").

What it does:
- `LimitTable(config).for_server(address)` is the `HostPolicies` of one server: the section's
  policies, each replaced by the one of the most specific `hosts:` entry holding the address
  that names it. Looked up once per flow (the engine keeps it on the flow's Inspection),
  cached per address (at most MAX_CACHED_SERVERS, cleared when full).
- `LIMIT_RULES`: the vpatch rule id and title of each limit's event. Limit events are alerts
  like the anomaly rules' (rules/vpatch-anomalies.yaml, 9300001-9300004), with ids
  9300010-9300018 reserved for them; `vpatch.limit` in EVE names the limit.
- `limit_event(...)` builds that event; `LimitTable.flowless_due(limit, now)` rate-limits the
  events that belong to no flow (flow table full, defragmentation) to one a second per limit.
  Per flow, the engine raises each limit's event at most once (`Inspection.limits_hit`).

What it guarantees: `for_server` never raises (an address that does not parse gets the
section's policies); every policy it returns is one its limit takes (checked by the config).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from gateway.config import LimitsConfig, Network
from gateway.decode.packet import Packet
from gateway.events.eve import Event
from gateway.vocabulary import Action, Direction, Limit, LimitPolicy

__all__ = [
    "FLOWLESS_EVENT_INTERVAL",
    "LIMIT_BITS",
    "LIMIT_RULES",
    "MAX_CACHED_SERVERS",
    "HostPolicies",
    "LimitRule",
    "LimitTable",
    "limit_event",
]

MAX_CACHED_SERVERS: Final = 65536
FLOWLESS_EVENT_INTERVAL: Final = 1.0  # seconds between two events of a limit with no flow


@dataclass(frozen=True, slots=True)
class LimitRule:
    """What a limit's event says: its rule id, title and severity."""

    sid: int
    title: str
    severity: str = "low"


LIMIT_RULES: Final = {
    Limit.STREAM_DEPTH: LimitRule(9300010, "limit: stream depth reached, inspection stopped"),
    Limit.UDP_DEPTH: LimitRule(9300011, "limit: UDP depth reached, inspection stopped"),
    Limit.PENDING: LimitRule(9300012, "limit: out-of-order bytes past the reassembly bound"),
    Limit.STREAM_HOLE: LimitRule(
        9300013, "limit: hole in a TCP stream skipped (bytes never inspected)", "medium"
    ),
    Limit.FLOW_TABLE: LimitRule(9300014, "limit: flow table full", "medium"),
    Limit.DECODER: LimitRule(9300015, "limit: app decoder stopped, fields no longer decoded"),
    Limit.NORMALIZER: LimitRule(9300016, "limit: TCP normaliser refused a segment", "medium"),
    Limit.DEFRAG: LimitRule(9300017, "limit: IP fragments refused", "medium"),
    Limit.FIELD: LimitRule(9300018, "limit: a derived HTTP field cut at its bound", "medium"),
}
LIMIT_BITS: Final = {limit: 1 << i for i, limit in enumerate(Limit)}  # Inspection.limits_hit


@dataclass(frozen=True, slots=True)
class HostPolicies:
    """The policy of every limit for one server."""

    stream_depth: LimitPolicy
    udp_depth: LimitPolicy
    pending: LimitPolicy
    stream_hole: LimitPolicy
    flow_table: LimitPolicy
    decoder: LimitPolicy
    field: LimitPolicy
    normalizer: LimitPolicy
    defrag: LimitPolicy

    def of(self, limit: Limit) -> LimitPolicy:
        value: LimitPolicy = getattr(self, limit.value)
        return value


class LimitTable:
    """Per-server policies from a LimitsConfig (see the module comment)."""

    __slots__ = ("_by_prefix", "_cache", "_last_event", "default", "hole_wait")

    def __init__(self, config: LimitsConfig) -> None:
        self.default = HostPolicies(**{lim.value: config.policy(lim) for lim in Limit})
        self.hole_wait = config.hole_wait
        # (network, policies it names), most specific first; equal prefixes: the later wins
        entries: list[tuple[Network, dict[Limit, LimitPolicy]]] = []
        for entry in config.hosts:
            for net in entry.hosts:
                entries.append((net, dict(entry.policies)))
        entries.reverse()
        entries.sort(key=lambda e: -e[0].prefixlen)
        self._by_prefix = tuple(entries)
        self._cache: dict[str, HostPolicies] = {}
        self._last_event: dict[Limit, float] = {}

    def for_server(self, address: str) -> HostPolicies:
        """The policies for server `address` (never raises)."""
        found = self._cache.get(address)
        if found is not None:
            return found
        found = self._resolve(address) if self._by_prefix else self.default
        if len(self._cache) >= MAX_CACHED_SERVERS:
            self._cache.clear()
        self._cache[address] = found
        return found

    def _resolve(self, address: str) -> HostPolicies:
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            return self.default
        chosen: dict[Limit, LimitPolicy] = {}
        for net, policies in self._by_prefix:  # most specific first: it wins, limit by limit
            if addr.version == net.version and addr in net:
                for limit, policy in policies.items():
                    chosen.setdefault(limit, policy)
        return _policies_from(self.default, chosen)

    def flowless_due(self, limit: Limit, now: float) -> bool:
        """Whether an event of `limit` that belongs to no flow may be raised at `now` (one
        per FLOWLESS_EVENT_INTERVAL seconds of packet time; a clock going back re-arms)."""
        last = self._last_event.get(limit)
        if last is not None and last <= now < last + FLOWLESS_EVENT_INTERVAL:
            return False
        self._last_event[limit] = now
        return True


def _policies_from(default: HostPolicies, chosen: dict[Limit, LimitPolicy]) -> HostPolicies:
    return HostPolicies(**{lim.value: chosen.get(lim, default.of(lim)) for lim in Limit})


def limit_event(
    limit: Limit,
    detail: str,
    pkt: Packet,
    flow_id: int,
    server_port: int,
    d: Direction,
    blocked: bool,
    now: float,
) -> Event:
    """The event naming `limit` (`detail`: what was reached, in a few words) on packet `pkt`."""
    rule = LIMIT_RULES[limit]
    return Event(
        timestamp=now,
        flow_id=flow_id,
        src_ip=pkt.src,
        src_port=pkt.sport,
        dest_ip=pkt.dst,
        dest_port=pkt.dport,
        proto=pkt.proto,
        server_port=server_port,
        direction=d,
        signature_id=rule.sid,
        signature=rule.title,
        severity=rule.severity,
        cves=(),
        rule_action=Action.RESET if blocked else Action.ALERT,
        blocked=blocked,
        field="limit",
        condition=f"{limit.value}: {detail}",
        limit=limit.value,
    )
