"""`vpatch run -c CONFIG [--cleanup] [--print-rules]`: the inline gateway.

Start-up, in this order (any failure stops with one clear error and leaves nothing behind):
load the configuration and the rules (fail fast), render the kernel rules, probe the iptables
backend (and say which one is in use), start one worker process per queue and wait until each
has bound its queue, apply the kernel rules atomically, open the control socket.

While running: a worker that dies is logged and restarted after `workers.restart_delay`, at most
`workers.max_restarts` times per `workers.restart_window` seconds per queue; past that the
gateway stops. Workers die with the parent (PR_SET_PDEATHSIG), so a killed `vpatch run`
leaves no reader behind: its rules then follow the fail policy until `--cleanup`. While a
worker is gone, fail_policy open lets the kernel bypass its queue (`--queue-bypass`),
fail_policy closed drops that queue's packets.

Exit (SIGTERM, SIGINT, error): the kernel rules are removed first (so no packet waits for a
worker that is going away), then the workers are stopped (SIGTERM, SIGKILL after
`workers.stop_timeout`), then the control socket is closed. The rule removal runs in a
`finally`: whatever happened, no rule of ours stays behind. After a crash of the whole
process (kill -9), `vpatch run --cleanup` removes what it left (all backends).

`--print-rules` prints the rendered ipset/iptables text and exits without touching the kernel.

Host modes (docs/lifecycle.md): the setup-protection / learning / lockdown chains are rendered
from the lifecycle state in the policy store (`policy.database`) together with the queueing
rules and the firewall policy, and applied with them atomically; filter FORWARD order is
PREFIX-FW, then PREFIX-HM-FORWARD (gateway/firewall/hostmodes.py FORWARD_ORDER). `reload`
refreshes them in place (sets swapped, chains rewritten). The lifecycle monitor (NFLOG:
learned tuples, lockdown events into the gateway's event sinks) runs as a thread of this
process; its failure is logged and never stops the gateway (the kernel enforces the modes).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.errors import VpatchError
from gateway.firewall.apply import (
    BackendInfo,
    apply_rules,
    cleanup_all,
    probe_backend,
    remove_rules,
)
from gateway.firewall.hostmodes import merge
from gateway.firewall.render import QueuePlan, RenderedRules, render
from gateway.intake.nfqueue import WorkerStats, start_worker

log = logging.getLogger("vpatch.run")

RELOAD_WAIT = 2.0  # seconds `reload` waits for every live worker to apply the new policy
BIND_TIMEOUT = 60.0  # seconds a worker may take to load rules and bind its queue
SUPERVISE_INTERVAL = 0.2  # seconds between checks of the workers


class GatewayError(VpatchError):
    """The gateway could not start or keep running (names the queue and the cause)."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the inline gateway (kernel rules, NFQUEUE workers, control socket)",
        description="Run the inline gateway: install the kernel rules, inspect queued packets "
        "in one worker per queue, remove the rules on exit.",
    )
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="remove every kernel rule, chain and ipset vpatch left behind (after a crash)",
    )
    p.add_argument(
        "--print-rules", action="store_true", help="print the rendered kernel rules and exit"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="vpatch[run] %(levelname)s %(message)s")
    config = load_config(args.config)
    if args.cleanup:
        removed = cleanup_all(config.firewall.chain_prefix)
        print("vpatch run --cleanup: " + ("; ".join(removed) if removed else "nothing to remove"))
        return 0
    rendered = render_config(config)
    if args.print_rules:
        sys.stdout.write(rendered.describe())
        return 0
    backend = probe_backend(config.firewall.backend)
    print(f"vpatch run: firewall backend iptables-{backend.name} ({backend.version})", flush=True)
    return Gateway(config, backend, rendered).serve()


def render_config(config: GatewayConfig) -> RenderedRules:
    """Load the rules (RuleError on any bad rule) and render the kernel rules for them."""
    from gateway.match.rules import load_rules
    from gateway.policy.appcontrol import plan_rules, rule_paths

    ruleset = load_rules(rule_paths(config))  # + built-in app-control rules (their ports)
    plan = QueuePlan.from_rules(plan_rules(ruleset))
    base = merge(render(config, plan, any_port_hosts=app_any_port_hosts(config)),
                 firewall_policy(config))  # fmt: skip
    return merge(base, host_modes(config))


def app_any_port_hosts(config: GatewayConfig) -> list[Any]:
    """Hosts whose app control looks at every TCP port (none without a policy database)."""
    from gateway.policy.appcontrol import any_port_hosts
    from gateway.policy.store import Store

    if not config.policy.database.exists():
        return []
    with Store(config.policy.database) as store:
        return any_port_hosts(store)


def host_policies(config: GatewayConfig) -> list[Any]:
    """The hosts of the lifecycle state (policy store); none when there is no database yet."""
    from gateway.lifecycle.state import LifecycleStore

    if not config.policy.database.exists():
        return []
    return list(LifecycleStore(config.policy.database).hosts())


