"""The engine side of the policy (docs/policy.md): which mode each rule has for each server.

What it does: `CompiledPolicy(hosts, groups, assignments)` is built from plain lists (the
records of gateway.policy.snapshot's `policy_snapshot()`, or any objects with the same attributes)
and answers `mode(server_ip, rule) -> Mode` (OFF / DETECT / PREVENT) by the most specific
assignment: host > group (the host's group) > global > the rule's `default_mode`. A host entry
is an address or a CIDR; an address is matched exactly first, then the most specific prefix
that contains it.

Application control (gateway/policy/appcontrol.py): `app_controls` ((host address, parsed
AppControl) pairs, as appcontrol.parse_host_controls gives them; this module never parses the
text) turn the built-in virtual rules (ids APP_CONTROL_FIRST..LAST, default_mode off) to
PREVENT for those hosts only; `mode(server_ip, rule, server_port)` also needs the server port
for "refuse-http-port-other-than" (the allowed ports stay OFF). Virtual rules ignore
assignments: the app-control policy alone decides them.

What it guarantees:
- Building validates every entry and raises ConfigError naming the offending value and which
  entry it came from; a built policy is immutable (swap in a new one to change it).
- `mode()` never raises: an unparsable server address gets the global/default mode. The host
  lookup is cached per server address (bounded by MAX_CACHED_ADDRESSES, cleared when full).

Exceptions (the store's `exceptions` table, docs/webui.md "Exceptions"): the optional fourth
argument takes records with (id, rule_id, host, port, uri, expires_at). Each becomes an
`ExceptionScope`: rule (None: every rule), host address or CIDR, server port (None: any), URI
(None: any) and expiry. A URI is normalised like the engine's `http.uri` (gateway.decode.http
`normalize_uri`: percent/`%u` decoding, dot segments, backslashes, lower case); a trailing `*`
makes it a prefix; without `*` it is an exact match, and an exception URI without `?` ignores
the request's query (`/a.asp` covers `/a.asp?x=1`). `exception(server_ip, rule_id, port, uri,
now)` answers the first active scope that covers a firing, or None; expiry is checked against
the `now` passed in (packet time), so an exception stops applying on time without a reload.
A URI-scoped exception never covers a firing whose URI is unknown (None): fail safe, blocked.
At most MAX_EXCEPTIONS scopes (ConfigError past that).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from gateway.decode.http import normalize_uri
from gateway.errors import ConfigError
from gateway.vocabulary import Mode

if TYPE_CHECKING:
    from gateway.match.rules import Rule

__all__ = [
    "MAX_CACHED_ADDRESSES",
    "MAX_EXCEPTIONS",
    "CompiledPolicy",
    "ExceptionScope",
    "normalize_exception_uri",
]

MAX_CACHED_ADDRESSES: Final = 65536
APP_CONTROL_FIRST: Final = 9200000  # the ids of the app-control rules (appcontrol.SID_RANGE)
APP_CONTROL_LAST: Final = 9200099
MAX_EXCEPTIONS: Final = 10000  # exception scopes in one policy (the store lists at most this)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class ExceptionLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def rule_id(self) -> int | None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def uri(self) -> str | None: ...
    @property
    def expires_at(self) -> float | None: ...


class AppControlLike(Protocol):
    """A parsed app-control rule (gateway/policy/appcontrol.py AppControl)."""

    @property
    def text(self) -> str: ...
    @property
    def rule_ids(self) -> frozenset[int]: ...
    @property
    def http_ports(self) -> frozenset[int]: ...


@dataclass(frozen=True, slots=True)
class ExceptionScope:
    """One compiled exception: where a rule's firing is ignored (see the module comment)."""

    id: int
    rule_id: int | None  # None: every rule
    network: IpNetwork
    port: int | None  # the flow's server port; None: any
    uri: str | None  # normalised; None: any URI
    uri_prefix: bool  # `uri` given with a trailing `*`
    expires_at: float | None  # seconds since the epoch; None: never

    def covers(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
               uri: str | None, now: float) -> bool:  # fmt: skip
        """True if this scope applies to a firing on (server addr, server port, URI) at `now`."""
        if self.expires_at is not None and now >= self.expires_at:
            return False
        if self.port is not None and port != self.port:
            return False
        if addr.version != self.network.version or addr not in self.network:
            return False
        want = self.uri
        if want is None:
            return True
        if uri is None:
            return False
        if self.uri_prefix:
            return uri.startswith(want)
        if uri == want:
            return True
        return "?" not in want and uri.partition("?")[0] == want


def normalize_exception_uri(uri: str) -> tuple[str, bool]:
    """(normalised URI, is a prefix) for an exception's URI, compared with `http.uri`."""
    text = uri.strip()
    prefix = text.endswith("*")
    if prefix:
        text = text[:-1]
    return normalize_uri(text), prefix


