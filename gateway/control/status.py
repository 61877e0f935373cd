"""The running gateway's `status` reply (also `stats`), behind the control socket
(gateway/supervisor.py serves it) and read by the Prometheus endpoint at each scrape
(gateway/metrics.py), the admin UI, `vpatch health` and the CLI.

Per queue: the worker's counters (packets, bytes inspected, verdicts, events, policy version,
rules loaded, and the engine's limit_*, norm_*, frag_* and app counters, up to a second old:
nfqueue.ENGINE_STAT_NAMES) with `alive`, `standby` and `restarts`, and the kernel's counters
for that queue from /proc/net/netfilter/nfnetlink_queue in this namespace (queue_total,
queue_dropped, user_dropped, id_sequence, queue_drops = the two drop counters, kernel_unseen;
all None when the kernel does not list the queue). At the top level: `rules_loaded` and
totals, among them `uninspected_packets` / `uninspected_bytes` (what the kernel passed without
a worker's verdict: fail-open on a full queue, --queue-bypass with no reader; all queues, both
families: gateway/firewall/counters.py), `events_dropped` and `limits` (each limit reached,
all queues together); `rule_hits` (firings per rule); `protected_hosts` (what the kernel's
protected-host sets hold now); `event_store` (the workers' event sinks in sum:
`event_store_health`); `drop_log` (firewall and host-mode events: lifecycle/monitor.py
`DropLogStatus`); `shared` (with `database.url`, the policy sync and the event forwarder:
gateway/multinode.py, else None); `forwarding` (can forwarded traffic bypass netfilter here:
gateway/forwarding.py, checked on each request); `stalled_queues` (gateway/intake/workers.py);
`update_source_names`; `tls_proxy` (the HTTPS plane); `reloads` (count and duration).

Guarantees: building a reply reads counters and changes none; the kernel's uninspected
counters (iptables-save) are read at most once per UNINSPECTED_INTERVAL, the reading is reused
in between.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.alerts.dispatcher import Dispatcher
from gateway.config import GatewayConfig
from gateway.control.reload import Reloads
from gateway.firewall.apply import BackendInfo
from gateway.firewall.counters import Uninspected, read_uninspected
from gateway.firewall.render import RenderedRules
from gateway.forwarding import check_forwarding
from gateway.intake.nfqueue import event_store_health
from gateway.intake.queuestats import QueueCounters, read_queue_counters
from gateway.intake.workers import QueueWorker, stalled_queues
from gateway.lifecycle.monitor import DropLogStatus
from gateway.lifecycle.names import NameResolver
from gateway.metrics import MetricsServer
from gateway.multinode import SharedNode
from gateway.tls.plane import TlsPlane
from gateway.vocabulary import Limit

__all__ = ["UNINSPECTED_INTERVAL", "StatusReport"]

UNINSPECTED_INTERVAL = 1.0  # seconds a reading of the uninspected-packet counters is reused
_KERNEL_QUEUE_FIELDS = (
    "queue_total", "queue_dropped", "user_dropped", "id_sequence", "queue_drops", "kernel_unseen",
)  # fmt: skip


class StatusReport:
    """Builds the `status` reply from the gateway's parts; `started`: the gateway's start
    (time.time), for `uptime`."""

    def __init__(
        self,
        config: GatewayConfig,
        backend: BackendInfo,
        rendered: RenderedRules,
        workers: list[QueueWorker],
        reloads: Reloads,
        tls: TlsPlane,
        names: NameResolver,
        drop_log: DropLogStatus,
    ) -> None:
        self.config = config
        self.backend = backend
        self.rendered = rendered
        self.workers = workers
        self.reloads = reloads
        self.tls = tls
        self.names = names
        self.drop_log = drop_log
        self.started = time.time()
        self._uninspected_last = Uninspected()
        self._uninspected_at: float | None = None

    def build(
        self,
        alerts: Dispatcher | None,
        metrics: MetricsServer | None,
        shared: SharedNode | None,
    ) -> dict[str, Any]:
        """The reply; `alerts`, `metrics`, `shared`: the gateway's parts of those names, None
        while not started or not configured (their keys are then null)."""
        kernel = read_queue_counters()
        queues = {str(w.queue_num): self._queue(w, kernel.queues.get(w.queue_num))
                  for w in self.workers}  # fmt: skip
        live = [q for q in queues.values() if q["alive"]]
        return {
            "backend": self.backend.name,
            "fail_policy": self.config.fail_policy.value,
            "uptime": time.time() - self.started,
            "policy_version": self.reloads.policy_version,
            "rules_loaded": max((int(q["rules"]) for q in live), default=0),
            "workers": len(queues),
            "workers_alive": len(live),
            "packets": sum(int(q["packets"]) for q in queues.values()),
            "bytes": sum(int(q["bytes"]) for q in queues.values()),
            "queue_drops": sum(int(q["queue_drops"] or 0) for q in queues.values()),
            **self._uninspected().as_dict(),
            "events_dropped": sum(int(q["events_dropped"]) for q in queues.values()),
            # limits reached (gateway/flow/limits.py), all queues together
            "limits": {
                limit.value: sum(int(q.get(f"limit_{limit.value}") or 0) for q in queues.values())
                for limit in Limit
            },
            "event_store": event_store_health(queues.values()),
            "kernel_counters": kernel.available,
            "alerts": alerts.stats() if alerts is not None else None,
            "rule_hits": self._rule_hits(),
            "reloads": self.reloads.times.as_dict(),
            "metrics": metrics.describe() if metrics is not None else None,
            "drop_log": self.drop_log.report(self.backend, self.rendered.prefix),
            "shared": shared.stats() if shared is not None else None,
            "protected_hosts": self.reloads.protected,
            # can forwarded traffic bypass netfilter here (gateway/forwarding.py), checked now
            "forwarding": check_forwarding(self.config.network.mode).as_dict(),
            "stalled_queues": stalled_queues(self.workers, self.config.workers.bind_timeout),
            "update_source_names": self.names.status(),
            "queues": queues,
            "tls_proxy": self.tls.status(),
        }

    def _queue(self, w: QueueWorker, counters: QueueCounters | None) -> dict[str, Any]:
        """One queue's entry: the worker's counters, the kernel's (`counters`, None when the
        kernel does not list the queue), and the worker's liveness."""
        snap: dict[str, Any] = w.stats.snapshot()
        if counters is not None:
            snap.update(counters.as_dict())
            # queued to this queue but never seen by the worker (fail-open bypass of the
            # netlink path, or losses the kernel does not count), racy by a few packets
            seen = snap["packets"] - w.packets_at_start  # since this binding
            snap["kernel_unseen"] = max(0, counters.id_sequence - counters.queue_total - seen)
        else:
            for name in _KERNEL_QUEUE_FIELDS:
                snap[name] = None
        snap["alive"] = bool(w.proc is not None and w.proc.is_alive())
        snap["standby"] = bool(w.standby is not None and w.standby.is_alive())
        snap["restarts"] = w.total_restarts
        return snap

    def _rule_hits(self) -> dict[str, dict[str, int]]:
        """Firings per rule, all queues: {sid: {"blocked": n, "alerted": n}}."""
        hits: dict[str, dict[str, int]] = {}
        for w in self.workers:
            rules = w.stats.rules
            if rules is None:  # never for a queue worker's counters (only the HTTPS plane's)
                continue
            for sid, (blocked, alerted) in rules.snapshot().items():
                h = hits.setdefault(str(sid), {"blocked": 0, "alerted": 0})
                h["blocked"] += blocked
                h["alerted"] += alerted
        return hits

    def _uninspected(self) -> Uninspected:
        """The kernel's count of packets passed without a verdict (gateway/firewall/
        counters.py), read at most once per UNINSPECTED_INTERVAL (it runs iptables-save)."""
        now = time.monotonic()
        if self._uninspected_at is None or now - self._uninspected_at >= UNINSPECTED_INTERVAL:
            self._uninspected_last = read_uninspected(
                self.backend, self.rendered.prefix, self.config.marks.queued
            )
            self._uninspected_at = now
        return self._uninspected_last
