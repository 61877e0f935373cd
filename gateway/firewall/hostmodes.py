"""Kernel rules for the host modes (docs/lifecycle.md): setup protection, learning, lockdown.

Pure: host policies in, `ipset restore` + `iptables-restore --noflush` text out (a
`RenderedRules`, so gateway/firewall/apply.py installs and removes it atomically like the
queueing rules). Everything lives in the **filter** table's FORWARD hook (routed and bridged
traffic, br_netfilter), after mangle FORWARD where the inspection queue sits, so a host-mode
verdict applies whether or not the packet was inspected. Guarantees:

- Only NEW connections are judged: the first rule returns ESTABLISHED/RELATED packets, so
  releasing or locking a host never cuts connections it already has, and replies of allowed
  connections always pass.
- Setup protection (mode `setup`): inbound new connections to the host are refused (TCP RST,
  else ICMP port unreachable) unless they match one of its exceptions (source CIDR, optional
  protocol/port); outbound new connections from the host are refused unless they go to one of
  its update sources: a CIDR (a rule of its own), or a host name, whose current addresses the
  gateway keeps in the `names` set (per-element timeouts: an address leaves the set when the
  answer that gave it expires); a host with named sources may also query the gateway's
  resolvers (`dns_servers`, udp and tcp 53). Each refusal is first copied to NFLOG group
  `log_group` (prefix `vpatch-setup-in` / `-out`, rate-limited: gateway/firewall/droplog.py),
  which the gateway turns into `drop` events.
- Learning (mode `learning`): every new connection to or from the host is allowed and copied to
  NFLOG group `learn_group` (header only, NFLOG_SNAPLEN bytes) for the lifecycle monitor to
  record its (initiator, responder, protocol, port) tuple.
- Lockdown (mode `lockdown`): a new connection whose tuple is in the learned set passes
  (`hash:ip,port,net` matched dst,dst,src, so the initiator may be an address or a network;
  "any" initiators in `hash:ip,port` matched dst,dst); any other is copied to NFLOG group
  `lockdown_group` (rate-limited like every logging rule, gateway/firewall/droplog.py; the
  monitor turns it into an EVE `drop` event, or an `alert` one) and then dropped
  (lockdown_action `drop`) or let through (`alert`).
- Named bounds: MAX_TUPLES learned tuples in the kernel set, MAX_HOSTS_PER_SET hosts per mode.
- Chains are PREFIX-HM-*, sets prefix-hm-*, so apply.remove_rules(prefix) removes them with the
  rest of the gateway's objects (`vpatch run` merges them into its rules, firewall/compose.py);
  `vpatch hosts apply` installs them on their own with prefix STANDALONE_PREFIX
  (apply.apply_hostmodes).
- Order in filter FORWARD (explicit, FORWARD_ORDER, read back by refresh.forward_jumps): the
  firewall policy chain PREFIX-FW first (gateway/firewall/policy.py, inserted at position 1),
  then the host-mode chain (`position` 2 when `vpatch run` renders both), then whatever else
  the box has (accept paths). So a firewall `deny` drops before learning could record the
  connection or lockdown could log it, and both come before any ACCEPT rule of someone else.
- `vpatch run` renders with `always=True` (chains and sets for both families even when no
  host is in a special mode), so refresh.refresh_hostmodes can later rewrite them in place on
  `reload`: sets are filled beside the live ones and swapped (`ipset swap`, atomic per set),
  chains are rewritten by one `iptables-restore --noflush` per family (atomic per family);
  established connections are never cut.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.firewall.droplog import (
    DROP_LOG_GROUP,
    NFLOG_SNAPLEN,
    SETUP_PREFIX,
    nflog_target,
)
from gateway.firewall.render import RenderedRules, set_prefix
from gateway.lifecycle.state import (
    ANY_SOURCE,
    Endpoint,
    HostMode,
    HostPolicy,
    LearnedTuple,
    LockdownAction,
)

STANDALONE_PREFIX = "VPHM"
DEFAULT_LEARN_GROUP = 17
DEFAULT_LOCKDOWN_GROUP = 18
MAX_TUPLES = 65536
MAX_HOSTS_PER_SET = 4096
MAX_NAME_ELEMENTS = 65536  # resolved update-source addresses per family (setup hosts x names)
LEARN_PREFIX = "vpatch-learn"
LOCKDOWN_PREFIX = "vpatch-lockdown"
FORWARD_ORDER = ("FW", "HM-FORWARD")  # chain suffixes, in their order at the top of FORWARD
HM_POSITION_WITH_FIREWALL = 2  # the host-mode jump's position when PREFIX-FW holds 1


@dataclass(frozen=True, slots=True)
class HostModeSettings:
    learn_group: int = DEFAULT_LEARN_GROUP
    lockdown_group: int = DEFAULT_LOCKDOWN_GROUP
    log_group: int = DROP_LOG_GROUP  # setup protection's refusals (with the firewall's)


DEFAULT_SETTINGS = HostModeSettings()


def _family(addr: str) -> int:
    return ipaddress.ip_network(addr, strict=False).version


# set key -> ipset type; tuples: hash:ip,port,net matched dst,dst,src (the kernels at hand
# lack hash:net,port,net: CONFIG_IP_SET_HASH_NETPORTNET is often unset), so the initiator may
# be a network; anytuples: hash:ip,port matched dst,dst ("any -> DST:PORT/PROTO", ipset
# refuses a /0 network); names: hash:ip,port,ip with per-element timeouts, matched
# src,dst,dst (setup host, update-source port, resolved address; refilled as DNS answers
# change, each element expiring with its answer's TTL: gateway/lifecycle/names.py)
SET_TYPES = {
    "setup": ("hash:ip", MAX_HOSTS_PER_SET, ""),
    "learn": ("hash:ip", MAX_HOSTS_PER_SET, ""),
    "lockdrop": ("hash:ip", MAX_HOSTS_PER_SET, ""),
    "lockalert": ("hash:ip", MAX_HOSTS_PER_SET, ""),
    "tuples": ("hash:ip,port,net", MAX_TUPLES, ""),
    "anytuples": ("hash:ip,port", MAX_TUPLES, ""),
    "names": ("hash:ip,port,ip", MAX_NAME_ELEMENTS, " timeout 0"),
}


def set_names(prefix: str, version: int) -> dict[str, str]:
    sp = set_prefix(prefix) + "hm-"
    return {k: f"{sp}{k}{version}" for k in SET_TYPES}


def tuple_family(t: LearnedTuple) -> int:
    return _family(t.dst)


def tuple_element(t: LearnedTuple) -> tuple[str, str] | None:
    """(set key, element) for a lockdown tuple: "tuples" (hash:ip,port,net: responder,
    proto:port, initiator address or network) or "anytuples" (hash:ip,port: responder,
    proto:port, for an "any" initiator); None if ipset cannot express the tuple."""
    if t.proto in ("tcp", "udp"):
        port = f"{t.proto}:{t.port}"
    elif t.proto in ("icmp", "icmpv6"):
        port = f"{t.proto}:{t.port}/0"
    else:
        return None
    if t.src == ANY_SOURCE:
        return "anytuples", f"{t.dst},{port}"
    return "tuples", f"{t.dst},{port},{t.src}"


def name_elements(
    h: HostPolicy, resolved: Mapping[str, Sequence[tuple[str, int]]], version: int
) -> list[str]:
    """The `names` set elements (with their timeouts) for a setup host's named update
    sources: one per resolved address of the family, expiring after its seconds left."""
    out = []
    for e in h.update_sources:
        if not e.is_name:
            continue
        for addr, left in resolved.get(e.net, ()):
            if _family(addr) == version and left > 0:
                out.append(f"{h.address},{e.proto}:{e.port},{addr} timeout {left}")
    return out


def _endpoint_match(e: Endpoint, side: str) -> str:
    spec = f"-{side} {e.net}"
    if e.proto:
        spec += f" -p {e.proto}"
        if e.port:
            spec += f" --dport {e.port}"
    return spec


def _reject(version: int) -> list[str]:
    unreach = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
    return ["-p tcp -j REJECT --reject-with tcp-reset", f"-j REJECT --reject-with {unreach}"]


def name_update_lines(
    policies: Iterable[HostPolicy],
    updates: Mapping[str, Sequence[tuple[str, int]]],
    prefix: str = STANDALONE_PREFIX,
) -> str:
    """`ipset -exist restore` lines adding (or refreshing the timeouts of) the `names` set
    elements that new DNS answers give, for every setup host using those names."""
    lines: list[str] = []
    for h in policies:
        if h.mode is not HostMode.SETUP:
            continue
        version = _family(h.address)
        name = set_names(prefix, version)["names"]
        lines.extend(f"add {name} {el}" for el in name_elements(h, updates, version))
    return "\n".join(lines) + "\n" if lines else ""


def render_hostmodes(
    policies: Iterable[HostPolicy],
    prefix: str = STANDALONE_PREFIX,
    settings: HostModeSettings = DEFAULT_SETTINGS,
    *,
    always: bool = False,
    position: int = 1,
    resolved: Mapping[str, Sequence[tuple[str, int]]] | None = None,
    dns_servers: Sequence[str] = (),
) -> RenderedRules:
    """Sets and filter-table rules for every host not in normal mode (both families).

    always: render both families' chains and sets even without such hosts (`vpatch run`,
    so `reload` can refresh them in place). position: where the jump goes in FORWARD.
    resolved: the current addresses of update-source names, name -> [(address, seconds the
    answer stays valid)] (gateway/lifecycle/names.py). dns_servers: the resolvers a setup
    host with named update sources may query (udp and tcp 53; the ones the gateway asks).
    """
    hosts = [p for p in policies if p.mode is not HostMode.NORMAL]
    ipset_lines: list[str] = []
    sets: list[str] = []
    texts = {4: "", 6: ""}
    chains_all: list[str] = []
    for version in (4, 6):
        mine = [h for h in hosts if _family(h.address) == version]
        if not mine and not always:
            continue
        names = set_names(prefix, version)
        fam = "inet" if version == 4 else "inet6"
        elements = _set_elements(mine, version, resolved or {})
        for key, name in names.items():
            kind, maxelem, extra = SET_TYPES[key]
            if len(elements[key]) > maxelem:
                raise ValueError(f"{len(elements[key])} entries for {name}, more than {maxelem}")
            ipset_lines.append(f"create {name} {kind} family {fam} maxelem {maxelem}{extra}")
            ipset_lines.extend(f"add {name} {el}" for el in sorted(elements[key]))
            sets.append(name)
        text, chains = _render_family(version, prefix, names, mine, settings, position, dns_servers)
        texts[version] = text
        chains_all.extend(c for c in chains if c not in chains_all)
    return RenderedRules(
        ipset="\n".join(ipset_lines) + "\n" if ipset_lines else "",
        ipv4=texts[4],
        ipv6=texts[6],
        sets=tuple(sets),
        chains=tuple(chains_all),
        prefix=prefix,
    )


def _set_elements(
    hosts: Sequence[HostPolicy], version: int, resolved: Mapping[str, Sequence[tuple[str, int]]]
) -> dict[str, set[str]]:
    """Every set's elements for the hosts of one family."""
    out: dict[str, set[str]] = {k: set() for k in SET_TYPES}
    for h in hosts:
        if h.mode is HostMode.SETUP:
            out["setup"].add(h.address)
            out["names"].update(name_elements(h, resolved, version))
        elif h.mode is HostMode.LEARNING:
            out["learn"].add(h.address)
        elif h.mode is HostMode.LOCKDOWN:
            key = "lockdrop" if h.lockdown_action is LockdownAction.DROP else "lockalert"
            out[key].add(h.address)
            for t in h.learned:
                found = tuple_element(t)
                if found is not None and tuple_family(t) == version:
                    out[found[0]].add(found[1])
    return out