def _mode(value: str, where: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(f"policy {where}: mode {value!r} is not off, detect or prevent") from None


class CompiledPolicy:
    """Effective modes per (server address, rule). Immutable once built."""

    __slots__ = (
        "_apps",
        "_cache",
        "_exact",
        "_exceptions",
        "_global",
        "_group",
        "_host",
        "_networks",
        "has_exceptions",
    )

    def __init__(
        self,
        hosts: Iterable[HostLike] = (),
        groups: Iterable[GroupLike] = (),
        assignments: Iterable[AssignmentLike] = (),
        exceptions: Iterable[ExceptionLike] = (),
        *,
        app_controls: Iterable[tuple[str, AppControlLike]] = (),
    ) -> None:
        # address -> (virtual rule ids on, allowed HTTP ports or None when no port control)
        self._apps: dict[str, tuple[frozenset[int], frozenset[int] | None]] = {}
        for address, control in app_controls:
            try:
                addr = str(ipaddress.ip_address(address))
            except ValueError:
                raise ConfigError(
                    f"policy app control {control.text!r}: host {address!r} is not an address"
                ) from None
            ids, ports = self._apps.get(addr, (frozenset(), None))
            if control.http_ports:
                ports = control.http_ports | (ports or frozenset())
            self._apps[addr] = (ids | control.rule_ids, ports)
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
        # (rule id or None for every rule, address or None for a CIDR) -> exception scopes:
        # a firing looks at four keys at most, whatever the number of exceptions
        self._exceptions: dict[tuple[int | None, str | None], tuple[ExceptionScope, ...]] = {}
        by_rule: dict[tuple[int | None, str | None], list[ExceptionScope]] = {}
        for count, exc in enumerate(exceptions, 1):
            where = f"exception {exc.id}"
            if count > MAX_EXCEPTIONS:
                raise ConfigError(f"policy {where}: more than {MAX_EXCEPTIONS} exceptions")
            try:
                network = ipaddress.ip_network(exc.host, strict=False)
            except ValueError:
                raise ConfigError(
                    f"policy {where}: host {exc.host!r} is not an address or CIDR"
                ) from None
            if exc.port is not None and not 0 < exc.port < 65536:
                raise ConfigError(f"policy {where}: port {exc.port!r} is not 1..65535")
            uri: str | None = None
            prefix = False
            if exc.uri is not None:
                uri, prefix = normalize_exception_uri(exc.uri)
            where_key = str(network.network_address) if network.num_addresses == 1 else None
            by_rule.setdefault((exc.rule_id, where_key), []).append(
                ExceptionScope(exc.id, exc.rule_id, network, exc.port, uri, prefix, exc.expires_at)
            )
        self._exceptions = {key: tuple(scopes) for key, scopes in by_rule.items()}
        self.has_exceptions = bool(self._exceptions)

    def exception(
        self, server_ip: str, rule_id: int, port: int, uri: str | None, now: float
    ) -> ExceptionScope | None:
        """The first active exception covering a firing of `rule_id` on (server, server port,
        normalised request URI or None) at `now`, or None. Never raises."""
        scopes = self._candidates(server_ip, rule_id)
        if not scopes:
            return None
        try:
            addr = ipaddress.ip_address(server_ip)
        except ValueError:
            return None
        for scope in scopes:
            if scope.covers(addr, port, uri, now):
                return scope
        return None

    def _candidates(self, server_ip: str, rule_id: int) -> tuple[ExceptionScope, ...]:
        table = self._exceptions
        empty: tuple[ExceptionScope, ...] = ()
        return (
            *table.get((rule_id, server_ip), empty),
            *table.get((None, server_ip), empty),
            *table.get((rule_id, None), empty),
            *table.get((None, None), empty),
        )

    def wants_uri(self, server_ip: str, rule_id: int, now: float) -> bool:
        """True if some active URI-scoped exception of `rule_id` (or of every rule) might
        cover this server: only then is the request URI worth finding. Never raises."""
        for scope in self._candidates(server_ip, rule_id):
            if scope.uri is None or (scope.expires_at is not None and now >= scope.expires_at):
                continue
            try:
                addr = ipaddress.ip_address(server_ip)
            except ValueError:
                return False
            if addr.version == scope.network.version and addr in scope.network:
                return True
        return False

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

    def mode(self, server_ip: str, rule: Rule, server_port: int = 0) -> Mode:
        """The effective mode of `rule` for the server at `server_ip`. Never raises."""
        rid = rule.id
        if APP_CONTROL_FIRST <= rid <= APP_CONTROL_LAST:
            controls = self._apps.get(server_ip)
            if controls is None or rid not in controls[0]:
                return Mode.OFF
            allowed = controls[1]
            if allowed is not None and server_port in allowed:
                return Mode.OFF
            return Mode.PREVENT
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
