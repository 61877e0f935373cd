"""Render the kernel side of the gateway as `ipset restore` and `iptables-restore` text.

Pure: configuration + the ports enabled rules cover in, text out. Nothing here touches the kernel
(gateway/firewall/apply.py does). Guarantees:

- Only our own objects: chains named PREFIX-* in the mangle table, ipsets named prefix-*, and
  one jump from each of the built-in chains FORWARD and POSTROUTING. The text is meant for
  `iptables-restore --noflush`: nobody else's rule is flushed or reordered.
- Queued (NFQUEUE) are only packets an enabled rule could care about: a protected host as the
  destination (to_server) or the source (to_client, when stream_depth.to_client > 0), TCP/UDP
  to a port an enabled rule covers in that direction (the port sets prefix-{tcp,udp}-{srv,cli},
  every port when the plan holds ANY_PORT: a `ports: any` rule; every TCP port to the hosts
  of the any-port sets), on connections not bypassed by connmark, and for TCP only segments
  that carry payload, SYN+ACKs and the SYNs conntrack finds to open a new connection (they seed
  reassembly; a SYN injected into a live connection is not queued). The stream depth is
  enforced by the engine, see below.
- The rules' shape depends on the configuration only; what the rules cover is in sets. The
  four port sets always exist (empty where no rule looks), so a rule reload (`vpatch rules
  reload`) only refills them, like the host sets below (refresh.py).
- Protected hosts are the configuration's `protected_hosts` (the seed) plus the hosts of the
  policy store, in the sets prefix-hosts4/6 (hash:net: addresses and networks). The sets and
  the chains that match them exist whenever a rule needs queueing, even while empty, so that
  `reload` refills them in place when hosts are added or removed (refresh.py): no rule reload,
  established flows untouched.
- Forwarded traffic only: routed and bridged traffic (br_netfilter) both pass FORWARD.
  Mangle FORWARD runs before filter FORWARD, so a packet we accept still meets the host's own
  filter rules.
- Both directions of a flow land in the same queue. `queues.balance: flow` (the default):
  xt_HMARK hashes addresses, ports and protocol, each pair sorted first (net/netfilter/
  xt_HMARK.c, hmark_hash and hmark_swap_ports), into the packet mark, and one NFQUEUE rule
  per value takes it to its queue (`queue_rules`), so one client's flows are spread. `address`:
  the kernel's `--queue-balance` hash (include/net/netfilter/nf_queue.h, hash_v4/hash_v6:
  "packets in either direction go into same queue") orders source and destination address
  before hashing them with the protocol; it ignores ports, so all flows between two hosts
  share a queue.
- Uninspected packets are counted: every way into a queue sets the `marks.queued` bit; the
  worker's verdict clears it; the first rule of PREFIX-POST counts (and returns) packets still
  carrying it, which the kernel passed without a verdict (fail-open on a full queue,
  --queue-bypass with no reader). gateway/firewall/counters.py reads its counters.
- Blocked connections: the reset a worker puts in place of a blocked packet carries the
  `marks.blocked` bit, OR-ed into the connmark in POSTROUTING. Conntrack never sees these
  resets (they replace the packet after it), so the entry stays ESTABLISHED and a SYN from a
  reused client port is not NEW: the first rule of our FORWARD chain queues every SYN and
  SYN+ACK of a blocked connection, so the engine sees the new connection (it replaces the
  flow on the server's SYN+ACK, gateway/flow/table.py), and that SYN+ACK clears our connmark
  bits in POSTROUTING (conntrack resynchronises the entry from the SYN it ignored and the
  SYN+ACK answering it).
- Bypass: a worker accepts the packet of a finished flow with the BYPASS packet-mark bit, or,
  when only one direction finished (its depth reached while the other still needs looking at,
  e.g. a bulk upload whose few response bytes never reach the response depth), with that
  direction's bit (BYPASS_TO_SERVER / BYPASS_TO_CLIENT). The NFQUEUE verdict ends the FORWARD
  traversal, so the bits are OR-ed into the connmark in mangle POSTROUTING (`CONNMARK
  --or-mark`, only the bits vpatch owns); the first rule of our FORWARD chain skips connections
  carrying BYPASS, and the first rule of each direction's chain those carrying its own bit.
- Fail policy: open adds `--queue-bypass` (no reader -> accept); closed leaves it out (no reader
  -> drop). The queue-full behaviour is set by the worker on its queue (NFQA_CFG_F_FAIL_OPEN).

Invalid segments (`firewall.drop_invalid`, on by default): the first rule of the TCP chain drops
segments to or from protected hosts that conntrack marked INVALID. Conntrack verifies the TCP
checksum at PRE_ROUTING (net.netfilter.nf_conntrack_checksum, skipped for CHECKSUM_PARTIAL and
CHECKSUM_UNNECESSARY skbs, i.e. offload on the sender's host or a verified NIC checksum) and
tracks each side's window (nf_conntrack_proto_tcp.c tcp_in_window, unless
nf_conntrack_tcp_be_liberal); the IPv4 header checksum is verified before any hook (ip_rcv,
br_validate_ipv4). Only queued packets meet the rule: pure ACKs are never dropped by it.

Payload test (TCP): `-m length` cannot tell a pure ACK with options from a short data segment
(52 bytes is both a timestamped ACK and 12 bytes of data without options), and a peer chooses
its options, so that test would be evadable. We use u32 instead, exact for the usual header
shapes: for each TCP data offset D (5..15) one rule tests "IPv4 IHL = 5, TCP data offset = D,
total length > 20 + 4*D" (IPv6: "next header = TCP, data offset = D, payload length > 4*D").
Packets with IPv4 options or IPv6 extension headers are always queued (rare; the engine copes).
The two common offsets (8: timestamps, 5: none) come first.

Stream depth: the engine counts each direction's payload bytes exactly and, once every inspected
direction has reached its depth, gives the flow's packet the BYPASS mark; from then on the kernel
stops queueing the connection. We deliberately do not add a conntrack `connbytes` bound as well:
conntrack counts IP bytes including headers, so a peer sending 1-byte segments with 120 bytes of
headers each would reach any such bound after a small fraction of the depth, and the rest of its
stream (the exploit) would never be inspected. A flow the engine has not finalised keeps being
queued, which is the safe side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import FailPolicy, GatewayConfig, Network
from gateway.match.rules import ANY_PORT
from gateway.vocabulary import Direction

MIN_ANY_PORT_MAXELEM = 4096  # room in the any-port host sets (more if more hosts need it)
MIN_HOST_MAXELEM = 4096  # room in the protected-host sets (config.MAX_PROTECTED_HOSTS)
# Common TCP data offsets first: 8 (timestamps, Linux default), 5 (no options, Windows default).
TCP_DATA_OFFSETS = (8, 5, 10, 6, 7, 9, 11, 12, 13, 14, 15)
PROTOCOLS = ("tcp", "udp")
HMARK_SEED = 0x76706174  # xt_HMARK's hash seed (--hmark-rnd): fixed, so a re-render is the same


class PortSource(Protocol):
    """What render needs from a RuleSet: ports covered by enabled rules."""

    def ports(self, protocol: str, direction: Direction) -> set[int]: ...


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """Ports that enabled rules inspect, per protocol and direction (server ports both ways)."""

    tcp_to_server: frozenset[int] = frozenset()
    tcp_to_client: frozenset[int] = frozenset()
    udp_to_server: frozenset[int] = frozenset()
    udp_to_client: frozenset[int] = frozenset()

    def get(self, protocol: str, direction: Direction) -> frozenset[int]:
        value: frozenset[int] = getattr(self, f"{protocol}_{direction.label}")
        return value

    @classmethod
    def from_rules(cls, rules: PortSource) -> QueuePlan:
        return cls(
            **{
                f"{p}_{d.label}": frozenset(int(x) for x in rules.ports(p, d))
                for p in PROTOCOLS
                for d in Direction
            }
        )


@dataclass(frozen=True, slots=True)
class RenderedRules:
    """Everything apply.py needs: text per tool and the names of what it creates."""

    ipset: str  # `ipset restore` text ("" when no set is needed)
    ipv4: str  # `iptables-restore --noflush` text ("" when nothing is queued for IPv4)
    ipv6: str  # `ip6tables-restore --noflush` text
    sets: tuple[str, ...]  # ipset names created
    chains: tuple[str, ...]  # chain names created (in mangle, both families when rendered)
    prefix: str

    def describe(self) -> str:
        parts = [
            "# ipset restore",
            self.ipset or "# (none)",
            "# iptables-restore --noflush",
            self.ipv4 or "# (nothing queued for IPv4)",
            "# ip6tables-restore --noflush",
            self.ipv6 or "# (nothing queued for IPv6)",
        ]
        return "\n".join(p.rstrip("\n") for p in parts) + "\n"


def merge(base: RenderedRules, extra: RenderedRules) -> RenderedRules:
    """One RenderedRules holding both (base's prefix): each tool's text is base's then extra's,
    so both are applied (and removed) in one step."""
    return RenderedRules(
        ipset=base.ipset + extra.ipset,
        ipv4=base.ipv4 + extra.ipv4,
        ipv6=base.ipv6 + extra.ipv6,
        sets=base.sets + extra.sets,
        chains=base.chains + tuple(c for c in extra.chains if c not in base.chains),
        prefix=base.prefix,
    )


def set_prefix(chain_prefix: str) -> str:
    return chain_prefix.lower() + "-"


def queue_target(config: GatewayConfig, queue_num: int | None = None) -> str:
    """The NFQUEUE target: to `queue_num`, or the configured queue(s) (--queue-balance)."""
    q = config.queues
    if queue_num is not None:
        target = f"NFQUEUE --queue-num {queue_num}"
    elif q.count == 1:
        target = f"NFQUEUE --queue-num {q.first}"
    else:
        target = f"NFQUEUE --queue-balance {q.first}:{q.first + q.count - 1}"
    if config.fail_policy is FailPolicy.OPEN:
        target += " --queue-bypass"
    return target


def queue_rules(config: GatewayConfig, chain: str) -> list[str]:
    """The body of the QUEUE chain: mark the packet "queued", then hand it to its queue.

    Spread by flow: xt_HMARK writes a hash of the 5-tuple, reduced to 0..count-1, into the
    packet mark (the whole mark: the target has no mask), symmetric in both directions
    (net/netfilter/xt_HMARK.c sorts the two addresses and the two ports before hashing), so
    both directions of a flow meet the same worker; one NFQUEUE rule per hash value. The
    "queued" bit is OR-ed in after the hash, and a last rule takes a packet HMARK could not
    hash (it then leaves the mark alone) to the first queue; the worker's verdict clears it (see
    gateway/intake/nfqueue.py), so a packet that still carries it in POSTROUTING was passed
    by the kernel without a verdict: the counter of the POST chain's first rule.
    """
    queued = config.marks.queued
    if not config.queues.hashed:
        return [
            f"-A {chain} -j MARK --or-mark {queued:#x}",
            f"-A {chain} -j {queue_target(config)}",
        ]
    q = config.queues
    out = [
        f"-A {chain} -j HMARK --hmark-tuple src,dst,sport,dport,proto "
        f"--hmark-mod {q.count} --hmark-rnd {HMARK_SEED:#x}",
        f"-A {chain} -j MARK --or-mark {queued:#x}",
    ]
    out.extend(
        f"-A {chain} -m mark --mark {i | queued:#x} -j {queue_target(config, q.first + i)}"
        for i in range(q.count)
    )
    # HMARK leaves the mark as it was when it cannot read the headers: never fall through
    out.append(f"-A {chain} -j {queue_target(config, q.first)}")
    return out


def _tcp_payload_tests(version: int) -> list[str]:
    """u32 expressions, one per TCP data offset, true when the segment carries payload."""
    tests = []
    for d in TCP_DATA_OFFSETS:
        hdr = 4 * d
        if version == 4:
            # word at 0: version|IHL|TOS|total length; word at 32 (IHL 5): TCP offset 12..15.
            tests.append(f"0>>22&0x3C=20&&32>>28={d}&&0&0xFFFF={20 + hdr + 1}:65535")
        else:
            # word at 4: payload length|next header|hop limit; word at 52: TCP offset 12..15.
            tests.append(f"4>>8&0xFF=6&&52>>28={d}&&4>>16&0xFFFF={hdr + 1}:65535")
    return tests


def _render_family(
    version: int,
    config: GatewayConfig,
    plan: QueuePlan,
    port_sets: dict[tuple[str, Direction], str],
    host_set: str,
    any_port_set: str,
) -> tuple[str, list[str]]:
    p = config.firewall.chain_prefix
    fwd, srv, cli, tcp, queue, post = (
        f"{p}-FORWARD",
        f"{p}-TO-SERVER",
        f"{p}-TO-CLIENT",
        f"{p}-TCP-DATA",
        f"{p}-QUEUE",
        f"{p}-POST",
    )
    marks = config.marks
    bypass = marks.bypass
    depth = config.stream_depth
    lines: list[str] = []
    rules: list[str] = []
    chains = [fwd]
    rules.append(f"-I FORWARD 1 -j {fwd}")
    rules.append(f"-I POSTROUTING 1 -j {post}")
    blocked = marks.blocked
    # A packet a worker dropped comes back (`repeat` verdict) with the "blocked" bit: into the
    # connmark, then dropped (no packet reaches FORWARD with that bit otherwise).
    rules.append(
        f"-A {fwd} -m mark --mark {blocked:#x}/{blocked:#x} -j CONNMARK --or-mark {blocked:#x}"
    )
    rules.append(f"-A {fwd} -m mark --mark {blocked:#x}/{blocked:#x} -j DROP")
    rules.append(f"-A {fwd} -m connmark --mark {bypass:#x}/{bypass:#x} -j RETURN")

    dir_specs = (
        (Direction.TO_SERVER, srv, "dst", depth.to_server, marks.bypass_to_server),
        (Direction.TO_CLIENT, cli, "src", depth.to_client, marks.bypass_to_client),
    )
    protocols = PROTOCOLS if config.firewall.queue_udp else ("tcp",)
    uses_tcp = False
    every_port = _every_tcp_port(config, port_sets)
    for direction, chain, side, dir_depth, dir_bit in dir_specs:
        if dir_depth <= 0:
            continue
        # this direction of the connection finished inspecting: not queued any more
        body = [f"-A {chain} -m connmark --mark {dir_bit:#x}/{dir_bit:#x} -j RETURN"]
        for proto in protocols:
            target = tcp if proto == "tcp" else queue
            uses_tcp |= proto == "tcp"
            set_name = port_sets[(proto, direction)]
            if proto == "tcp" and every_port is not None:
                body.extend(_every_port_lines(chain, side, set_name, every_port, direction, tcp))
                continue
            body.append(f"-A {chain} -p {proto} -m set --match-set {set_name} {side} -j {target}")
        # (with every_port, each TCP port is queued already: the any-port hosts with it)
        if direction is Direction.TO_SERVER and any_port_set and every_port is None:
            # hosts whose app control looks at every TCP port (identification by content)
            uses_tcp = True
            body.append(f"-A {chain} -p tcp -m set --match-set {any_port_set} dst -j {tcp}")
        if len(body) > 1:
            chains.append(chain)
            rules.append(f"-A {fwd} -m set --match-set {host_set} {side} -j {chain}")
            rules.extend(body)
    if len(chains) == 1:
        return "", []  # nothing to queue for this family
    if uses_tcp:
        chains.append(tcp)
        if config.firewall.drop_invalid:
            # what conntrack finds INVALID (wrong TCP checksum, outside the tracked window,
            # impossible flags) the receiver would drop too: dropped here, never queued, and
            # the engine leaves those checks to the kernel (EngineConfig.kernel_checked_tcp)
            rules.append(f"-A {tcp} -m conntrack --ctstate INVALID -j DROP")
        # A SYN or SYN+ACK on the ports of a connection a block reset: conntrack never saw
        # the resets, so the entry is still ESTABLISHED and a new SYN from a reused client
        # port is not NEW. Queued first, before any bypass, so the engine sees the new
        # connection replace the blocked flow (gateway/flow/table.py).
        rules.insert(
            rules.index(f"-A {fwd} -m connmark --mark {bypass:#x}/{bypass:#x} -j RETURN"),
            f"-A {fwd} -p tcp --tcp-flags SYN SYN -m connmark --mark {blocked:#x}/{blocked:#x} "
            f"-j {queue}",
        )
        # SYN and SYN+ACK: no payload, but they carry the initial sequence numbers. A client
        # SYN only when conntrack found it opens a new connection: one injected into a live
        # connection (conntrack ignores it) is not queued, so the engine may take every queued
        # payload-less SYN with a new sequence number as a reused port (kernel_checked_syn).
        rules.append(
            f"-A {tcp} -p tcp --tcp-flags SYN,ACK SYN -m conntrack --ctstate NEW -j {queue}"
        )
        rules.append(f"-A {tcp} -p tcp --tcp-flags SYN,ACK SYN,ACK -j {queue}")
        for test in _tcp_payload_tests(version):
            rules.append(f'-A {tcp} -m u32 --u32 "{test}" -j {queue}')
        if version == 4:
            rules.append(f'-A {tcp} -m u32 ! --u32 "0>>22&0x3C=20" -j {queue}')
        else:
            rules.append(f'-A {tcp} -m u32 ! --u32 "4>>8&0xFF=6" -j {queue}')
    chains += [queue, post]
    rules.extend(queue_rules(config, queue))
    # Passed by the kernel without a verdict (queue full with fail-open, or no reader with
    # --queue-bypass: both go on to the next hook with the mark unchanged, see
    # net/netfilter/nfnetlink_queue.c and nf_queue.c): counted by this rule, nothing else.
    queued = marks.queued
    rules.append(f"-A {post} -m mark --mark {queued:#x}/{queued:#x} -j RETURN")
    # The server answered a new SYN on a blocked connection's ports: a new connection. Its
    # connmark starts afresh (the engine replaced the blocked flow); conntrack resynchronises
    # the entry itself from the SYN it ignored and this SYN+ACK.
    rules.append(
        f"-A {post} -p tcp --tcp-flags SYN,ACK SYN,ACK -m connmark --mark {blocked:#x}/{blocked:#x}"
        f" -j CONNMARK --set-xmark 0x0/{marks.mask:#x}"
    )
    # Each bit a worker put on a packet is OR-ed into the connmark (never cleared: a
    # direction that finished stays finished), leaving every other connmark bit alone.
    for bit in (bypass, marks.bypass_to_server, marks.bypass_to_client, blocked):
        rules.append(f"-A {post} -m mark --mark {bit:#x}/{bit:#x} -j CONNMARK --or-mark {bit:#x}")
    lines.append("*mangle")
    lines.extend(f":{c} - [0:0]" for c in chains)
    lines.extend(rules)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n", chains


def _every_tcp_port(
    config: GatewayConfig, port_sets: dict[tuple[str, Direction], str]
) -> str | None:
    """With `engine.identify_any_port`: the port set of the TCP ports listed to the server,
    whose responses keep their own test; None when the option is off."""
    if not config.engine.identify_any_port:
        return None
    return port_sets[("tcp", Direction.TO_SERVER)]


def _every_port_lines(
    chain: str, side: str, set_name: str, listed: str, direction: Direction, tcp: str
) -> list[str]:
    """Protocols identified on any port (engine.identify_any_port, gateway/match/follow.py):
    every TCP port of the protected hosts is queued to the server, the engine bypasses a
    connection once it finds no protocol with rules there. Responses: the ports rules read
    them on as before; listed ports whose responses no rule reads stay unqueued (the common
    ports cost what they did); every other port's until identification."""
    if direction is Direction.TO_SERVER:
        return [f"-A {chain} -p tcp -j {tcp}"]
    return [
        f"-A {chain} -p tcp -m set --match-set {set_name} {side} -j {tcp}",
        f"-A {chain} -p tcp -m set --match-set {listed} {side} -j RETURN",
        f"-A {chain} -p tcp -j {tcp}",
    ]


