"""One gateway among several on a shared PostgreSQL store (`database.url`; docs/multi-gateway.md).

`SharedNode.start(config, reload, status)` starts, for a running `vpatch run`, the policy sync
(gateway/policy/sync.py: follow the shared policy version, write the heartbeat) and the event
forwarder (gateway/events/shared.py: the local event store is the spool, forwarded exactly
once). Without `database.url` it is not started and nothing here runs. `stop()` forwards what
the sinks wrote last (one final round) and stops both threads. Neither thread ever stops the
gateway: a database that goes away is reported (`stats()`, the heartbeat, the log) and retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config import GatewayConfig
from gateway.database import gateway_name, policy_target
from gateway.events.shared import EventForwarder
from gateway.policy.store import Store
from gateway.policy.sync import PolicySync

__all__ = ["SharedNode", "shared_policy_version"]


def shared_policy_version(config: GatewayConfig) -> int | None:
    """The shared store's policy version now (None without `database.url`); `vpatch run` reads
    it before its workers read the policy, so no change made meanwhile is missed."""
    if not config.database.url:
        return None
    with Store(config.database.url) as store:
        return store.policy_version()


class SharedNode:
    def __init__(self, sync: PolicySync, forwarder: EventForwarder | None) -> None:
        self.sync = sync
        self.forwarder = forwarder

    @classmethod
    def start(
        cls,
        config: GatewayConfig,
        applied: int | None,
        reload: Callable[[], object],
        status: Callable[[], dict[str, Any]],
    ) -> SharedNode:
        """`applied`: the shared policy version the gateway loaded at start; `status()`: what
        the heartbeat row shows, to which the forwarder's and the sync's counters are added."""
        db = config.database
        name = gateway_name(config)
        forwarder = None
        if config.events.sqlite is not None:
            forwarder = EventForwarder(config.events.sqlite, db.url, name, db.poll_interval)
            forwarder.start()

        def beat() -> dict[str, Any]:
            return {**status(), "forwarder": forwarder.stats() if forwarder else None}

        node = cls(PolicySync(policy_target(config), name, reload, beat, db.poll_interval,
                              db.heartbeat), forwarder)  # fmt: skip
        node.sync.start(applied)
        return node

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.sync.name,
            "sync": self.sync.stats(),
            "forwarder": self.forwarder.stats() if self.forwarder is not None else None,
        }

    def stop(self) -> None:
        self.sync.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
