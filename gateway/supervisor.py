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
no queue is stalled (gateway/intake/workers.py `stalled_queues`: its worker dead, or neither
its loop heartbeat nor its packet count moved for WORKER_STALL_S), so a stopped or hung worker
gets the whole gateway restarted.

Control socket commands: `status`/`stats` (per-queue worker and kernel counters, the gateway's
parts: built by gateway/control/status.py), `rules` (the rendered text), `policy` (the stored
policy and the versions applied), `reload` and `rules-reload` (gateway/control/reload.py:
checked here first, so a bad policy or rule is refused before any worker sees it; then every
worker applies the new version between packets, no restart, flows kept, and the kernel's sets
and chains are refreshed in place; on `reload` the HTTPS plane follows the stored services,
gateway/tls/plane.py `reconfigure`).

The lifecycle monitor (NFLOG: learned tuples, lockdown events into the gateway's event sinks)
runs as a thread; its failure is logged and never stops the gateway (the kernel enforces the
modes). So does the resolver of update-source names (gateway/lifecycle/names.py): it asks the
DNS for the names setup hosts' update sources use and adds the answers to the kernel's names
sets, each address expiring with its answer's TTL; `reload` hands it the names in use.
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
from dataclasses import asdict
from typing import Any

from gateway.alerts.dispatcher import Dispatcher, alert_state_path
from gateway.config import GatewayConfig
from gateway.control.reload import Reloads
from gateway.control.server import ControlServer
from gateway.control.status import StatusReport
from gateway.database import describe, gateway_name, policy_target, target_exists
from gateway.errors import VpatchError
from gateway.events.sink import EventSink
from gateway.firewall.apply import BackendInfo, apply_rules, remove_rules
from gateway.firewall.compose import host_policies
from gateway.firewall.hostmodes import DEFAULT_SETTINGS
from gateway.firewall.refresh import add_name_elements
from gateway.firewall.render import RenderedRules
from gateway.intake.nfqueue import event_store_health, start_worker
from gateway.intake.workers import QueueWorker, stalled_queues
from gateway.lifecycle.monitor import DropLogStatus, run_monitor
from gateway.lifecycle.names import NameResolver, resolver_servers, update_source_names
from gateway.lifecycle.state import HostPolicy, LifecycleStore
from gateway.metrics import MetricsServer
from gateway.multinode import SharedNode, shared_policy_version
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store
from gateway.sdnotify import Notifier
from gateway.statefiles import shared_gid
from gateway.tls.plane import TlsPlane

log = logging.getLogger("vpatch.run")

SUPERVISE_INTERVAL = 0.2  # seconds between checks of the workers (a death wakes at once)
# per-process counters: set afresh for each worker process; the others count for the queue
PROCESS_STATS = ("bound", "pid", "started", "policy_version", "heartbeat")


class GatewayError(VpatchError):
    """The gateway could not start or keep running (names the queue and the cause)."""


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
        self.workers = [QueueWorker(q) for q in config.queues.numbers]
        self._stop = False
        self._control: ControlServer | None = None
        self._alerts: Dispatcher | None = None  # when events go to SQLite
        self._metrics: MetricsServer | None = None  # the Prometheus endpoint (metrics.port)
        self._shared: SharedNode | None = None  # when the store is shared (database.url)
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._monitor_sink: EventSink | None = None
        self._drop_log = DropLogStatus()
        rc = config.resolver
        self._names = NameResolver(
            resolver_servers(rc), self._apply_names, rc.min_ttl, rc.max_ttl, rc.timeout
        )
        self._name_policies: list[HostPolicy] = []  # whose update-source names are followed
        self._notify = Notifier.from_env()  # systemd: READY=1, WATCHDOG=1 (Type=notify units)
        self._rules_applied = False
        self.tls = TlsPlane(config, backend)  # the HTTPS plane (gateway/tls/plane.py)
        # `reload`, `rules-reload` (gateway/control/reload.py) and `status` (.../status.py)
        self.reloads = Reloads(
            config, backend, rendered, self.workers, self.tls, self._names, self._follow_names
        )
        self._status = StatusReport(
            config, backend, rendered, self.workers, self.reloads, self.tls, self._names,
            self._drop_log,
        )  # fmt: skip

    @property
    def policy_version(self) -> int:
        """Bumped by each `reload`; workers apply it between packets."""
        return self.reloads.policy_version

    @property
    def rules_version(self) -> int:
        """Bumped by each `rules-reload`; workers swap the new rules in between packets."""
        return self.reloads.rules_version

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

    def _start(self, w: QueueWorker) -> None:
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

    def _start_standby(self, w: QueueWorker) -> None:
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

    def _record_death(self, w: QueueWorker, now: float) -> float:
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
        """`status`/`stats`: the workers', the kernel's and the gateway's parts' counters
        (gateway/control/status.py)."""
        return self._status.build(self._alerts, self._metrics, self._shared)

    def reload(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """`reload`: the stored policy, checked here, then applied by every worker and in the
        kernel (gateway/control/reload.py)."""
        return self.reloads.policy()

    def rules_reload(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """`rules-reload`: the rule files, compiled here, then swapped in by every worker
        (gateway/control/reload.py)."""
        return self.reloads.rules()

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