def _port_spec(ports: Iterable[int]) -> list[str]:
    return [str(x) for x in sorted(set(ports))]


def port_set_names(prefix: str) -> dict[tuple[str, Direction], str]:
    """(protocol, direction) -> name of the set of ports enabled rules cover there."""
    sp = set_prefix(prefix)
    return {
        (proto, d): f"{sp}{proto}-{'srv' if d is Direction.TO_SERVER else 'cli'}"
        for proto in PROTOCOLS
        for d in Direction
    }


def render_port_sets(prefix: str, plan: QueuePlan) -> tuple[str, list[str]]:
    """`ipset restore` text creating and filling the four port sets (tcp/udp, to the server /
    to the client) from the plan, every port for a plan holding ANY_PORT (a `ports: any`
    rule); empty sets where no rule looks, so a rule reload can fill them (refresh.py)."""
    lines: list[str] = []
    names = port_set_names(prefix)
    for (proto, direction), name in names.items():
        ports = plan.get(proto, direction)
        lines.append(f"create {name} bitmap:port range 0-65535")
        if ANY_PORT in ports:
            lines.append(f"add {name} 0-65535")
        else:
            lines.extend(f"add {name} {port}" for port in _port_spec(ports))
    return "\n".join(lines) + "\n", list(names.values())


