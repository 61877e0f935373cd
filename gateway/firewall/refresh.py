"""Rewrite parts of the running kernel rules in place, while traffic flows (`reload`).

The objects were installed by apply.apply_rules (rendered by render.py, hostmodes.py and
policy.py, joined by compose.py); here their contents are replaced without removing them, so
no packet ever meets a missing chain or set and established connections are never cut:

- `refresh_policy`: the firewall-policy chain PREFIX-FW, one `iptables-restore --noflush` per
  family (declaring a chain in a restore flushes it: atomic per family); its FORWARD jump is
  added only when missing.
- `refresh_hostmodes`: the host-mode sets (filled beside the live ones, then `ipset swap`:
  atomic per set) and chains (one restore per family); the FORWARD jump goes after PREFIX-FW
  (hostmodes.FORWARD_ORDER) and only when missing. `forward_jumps` reads that order back.
- `add_name_elements`: addresses of new DNS answers for update-source names (timeouts).
- `refresh_any_port_hosts`: the sets of hosts whose every TCP port is queued (app control).
- `refresh_protected_hosts`: the protected-host sets (the configuration's and the store's).
- `refresh_port_sets`: the ports the enabled rules cover (`rules reload`).
- `add_learned_tuple` / `remove_learned_tuple`: one tuple into / out of a standalone lockdown
  set (`vpatch hosts allow|disallow --apply`).

Every failure raises FirewallError naming the command and its stderr. `netns`: run the commands
inside that network namespace (tests and tools working from the root namespace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.config import Network
from gateway.errors import FirewallError
from gateway.firewall.apply import BackendInfo, refill_sets, run_cmd
from gateway.firewall.hostmodes import (
    DEFAULT_SETTINGS,
    FORWARD_ORDER,
    STANDALONE_PREFIX,
    HostModeSettings,
    name_update_lines,
    render_hostmodes,
    set_names,
    tuple_element,
    tuple_family,
)
from gateway.firewall.policy import chain_name, list_rules, policy_lines
from gateway.firewall.render import (
    QueuePlan,
    RenderedRules,
    render_any_port_hosts,
    render_port_sets,
    render_protected_hosts,
)
from gateway.lifecycle.state import HostPolicy, LearnedTuple
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store


def refresh_policy(
    store: Store, backend: BackendInfo, prefix: str, netns: str | None = None
) -> int:
    """Rewrite the running chain PREFIX-FW from the store (one atomic restore per family);
    returns the number of kernel rules now in it (both families)."""
    chain = chain_name(prefix)
    inventory = Hosts(store)
    rules, hosts, groups = list_rules(store), inventory.list_hosts(), inventory.list_groups()
    total = 0
    for version in (4, 6):
        body = policy_lines(rules, hosts, groups, version, chain)
        jump = run_cmd(
            [backend.iptables if version == 4 else backend.ip6tables, "-C", "FORWARD", "-j", chain],
            netns, check=False,
        )  # fmt: skip
        head = ["*filter", f":{chain} - [0:0]"]
        if jump.returncode != 0:
            head.append(f"-I FORWARD 1 -j {chain}")
        text = "\n".join([*head, *body, "COMMIT"]) + "\n"
        proc = run_cmd([backend.restore(version), "--noflush"], netns, stdin=text, check=False)
        if proc.returncode != 0:
            if version == 6 and "ip6" in proc.stderr.lower() and "table" in proc.stderr.lower():
                continue  # no IPv6 filter table here
            raise FirewallError(
                f"{backend.restore(version)} --noflush (firewall policy) failed: "
                f"{proc.stderr.strip()}"
            )
        total += len(body)
    return total


def forward_jumps(backend: BackendInfo, version: int, netns: str | None = None) -> list[str]:
    """Targets of the jumps in filter FORWARD, in order (to check FORWARD_ORDER)."""
    tool = backend.iptables if version == 4 else backend.ip6tables
    proc = run_cmd([tool, "-S", "FORWARD"], netns)
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["-A", "FORWARD"] and "-j" in parts:
            out.append(parts[parts.index("-j") + 1])
    return out


def _hm_position(jumps: list[str], prefix: str) -> int:
    """Where the host-mode jump belongs: right after PREFIX-FW when that is there, else first."""
    fw = f"{prefix}-{FORWARD_ORDER[0]}"
    return jumps.index(fw) + 2 if fw in jumps else 1


def refresh_hostmodes(
    policies: Iterable[HostPolicy],
    backend: BackendInfo,
    prefix: str,
    settings: HostModeSettings = DEFAULT_SETTINGS,
    netns: str | None = None,
    *,
    resolved: Mapping[str, Sequence[tuple[str, int]]] | None = None,
    dns_servers: Sequence[str] = (),
) -> RenderedRules:
    """Rewrite the running host-mode sets and chains (rendered with always=True) in place.

    Sets: filled under NAME-n, swapped with NAME, NAME-n destroyed (each swap atomic).
    Chains: one `iptables-restore --noflush` per family declaring the chains (which flushes
    them) and refilling them; the FORWARD jump is added (after PREFIX-FW) only if missing.
    resolved / dns_servers: the update-source names' current addresses and the resolvers
    setup hosts may ask (hostmodes.render_hostmodes).
    FirewallError naming the command when the kernel refuses.
    """
    rendered = render_hostmodes(
        policies, prefix, settings, always=True, resolved=resolved, dns_servers=dns_servers
    )
    refill_sets(rendered.ipset, rendered.sets, netns)
    fwd = f"{prefix}-HM-FORWARD"
    for version in (4, 6):
        text = rendered.ipv4 if version == 4 else rendered.ipv6
        jumps = forward_jumps(backend, version, netns)
        body = [ln for ln in text.splitlines() if not ln.startswith("-I FORWARD ")]
        if fwd not in jumps:
            body.insert(body.index("COMMIT"), f"-I FORWARD {_hm_position(jumps, prefix)} -j {fwd}")
        proc = run_cmd(
            [backend.restore(version), "--noflush"],
            netns,
            stdin="\n".join(body) + "\n",
            check=False,
        )
        if proc.returncode != 0:
            raise FirewallError(
                f"{backend.restore(version)} --noflush (host modes) failed: {proc.stderr.strip()}"
            )
    return rendered


def add_name_elements(
    policies: Iterable[HostPolicy],
    updates: Mapping[str, Sequence[tuple[str, int]]],
    prefix: str,
    netns: str | None = None,
) -> None:
    """Add the addresses of new DNS answers to the running `names` sets (`ipset -exist
    restore`: an element already there gets the new timeout); the kernel removes each when
    its timeout runs out."""
    text = name_update_lines(policies, updates, prefix)
    if text:
        run_cmd(["ipset", "-exist", "restore"], netns, stdin=text)


def refresh_any_port_hosts(
    rendered: RenderedRules, hosts: Sequence[Network], netns: str | None = None
) -> None:
    """Refill the any-port host sets of the running `rendered` rules with `hosts`; nothing
    to do when `rendered` has no such sets (nothing is queued at all)."""
    text, names = render_any_port_hosts(rendered.prefix, hosts)
    if set(names) <= set(rendered.sets):
        refill_sets(text, names, netns)


def refresh_protected_hosts(
    rendered: RenderedRules, hosts: Sequence[Network], netns: str | None = None
) -> None:
    """Refill the protected-host sets of the running `rendered` rules with `hosts` (each set
    filled beside the live one, then swapped: atomic); nothing to do when `rendered` has no
    such sets (no rule needs queueing)."""
    text, names = render_protected_hosts(rendered.prefix, hosts)
    if set(names) <= set(rendered.sets):
        refill_sets(text, names, netns)


def refresh_port_sets(rendered: RenderedRules, plan: QueuePlan, netns: str | None = None) -> None:
    """Refill the port sets of the running `rendered` rules for the ports `plan` covers (a
    rule reload: the kernel queues what the new rules look at, nothing else changes)."""
    text, names = render_port_sets(rendered.prefix, plan)
    if set(names) <= set(rendered.sets):
        refill_sets(text, names, netns)


def add_learned_tuple(
    t: LearnedTuple, netns: str | None = None, prefix: str = STANDALONE_PREFIX
) -> bool:
    """Add `t` to the live lockdown set of its family and kind (`ipset add -exist`); False
    when ipset cannot express the tuple (nothing done)."""
    return _lockdown_set("add", t, netns, prefix)


def remove_learned_tuple(
    t: LearnedTuple, netns: str | None = None, prefix: str = STANDALONE_PREFIX
) -> bool:
    """Remove `t` from the live lockdown set (`ipset del -exist`): connections it would have
    let in are refused from now on; established ones go on. False when ipset cannot express it."""
    return _lockdown_set("del", t, netns, prefix)


def _lockdown_set(verb: str, t: LearnedTuple, netns: str | None, prefix: str) -> bool:
    """`ipset VERB` (add / del) of `t` in the live lockdown set of its family and kind."""
    found = tuple_element(t)
    if found is None:
        return False
    key, element = found
    name = set_names(prefix, tuple_family(t))[key]
    run_cmd(["ipset", verb, name, element, "-exist"], netns)
    return True
