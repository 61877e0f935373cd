"""Events: the record the engine raises when a rule fires, and its EVE JSON form.

What it does: `Event` is the frozen record the packet path creates (cheap: no formatting);
`to_eve(event)` turns it into a dict with Suricata EVE field names (DESIGN.md "Events",
docs/architecture.md "events/eve.py") so EVE consumers (jq, Elastic, Splunk, Wazuh) need
nothing new; `to_json(event)` gives the one-line JSON text.

What it guarantees:
- `to_eve` output is always JSON-serialisable: only str, int, float, bool, None, lists and dicts;
  non-finite timestamps are clamped to the epoch, never raising.
- `timestamp` is ISO 8601 in UTC with microseconds and an explicit offset
  (`2017-04-16T15:13:50.316645+00:00`); `flow_id` is the flow table's 52-bit id.
- `event_type` is "alert"; `alert.action` is "blocked" when the packet was dropped/reset and
  "allowed" when the rule only alerts; `vpatch.rule_action` keeps the rule's own action.
- `alert.severity` follows Suricata (1 = most severe): critical/high -> 1, medium -> 2, low -> 3.
- `app_proto` is a best guess from the server port (smb, http, dns, tls, rdp, dcerpc, ...),
  "failed" when the port says nothing.
- Why the rule fired (gateway/match/explain.py, bounded there): `vpatch.field` (the decoded
  field, or "raw" for stream/datagram content), `vpatch.condition` (the condition in short) and
  `vpatch.excerpt` (the matching bytes as an escaped ASCII string: printable ASCII kept, the
  backslash doubled, other bytes `\\xHH`); "" when unknown. `http.url` (the request target,
  escaped the same way) is present only when the event knows the HTTP request it belongs to.
  `unescape_bytes` gives the bytes back (the UI's exception from an event starts from them).
- `tls` ({sni, version, server_version}) is present only on events of the HTTPS plane
  (gateway/tls/): the client's SNI and the TLS versions spoken with the client and the server.
- `vpatch.limit` is present only on the event of a limit of the packet path (gateway/flow/
  limits.py): the limit's name (`stream_hole`, `flow_table`, ...).
- Aggregation (gateway/events/aggregate.py): `vpatch.count` is how many firings the record
  stands for (1 unless a storm was aggregated; the record is the last of them), and
  `vpatch.folded` says which addresses varied among them ("", "src", "src,dest" or, for
  drop and flow events, "src,dest,port").
- Firewall and host-mode events (gateway/firewall/dropevents.py, the lifecycle monitor):
  `event_type` "drop" (the kernel refused the packets: Suricata's drop event, with
  `drop.reason` "firewall" | "setup" | "lockdown") or "flow" (a firewall `log` rule saw them and
  let them pass), and `vpatch.firewall` {`mode` (the same reason), `rule_id` (the firewall
  rule's id, 0 for the host modes), `rule` (its name), `first_seen`, `last_seen` (ISO 8601: the
  first and last packet the record counts)}. They keep the `alert` object (signature_id,
  signature, action, category naming the mechanism) so every record has the same columns in
  the event store; consumers that dispatch on `event_type` see them apart from alerts.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from gateway.vocabulary import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Action, Direction

__all__ = [
    "DROP_CATEGORIES",
    "EVENT_CATEGORY",
    "DropReason",
    "EventType",
    "SEVERITY_NUMBERS",
    "Event",
    "app_proto_for_port",
    "escape_bytes",
    "format_timestamp",
    "to_eve",
    "to_json",
    "unescape_bytes",
]

SEVERITY_NUMBERS: Final = {"critical": 1, "high": 1, "medium": 2, "low": 3}
EVENT_CATEGORY: Final = "Attempted exploitation of a known vulnerability (virtual patch)"
_PROTO_NAMES: Final = {
    PROTO_TCP: "TCP",
    PROTO_UDP: "UDP",
    PROTO_ICMP: "ICMP",
    PROTO_ICMPV6: "IPv6-ICMP",
}
_APP_PROTO_BY_PORT: Final = {
    80: "http",
    8080: "http",
    8000: "http",
    8008: "http",
    443: "tls",
    8443: "tls",
    139: "smb",
    445: "smb",
    53: "dns",
    3389: "rdp",
    135: "dcerpc",
    593: "dcerpc",
    1433: "tds",
    1434: "mssql",
    21: "ftp",
    25: "smtp",
    389: "ldap",
}


class EventType(enum.Enum):
    """EVE `event_type` of a record."""

    ALERT = "alert"  # a rule fired (the packet path, lockdown in alert mode)
    DROP = "drop"  # the kernel refused packets (firewall deny/reject, setup, lockdown)
    FLOW = "flow"  # a firewall `log` rule saw packets and let them pass


class DropReason(enum.Enum):
    """What refused (or logged) a drop/flow event's packets (`drop.reason`)."""

    FIREWALL = "firewall"
    SETUP = "setup"
    LOCKDOWN = "lockdown"


DROP_CATEGORIES: Final = {
    DropReason.FIREWALL: "Firewall policy",
    DropReason.SETUP: "Setup protection",
    DropReason.LOCKDOWN: "Lockdown: connection not learned",
}


def app_proto_for_port(port: int) -> str:
    """Best-guess application protocol for a server port ("failed" when unknown)."""
    return _APP_PROTO_BY_PORT.get(port, "failed")