def _render_family(
    version: int,
    prefix: str,
    names: dict[str, str],
    hosts: Sequence[HostPolicy],
    settings: HostModeSettings,
    position: int = 1,
    dns_servers: Sequence[str] = (),
) -> tuple[str, list[str]]:
    p = f"{prefix}-HM"
    fwd, sin, sout, lock = f"{p}-FORWARD", f"{p}-SETUP-IN", f"{p}-SETUP-OUT", f"{p}-LOCK"
    chains = [fwd, sin, sout, lock]
    r: list[str] = [
        f"-I FORWARD {position} -j {fwd}",
        f"-A {fwd} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
    ]
    r.append(f"-A {fwd} -m set --match-set {names['setup']} dst -j {sin}")
    r.append(f"-A {fwd} -m set --match-set {names['setup']} src -j {sout}")
    for side in ("dst", "src"):
        r.append(
            f"-A {fwd} -m set --match-set {names['learn']} {side} -j NFLOG "
            f"--nflog-group {settings.learn_group} --nflog-prefix {LEARN_PREFIX} "
            f"--nflog-size {NFLOG_SNAPLEN}"
        )
    for key in ("lockdrop", "lockalert"):
        for side in ("dst", "src"):
            r.append(f"-A {fwd} -m set --match-set {names[key]} {side} -j {lock}")
    for h in hosts:
        if h.mode is not HostMode.SETUP:
            continue
        for e in h.exceptions:
            if _family(e.net) == version:
                r.append(f"-A {sin} -d {h.address} {_endpoint_match(e, 's')} -j RETURN")
        for e in h.update_sources:
            if not e.is_name and _family(e.net) == version:
                r.append(f"-A {sout} -s {h.address} {_endpoint_match(e, 'd')} -j RETURN")
        if any(e.is_name for e in h.update_sources):
            r.extend(_dns_rules(sout, h.address, dns_servers, version))
    r.append(f"-A {sout} -m set --match-set {names['names']} src,dst,dst -j RETURN")
    r.append(f"-A {sin} {nflog_target(settings.log_group, SETUP_PREFIX + 'in')}")
    r.append(f"-A {sout} {nflog_target(settings.log_group, SETUP_PREFIX + 'out')}")
    r.extend(f"-A {sin} {x}" for x in _reject(version))
    r.extend(f"-A {sout} {x}" for x in _reject(version))
    r.append(f"-A {lock} -m set --match-set {names['tuples']} dst,dst,src -j RETURN")
    r.append(f"-A {lock} -m set --match-set {names['anytuples']} dst,dst -j RETURN")
    r.append(f"-A {lock} {nflog_target(settings.lockdown_group, LOCKDOWN_PREFIX)}")
    for side in ("dst", "src"):
        r.append(f"-A {lock} -m set --match-set {names['lockdrop']} {side} -j DROP")
    lines = ["*filter", *(f":{c} - [0:0]" for c in chains), *r, "COMMIT"]
    return "\n".join(lines) + "\n", chains


def _dns_rules(chain: str, host: str, servers: Sequence[str], version: int) -> list[str]:
    """A setup host with named update sources may ask the gateway's resolvers (the answers it
    gets are the ones the gateway puts in the names set); loopback resolvers of the gateway
    itself (a local stub) are no use to the host and skipped."""
    out = []
    for server in servers:
        addr = ipaddress.ip_address(server)
        if addr.version != version or addr.is_loopback:
            continue
        for proto in ("udp", "tcp"):
            out.append(f"-A {chain} -s {host} -d {addr} -p {proto} --dport 53 -j RETURN")
    return out
