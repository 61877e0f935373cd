"""gateway/health/checks.py and state.py: which observations raise which condition, counters
compared per gateway instance, and changes reported once (raised, then resolved)."""

from __future__ import annotations

from typing import Any

from gateway.config import HealthConfig
from gateway.health.checks import Condition, Counters, DiskUsage, Observation, evaluate
from gateway.health.state import ConditionState, transitions

CFG = HealthConfig(queue_drops=10, uninspected=0, disk_min_free=10.0)
NOW = 1_800_000_000.0


def status(uptime: float = 100.0, restarts: int = 0, drops: int = 0, passed: int = 0,
           alive: int = 2, failing: int = 0) -> dict[str, Any]:  # fmt: skip
    return {
        "uptime": uptime, "workers": 2, "workers_alive": alive, "queue_drops": drops,
        "uninspected_packets": passed, "event_store": {"failing": failing, "write_errors": 3},
        "queues": {"0": {"restarts": restarts}, "1": {"restarts": 0}},
    }  # fmt: skip


def test_a_healthy_gateway_raises_nothing() -> None:
    failing, counters = evaluate(Observation(NOW, status()), None, CFG)
    assert failing == {}
    assert counters == Counters(NOW - 100.0, 0, 0, 0)


def test_unreachable_keeps_the_previous_counters() -> None:
    before = Counters(NOW - 100.0, 1, 2, 3)
    failing, counters = evaluate(Observation(NOW, None, "no control socket"), before, CFG)
    assert failing == {Condition.GATEWAY_UNREACHABLE: "no control socket"}
    assert counters == before


def test_thresholds_count_since_the_previous_check() -> None:
    before = Counters(NOW - 100.0, restarts=1, queue_drops=100, uninspected=50)
    quiet, _ = evaluate(Observation(NOW + 60, status(160, 1, 110, 50)), before, CFG)
    assert quiet == {}  # 10 drops is not above 10; no new uninspected packet
    busy, counters = evaluate(Observation(NOW + 60, status(160, 2, 111, 51)), before, CFG)
    assert set(busy) == {Condition.WORKER_RESTARTED, Condition.QUEUE_DROPS, Condition.UNINSPECTED}
    assert "11 packets dropped" in busy[Condition.QUEUE_DROPS]
    assert "1 packets passed without inspection" in busy[Condition.UNINSPECTED]
    assert counters == Counters(NOW - 100.0, 2, 111, 51)


def test_a_new_gateway_instance_is_compared_with_zero() -> None:
    before = Counters(NOW - 1000.0, restarts=5, queue_drops=500, uninspected=500)
    failing, _ = evaluate(Observation(NOW, status(uptime=30, drops=3, passed=2)), before, CFG)
    assert set(failing) == {Condition.GATEWAY_RESTARTED, Condition.UNINSPECTED}
    assert "2 packets" in failing[Condition.UNINSPECTED]


def test_workers_down_store_disk_and_rule_update() -> None:
    obs = Observation(
        NOW, status(alive=1, failing=1), disks=(DiskUsage("/var/lib/vpatch", 4.5),
                                                DiskUsage("/var/log/vpatch", 50.0)),
        rule_update_error="rule pack https://x/p.tgz: SHA-256 mismatch",
    )  # fmt: skip
    failing, _ = evaluate(obs, None, CFG)
    assert set(failing) == {Condition.WORKERS_DOWN, Condition.EVENT_STORE, Condition.DISK_LOW,
                            Condition.RULE_UPDATE}  # fmt: skip
    assert failing[Condition.DISK_LOW].startswith("/var/lib/vpatch: 4.5% free")
    assert "1 of 2 workers" in failing[Condition.WORKERS_DOWN]
    # the store's own problem is seen without the gateway too
    alone, _ = evaluate(Observation(NOW, None, "down", store_problem="read-only"), None, CFG)
    assert alone[Condition.EVENT_STORE] == "read-only"


def test_changes_are_reported_once_then_resolved() -> None:
    down = {Condition.GATEWAY_UNREACHABLE: "no socket"}
    changes, states = transitions({}, down, NOW)
    assert [(c.condition, c.failing) for c in changes] == [(Condition.GATEWAY_UNREACHABLE, True)]
    again, states2 = transitions(states, down, NOW + 60)
    assert again == [] and states2[Condition.GATEWAY_UNREACHABLE].since == NOW
    back, states3 = transitions(states2, {}, NOW + 120)
    assert [(c.condition, c.failing, c.since) for c in back] == [
        (Condition.GATEWAY_UNREACHABLE, False, NOW)
    ]
    assert states3[Condition.GATEWAY_UNREACHABLE] == ConditionState(False, NOW + 120)
    assert transitions(states3, {}, NOW + 180)[0] == []
