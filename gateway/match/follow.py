"""Rules follow their protocol: which rules apply to a protocol wherever it is identified.

A rule names server ports (`ports:`), and those ports are where the kernel queues the traffic
and where the protocol is expected. But a service moves: nginx on 8081, TLS on 4443, the
Netlogon DCE/RPC endpoint on a dynamic port the endpoint mapper hands out. As Suricata's
`alert http any any -> any any`, a rule applies to its protocol on every port where that
protocol is identified by content:
- the rules that follow protocol P (`follow_sets`) are the TCP rules whose `app` is P or a
  protocol P carries (DCE/RPC inside SMB pipes), the raw rules that list one of P's
  well-known ports (the self-test marker rule on port 80 follows HTTP), `ports: any` rules,
  and the followers of the protocols P hands over to (STARTTLS: SMTP, IMAP, POP3 and FTP
  carry the TLS rules, which judge the stream once it moved to TLS);
- on a port some rule lists, the protocols expected there (`expected_protocols`: the apps of
  the rules listing it, and the protocols whose well-known ports include it) bring their
  followers into that port's group from the start (Matcher: HTTP rules written for port 80
  apply on 8081, which other HTTP rules list), so an expected protocol costs no switch;
- any other identification (a protocol found on a port that did not expect it, or on a port no
  rule lists) switches the flow direction to the group of its rules plus those followers (the
  Matcher's `MatchGroup.follow`, the engine's rebinding).
Relocatable protocols (`relocatable`) are the registered TCP protocols with a content probe (or
an `elsewhere` probe, DNS): identification by port alone cannot follow a service that moved.

Pure functions over rules and the decoder registry; nothing here scans bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode import registry as app_registry
from gateway.match.rules import Rule
from gateway.vocabulary import PROTO_TCP, Direction

__all__ = ["PREFERENCE", "expected_protocols", "follow_sets", "relocatable"]

# Identification order among relocatable protocols: the line protocols' first commands before
# HTTP, whose request-line probe ("WORD target") their lines also satisfy ("EHLO host", "USER
# name"); the others' probes are disjoint, the common ones first.
PREFERENCE: Final = ("smtp", "imap", "pop3", "http", "tls", "smb", "dcerpc", "rdp", "dns")


def relocatable(direction: Direction) -> tuple[str, ...]:
    """The TCP protocols identified by content in `direction`, in identification order."""
    names = [
        app.name
        for app in app_registry.protocols()
        if PROTO_TCP in app.transports
        and direction in app.directions
        and (app.probe is not None or app.elsewhere is not None)
    ]
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    return tuple(sorted(names, key=lambda n: (rank.get(n, len(rank)), n)))


def _follows(rule: Rule, app: app_registry.AppProtocol) -> bool:
    if rule.any_port or rule.app == app.name:
        return True
    if rule.app == "raw":
        return bool(app.ports.intersection(rule.ports))
    own = app_registry.get(rule.app)
    return own is not None and app.name in own.carried_by


def follow_sets(rules: Sequence[Rule]) -> dict[tuple[str, Direction], frozenset[int]]:
    """(protocol, direction) -> indices in `rules` of the TCP rules that follow the protocol
    in that direction (see the module comment), for every TCP protocol."""
    out: dict[tuple[str, Direction], frozenset[int]] = {}
    for d in Direction:
        for app in app_registry.protocols():
            if PROTO_TCP not in app.transports:
                continue
            name = app.name
            moves = [app_registry.get(n) for n in sorted(app.hands_over)]
            targets = [app, *(m for m in moves if m is not None)]
            out[(name, d)] = frozenset(
                i
                for i, rule in enumerate(rules)
                if rule.proto_number == PROTO_TCP
                and rule.inspects(d)
                and any(_follows(rule, target) for target in targets)
            )
    return out


def expected_protocols(port: int, listing: Iterable[Rule]) -> frozenset[str]:
    """The protocols expected on TCP `port`: the apps of the rules listing it (and what
    carries them, SMB for DCE/RPC) and the protocols whose well-known ports include it."""
    out: set[str] = set()
    for rule in listing:
        if rule.app != "raw" and rule.ports:
            out.add(rule.app)
            own = app_registry.get(rule.app)
            if own is not None:
                out.update(own.carried_by)
    for app in app_registry.protocols():
        if port in app.ports and PROTO_TCP in app.transports:
            out.add(app.name)
    return frozenset(out)
