"""The running gateway's live reloads, behind the control socket's `reload` and `rules-reload`
(gateway/supervisor.py serves them): what each one checks, rewrites in the kernel and publishes
to the queue workers and the HTTPS plane.

`reload` (`Reloads.policy`): the policy store is compiled here first (a bad policy is refused,
ConfigError, before any worker sees it and with no version spent); then every worker and the
HTTPS plane are asked for the new policy version, which they apply between packets (no
restart, flows kept), while the kernel is refreshed in place (gateway/firewall/refresh.py):
the protected-host sets are refilled from the configuration and the store, the firewall policy
chain is rewritten, the host-mode sets and chains follow the lifecycle state (with the current
addresses of update-source names, and the name resolver follows the names now used), and the
any-port host sets are refilled, and the HTTPS plane follows the services stored in the policy
store (gateway/tls/plane.py `reconfigure`: added, changed or removed without a restart). It
waits up to RELOAD_WAIT for every live worker.

`rules-reload` (`Reloads.rules`): the rule files are loaded and compiled here first (any bad
rule refuses the whole reload, RuleError naming file, line and reason, and nothing changes);
every worker and the HTTPS plane build and swap in the new set in the background
(gateway/intake/nfqueue.py RuleLoader: verdicts go on meanwhile); after up to RULES_RELOAD_WAIT
the kernel's port sets follow the new rules' ports (a flow the kernel queues must meet rules
that cover it).

Guarantees: one reload at a time (a lock); versions only grow; each reload's duration is
recorded (`ReloadTimes`, shown in `status` and the metrics) and logged with whether every live
worker had it in time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.config import GatewayConfig
from gateway.database import describe, policy_target, target_exists
from gateway.firewall.apply import BackendInfo
from gateway.firewall.compose import app_any_port_hosts, host_policies, protected_hosts
from gateway.firewall.refresh import (
    refresh_any_port_hosts,
    refresh_hostmodes,
    refresh_policy,
    refresh_port_sets,
    refresh_protected_hosts,
)
from gateway.firewall.render import QueuePlan, RenderedRules
from gateway.intake.nfqueue import load_policy
from gateway.intake.workers import QueueWorker
from gateway.lifecycle.names import NameResolver
from gateway.lifecycle.state import HostPolicy
from gateway.match.matcher import Matcher
from gateway.match.rules import load_rules
from gateway.metrics import ReloadTimes
from gateway.policy.appcontrol import plan_rules, rule_paths
from gateway.policy.store import Store
from gateway.tls.plane import TlsPlane

__all__ = ["RELOAD_WAIT", "RULES_RELOAD_WAIT", "Reloads"]

log = logging.getLogger("vpatch.run")

RELOAD_WAIT = 2.0  # seconds `reload` waits for every live worker to apply the new policy
RULES_RELOAD_WAIT = 120.0  # seconds `rules-reload` waits for every live worker's new rules


class Reloads:
    """The policy and rule versions of a running gateway and the reloads that bump them.
    `follow_names(policies)`: the gateway's name resolver follows these hosts' update-source
    names (called with `names.lock` held)."""

    def __init__(
        self,
        config: GatewayConfig,
        backend: BackendInfo,
        rendered: RenderedRules,
        workers: list[QueueWorker],
        tls: TlsPlane,
        names: NameResolver,
        follow_names: Callable[[list[HostPolicy]], None],
    ) -> None:
        self.config = config
        self.backend = backend
        self.rendered = rendered
        self.workers = workers
        self.tls = tls
        self._names = names
        self._follow_names = follow_names
        self.policy_version = 1  # bumped by each `reload`; workers apply it between packets
        self.rules_version = 0  # bumped by each `rules-reload`; workers swap between packets
        self.times = ReloadTimes()  # count and duration of reloads, for status
        # what the kernel's protected-host sets hold (the config's seed and the store's hosts)
        self.protected = [str(h) for h in protected_hosts(config)]
        self._lock = threading.Lock()

    def policy(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Re-read the policy store and have every worker apply it (no restart, flows kept).

        The policy is compiled here first, so a bad one is refused (ControlError reply) before
        any worker sees it. The workers then read it while the kernel's sets and rules are
        refreshed here (both done before the reply). Returns the new version, per-queue applied
        versions and the seconds until all live workers had it (or `complete: false` after
        RELOAD_WAIT).
        """
        with self._lock:
            started = time.monotonic()
            policy = load_policy(self.config)  # raises (ConfigError) on a bad policy
            self.policy_version += 1
            version = self.policy_version
            for w in self.workers:  # they start now; _publish below waits for them
                w.stats.set("policy_wanted", version)
            protected = self._refresh_protected_hosts()
            firewall_rules = self._refresh_firewall()
            host_modes = self._refresh_hostmodes()
            any_port = self._refresh_any_port_hosts()
            tls_proxy = self.tls.reconfigure()  # services added/changed/removed in the store
            self.tls.publish("policy", version)
            complete = self._publish("policy", version, started + RELOAD_WAIT)
            took = time.monotonic() - started
            self.times.record("policy", took)
            log.info(
                "policy version %d: %s in %.3fs",
                version,
                "applied by every worker" if complete else "NOT yet applied by all",
                took,
            )
            return {
                "version": version,
                "complete": complete,
                "seconds": took,
                "store": describe(policy_target(self.config)),
                "policy": policy is not None,
                "queues": {str(w.queue_num): w.stats.get("policy_version") for w in self.workers},
                "policy_errors": sum(w.stats.get("policy_errors") for w in self.workers),
                "firewall_rules": firewall_rules,
                "host_modes": host_modes,
                "any_port_hosts": any_port,
                "tls_proxy": tls_proxy,
                "protected_hosts": protected,
            }

    def rules(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load the configuration's rule files again and have every worker use them, without a
        restart. The whole set is loaded and compiled here first: any bad rule refuses the
        reload (RuleError naming file, line and reason) and nothing changes. Then every worker
        builds the set in the background and swaps it in between packets (flows in progress
        finish with the rules they started with), and only then do the kernel's port sets
        follow the new rules' ports (a flow the kernel queues must meet rules that cover it).
        Returns the version, the rule count, per-queue versions and the seconds it took."""
        with self._lock:
            started = time.monotonic()
            ruleset = load_rules(rule_paths(self.config))
            # compiles every pattern: RuleError before any worker sees it
            Matcher(ruleset, self.config.engine.identify_any_port)
            self.rules_version += 1
            version = self.rules_version
            self.tls.publish("rules", version)
            complete = self._publish("rules", version, started + RULES_RELOAD_WAIT)
            refresh_port_sets(self.rendered, QueuePlan.from_rules(plan_rules(ruleset)))
            took = time.monotonic() - started
            self.times.record("rules", took)
            log.info(
                "rules version %d (%d rules): %s in %.3fs",
                version,
                len(ruleset.rules),
                "in use by every worker" if complete else "NOT yet in use by all",
                took,
            )
            return {
                "version": version,
                "rules": len(ruleset.rules),
                "complete": complete,
                "seconds": took,
                "queues": {str(w.queue_num): w.stats.get("rules_version") for w in self.workers},
                "rules_errors": sum(w.stats.get("rules_errors") for w in self.workers),
            }

    def _publish(self, what: str, version: int, deadline: float) -> bool:
        """Ask every worker for `version` of `what` (policy, rules: the `<what>_wanted`
        counter) and wait until each live one shows it in `<what>_version` (True), or until
        `deadline` (time.monotonic) has passed (False)."""
        for w in self.workers:
            w.stats.set(f"{what}_wanted", version)
        while True:
            live = [w for w in self.workers if w.proc is not None and w.proc.is_alive()]
            if all(w.stats.get(f"{what}_version") == version for w in live):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def _refresh_protected_hosts(self) -> list[str]:
        """Refill the protected-host sets from the configuration and the store (no rule is
        reloaded; established flows keep their state)."""
        hosts = protected_hosts(self.config)
        refresh_protected_hosts(self.rendered, hosts)
        self.protected = [str(h) for h in hosts]
        return self.protected

    def _refresh_firewall(self) -> int:
        """Rewrite the firewall-policy chain from the store (atomic per family)."""
        if not target_exists(policy_target(self.config)):
            return 0
        with Store(policy_target(self.config)) as store:
            return refresh_policy(store, self.backend, self.config.firewall.chain_prefix)

    def _refresh_any_port_hosts(self) -> list[str]:
        """Refill the sets of hosts whose every TCP port is queued (app control)."""
        hosts = app_any_port_hosts(self.config)
        refresh_any_port_hosts(self.rendered, hosts)  # no sets when nothing is queued at all
        return [str(h) for h in hosts]

    def _refresh_hostmodes(self) -> dict[str, str]:
        """Rewrite the host-mode sets and chains from the lifecycle state, with the current
        addresses of update-source names; the resolver follows the names now used; {host:
        mode}."""
        policies = host_policies(self.config)
        with self._names.lock:  # no answer is added to a set about to be swapped out
            refresh_hostmodes(
                policies, self.backend, self.config.firewall.chain_prefix,
                resolved=self._names.resolved(), dns_servers=self._names.servers,
            )  # fmt: skip
            self._follow_names(policies)
        return {p.address: p.mode.value for p in policies if p.mode.value != "normal"}