def host_modes(config: GatewayConfig) -> RenderedRules:
    """Host-mode chains and sets for both families (always present, so `reload` can refresh
    them), jumped to from FORWARD right after the firewall policy chain."""
    from gateway.firewall.hostmodes import HM_POSITION_WITH_FIREWALL, render_hostmodes

    return render_hostmodes(
        host_policies(config),
        config.firewall.chain_prefix,
        always=True,
        position=HM_POSITION_WITH_FIREWALL,
    )


def firewall_policy(config: GatewayConfig) -> RenderedRules:
    """The stored firewall policy (gateway/firewall/policy.py) as kernel rules; an empty chain
    when there is no policy database yet (a later `reload` fills it)."""
    from gateway.firewall.policy import render_from_store, render_policy
    from gateway.policy.store import Store

    prefix = config.firewall.chain_prefix
    if not config.policy.database.exists():
        return render_policy([], [], [], prefix)
    with Store(config.policy.database) as store:
        return render_from_store(store, prefix)


class _Worker:
    def __init__(self, queue_num: int) -> None:
        self.queue_num = queue_num
        self.stats = WorkerStats()
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.died: float | None = None  # monotonic time the current death was noticed


class Gateway:
    """The running gateway: workers, kernel rules, control socket."""

    def __init__(
        self, config: GatewayConfig, backend: BackendInfo, rendered: RenderedRules
    ) -> None:
        self.config = config
        self.backend = backend
        self.rendered = rendered
        self.workers = [_Worker(q) for q in config.queues.numbers]
        self.started = time.time()
        self._stop = False
        self._control: Any = None
        self._alerts: Any = None  # gateway/alerts/dispatcher.py, when events go to SQLite
        self.policy_version = 1  # bumped by each `reload`; workers apply it between packets
        self._reload_lock = threading.Lock()
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._monitor_sink: Any = None

    # -- lifecycle ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self._stop = True

    def serve(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            for w in self.workers:
                self._start(w)
            self._wait_bound()
            apply_rules(self.rendered, self.backend)
            log.info(
                "kernel rules applied (%s): queues %s, fail policy %s, %d ipset(s)",
                self.backend.name,
                ",".join(str(w.queue_num) for w in self.workers),
                self.config.fail_policy.value,
                len(self.rendered.sets),
            )
            self._start_monitor()
            self._start_control()
            self._start_alerts()
            print("vpatch run: ready", flush=True)
            while not self._stop:
                time.sleep(SUPERVISE_INTERVAL)
                self._supervise()
        except VpatchError as err:
            log.error("%s", err)
            status = 2
        finally:
            try:
                removed = remove_rules(self.backend, self.rendered.prefix)
                log.info("kernel rules removed (%d objects)", len(removed))
            except VpatchError as err:
                log.error("removing kernel rules failed: %s", err)
                status = status or 2
            self._stop_workers()
            self._stop_monitor()
            if self._control is not None:
                self._control.stop()
            if self._alerts is not None:
                self._alerts.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
        return status

    def _start(self, w: _Worker) -> None:
        w.stats.reset()
        w.stats.set("policy_wanted", self.policy_version)
        w.proc = start_worker(w.queue_num, self.config, w.stats)
        log.info("worker for queue %d started (pid %s)", w.queue_num, w.proc.pid)

    def _wait_bound(self) -> None:
        deadline = time.monotonic() + BIND_TIMEOUT
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
                        f"worker for queue {w.queue_num} did not bind within {BIND_TIMEOUT:.0f}s"
                    )
                time.sleep(0.05)

    def _supervise(self) -> None:
        wc = self.config.workers
        for w in self.workers:
            assert w.proc is not None
            if w.proc.is_alive():
                continue
            now = time.monotonic()
            if w.died is not None:
                if now - w.died >= wc.restart_delay:
                    w.died = None
                    self._start(w)
                continue
            w.died = now
            code = w.proc.exitcode
            w.proc.join(0)
            while w.restarts and now - w.restarts[0] > wc.restart_window:
                w.restarts.popleft()
            effect = (
                "bypassed by the kernel" if self.config.fail_policy.value == "open" else "dropped"
            )
            log.error(
                "worker for queue %d (pid %s) died with exit status %s; its packets are %s "
                "until it is restarted in %.1fs",
                w.queue_num, w.proc.pid, code, effect, wc.restart_delay,
            )  # fmt: skip
            if len(w.restarts) >= wc.max_restarts:
                raise GatewayError(
                    f"worker for queue {w.queue_num} died {len(w.restarts) + 1} times within "
                    f"{wc.restart_window:.0f}s (workers.max_restarts = {wc.max_restarts}); giving up"
                )
            w.restarts.append(now)
            w.total_restarts += 1

    def _stop_workers(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.is_alive()]
        for p in procs:
            if p.pid is not None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
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
        kernel does not list the queue); `rules_loaded` and totals at the top level."""
        from gateway.intake.queuestats import read_queue_counters

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
                snap["kernel_unseen"] = max(
                    0, counters.id_sequence - counters.queue_total - snap["packets"]
                )
            else:
                for name in ("queue_total", "queue_dropped", "user_dropped", "id_sequence",
                             "queue_drops", "kernel_unseen"):  # fmt: skip
                    snap[name] = None
            snap["alive"] = alive
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
            "kernel_counters": kernel.available,
            "alerts": self._alerts.stats() if self._alerts is not None else None,
            "queues": queues,
        }

    def reload(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Re-read the policy store and have every worker apply it (no restart, flows kept).

        The policy is compiled here first, so a bad one is refused (ControlError reply) before
        any worker sees it. Returns the new version, per-queue applied versions and the seconds
        until all live workers had it (or `complete: false` after RELOAD_WAIT).
        """
        from gateway.intake.nfqueue import load_policy

        with self._reload_lock:
            started = time.monotonic()
            policy = load_policy(self.config)  # raises (ConfigError) on a bad policy
            firewall_rules = self._refresh_firewall()
            host_modes = self._refresh_hostmodes()
            any_port = self._refresh_any_port_hosts()
            self.policy_version += 1
            version = self.policy_version
            for w in self.workers:
                w.stats.set("policy_wanted", version)
            deadline = started + RELOAD_WAIT
            while True:
                live = [w for w in self.workers if w.proc is not None and w.proc.is_alive()]
                if all(w.stats.get("policy_version") == version for w in live):
                    complete = True
                    break
                if time.monotonic() > deadline:
                    complete = False
                    break
                time.sleep(0.01)
            took = time.monotonic() - started
            log.info("policy version %d: %s in %.3fs", version,
                     "applied by every worker" if complete else "NOT yet applied by all", took)  # fmt: skip
            return {
                "version": version,
                "complete": complete,
                "seconds": took,
                "store": str(self.config.policy.database),
                "policy": policy is not None,
                "queues": {str(w.queue_num): w.stats.get("policy_version") for w in self.workers},
                "policy_errors": sum(w.stats.get("policy_errors") for w in self.workers),
                "firewall_rules": firewall_rules,
                "host_modes": host_modes,
                "any_port_hosts": any_port,
            }

    def _refresh_firewall(self) -> int:
        """Rewrite the firewall-policy chain from the store (atomic per family)."""
        from gateway.firewall.policy import refresh_policy
        from gateway.policy.store import Store

        if not self.config.policy.database.exists():
            return 0
        with Store(self.config.policy.database) as store:
            return refresh_policy(store, self.backend, self.config.firewall.chain_prefix)

    def _refresh_any_port_hosts(self) -> list[str]:
        """Refill the sets of hosts whose every TCP port is queued (app control)."""
        from gateway.firewall.apply import refill_sets
        from gateway.firewall.render import render_any_port_hosts

        hosts = app_any_port_hosts(self.config)
        text, names = render_any_port_hosts(self.config.firewall.chain_prefix, hosts)
        if set(names) <= set(self.rendered.sets):  # nothing queued at all: no sets to fill
            refill_sets(text, names)
        return [str(h) for h in hosts]

    def _refresh_hostmodes(self) -> dict[str, str]:
        """Rewrite the host-mode sets and chains from the lifecycle state; {host: mode}."""
        from gateway.firewall.hostmodes import refresh_hostmodes

        policies = host_policies(self.config)
        refresh_hostmodes(policies, self.backend, self.config.firewall.chain_prefix)
        return {p.address: p.mode.value for p in policies if p.mode.value != "normal"}

    def _start_monitor(self) -> None:
        """The lifecycle monitor thread (NFLOG learning and lockdown events); waits until its
        NFLOG groups are bound so no learning packet of the first connection is missed."""
        from gateway.events.sink import EventSink
        from gateway.firewall.hostmodes import DEFAULT_SETTINGS
        from gateway.lifecycle.monitor import run_monitor
        from gateway.lifecycle.state import LifecycleStore

        ev = self.config.events
        self._monitor_sink = EventSink(ev.sqlite, ev.jsonl, ev.max_queue)
        store = LifecycleStore(self.config.policy.database)
        ready = threading.Event()

        def body() -> None:
            try:
                run_monitor(
                    store, DEFAULT_SETTINGS, self._monitor_sink, None, sys.stdout,
                    stop=self._monitor_stop, ready=ready,
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
        if self.config.policy.database.exists():
            from dataclasses import asdict

            from gateway.policy.snapshot import policy_snapshot
            from gateway.policy.store import Store

            with Store(self.config.policy.database) as store:
                hosts, groups, assignments = policy_snapshot(store)
            hosts, groups, assignments = (
                [asdict(x) for x in hosts], [asdict(x) for x in groups], [asdict(x) for x in assignments]
            )  # fmt: skip
        return {
            "version": self.policy_version,
            "store": str(self.config.policy.database),
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
        from gateway.alerts.dispatcher import Dispatcher, alert_state_path

        events_db = self.config.events.sqlite
        self._alerts = Dispatcher(
            events_db, self.config.policy.database, state_db=alert_state_path(events_db)
        )
        self._alerts.start()

    def _start_control(self) -> None:
        from gateway.control.server import ControlServer

        self._control = ControlServer(
            self.config.control.socket,
            {
                "status": self.status,
                "stats": self.status,
                "rules": lambda _r: self.rendered.describe(),
                "reload": self.reload,
                "policy": self.policy,
            },
        )
        self._control.start()
