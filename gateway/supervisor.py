"""The running gateway (`vpatch run`): worker processes, kernel rules, control socket.

`Gateway(config, backend, rendered).serve()` runs until SIGTERM/SIGINT or an error and returns
the exit status (0, or 2 after a VpatchError, which is logged). In this order: one worker
process per queue (gateway/intake/nfqueue.py), waiting until each has bound its queue
(`workers.bind_timeout`), then the rendered kernel rules applied atomically
(gateway/firewall/apply.py), the lifecycle monitor thread, the control socket, the alert
dispatcher and the Prometheus endpoint (gateway/metrics.py: `metrics.address`/`metrics.port`,
reading `status` at each scrape).

While running: a worker that dies is noticed at once (its process sentinel), logged and
restarted after `workers.restart_delay` (default 0: at once), by its standby when
`workers.standby` (a process per queue that has loaded the rules and binds the queue the
moment it is told: milliseconds, not the seconds a new process takes; a new standby is started
after each take-over), at most
`workers.max_restarts` times per `workers.restart_window` seconds per queue; past that the
gateway stops (GatewayError). A queue's counters (WorkerStats) outlive its workers: a
restarted worker goes on counting where the dead one stopped (only `bound`, `pid`, `started`
and `policy_version` are its own; the engine's totals go on from what the dead one last
published, at most a second old: nfqueue.engine_counter_base). Workers die with the parent
(PR_SET_PDEATHSIG), so a killed gateway leaves no reader behind: its rules then follow the
fail policy until `vpatch run --cleanup`. While a worker is gone, fail_policy open lets the
kernel bypass its queue (`--queue-bypass`), fail_policy closed drops that queue's packets.

Exit: the kernel rules are removed first (so no packet waits for a worker that is going away),
then the workers are stopped (SIGTERM, SIGKILL after `workers.stop_timeout`), then the monitor,
the control socket and the dispatcher. The rule removal runs in a `finally`: whatever happened,
no rule of ours stays behind, except after an error under fail_policy closed (`exit_rules`):
then they stay, so what would be inspected is dropped until the gateway runs again.

Under systemd (Type=notify, gateway/sdnotify.py): READY=1 once the workers are bound and the
rules applied, STOPPING=1 on the way out, and WATCHDOG=1 from the supervising loop only while
no queue is stalled (`stalled_queues`: its worker dead, or neither its loop heartbeat nor its
packet count moved for WORKER_STALL_S), so a stopped or hung worker gets the whole gateway
restarted. `status` reports `stalled_queues` and `forwarding` (gateway/forwarding.py, checked
on each request).

Control socket commands: `status`/`stats` (per-queue worker and kernel counters), `rules` (the
rendered text), `policy` (the stored policy and the versions applied) and `reload`: the policy
store is compiled here first (a bad policy is refused before any worker sees it), the firewall
policy chain, host-mode sets/chains and any-port host sets are rewritten in place
(gateway/firewall/refresh.py), then every worker applies the new policy version between
packets (no restart, flows kept); the protected-host sets are refilled from the configuration
and the store, and the HTTPS plane follows the stored services (gateway/tls/plane.py
`reconfigure`). `rules-reload`: the rule files are loaded and compiled here first (any bad rule
refuses the whole reload, RuleError naming file, line and reason, and nothing changes), every
worker builds and swaps in the new set in the background (gateway/intake/nfqueue.py
RuleLoader: verdicts go on meanwhile), then the kernel's port sets follow. The lifecycle
monitor (NFLOG: learned tuples, lockdown events into the gateway's event sinks) runs as a
thread; its failure is logged and never stops the gateway (the kernel enforces the modes). So
does the resolver of update-source names (gateway/lifecycle/names.py): it asks the DNS for
the names setup hosts' update sources use and adds the answers to the kernel's names sets,
each address expiring with its answer's TTL; `reload` hands it the names in use.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict
from typing import Any

from gateway.alerts.dispatcher import Dispatcher, alert_state_path
from gateway.config import GatewayConfig
from gateway.control.server import ControlServer
from gateway.database import describe, gateway_name, policy_target, target_exists
from gateway.errors import VpatchError
from gateway.events.sink import EventSink
from gateway.firewall.apply import BackendInfo, apply_rules, remove_rules
from gateway.firewall.compose import app_any_port_hosts, host_policies, protected_hosts
from gateway.firewall.counters import Uninspected, read_uninspected
from gateway.firewall.hostmodes import DEFAULT_SETTINGS
from gateway.firewall.refresh import (
    add_name_elements,
    refresh_any_port_hosts,
    refresh_hostmodes,
    refresh_policy,
    refresh_port_sets,
    refresh_protected_hosts,
)
from gateway.firewall.render import QueuePlan, RenderedRules
from gateway.forwarding import check_forwarding
from gateway.intake.nfqueue import WorkerStats, event_store_health, load_policy, start_worker
from gateway.intake.queuestats import read_queue_counters
from gateway.lifecycle.monitor import DropLogStatus, run_monitor
from gateway.lifecycle.names import NameResolver, resolver_servers, update_source_names
from gateway.lifecycle.state import HostPolicy, LifecycleStore
from gateway.match.matcher import Matcher
from gateway.match.rules import load_rules
from gateway.metrics import MetricsServer, ReloadTimes
from gateway.multinode import SharedNode, shared_policy_version
from gateway.policy.appcontrol import plan_rules, rule_paths
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store
from gateway.sdnotify import Notifier
from gateway.statefiles import shared_gid
from gateway.tls.plane import TlsPlane
from gateway.vocabulary import Limit

log = logging.getLogger("vpatch.run")

RELOAD_WAIT = 2.0  # seconds `reload` waits for every live worker to apply the new policy
RULES_RELOAD_WAIT = 120.0  # seconds `rules-reload` waits for every live worker's new rules
SUPERVISE_INTERVAL = 0.2  # seconds between checks of the workers (a death wakes at once)
# per-process counters: set afresh for each worker process; the others count for the queue
PROCESS_STATS = ("bound", "pid", "started", "policy_version", "heartbeat")
UNINSPECTED_INTERVAL = 1.0  # seconds a reading of the uninspected-packet counters is reused
# A worker whose loop has not turned (heartbeat) and that has counted no packet for this long
# is stalled (stopped, hung): the systemd watchdog is no longer fed (gateway/sdnotify.py).
WORKER_STALL_S = 5.0


class GatewayError(VpatchError):
    """The gateway could not start or keep running (names the queue and the cause)."""


class _Worker:
    def __init__(self, queue_num: int) -> None:
        self.queue_num = queue_num
        self.stats = WorkerStats()
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.died: float | None = None  # monotonic time the current death was noticed
        self.standby: multiprocessing.process.BaseProcess | None = None  # rules loaded, waiting
        self.go: Any = None  # the standby's multiprocessing Event
        self.packets_at_start = 0  # `packets` when the current worker started (kernel_unseen)
        self.progress: tuple[int, int] = (0, 0)  # (heartbeat, packets) at the last change
        self.progress_at = time.monotonic()  # when `progress` last changed


def stalled_queues(workers: list[_Worker], bind_timeout: float) -> list[int]:
    """The queues whose worker is dead or has not moved (loop heartbeat, packets) for
    WORKER_STALL_S (a worker still loading its rules before it binds: `bind_timeout`,
    workers.bind_timeout): while any is, the systemd watchdog is not fed."""
    now = time.monotonic()
    stalled = []
    for w in workers:
        progress = (w.stats.get("heartbeat"), w.stats.get("packets"))
        if progress != w.progress:
            w.progress, w.progress_at = progress, now
        alive = w.proc is not None and w.died is None and w.proc.is_alive()
        limit = WORKER_STALL_S if w.stats.get("bound") else bind_timeout
        if not alive or now - w.progress_at > limit:
            stalled.append(w.queue_num)
    return stalled


def exit_rules(
    backend: BackendInfo, rendered: RenderedRules, status: int, keep_on_error: bool
) -> int:
    """On the way out: remove our kernel rules (the exit status, 2 if that failed). Except
    after an error with `keep_on_error` (fail_policy closed, rules applied): the rules stay, so
    the queues, having no reader, drop what they would have inspected (and the firewall policy
    and host modes stay enforced) until the gateway runs again (systemd restarts it) or
    `vpatch run --cleanup` removes them."""
    if status != 0 and keep_on_error:
        log.error(
            "kernel rules left in place (fail_policy closed): queued traffic is dropped "
            "until vpatch runs again or `vpatch run --cleanup` removes them"
        )
        return status
    try:
        removed = remove_rules(backend, rendered.prefix)
        log.info("kernel rules removed (%d objects)", len(removed))
    except VpatchError as err:
        log.error("removing kernel rules failed: %s", err)
        return status or 2
    return status


class Gateway:
    """The running gateway: workers, kernel rules, control socket."""

    def __init__(
        self, config: GatewayConfig, backend: BackendInfo, rendered: RenderedRules
    ) -> None:
        self.config = config
        self.backend = backend
        self.rendered = rendered
        # what the kernel's protected-host sets hold (the config's seed and the store's hosts)
        self.protected = [str(h) for h in protected_hosts(config)]
        self.workers = [_Worker(q) for q in config.queues.numbers]
        self.started = time.time()
        self._stop = False
        self._control: ControlServer | None = None
        self._alerts: Dispatcher | None = None  # when events go to SQLite
        self._metrics: MetricsServer | None = None  # the Prometheus endpoint (metrics.port)
        self.reload_times = ReloadTimes()  # count and duration of reloads, for status
        self._shared: SharedNode | None = None  # when the store is shared (database.url)
        self.policy_version = 1  # bumped by each `reload`; workers apply it between packets
        self.rules_version = 0  # bumped by each `rules-reload`; workers swap between packets
        self._reload_lock = threading.Lock()
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._monitor_sink: EventSink | None = None
        self._drop_log = DropLogStatus()
        self._uninspected_last = Uninspected()
        self._uninspected_at: float | None = None
        rc = config.resolver
        self._names = NameResolver(
            resolver_servers(rc), self._apply_names, rc.min_ttl, rc.max_ttl, rc.timeout
        )
        self._name_policies: list[HostPolicy] = []  # whose update-source names are followed
        self._notify = Notifier.from_env()  # systemd: READY=1, WATCHDOG=1 (Type=notify units)
        self._rules_applied = False
        self.tls = TlsPlane(config, backend)  # the HTTPS plane (gateway/tls/plane.py)

    # -- lifecycle ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self._stop = True

    def serve(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            shared_version = shared_policy_version(self.config)  # before the workers read it
            for w in self.workers:
                self._start(w)
            self._wait_bound()
            apply_rules(self.rendered, self.backend)
            self._rules_applied = True
            log.info(
                "kernel rules applied (%s): queues %s, fail policy %s, %d ipset(s)",
                self.backend.name,
                ",".join(str(w.queue_num) for w in self.workers),
                self.config.fail_policy.value,
                len(self.rendered.sets),
            )
            for w in self.workers:
                self._start_standby(w)
            self.tls.start()  # the HTTPS proxies, then their kernel redirect
            self._start_monitor()
            self._follow_names(host_policies(self.config))
            self._names.start()
            self._start_control()
            self._start_alerts()
            self._start_metrics()
            self._start_shared(shared_version)
            print("vpatch run: ready", flush=True)
            self._notify.ready(f"inspecting: {len(self.workers)} queue(s), rules applied")
            while not self._stop:
                # wakes at once when a live worker dies (its sentinel), else every interval
                sentinels = [
                    w.proc.sentinel for w in self.workers if w.proc is not None and w.died is None
                ]
                multiprocessing.connection.wait(sentinels, SUPERVISE_INTERVAL)
                self._supervise()
                stalled = stalled_queues(self.workers, self.config.workers.bind_timeout)
                self._notify.feed(not stalled, time.monotonic())
                self.tls.supervise()
        except VpatchError as err:
            log.error("%s", err)
            status = 2
        finally:
            self._notify.stopping("stopping: removing kernel rules, stopping workers")
            closed = self.config.fail_policy.value == "closed"
            status = exit_rules(self.backend, self.rendered, status, closed and self._rules_applied)
            self._stop_workers()
            self.tls.stop()
            if self._shared is not None:
                self._shared.stop()  # after the workers: their last events are forwarded
            self._names.stop()
            self._stop_monitor()
            if self._control is not None:
                self._control.stop()
            if self._alerts is not None:
                self._alerts.stop()
            if self._metrics is not None:
                self._metrics.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
        return status

    def _start(self, w: _Worker) -> None:
        """The queue's worker: its standby when one is ready, else a new process."""
        # The counters outlive the worker (they are the queue's): a restart sets only what
        # belongs to the process; the kernel's own counters restart with the new binding.
        for name in PROCESS_STATS:
            w.stats.set(name, 0)
        w.packets_at_start = w.stats.get("packets")
        w.stats.set("policy_wanted", self.policy_version)
        if w.standby is not None and w.standby.is_alive():
            w.proc, w.standby = w.standby, None
            w.go.set()
            log.info("standby worker for queue %d took over (pid %s)", w.queue_num, w.proc.pid)
            self._start_standby(w)
            return
        w.proc = start_worker(w.queue_num, self.config, w.stats)
        log.info("worker for queue %d started (pid %s)", w.queue_num, w.proc.pid)
        self._start_standby(w)

    def _start_standby(self, w: _Worker) -> None:
        """A standby for the queue (workers.standby), unless the gateway is only starting up
        (the first workers are still binding) or one is alive."""
        if not self.config.workers.standby or not any(x.stats.get("bound") for x in self.workers):
            return
        if w.standby is not None and w.standby.is_alive():
            return
        if w.standby is not None:
            log.warning("standby worker for queue %d exited (%s)", w.queue_num, w.standby.exitcode)
        w.go = multiprocessing.get_context("spawn").Event()
        w.standby = start_worker(w.queue_num, self.config, w.stats, w.go)

    def _wait_bound(self) -> None:
        bind_timeout = self.config.workers.bind_timeout
        deadline = time.monotonic() + bind_timeout
        for w in self.workers:
            while not w.stats.get("bound"):
                if self._stop:
                    raise GatewayError("stopped during start-up")
                assert w.proc is not None
                if not w.proc.is_alive():
                    raise GatewayError(
                        f"worker for queue {w.queue_num} exited during start-up "
                        f"(exit status {w.proc.exitcode}); see its log above"
                    )
                if time.monotonic() > deadline:
                    raise GatewayError(
                        f"worker for queue {w.queue_num} did not bind within {bind_timeout:.0f}s "
                        "(workers.bind_timeout)"
                    )
                time.sleep(0.05)

    def _supervise(self) -> None:
        wc = self.config.workers
        for w in self.workers:
            assert w.proc is not None
            if w.proc.is_alive():
                continue
            now = time.monotonic()
            died = w.died if w.died is not None else self._record_death(w, now)
            if now - died >= wc.restart_delay:
                w.died = None
                self._start(w)

    def _record_death(self, w: _Worker, now: float) -> float:
        """Log a worker's death and count it (returns `now`); GatewayError past
        workers.max_restarts."""
        assert w.proc is not None
        wc = self.config.workers
        w.died = now
        code = w.proc.exitcode
        w.proc.join(0)
        while w.restarts and now - w.restarts[0] > wc.restart_window:
            w.restarts.popleft()
        effect = "bypassed by the kernel" if self.config.fail_policy.value == "open" else "dropped"
        log.error(
            "worker for queue %d (pid %s) died with exit status %s; its packets are %s "
            "until it is restarted in %.1fs",
            w.queue_num, w.proc.pid, code, effect, wc.restart_delay,
        )  # fmt: skip
        if len(w.restarts) >= wc.max_restarts:
            raise GatewayError(
                f"worker for queue {w.queue_num} died {len(w.restarts) + 1} times within "
                f"{wc.restart_window:.0f}s (workers.max_restarts = {wc.max_restarts}); "
                "giving up"
            )
        w.restarts.append(now)
        w.total_restarts += 1
        return now

    def _stop_workers(self) -> None:
        procs = [
            p for w in self.workers for p in (w.proc, w.standby) if p is not None and p.is_alive()
        ]
        for p in procs:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.workers.stop_timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("worker pid %s ignored SIGTERM; killing it", p.pid)
                p.kill()
                p.join(2.0)

    # -- control socket -----------------------------------------------------------------------

    def status(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Health: per queue the worker's counters (packets, bytes inspected, verdicts, events,
        policy version, rules loaded) and the kernel's counters for that queue from
        /proc/net/netfilter/nfnetlink_queue in this namespace (queue_total, queue_dropped,
        user_dropped, id_sequence, queue_drops = the two drop counters; all None when the
        kernel does not list the queue); `rules_loaded` and totals at the top level, among
        them `uninspected_packets` / `uninspected_bytes`: what the kernel passed without a
        worker's verdict (fail-open on a full queue, --queue-bypass with no reader; all
        queues, both families: gateway/firewall/counters.py), `events_dropped` and `limits`
        (each limit reached, all queues together; per queue the engine's limit_*, norm_*,
        frag_* and app counters, nfqueue.ENGINE_STAT_NAMES, up to a second old);
        `protected_hosts`: what the kernel's protected-host sets hold now; `event_store`: the
        workers' event sinks in sum (`event_store_health`); `drop_log`: firewall and
        host-mode events (lifecycle/monitor.py `DropLogStatus`); `shared`: with `database.url`,
        the policy sync and the event forwarder (gateway/multinode.py), else None."""
        kernel = read_queue_counters()
        queues: dict[str, dict[str, Any]] = {}
        for w in self.workers:
            snap: dict[str, Any] = w.stats.snapshot()
            alive = bool(w.proc is not None and w.proc.is_alive())
            counters = kernel.queues.get(w.queue_num)
            if counters is not None:
                snap.update(counters.as_dict())
                # queued to this queue but never seen by the worker (fail-open bypass of the
                # netlink path, or losses the kernel does not count), racy by a few packets
                seen = snap["packets"] - w.packets_at_start  # since this binding
                snap["kernel_unseen"] = max(0, counters.id_sequence - counters.queue_total - seen)
            else:
                for name in ("queue_total", "queue_dropped", "user_dropped", "id_sequence",
                             "queue_drops", "kernel_unseen"):  # fmt: skip
                    snap[name] = None
            snap["alive"] = alive
            snap["standby"] = bool(w.standby is not None and w.standby.is_alive())
            snap["restarts"] = w.total_restarts
            queues[str(w.queue_num)] = snap
        live = [q for q in queues.values() if q["alive"]]
        return {
            "backend": self.backend.name,
            "fail_policy": self.config.fail_policy.value,
            "uptime": time.time() - self.started,
            "policy_version": self.policy_version,
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
            "alerts": self._alerts.stats() if self._alerts is not None else None,
            "rule_hits": self._rule_hits(),
            "reloads": self.reload_times.as_dict(),
            "metrics": self._metrics.describe() if self._metrics is not None else None,
            "drop_log": self._drop_log.report(self.backend, self.rendered.prefix),
            "shared": self._shared.stats() if self._shared is not None else None,
            "protected_hosts": self.protected,
            # can forwarded traffic bypass netfilter here (gateway/forwarding.py), checked now
            "forwarding": check_forwarding(self.config.network.mode).as_dict(),
            "stalled_queues": stalled_queues(self.workers, self.config.workers.bind_timeout),
            "update_source_names": self._names.status(),
            "queues": queues,
            "tls_proxy": self.tls.status(),
        }

    def _rule_hits(self) -> dict[str, dict[str, int]]:
        """Firings per rule, all queues: {sid: {"blocked": n, "alerted": n}}."""
        hits: dict[str, dict[str, int]] = {}
        for w in self.workers:
            for sid, (blocked, alerted) in w.stats.rules.snapshot().items():
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

    def reload(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Re-read the policy store and have every worker apply it (no restart, flows kept).

        The policy is compiled here first, so a bad one is refused (ControlError reply) before
        any worker sees it. The workers then read it while the kernel's sets and rules are
        refreshed here (both done before the reply). Returns the new version, per-queue applied
        versions and the seconds until all live workers had it (or `complete: false` after
        RELOAD_WAIT).
        """
        with self._reload_lock:
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
            self.reload_times.record("policy", took)
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
                "protected_hosts": protected,
                "tls_proxy": tls_proxy,
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

    def rules_reload(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load the configuration's rule files again and have every worker use them, without a
        restart. The whole set is loaded and compiled here first: any bad rule refuses the
        reload (RuleError naming file, line and reason) and nothing changes. Then every worker
        builds the set in the background and swaps it in between packets (flows in progress
        finish with the rules they started with), and only then do the kernel's port sets
        follow the new rules' ports (a flow the kernel queues must meet rules that cover it).
        Returns the version, the rule count, per-queue versions and the seconds it took."""
        with self._reload_lock:
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
            self.reload_times.record("rules", took)
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

    def _follow_names(self, policies: list[HostPolicy]) -> None:
        """The resolver follows the names these hosts' update sources use (new: asked now)."""
        with self._names.lock:
            self._name_policies = policies
            self._names.want(update_source_names(policies))

    def _apply_names(self, updates: dict[str, list[tuple[str, int]]]) -> None:
        """A new DNS answer for an update-source name: its addresses into the names sets."""
        add_name_elements(self._name_policies, updates, self.config.firewall.chain_prefix)

    def _start_monitor(self) -> None:
        """The lifecycle monitor thread (NFLOG learning, lockdown, firewall and setup-protection
        drop events, aggregated by its sink); waits until its NFLOG groups are bound so no
        learning packet of the first connection is missed."""
        ev = self.config.events
        self._monitor_sink = EventSink(
            ev.sqlite,
            ev.jsonl,
            ev.max_queue,
            ev.aggregate_window,
            ev.aggregate_keys,
            gateway=gateway_name(self.config),
        )
        self._drop_log.sink = self._monitor_sink
        store = LifecycleStore(policy_target(self.config))
        ready = threading.Event()

        def body() -> None:
            try:
                run_monitor(
                    store, DEFAULT_SETTINGS, self._monitor_sink, None, sys.stdout,
                    stop=self._monitor_stop, ready=ready, created=self._drop_log.watch,
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001 - the kernel enforces; log and go on
                log.error("lifecycle monitor stopped: %r (host modes stay enforced)", err)
            finally:
                ready.set()

        self._monitor = threading.Thread(target=body, name="lifecycle-monitor", daemon=True)
        self._monitor.start()
        ready.wait(10.0)

    def _stop_monitor(self) -> None:
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(5.0)
        if self._monitor_sink is not None:
            self._monitor_sink.close()

    def policy(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stored policy as the workers see it, and the versions they applied."""
        hosts: list[Any] = []
        groups: list[Any] = []
        assignments: list[Any] = []
        if target_exists(policy_target(self.config)):
            with Store(policy_target(self.config)) as store:
                hosts, groups, assignments = policy_snapshot(store)
            hosts = [asdict(x) for x in hosts]
            groups = [asdict(x) for x in groups]
            assignments = [asdict(x) for x in assignments]
        return {
            "version": self.policy_version,
            "store": describe(policy_target(self.config)),
            "queues": {str(w.queue_num): w.stats.get("policy_version") for w in self.workers},
            "hosts": hosts,
            "groups": groups,
            "assignments": assignments,
        }

    def _start_alerts(self) -> None:
        """The alert dispatcher thread: tails the event store, sends through the channels."""
        if self.config.events.sqlite is None:
            log.info("alerts: no SQLite event store configured, no alert dispatcher")
            return
        events_db = self.config.events.sqlite
        self._alerts = Dispatcher(
            events_db, policy_target(self.config), state_db=alert_state_path(events_db)
        )
        self._alerts.start()

    def _start_metrics(self) -> None:
        """The Prometheus endpoint (gateway/metrics.py): reads `status` at each scrape; a port
        it cannot bind is logged and the gateway runs on without it."""
        mc = self.config.metrics
        self._metrics = MetricsServer(self.status, mc.address, mc.port, self.config.health.state)
        self._metrics.start()

    def _start_shared(self, applied: int | None) -> None:
        """With a shared store: follow its policy version from `applied` (read before the
        workers loaded the policy, so no change is missed), beat, forward the events."""
        if self.config.database.url:
            self._shared = SharedNode.start(self.config, applied, self.reload, self._node_status)

    def _node_status(self) -> dict[str, Any]:
        """What the shared store's gateways list shows of this gateway (SharedNode adds its
        sync and forwarder)."""
        alive = sum(1 for w in self.workers if w.proc is not None and w.proc.is_alive())
        events = event_store_health([w.stats.snapshot() for w in self.workers])
        return {"workers": len(self.workers), "alive": alive, "backend": self.backend.name,
                "local_policy_version": self.policy_version, "events": events}  # fmt: skip

    def _start_control(self) -> None:
        self._control = ControlServer(
            self.config.control.socket,
            {
                "status": self.status,
                "stats": self.status,
                "rules": lambda _r: self.rendered.describe(),
                "reload": self.reload,
                "rules-reload": self.rules_reload,
                "policy": self.policy,
            },
            gid=shared_gid(),  # the admin UI's user may connect through the group `vpatch`
        )
        self._control.start()