def any_port_sets(prefix: str) -> dict[int, str]:
    """IP version -> name of the set of hosts whose every TCP port is queued (to_server)."""
    sp = set_prefix(prefix)
    return {4: f"{sp}anyport4", 6: f"{sp}anyport6"}


def render_any_port_hosts(prefix: str, hosts: Iterable[Network]) -> tuple[str, list[str]]:
    """`ipset restore` text creating and filling both families' any-port host sets."""
    lines: list[str] = []
    chosen = _collapse(list(hosts))
    names = any_port_sets(prefix)
    for version, name in names.items():
        family = "inet" if version == 4 else "inet6"
        mine = [h for h in chosen if h.version == version]
        room = max(MIN_ANY_PORT_MAXELEM, len(mine))
        lines.append(f"create {name} hash:net family {family} maxelem {room}")
        lines.extend(f"add {name} {h.with_prefixlen}" for h in mine)
    return "\n".join(lines) + "\n", list(names.values())


def protected_host_sets(prefix: str) -> dict[int, str]:
    """IP version -> name of the set of protected hosts (what the queueing rules inspect)."""
    sp = set_prefix(prefix)
    return {4: f"{sp}hosts4", 6: f"{sp}hosts6"}


def render_protected_hosts(prefix: str, hosts: Iterable[Network]) -> tuple[str, list[str]]:
    """`ipset restore` text creating and filling both families' protected-host sets (room for
    MIN_HOST_MAXELEM entries at least, so hosts added later fit without re-creating them)."""
    lines: list[str] = []
    chosen = _collapse(list(hosts))
    names = protected_host_sets(prefix)
    for version, name in names.items():
        family = "inet" if version == 4 else "inet6"
        mine = [h for h in chosen if h.version == version]
        lines.append(
            f"create {name} hash:net family {family} maxelem {max(MIN_HOST_MAXELEM, len(mine))}"
        )
        lines.extend(f"add {name} {h.with_prefixlen}" for h in mine)
    return "\n".join(lines) + "\n", list(names.values())


