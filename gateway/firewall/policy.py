"""Firewall policy: ordered allow/deny/reject/log rules per host or group, stored, validated,
audited and compiled into kernel rules (iptables-restore text in our own filter-table chain).

A rule says: for the protected host(s) of its scope (`global`: every address; `host:ID`; or
`group:ID`: every host of the group), traffic in `direction` (`in`: to the host, `out`: from the
host, `both`), from/to the peer `address` (an address or CIDR; empty: any), with `protocol`
(`any`, `tcp`, `udp`, `icmp`), destination port or range (`port_from`..`port_to`, tcp/udp only)
and source MAC (`mac`, optional; only the sender's MAC is visible in FORWARD), gets `action`
`allow`, `deny`, `reject` or `log`.

Guarantees:
- Validation happens before anything is stored: `validate_rule` raises FirewallRuleError whose
  `field` names the offending field (and the message names the value).
- Every change goes through the policy store's transaction and writes one audit row
  (`firewall.add`, `firewall.update`, `firewall.delete`, `firewall.move`).
- Compilation is pure (`render_policy`): rules in position order, first match wins. `deny`
  drops the packet, `allow` returns from our chain (the packet then meets the host modes and
  the host's own filter rules, so an allow never opens what setup protection or lockdown
  closes), `reject` refuses it (TCP RST, else ICMP port unreachable), `log` lets it go on to
  the next rule. `deny`, `reject` and `log` first copy the packet to NFLOG group LOG_GROUP
  (prefix `vpatch-fw-ACTION-ID`, rate-limited in the kernel: gateway/firewall/droplog.py), which
  the gateway turns into `drop` / `flow` events (gateway/firewall/dropevents.py); the refusing
  line after the logging one counts every refused packet. No match: the packet goes on
  (default allow).
- Only NEW connections are judged (ESTABLISHED/RELATED return first): a policy change never
  cuts a connection that is already up.
- Kernel objects: one chain PREFIX-FW in the filter table of each family, jumped to from the
  top of FORWARD (routed and bridged traffic via br_netfilter), before the host-mode chain.
  `render.render` output and this chain are applied together by apply.apply_rules at start; on
  `reload`, refresh.refresh_policy rewrites the chain with one `iptables-restore --noflush` per
  family (declaring a chain in a restore flushes it, so the swap is atomic per family). Nothing
  in this module runs a command.
- Bounds: MAX_RULES rules in the store; a compiled family holds at most MAX_KERNEL_RULES lines.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.errors import FirewallError
from gateway.firewall.droplog import DROP_LOG_GROUP, fw_prefix, nflog_target
from gateway.firewall.render import RenderedRules
from gateway.policy.hosts import Group, Host, Hosts
from gateway.policy.store import Store

MAX_RULES = 1000  # firewall rules kept in the store
MAX_KERNEL_RULES = 20_000  # iptables lines one family may get (rules x hosts x directions)
MAX_COMMENT_LEN = 200
MAX_INT = 2**62  # any id, port or position beyond this is refused (SQLite INTEGER is 64-bit)
LOG_GROUP = DROP_LOG_GROUP  # NFLOG group of deny/reject/log rules (host modes use 17 and 18)

SCOPES = ("global", "host", "group")
DIRECTIONS = ("in", "out", "both")
PROTOCOLS = ("any", "tcp", "udp", "icmp")
ACTIONS = ("allow", "deny", "reject", "log")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class FirewallRuleError(FirewallError):
    """A firewall rule was refused; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class FirewallRule:
    id: int
    position: int  # smaller first; ties by id
    scope: str  # global | host | group
    scope_id: int | None
    direction: str  # in | out | both
    address: str  # peer address/CIDR ("" = any)
    protocol: str  # any | tcp | udp | icmp
    port_from: int | None
    port_to: int | None
    mac: str  # source MAC ("" = any), lower case
    action: str  # allow | deny | reject | log
    comment: str
    enabled: bool
    updated_by: str
    updated_at: float


def chain_name(prefix: str) -> str:
    return f"{prefix}-FW"


# -- validation -------------------------------------------------------------------------------