@dataclass(frozen=True, slots=True)
class Event:
    """One rule firing on one packet. Addresses are the packet's (src -> dest)."""

    timestamp: float  # seconds since the epoch (capture time or wall clock)
    flow_id: int
    src_ip: str
    src_port: int
    dest_ip: str
    dest_port: int
    proto: int  # IP protocol number
    server_port: int  # the flow's server port (for app_proto)
    direction: Direction
    signature_id: int
    signature: str
    severity: str  # rule severity name: low | medium | high | critical
    cves: tuple[str, ...]
    rule_action: Action  # the rule's action
    blocked: bool  # the packet was dropped / reset
    would_block: bool = False  # DETECT mode: the rule would have blocked (docs/policy.md)
    field: str = ""  # why: the field that matched ("raw": stream/datagram content)
    condition: str = ""  # why: the condition in short
    excerpt: bytes = b""  # why: the matching bytes (<= gateway.match.explain.MAX_EXCERPT)
    http_url: bytes = b""  # the HTTP request target, when known (b"": unknown)
    limit: str = ""  # a limit's event (gateway/flow/limits.py): the Limit's value
    count: int = 1  # firings this record stands for (gateway/events/aggregate.py)
    folded: str = ""  # "": all had these addresses; "src" / "src,dest": several did
    event_type: EventType = EventType.ALERT
    reason: DropReason | None = None  # drop/flow events: what refused or logged the packets
    fw_rule_id: int = 0  # drop/flow events of a firewall rule: its id
    first_seen: float = 0.0  # aggregated records: the first event's timestamp (0: timestamp)
    # the HTTPS plane (gateway/tls/): the client's SNI and the versions spoken on both sides
    tls_sni: str = ""
    tls_version: str = ""  # client side ("": not seen through the HTTPS plane)
    tls_server_version: str = ""  # toward the server


def format_timestamp(ts: float) -> str:
    """ISO 8601, UTC, microseconds, explicit +00:00 offset."""
    if not math.isfinite(ts) or ts < 0 or ts > 253402300799:
        ts = 0.0
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")


def escape_bytes(data: bytes) -> str:
    """Printable ASCII kept (backslash doubled), every other byte as \\xHH: an ASCII string
    that survives JSON, CSV and HTML escaping and is reversible (excerpts, URLs, and the
    condition texts of gateway/match/explain.py)."""
    out: list[str] = []
    for b in data:
        if b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


_ESCAPED: Final = re.compile(r"\\\\|\\x([0-9a-fA-F]{2})")


def unescape_bytes(text: str) -> bytes:
    """The bytes `escape_bytes` made `text` from (its inverse). Text it cannot have made (from
    another writer) is still read: characters past U+00FF become `?`."""
    raw = _ESCAPED.sub(lambda m: "\\" if m.group(1) is None else chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1", "replace")


def to_eve(event: Event) -> dict[str, Any]:
    """The EVE JSON object for an event (a fresh dict of JSON-safe values)."""
    eve = _to_eve(event)
    if event.http_url:
        eve["http"] = {"url": escape_bytes(event.http_url)}
    if event.limit:
        eve["vpatch"]["limit"] = str(event.limit)
    if event.event_type is not EventType.ALERT:
        _add_drop(eve, event)
    if event.tls_version or event.tls_sni:
        eve["tls"] = {
            "sni": str(event.tls_sni),
            "version": str(event.tls_version),
            "server_version": str(event.tls_server_version),
        }
    return eve


def _add_drop(eve: dict[str, Any], event: Event) -> None:
    """The drop/flow event's own fields (see the module comment)."""
    reason = event.reason or DropReason.FIREWALL
    eve["event_type"] = event.event_type.value
    eve["alert"]["category"] = DROP_CATEGORIES[reason]
    if event.event_type is EventType.DROP:
        eve["drop"] = {"reason": reason.value}
    eve["vpatch"]["firewall"] = {
        "mode": reason.value,
        "rule_id": int(event.fw_rule_id),
        "rule": str(event.signature),
        "first_seen": format_timestamp(event.first_seen or event.timestamp),
        "last_seen": format_timestamp(event.timestamp),
    }


def _to_eve(event: Event) -> dict[str, Any]:
    return {
        "timestamp": format_timestamp(event.timestamp),
        "flow_id": int(event.flow_id),
        "event_type": "alert",
        "src_ip": str(event.src_ip),
        "src_port": int(event.src_port),
        "dest_ip": str(event.dest_ip),
        "dest_port": int(event.dest_port),
        "proto": _PROTO_NAMES.get(event.proto, str(event.proto)),
        "app_proto": app_proto_for_port(event.server_port),
        "direction": event.direction.label,
        "alert": {
            "action": "blocked" if event.blocked else "allowed",
            "gid": 1,
            "signature_id": int(event.signature_id),
            "rev": 1,
            "signature": str(event.signature),
            "category": EVENT_CATEGORY,
            "severity": SEVERITY_NUMBERS.get(event.severity, 2),
            "metadata": {"cve": [str(c) for c in event.cves]},
        },
        "vpatch": {
            "rule_action": event.rule_action.value,
            "severity": str(event.severity),
            "would_block": bool(event.would_block),
            "field": str(event.field),
            "condition": str(event.condition),
            "excerpt": escape_bytes(bytes(event.excerpt)),
            "count": int(event.count),
            "folded": str(event.folded),
        },
    }


def to_json(event: Event) -> str:
    """One line of EVE JSON (no newline)."""
    return json.dumps(to_eve(event), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
