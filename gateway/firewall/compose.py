"""The whole kernel rule set of `vpatch run` for one configuration, composed from its parts.

`render_config(config)` loads the rules (RuleError on any bad rule: fail fast, before anything
touches the kernel) and joins, with render.merge, in this order:
1. the queueing rules (render.py) for the ports enabled rules and the built-in app-control
   rules cover, for the configuration's protected hosts and the store's (`protected_hosts`),
   with the hosts whose app control looks at every TCP port (`any_port_hosts`);
2. the firewall policy chain PREFIX-FW (policy.py) from the policy store;
3. the host-mode chains and sets (hostmodes.py) from the lifecycle state, for both families
   even when no host is in a special mode, with their FORWARD jump after PREFIX-FW
   (hostmodes.FORWARD_ORDER), so `reload` can refresh them in place (refresh.py).
Without a policy database yet, the stored parts are empty (the chains and sets still exist, a
later `reload` fills them). Reads files and the store; runs no command (apply.py does).
"""

from __future__ import annotations

import ipaddress

from gateway.config import GatewayConfig, Network
from gateway.database import policy_target, target_exists
from gateway.firewall.hostmodes import HM_POSITION_WITH_FIREWALL, render_hostmodes
from gateway.firewall.policy import render_from_store, render_policy
from gateway.firewall.render import QueuePlan, RenderedRules, merge, render
from gateway.lifecycle.names import resolver_servers
from gateway.lifecycle.state import HostPolicy, LifecycleStore
from gateway.match.rules import load_rules
from gateway.policy.appcontrol import any_port_hosts, plan_rules, rule_paths
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store


def render_config(config: GatewayConfig) -> RenderedRules:
    """Load the rules (RuleError on any bad rule) and render the kernel rules for them."""
    ruleset = load_rules(rule_paths(config))  # + built-in app-control rules (their ports)
    plan = QueuePlan.from_rules(plan_rules(ruleset))
    queueing = render(
        config, plan, any_port_hosts=app_any_port_hosts(config), stored_hosts=stored_hosts(config)
    )
    base = merge(queueing, firewall_policy(config))
    return merge(base, host_modes(config))


def stored_hosts(config: GatewayConfig) -> list[Network]:
    """The policy store's hosts (addresses and networks), protected like the configuration's
    `protected_hosts`; none without a policy database."""
    if not target_exists(policy_target(config)):
        return []
    with Store(policy_target(config)) as store:
        return [ipaddress.ip_network(h.address, strict=False) for h in Hosts(store).list_hosts()]


def protected_hosts(config: GatewayConfig) -> list[Network]:
    """Every protected host: the configuration's seed, then the store's, without repeats."""
    seen = dict.fromkeys([*config.protected_hosts, *stored_hosts(config)])
    return list(seen)


def app_any_port_hosts(config: GatewayConfig) -> list[Network]:
    """Hosts whose app control looks at every TCP port (none without a policy database)."""
    if not target_exists(policy_target(config)):
        return []
    with Store(policy_target(config)) as store:
        return any_port_hosts(store)


def host_policies(config: GatewayConfig) -> list[HostPolicy]:
    """The hosts of the lifecycle state (policy store); none when there is no database yet."""
    if not target_exists(policy_target(config)):
        return []
    return list(LifecycleStore(policy_target(config)).hosts())


def host_modes(config: GatewayConfig) -> RenderedRules:
    """Host-mode chains and sets for both families (always present, so `reload` can refresh
    them), jumped to from FORWARD right after the firewall policy chain. The update-source
    names' set starts empty: the gateway's resolver fills it (gateway/lifecycle/names.py)."""
    return render_hostmodes(
        host_policies(config),
        config.firewall.chain_prefix,
        always=True,
        position=HM_POSITION_WITH_FIREWALL,
        dns_servers=resolver_servers(config.resolver),
    )


def firewall_policy(config: GatewayConfig) -> RenderedRules:
    """The stored firewall policy (gateway/firewall/policy.py) as kernel rules; an empty chain
    when there is no policy database yet (a later `reload` fills it)."""
    prefix = config.firewall.chain_prefix
    if not target_exists(policy_target(config)):
        return render_policy([], [], [], prefix)
    with Store(policy_target(config)) as store:
        return render_from_store(store, prefix)
