"""The health conditions and what raises them: pure functions of one Observation.

`evaluate(observation, previous, config)` returns every failing condition with a one-line
detail, and the gateway counters to compare at the next check. Guarantees:
- counters are compared with the previous check's only while the same gateway instance runs
  (its start time, from `uptime`, moved less than START_TOLERANCE); a new instance is compared
  with zero (its counters start at zero) and raises GATEWAY_RESTARTED;
- an unreachable gateway keeps the previous counters (nothing is compared with nothing);
- thresholds are "more than N since the previous check" (HealthConfig);
- nothing here raises for odd input: a status without a counter counts it as 0.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.config import HealthConfig

__all__ = ["Condition", "Counters", "DiskUsage", "Observation", "evaluate"]

START_TOLERANCE: Final = 5.0  # seconds a gateway's computed start time may wander


class Condition(enum.Enum):
    """A health condition: failing or not at each check (the value names it in messages,
    the state file and the metrics)."""

    GATEWAY_UNREACHABLE = "gateway_unreachable"
    GATEWAY_RESTARTED = "gateway_restarted"
    WORKER_RESTARTED = "worker_restarted"
    WORKERS_DOWN = "workers_down"
    QUEUE_DROPS = "queue_drops"
    UNINSPECTED = "uninspected"
    EVENT_STORE = "event_store"
    DISK_LOW = "disk_low"
    RULE_UPDATE = "rule_update"

    @property
    def title(self) -> str:
        return _TITLES[self]

    @property
    def severity(self) -> int:
        """EVE-like severity of its alert (1 most severe): what lets traffic pass uninspected
        is 1, the rest 2."""
        return 1 if self in _SEVERE else 2


_TITLES: Final = {
    Condition.GATEWAY_UNREACHABLE: "gateway unreachable",
    Condition.GATEWAY_RESTARTED: "gateway restarted",
    Condition.WORKER_RESTARTED: "worker restarted",
    Condition.WORKERS_DOWN: "worker down",
    Condition.QUEUE_DROPS: "queue drops",
    Condition.UNINSPECTED: "packets passed uninspected",
    Condition.EVENT_STORE: "event store not writable",
    Condition.DISK_LOW: "disk space low",
    Condition.RULE_UPDATE: "rule update failed",
}
_SEVERE: Final = frozenset(
    {Condition.GATEWAY_UNREACHABLE, Condition.WORKERS_DOWN, Condition.UNINSPECTED}
)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    path: str  # a directory vpatch writes to
    free_percent: float  # space available to unprivileged writers, in percent of the size


@dataclass(frozen=True, slots=True)
class Counters:
    """The gateway's cumulative counters at a check (zero at each gateway start)."""

    started: float  # wall-clock start of the gateway instance
    restarts: int = 0  # worker restarts, all queues
    queue_drops: int = 0
    uninspected: int = 0

    @classmethod
    def from_status(cls, status: Mapping[str, Any], now: float) -> Counters:
        queues = status.get("queues") or {}
        restarts = sum(int(q.get("restarts") or 0) for q in queues.values())
        return cls(
            now - float(status.get("uptime") or 0.0), restarts,
            int(status.get("queue_drops") or 0), int(status.get("uninspected_packets") or 0),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Observation:
    """What one check saw."""

    now: float  # wall clock
    status: Mapping[str, Any] | None  # the gateway's `status`; None: not reachable
    status_error: str = ""  # why not
    disks: tuple[DiskUsage, ...] = ()
    store_problem: str = ""  # the event store's directory cannot be written ("" when fine)
    rule_update_error: str = ""  # the last `vpatch rules update` failed with this


def _counter_changes(
    now: Counters, before: Counters | None, cfg: HealthConfig
) -> dict[Condition, str]:
    same = before is not None and abs(now.started - before.started) < START_TOLERANCE
    base = before if same and before is not None else Counters(now.started)
    out: dict[Condition, str] = {}
    if before is not None and not same:
        out[Condition.GATEWAY_RESTARTED] = "a new `vpatch run` answers since the last check"
    restarts = now.restarts - base.restarts
    if restarts > 0:
        out[Condition.WORKER_RESTARTED] = f"{restarts} worker restart(s) since the last check"
    drops = now.queue_drops - base.queue_drops
    if drops > cfg.queue_drops:
        out[Condition.QUEUE_DROPS] = (
            f"{drops} packets dropped by full queues since the last check "
            f"(threshold health.queue_drops = {cfg.queue_drops})"
        )
    passed = now.uninspected - base.uninspected
    if passed > cfg.uninspected:
        out[Condition.UNINSPECTED] = (
            f"{passed} packets passed without inspection since the last check "
            f"(threshold health.uninspected = {cfg.uninspected})"
        )
    return out


def _status_conditions(status: Mapping[str, Any]) -> dict[Condition, str]:
    out: dict[Condition, str] = {}
    workers, alive = int(status.get("workers") or 0), int(status.get("workers_alive") or 0)
    if alive < workers:
        out[Condition.WORKERS_DOWN] = f"{workers - alive} of {workers} workers not running"
    store = status.get("event_store") or {}
    failing = int(store.get("failing") or 0)
    if failing:
        out[Condition.EVENT_STORE] = (
            f"the event store's last write failed on {failing} queue(s) "
            f"({int(store.get('write_errors') or 0)} failed writes); events are held for retry"
        )
    return out


def evaluate(
    obs: Observation, previous: Counters | None, cfg: HealthConfig
) -> tuple[dict[Condition, str], Counters | None]:
    """({condition: detail} of every failing condition, the counters for the next check)."""
    failing: dict[Condition, str] = {}
    counters = previous
    if obs.status is None:
        failing[Condition.GATEWAY_UNREACHABLE] = obs.status_error or "no answer"
    else:
        counters = Counters.from_status(obs.status, obs.now)
        failing.update(_counter_changes(counters, previous, cfg))
        failing.update(_status_conditions(obs.status))
    if obs.store_problem:
        failing.setdefault(Condition.EVENT_STORE, obs.store_problem)
    low = [d for d in obs.disks if d.free_percent < cfg.disk_min_free]
    if low:
        failing[Condition.DISK_LOW] = (
            "; ".join(f"{d.path}: {d.free_percent:.1f}% free" for d in low)
            + f" (threshold health.disk_min_free = {cfg.disk_min_free:g}%)"
        )
    if obs.rule_update_error:
        failing[Condition.RULE_UPDATE] = obs.rule_update_error
    return failing, counters