def render(
    config: GatewayConfig,
    plan: QueuePlan,
    any_port_hosts: Sequence[Network] = (),
    stored_hosts: Sequence[Network] = (),
) -> RenderedRules:
    """Render ipsets and both families' mangle rules for this configuration and port plan.

    The host modes and the firewall policy are rendered by their own modules (hostmodes.py,
    policy.py) and joined with `merge` (compose.py does it for `vpatch run`).
    `stored_hosts`: the policy store's hosts, protected as well as config.protected_hosts.
    `any_port_hosts`: protected hosts whose every TCP port is queued to the server (payload
    only, up to the stream depth), for app control that identifies protocols by content on any
    port; the sets prefix-anyport4/6 always exist so `reload` can refill them
    (render_any_port_hosts, refresh.refresh_any_port_hosts).
    """
    prefix = config.firewall.chain_prefix
    ipset_lines: list[str] = []
    sets: list[str] = []
    port_sets = port_set_names(prefix)
    port_text, port_names = render_port_sets(prefix, plan)
    sets.extend(port_names)
    ipset_lines.extend(port_text.splitlines())
    any_text, any_names = render_any_port_hosts(prefix, any_port_hosts)
    any_sets = any_port_sets(prefix)
    host_text, host_names = render_protected_hosts(prefix, [*config.protected_hosts, *stored_hosts])
    host_sets = protected_host_sets(prefix)
    texts: dict[int, str] = {}
    all_chains: list[str] = []
    for version in (4, 6):
        # Rendered even with no protected host of the family and no port any rule covers
        # yet: `reload` refills the host sets when hosts are added or removed, `rules reload`
        # the port sets when the rules change (refresh.py); the rules themselves never change.
        text, chains = _render_family(
            version, config, plan, port_sets, host_sets[version], any_sets[version]
        )
        texts[version] = text
        all_chains.extend(c for c in chains if c not in all_chains)
    if any(texts.values()):
        sets.extend(host_names)
        ipset_lines.extend(host_text.splitlines())
        sets.extend(any_names)
        ipset_lines.extend(any_text.splitlines())
    return RenderedRules(
        ipset="\n".join(ipset_lines) + "\n" if ipset_lines else "",
        ipv4=texts[4],
        ipv6=texts[6],
        sets=tuple(sets),
        chains=tuple(all_chains),
        prefix=config.firewall.chain_prefix,
    )


def _collapse(hosts: list[Network]) -> list[Network]:
    v4 = [h for h in hosts if isinstance(h, ipaddress.IPv4Network)]
    v6 = [h for h in hosts if isinstance(h, ipaddress.IPv6Network)]
    out: list[Network] = []
    out.extend(ipaddress.collapse_addresses(v4))
    out.extend(ipaddress.collapse_addresses(v6))
    return out
