"""The Prometheus endpoint of `vpatch run` (the official client library, prometheus_client).

`MetricsServer(status, address, port, health_state)` serves `GET /metrics` in the text format
from a thread of the gateway process, on `metrics.address:metrics.port` (loopback by
default; port 0: no endpoint). Its collector (`StatusCollector`) reads the gateway's current
`status` (the same dictionary the control socket's `status` returns: gateway/supervisor.py)
at each scrape and the last health check's state (gateway/health/state.py), so the figures
are those `vpatch run status` shows, never a second set of counters that could disagree.
The metric names and labels are listed in docs/operations.md (METRICS below is the table).

Guarantees: a port that cannot be bound is logged and the gateway runs on without the
endpoint (`status()["metrics"]["error"]` says why); a scrape never raises into the server: a
status that cannot be read gives `vpatch_status_ok 0` and nothing else; counters are the
gateway's cumulative ones (zero at each `vpatch run` start; the kernel's per-queue drop
counters restart with a new binding), so a monitoring system should use rate()/increase().
`ReloadTimes` records the count and duration of `reload`/`rules-reload` for `status`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.health.checks import Condition
from gateway.health.state import load_state

__all__ = ["METRICS", "MetricsServer", "ReloadTimes", "StatusCollector"]

log = logging.getLogger("vpatch.metrics")

StatusFn = Callable[[], Mapping[str, Any]]

# (name without the _total suffix of counters, type, labels, help): the docs' table
METRICS: Final = (
    ("vpatch_status_ok", "gauge", "", "1 when the gateway's status could be read"),
    ("vpatch_uptime_seconds", "gauge", "", "seconds since `vpatch run` started"),
    ("vpatch_packets_inspected", "counter", "queue", "packets handed to the engine"),
    ("vpatch_bytes_inspected", "counter", "queue", "IP bytes handed to the engine"),
    ("vpatch_verdicts", "counter", "queue, action",
     "verdicts given: accept, drop, reset; error: a catch-all (fail-policy) verdict"),
    ("vpatch_flows_bypassed", "counter", "queue",
     "flows handed back to the kernel after inspection"),
    ("vpatch_rule_drops", "counter", "sid", "packets a rule blocked (dropped or reset)"),
    ("vpatch_rule_alerts", "counter", "sid", "firings of a rule that let the packet pass"),
    ("vpatch_queue_drops", "counter", "queue",
     "packets the kernel dropped: queue full or undeliverable (fail_policy closed)"),
    ("vpatch_uninspected_packets", "counter", "",
     "packets passed without a worker's verdict (fail-open: full queue, no reader)"),
    ("vpatch_uninspected_bytes", "counter", "", "bytes of those packets"),
    ("vpatch_worker_restarts", "counter", "queue", "worker processes restarted"),
    ("vpatch_worker_up", "gauge", "queue", "1 while the queue's worker runs"),
    ("vpatch_reload_duration_seconds", "summary", "kind",
     "policy (`reload`) and rules (`rules-reload`) reloads: _count and _sum"),
    ("vpatch_reload_last_duration_seconds", "gauge", "kind", "the last reload's duration"),
    ("vpatch_rules_loaded", "gauge", "", "rules in use"),
    ("vpatch_flows_active", "gauge", "queue", "flows in the queue's flow table"),
    ("vpatch_limits_reached", "counter", "limit", "times a packet-path limit was reached"),
    ("vpatch_events", "counter", "outcome",
     "events: written, aggregated, dropped, lost (gateway/events/sink.py)"),
    ("vpatch_event_backlog", "gauge", "", "events waiting for the writers (queued or retried)"),
    ("vpatch_event_store_failing", "gauge", "", "queues whose event store's last write failed"),
    ("vpatch_alert_messages", "counter", "outcome",
     "alert messages: sent, suppressed (rate limit), failed (sends), dropped (given up)"),
    ("vpatch_alert_queued", "gauge", "", "alert messages waiting for a retry"),
    ("vpatch_alert_channels", "gauge", "state", "alert channels: enabled, failing"),
    ("vpatch_health_condition", "gauge", "condition",
     "1 while a health condition is failing (last `vpatch health check`)"),
    ("vpatch_health_last_check_timestamp_seconds", "gauge", "", "when that check ran"),
)  # fmt: skip
_HELP: Final = {name: text for name, _kind, _labels, text in METRICS}
VERDICT_STATS: Final = (("accept", "accepted"), ("drop", "dropped"), ("reset", "reset"),
                        ("error", "errors"))  # fmt: skip


def _counter(name: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, _HELP[name], labels=list(labels))


def _gauge(name: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _HELP[name], labels=list(labels))


def _per_queue(queues: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "packets": _counter("vpatch_packets_inspected", ["queue"]),
        "bytes": _counter("vpatch_bytes_inspected", ["queue"]),
        "bypassed": _counter("vpatch_flows_bypassed", ["queue"]),
        "queue_drops": _counter("vpatch_queue_drops", ["queue"]),
        "restarts": _counter("vpatch_worker_restarts", ["queue"]),
        "alive": _gauge("vpatch_worker_up", ["queue"]),
        "flows_active": _gauge("vpatch_flows_active", ["queue"]),
    }
    verdicts = _counter("vpatch_verdicts", ["queue", "action"])
    for queue, q in sorted(queues.items()):
        for key, fam in fams.items():
            if q.get(key) is not None:  # the kernel's counters are None when not listed
                fam.add_metric([queue], float(q[key]))
        for action, key in VERDICT_STATS:
            verdicts.add_metric([queue, action], float(q.get(key) or 0))
    yield from fams.values()
    yield verdicts


def _rules(hits: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    drops, alerts = _counter("vpatch_rule_drops", ["sid"]), _counter("vpatch_rule_alerts", ["sid"])
    for sid, n in sorted(hits.items()):
        drops.add_metric([sid], float(n.get("blocked", 0)))
        alerts.add_metric([sid], float(n.get("alerted", 0)))
    yield drops
    yield alerts


def _reloads(reloads: Mapping[str, Mapping[str, float]]) -> Iterator[Metric]:
    name = "vpatch_reload_duration_seconds"
    summary = SummaryMetricFamily(name, _HELP[name], labels=["kind"])
    last = _gauge("vpatch_reload_last_duration_seconds", ["kind"])
    for kind, r in sorted(reloads.items()):
        summary.add_metric([kind], count_value=int(r["count"]), sum_value=float(r["seconds"]))
        last.add_metric([kind], float(r["last"]))
    yield summary
    yield last


def _events_and_alerts(s: Mapping[str, Any]) -> Iterator[Metric]:
    store = s.get("event_store") or {}
    events = _counter("vpatch_events", ["outcome"])
    for outcome in ("written", "aggregated", "dropped", "lost"):
        events.add_metric([outcome], float(store.get(outcome) or 0))
    yield events
    backlog = _gauge("vpatch_event_backlog")
    backlog.add_metric([], float(store.get("backlog") or 0))
    failing = _gauge("vpatch_event_store_failing")
    failing.add_metric([], float(store.get("failing") or 0))
    yield backlog
    yield failing
    alerts = s.get("alerts")
    if alerts is None:  # no event store, no dispatcher
        return
    messages = _counter("vpatch_alert_messages", ["outcome"])
    for outcome, key in (("sent", "sent"), ("suppressed", "suppressed"), ("failed", "failures"),
                         ("dropped", "dropped")):  # fmt: skip
        messages.add_metric([outcome], float(alerts.get(key) or 0))
    queued = _gauge("vpatch_alert_queued")
    queued.add_metric([], float(alerts.get("queued") or 0))
    channels = _gauge("vpatch_alert_channels", ["state"])
    channels.add_metric(["enabled"], float(alerts.get("channels") or 0))
    channels.add_metric(["failing"], float(alerts.get("failing") or 0))
    yield messages
    yield queued
    yield channels


def _health(path: Path | None) -> Iterator[Metric]:
    if path is None:
        return
    state = load_state(path)
    if not state.checked_at:
        return
    cond = _gauge("vpatch_health_condition", ["condition"])
    for c in Condition:
        s = state.conditions.get(c)
        cond.add_metric([c.value], 1.0 if s is not None and s.failing else 0.0)
    when = _gauge("vpatch_health_last_check_timestamp_seconds")
    when.add_metric([], state.checked_at)
    yield cond
    yield when


class StatusCollector(Collector):
    """Every metric from one reading of the gateway's status (and the health state)."""

    def __init__(self, status: StatusFn, health_state: Path | None = None) -> None:
        self._status = status
        self._health_state = health_state

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the status

    def collect(self) -> Iterator[Metric]:
        ok = _gauge("vpatch_status_ok")
        try:
            s = self._status()
        except Exception as err:  # noqa: BLE001 - a scrape must not fail the server
            log.warning("metrics: status unreadable: %r", err)
            ok.add_metric([], 0.0)
            yield ok
            return
        ok.add_metric([], 1.0)
        yield ok
        for name, key in (("vpatch_uptime_seconds", "uptime"),
                          ("vpatch_rules_loaded", "rules_loaded")):  # fmt: skip
            g = _gauge(name)
            g.add_metric([], float(s.get(key) or 0))
            yield g
        for name, key in (("vpatch_uninspected_packets", "uninspected_packets"),
                          ("vpatch_uninspected_bytes", "uninspected_bytes")):  # fmt: skip
            c = _counter(name)
            c.add_metric([], float(s.get(key) or 0))
            yield c
        limits = _counter("vpatch_limits_reached", ["limit"])
        for limit, n in sorted((s.get("limits") or {}).items()):
            limits.add_metric([limit], float(n))
        yield limits
        yield from _per_queue(s.get("queues") or {})
        yield from _rules(s.get("rule_hits") or {})
        yield from _reloads(s.get("reloads") or {})
        yield from _events_and_alerts(s)
        yield from _health(self._health_state)


