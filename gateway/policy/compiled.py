"""The engine side of the policy (docs/policy.md): which mode each rule has for each server.

What it does: `CompiledPolicy(hosts, groups, assignments)` is built from plain lists (the
records of gateway.policy.store's `policy_snapshot()`, or any objects with the same attributes)
and answers `mode(server_ip, rule) -> Mode` (OFF / DETECT / PREVENT) by the most specific
assignment: host > group (the host's group) > global > the rule's `default_mode`. A host entry
is an address or a CIDR; an address is matched exactly first, then the most specific prefix
that contains it.

What it guarantees:
- Building validates every entry and raises ConfigError naming the offending value and which
  entry it came from; a built policy is immutable (swap in a new one to change it).
- `mode()` never raises: an unparsable server address gets the global/default mode. The host
  lookup is cached per server address (bounded by MAX_CACHED_ADDRESSES, cleared when full).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Protocol

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.match.rules import Rule

__all__ = ["MAX_CACHED_ADDRESSES", "CompiledPolicy", "Mode"]

MAX_CACHED_ADDRESSES: Final = 65536

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Mode(enum.Enum):
    """How a rule applies to a server (docs/policy.md "Modes")."""

    OFF = "off"  # not evaluated: a match is ignored
    DETECT = "detect"  # a match raises an event (alert.action "allowed", would_block)
    PREVENT = "prevent"  # a match applies the rule's own action


class HostLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def group_id(self) -> int | None: ...


class GroupLike(Protocol):
    @property
    def id(self) -> int: ...


class AssignmentLike(Protocol):
    @property
    def rule_id(self) -> int: ...
    @property
    def scope(self) -> str: ...
    @property
    def scope_id(self) -> int | None: ...
    @property
    def mode(self) -> str: ...


def _mode(value: str, where: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(f"policy {where}: mode {value!r} is not off, detect or prevent") from None


class CompiledPolicy:
    """Effective modes per (server address, rule). Immutable once built."""

    __slots__ = ("_cache", "_exact", "_global", "_group", "_host", "_networks")

    def __init__(
        self,
        hosts: Iterable[HostLike] = (),
        groups: Iterable[GroupLike] = (),
        assignments: Iterable[AssignmentLike] = (),
    ) -> None:
        group_ids = {g.id for g in groups}
        # host id -> (group id)
        self._exact: dict[str, tuple[int, int | None]] = {}
        networks: list[tuple[IpNetwork, int, int | None]] = []
        host_ids: set[int] = set()
        for host in hosts:
            where = f"host {host.id}"
            if host.group_id is not None and host.group_id not in group_ids:
                raise ConfigError(f"policy {where}: group {host.group_id} does not exist")
            host_ids.add(host.id)
            try:
                net = ipaddress.ip_network(host.address, strict=False)
            except ValueError:
                raise ConfigError(
                    f"policy {where}: address {host.address!r} is not an address or CIDR"
                ) from None
            if net.num_addresses == 1:
                self._exact[str(net.network_address)] = (host.id, host.group_id)
            else:
                networks.append((net, host.id, host.group_id))
        networks.sort(key=lambda item: item[0].prefixlen, reverse=True)  # most specific first
        self._networks = tuple(networks)
        self._global: dict[int, Mode] = {}
        self._group: dict[tuple[int, int], Mode] = {}
        self._host: dict[tuple[int, int], Mode] = {}
        for a in assignments:
            where = f"assignment of rule {a.rule_id} ({a.scope} {a.scope_id})"
            mode = _mode(a.mode, where)
            if a.scope == "global":
                self._global[a.rule_id] = mode
            elif a.scope == "group":
                if a.scope_id is None or a.scope_id not in group_ids:
                    raise ConfigError(f"policy {where}: group {a.scope_id} does not exist")
                self._group[(a.scope_id, a.rule_id)] = mode
            elif a.scope == "host":
                if a.scope_id is None or a.scope_id not in host_ids:
                    raise ConfigError(f"policy {where}: host {a.scope_id} does not exist")
                self._host[(a.scope_id, a.rule_id)] = mode
            else:
                raise ConfigError(f"policy {where}: scope {a.scope!r} is not global/group/host")
        self._cache: dict[str, tuple[int, int | None] | None] = {}

    def _lookup(self, server_ip: str) -> tuple[int, int | None] | None:
        cache = self._cache
        if server_ip in cache:
            return cache[server_ip]
        found = self._exact.get(server_ip)
        if found is None and self._networks:
            try:
                addr = ipaddress.ip_address(server_ip)
            except ValueError:
                addr = None
            if addr is not None:
                canonical = self._exact.get(str(addr))
                if canonical is not None:
                    found = canonical
                else:
                    for net, host_id, group_id in self._networks:
                        if addr.version == net.version and addr in net:
                            found = (host_id, group_id)
                            break
        if len(cache) >= MAX_CACHED_ADDRESSES:
            cache.clear()
        cache[server_ip] = found
        return found

    def mode(self, server_ip: str, rule: Rule) -> Mode:
        """The effective mode of `rule` for the server at `server_ip`. Never raises."""
        rid = rule.id
        host = self._lookup(server_ip)
        if host is not None:
            host_id, group_id = host
            mode = self._host.get((host_id, rid))
            if mode is not None:
                return mode
            if group_id is not None:
                mode = self._group.get((group_id, rid))
                if mode is not None:
                    return mode
        mode = self._global.get(rid)
        if mode is not None:
            return mode
        return rule.default_mode