def _int_field(data: dict[str, Any], key: str) -> int | None:
    v = data.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise FirewallRuleError(key, f"{v!r} is not a number")
    try:
        n = int(str(v).strip())
    except ValueError as err:
        raise FirewallRuleError(key, f"{v!r} is not a number") from err
    if not 0 <= n <= MAX_INT:
        raise FirewallRuleError(key, f"{n} is out of range 0..{MAX_INT}")
    return n


def validate_rule(data: dict[str, Any], store: Store | None = None) -> dict[str, Any]:
    """Normalised column values for a rule from untrusted input (form or JSON), or
    FirewallRuleError naming the field. With a store, host/group ids must exist."""
    scope = str(data.get("scope", "global")).strip()
    if scope not in SCOPES:
        raise FirewallRuleError("scope", f"{scope!r} must be one of {', '.join(SCOPES)}")
    scope_id = _int_field(data, "scope_id")
    if scope == "global":
        scope_id = None
    elif scope_id is None:
        raise FirewallRuleError("scope_id", f"required for scope {scope!r}")
    elif store is not None:
        if scope == "host" and Hosts(store).get_host(scope_id) is None:
            raise FirewallRuleError("scope_id", f"host {scope_id} does not exist")
        if scope == "group" and Hosts(store).get_group(scope_id) is None:
            raise FirewallRuleError("scope_id", f"group {scope_id} does not exist")
    direction = str(data.get("direction", "in")).strip()
    if direction not in DIRECTIONS:
        raise FirewallRuleError(
            "direction", f"{direction!r} must be one of {', '.join(DIRECTIONS)}"
        )
    address = str(data.get("address") or "").strip()
    if address and address.lower() != "any":
        try:
            net = ipaddress.ip_network(address, strict=False)
        except ValueError as err:
            raise FirewallRuleError("address", f"{address!r} is not an address or CIDR") from err
        address = str(net)
    else:
        address = ""
    protocol = str(data.get("protocol") or "any").strip().lower()
    if protocol not in PROTOCOLS:
        raise FirewallRuleError("protocol", f"{protocol!r} must be one of {', '.join(PROTOCOLS)}")
    port_from = _int_field(data, "port_from")
    port_to = _int_field(data, "port_to")
    if port_to is not None and port_from is None:
        raise FirewallRuleError("port_from", "required when port_to is given")
    for key, port in (("port_from", port_from), ("port_to", port_to)):
        if port is not None and not 1 <= port <= 65535:
            raise FirewallRuleError(key, f"{port} must be 1..65535")
    if port_from is not None:
        if protocol not in ("tcp", "udp"):
            raise FirewallRuleError("protocol", f"a port needs tcp or udp, not {protocol!r}")
        if port_to is not None and port_to < port_from:
            raise FirewallRuleError("port_to", f"{port_to} is below port_from {port_from}")
        if port_to == port_from:
            port_to = None
    mac = str(data.get("mac") or "").strip().lower().replace("-", ":")
    if mac and not _MAC.match(mac):
        raise FirewallRuleError("mac", f"{mac!r} is not a MAC address like 02:00:00:00:00:01")
    action = str(data.get("action", "")).strip()
    if action not in ACTIONS:
        raise FirewallRuleError("action", f"{action!r} must be one of {', '.join(ACTIONS)}")
    comment = str(data.get("comment") or "")
    if len(comment) > MAX_COMMENT_LEN:
        raise FirewallRuleError("comment", f"longer than {MAX_COMMENT_LEN} characters")
    enabled = data.get("enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.lower() in ("1", "true", "on", "yes")
    if not isinstance(enabled, bool):
        raise FirewallRuleError("enabled", f"{enabled!r} must be true or false")
    position = _int_field(data, "position")
    return {
        "scope": scope, "scope_id": scope_id, "direction": direction, "address": address,
        "protocol": protocol, "port_from": port_from, "port_to": port_to, "mac": mac,
        "action": action, "comment": comment, "enabled": enabled, "position": position,
    }  # fmt: skip


# -- storage ----------------------------------------------------------------------------------


def _rule(r: Any) -> FirewallRule:
    return FirewallRule(
        r["id"], r["position"], r["scope"], r["scope_id"], r["direction"], r["address"],
        r["protocol"], r["port_from"], r["port_to"], r["mac"], r["action"], r["comment"],
        bool(r["enabled"]), r["updated_by"], r["updated_at"],
    )  # fmt: skip


def list_rules(store: Store) -> list[FirewallRule]:
    rows = store.db.execute(
        "SELECT * FROM firewall_rules ORDER BY position, id LIMIT ?", (MAX_RULES,)
    )
    return [_rule(r) for r in rows]


def get_rule(store: Store, rule_id: int) -> FirewallRule | None:
    r = store.db.execute("SELECT * FROM firewall_rules WHERE id = ?", (rule_id,)).fetchone()
    return _rule(r) if r else None


def add_rule(store: Store, data: dict[str, Any], actor: str) -> FirewallRule:
    """Validate and append (or insert at `position`) a rule; audited."""
    values = validate_rule(data, store)
    with store.transaction():
        count = int(store.db.execute("SELECT COUNT(*) FROM firewall_rules").fetchone()[0])
        if count >= MAX_RULES:
            raise FirewallRuleError("position", f"the policy already holds MAX_RULES={MAX_RULES}")
        if values["position"] is None:
            top = store.db.execute("SELECT MAX(position) FROM firewall_rules").fetchone()[0]
            values["position"] = (top or 0) + 10
        cur = store.db.execute(
            "INSERT INTO firewall_rules(position, scope, scope_id, direction, address, protocol, "
            "port_from, port_to, mac, action, comment, enabled, updated_by, updated_at) "
            "VALUES (:position, :scope, :scope_id, :direction, :address, :protocol, :port_from, "
            ":port_to, :mac, :action, :comment, :enabled, :actor, :now)",
            {**values, "enabled": int(values["enabled"]), "actor": actor, "now": time.time()},
        )
        rule = get_rule(store, int(cur.lastrowid or 0))
        assert rule is not None
        store.audit(actor, "firewall.add", f"firewall rule {rule.id}", None, asdict(rule))
    return rule


def update_rule(store: Store, rule_id: int, data: dict[str, Any], actor: str) -> FirewallRule:
    before = get_rule(store, rule_id)
    if before is None:
        raise FirewallRuleError("id", f"firewall rule {rule_id} does not exist")
    values = validate_rule({**asdict(before), **data}, store)
    with store.transaction():
        store.db.execute(
            "UPDATE firewall_rules SET position = :position, scope = :scope, scope_id = :scope_id, "
            "direction = :direction, address = :address, protocol = :protocol, "
            "port_from = :port_from, port_to = :port_to, mac = :mac, action = :action, "
            "comment = :comment, enabled = :enabled, updated_by = :actor, updated_at = :now "
            "WHERE id = :id",
            {**values, "enabled": int(values["enabled"]), "actor": actor, "now": time.time(),
             "id": rule_id},
        )  # fmt: skip
        after = get_rule(store, rule_id)
        store.audit(
            actor, "firewall.update", f"firewall rule {rule_id}", asdict(before),
            asdict(after) if after else None,
        )  # fmt: skip
    assert after is not None
    return after


def delete_rule(store: Store, rule_id: int, actor: str) -> None:
    with store.transaction():
        before = get_rule(store, rule_id)
        if before is None:
            raise FirewallRuleError("id", f"firewall rule {rule_id} does not exist")
        store.db.execute("DELETE FROM firewall_rules WHERE id = ?", (rule_id,))
        store.audit(actor, "firewall.delete", f"firewall rule {rule_id}", asdict(before), None)


def move_rule(store: Store, rule_id: int, offset: int, actor: str) -> list[FirewallRule]:
    """Move a rule up (offset < 0) or down in the order; positions are renumbered 10, 20, ..."""
    rules = list_rules(store)
    index = next((i for i, r in enumerate(rules) if r.id == rule_id), None)
    if index is None:
        raise FirewallRuleError("id", f"firewall rule {rule_id} does not exist")
    target = max(0, min(len(rules) - 1, index + offset))
    rule = rules.pop(index)
    rules.insert(target, rule)
    with store.transaction():
        for pos, r in enumerate(rules, start=1):
            store.db.execute(
                "UPDATE firewall_rules SET position = ? WHERE id = ?", (pos * 10, r.id)
            )
        store.audit(actor, "firewall.move", f"firewall rule {rule_id}", index + 1, target + 1)
    return list_rules(store)


# -- compilation ------------------------------------------------------------------------------


def _host_addresses(
    rule: FirewallRule, hosts: Sequence[Host], groups: Sequence[Group]
) -> list[str] | None:
    """Addresses of the rule's scope (None: any address, for global)."""
    if rule.scope == "global":
        return None
    if rule.scope == "host":
        return [h.address for h in hosts if h.id == rule.scope_id]
    return [h.address for h in hosts if h.group_id == rule.scope_id]


def _family(address: str) -> int:
    return ipaddress.ip_network(address, strict=False).version


def _rule_lines(
    rule: FirewallRule, version: int, chain: str, host_addrs: list[str] | None
) -> list[str]:
    if rule.address and _family(rule.address) != version:
        return []
    hosts: list[str | None] = (
        [None] if host_addrs is None else [a for a in host_addrs if _family(a) == version]
    )
    match_proto = ""
    if rule.protocol in ("tcp", "udp"):
        match_proto = f" -p {rule.protocol}"
        if rule.port_from is not None:
            ports = f"{rule.port_from}" + (f":{rule.port_to}" if rule.port_to else "")
            match_proto += f" --dport {ports}"
    elif rule.protocol == "icmp":
        match_proto = " -p icmp" if version == 4 else " -p ipv6-icmp"
    mac = f" -m mac --mac-source {rule.mac}" if rule.mac else ""
    targets = _targets(rule, version)
    lines: list[str] = []
    for host in hosts:
        for direction in ("in", "out") if rule.direction == "both" else (rule.direction,):
            host_side, peer_side = ("-d", "-s") if direction == "in" else ("-s", "-d")
            spec = ""
            if host is not None:
                spec += f" {host_side} {host}"
            if rule.address:
                spec += f" {peer_side} {rule.address}"
            lines.extend(
                f"-A {chain}{spec}{match_proto}{mac} -m comment --comment fw{rule.id} {target}"
                for target in targets
            )
    return lines


def _targets(rule: FirewallRule, version: int) -> list[str]:
    """What a matching packet meets, in order: the rate-limited copy to NFLOG (deny, reject,
    log), then the verdict (RETURN, DROP, REJECT; none for log)."""
    if rule.action == "allow":
        return ["-j RETURN"]
    out = [nflog_target(LOG_GROUP, fw_prefix(rule.action, rule.id))]
    if rule.action == "deny":
        out.append("-j DROP")
    elif rule.action == "reject":
        unreach = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
        reject = "tcp-reset" if rule.protocol == "tcp" else unreach
        out.append(f"-j REJECT --reject-with {reject}")
    return out


def policy_lines(
    rules: Iterable[FirewallRule], hosts: Sequence[Host], groups: Sequence[Group],
    version: int, chain: str,
) -> list[str]:  # fmt: skip
    """The rule lines of chain `chain` for one family (without the chain declaration)."""
    lines = [f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"]
    for rule in sorted(rules, key=lambda r: (r.position, r.id)):
        if not rule.enabled:
            continue
        lines.extend(_rule_lines(rule, version, chain, _host_addresses(rule, hosts, groups)))
    if len(lines) > MAX_KERNEL_RULES:
        raise FirewallError(
            f"firewall policy compiles to {len(lines)} IPv{version} rules, more than "
            f"MAX_KERNEL_RULES={MAX_KERNEL_RULES}"
        )
    return lines


def render_policy(
    rules: Sequence[FirewallRule], hosts: Sequence[Host], groups: Sequence[Group], prefix: str
) -> RenderedRules:
    """The filter-table chain PREFIX-FW and its jump from FORWARD, for both families. The chain
    is rendered even when the policy is empty, so a later `refresh_policy` finds it."""
    chain = chain_name(prefix)
    texts = {}
    for version in (4, 6):
        body = policy_lines(rules, hosts, groups, version, chain)
        texts[version] = (
            "\n".join(["*filter", f":{chain} - [0:0]", f"-I FORWARD 1 -j {chain}", *body, "COMMIT"])
            + "\n"
        )
    return RenderedRules(
        ipset="", ipv4=texts[4], ipv6=texts[6], sets=(), chains=(chain,), prefix=prefix
    )


def render_from_store(store: Store, prefix: str) -> RenderedRules:
    hosts = Hosts(store)
    return render_policy(list_rules(store), hosts.list_hosts(), hosts.list_groups(), prefix)