class ReloadTimes:
    """Count, total and last duration of each kind of reload (policy, rules); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, tuple[int, float, float]] = {"policy": (0, 0.0, 0.0),
                                                            "rules": (0, 0.0, 0.0)}  # fmt: skip

    def record(self, kind: str, seconds: float) -> None:
        with self._lock:
            count, total, _last = self._kinds.get(kind, (0, 0.0, 0.0))
            self._kinds[kind] = (count + 1, total + seconds, seconds)

    def as_dict(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: {"count": c, "seconds": t, "last": last}
                    for k, (c, t, last) in self._kinds.items()}  # fmt: skip


class MetricsServer:
    """`/metrics` on address:port from a thread (prometheus_client's WSGI server)."""

    def __init__(
        self, status: StatusFn, address: str, port: int, health_state: Path | None = None
    ) -> None:
        self.address = address
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, health_state))
        self.error = ""
        self._server: Any = None

    def start(self) -> bool:
        """Serve; False (and `error` set, logged) when the port cannot be bound."""
        if self.port == 0:
            self.error = "disabled (metrics.port 0)"
            return False
        try:
            self._server, _thread = start_http_server(self.port, self.address, self.registry)
        except OSError as err:
            self.error = f"{self.address}:{self.port}: {err.strerror or err}"
            log.error("metrics endpoint not served: %s (the gateway runs on)", self.error)
            return False
        log.info("metrics: http://%s:%d/metrics", self.address, self.port)
        return True

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "serving": self._server is not None,
                "error": self.error}  # fmt: skip

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
