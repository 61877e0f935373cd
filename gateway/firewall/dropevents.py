"""Firewall and setup-protection events: NFLOG copies of the packets our filter-table rules
refused (or logged) become EVE `drop` / `flow` events (gateway/events/eve.py).

What it does: `headers(payload)` reads addresses, protocol and ports from the first bytes of a
logged packet (NFLOG copies only NFLOG_SNAPLEN bytes, so the packet is usually cut short: only
the headers are read, lengths in them are not checked against the bytes present);
`DropEvents(rule_names)` turns one `LoggedPacket` of the drop-log group into an `Event`:
- firewall rule ID (prefix `vpatch-fw-ACTION-ID`): signature_id FW_SID_BASE + ID, signature
  "firewall rule ID ACTION: NAME"; `deny` and `reject` give `drop` events (blocked), `log`
  gives `flow` events (passed);
- setup protection (prefix `vpatch-setup-in` / `-out`): signature_id SID_SETUP_IN / _OUT,
  `drop` events (refused).
The caller (the lifecycle monitor's NFLOG loop, gateway/lifecycle/monitor.py) emits them into an
aggregating EventSink, which makes a flood a few records with counts.

Guarantees: never raises on what the kernel (or anything else) sent: a packet whose headers
cannot be read, or with a prefix that is not ours, gives None and is counted in `malformed`.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.database import Target, target_exists
from gateway.errors import VpatchError
from gateway.events.eve import DropReason, Event, EventType
from gateway.firewall.droplog import LogPrefix, parse_prefix
from gateway.firewall.policy import FirewallRule, list_rules
from gateway.lifecycle.nflog import LoggedPacket
from gateway.policy.store import Store
from gateway.vocabulary import ICMP_PROTOS, PROTO_TCP, PROTO_UDP, Action, Direction

__all__ = [
    "FW_SID_BASE",
    "SID_SETUP_IN",
    "SID_SETUP_OUT",
    "DropEvents",
    "Headers",
    "headers",
    "rule_name",
    "rule_names",
]

FW_SID_BASE: Final = 9_200_000  # signature_id of firewall rule N: FW_SID_BASE + N
SID_SETUP_IN: Final = 9_100_003  # setup protection refused an inbound connection
SID_SETUP_OUT: Final = 9_100_004  # ... an outbound one (lockdown uses 9100001/2)
_IPV6_EXT: Final = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT: Final = 44
_MAX_EXT: Final = 8  # extension headers walked before giving up


@dataclass(frozen=True, slots=True)
class Headers:
    src: str
    dst: str
    proto: int
    sport: int  # 0 unless tcp/udp
    dport: int  # tcp/udp destination port; ICMP: the type


def _l4(data: bytes, off: int, proto: int, src: str, dst: str) -> Headers:
    sport = dport = 0
    if proto in (PROTO_TCP, PROTO_UDP) and len(data) >= off + 4:
        sport, dport = struct.unpack_from("!HH", data, off)
    elif proto in ICMP_PROTOS and len(data) > off:
        dport = data[off]
    return Headers(src, dst, proto, sport, dport)


def headers(data: bytes) -> Headers | None:
    """The addresses, protocol and ports of an IP packet's first bytes; None if unreadable."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20:
            return None
        src = str(ipaddress.IPv4Address(data[12:16]))
        dst = str(ipaddress.IPv4Address(data[16:20]))
        return _l4(data, ihl, data[9], src, dst)
    if version == 6 and len(data) >= 40:
        src = str(ipaddress.IPv6Address(data[8:24]))
        dst = str(ipaddress.IPv6Address(data[24:40]))
        proto, off = data[6], 40
        for _ in range(_MAX_EXT):
            if proto not in _IPV6_EXT and proto != _IPV6_FRAGMENT:
                break
            if len(data) < off + 8:
                return None
            step = 8 if proto == _IPV6_FRAGMENT else (data[off + 1] + 1) * 8
            proto, off = data[off], off + step
        return _l4(data, off, proto, src, dst)
    return None


def rule_name(rule: FirewallRule) -> str:
    """A firewall rule in a few words: its comment, else what it matches."""
    if rule.comment:
        return rule.comment
    port = ""
    if rule.port_from is not None:
        port = f" port {rule.port_from}" + (f"-{rule.port_to}" if rule.port_to else "")
    peer = f" peer {rule.address}" if rule.address else ""
    return f"{rule.protocol}{port}{peer} {rule.direction}"


def rule_names(policy_db: Target) -> dict[int, str] | None:
    """Firewall rule id -> name from the policy database (a file or a postgresql:// URL); None
    when it cannot be read."""
    if not target_exists(policy_db):
        return {}
    try:
        with Store(policy_db) as store:
            return {r.id: rule_name(r) for r in list_rules(store)}
    except (VpatchError, sqlite3.Error, OSError):
        return None


def _flow_id(h: Headers) -> int:
    key = f"{h.src}|{h.dst}|{h.proto}|{h.sport}|{h.dport}".encode()
    return zlib.crc32(key) | ((h.sport & 0xFFFF) << 32)


class DropEvents:
    """LoggedPacket -> Event for the drop-log group; `rule_names`: firewall rule id -> name
    (refreshed by the caller as the policy changes)."""

    def __init__(self, rule_names: Mapping[int, str] | None = None) -> None:
        self.rule_names: Mapping[int, str] = rule_names or {}
        self.malformed = 0  # packets without readable headers or with a foreign prefix
        self.events = 0

    def event(self, logged: LoggedPacket, now: float) -> Event | None:
        prefix = parse_prefix(logged.prefix)
        h = headers(logged.payload)
        if prefix is None or h is None:
            self.malformed += 1
            return None
        self.events += 1
        sid, signature, blocked, rule_action = self._describe(prefix)
        return Event(
            timestamp=now,
            flow_id=_flow_id(h),
            src_ip=h.src,
            src_port=h.sport,
            dest_ip=h.dst,
            dest_port=h.dport if h.proto in (PROTO_TCP, PROTO_UDP) else 0,
            proto=h.proto,
            server_port=h.dport,
            direction=Direction.TO_SERVER,
            signature_id=sid,
            signature=signature,
            severity="low",
            cves=(),
            rule_action=rule_action,
            blocked=blocked,
            event_type=EventType.DROP if blocked else EventType.FLOW,
            reason=prefix.reason,
            fw_rule_id=prefix.rule_id,
        )

    def _describe(self, prefix: LogPrefix) -> tuple[int, str, bool, Action]:
        """(signature_id, signature, blocked, rule action) for a parsed prefix."""
        if prefix.reason is DropReason.SETUP:
            way = "inbound" if prefix.direction == "in" else "outbound"
            sid = SID_SETUP_IN if prefix.direction == "in" else SID_SETUP_OUT
            return sid, f"setup protection: {way} connection refused", True, Action.RESET
        name = self.rule_names.get(prefix.rule_id, "(rule since changed or removed)")
        signature = f"firewall rule {prefix.rule_id} {prefix.action}: {name}"
        actions = {"deny": Action.DROP, "reject": Action.RESET, "log": Action.ALERT}
        return (
            FW_SID_BASE + prefix.rule_id,
            signature,
            prefix.action != "log",
            actions[prefix.action],
        )
