"""One health check: observe, evaluate, compare with the last check, send, save.

`run_check(config)` is what `vpatch health check` (and its systemd timer) runs. Guarantees:
alerts go out only for changes (a condition raised, or resolved) and for messages an earlier
check could not deliver; the state is saved after sending, so a check killed half-way sends
its changes again rather than never; a state file that cannot be written is an error
(HealthError: without it every check would alert again). Each check also adds a sample to the
history reports read (gateway/health/history.py); a history that cannot be written is logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway.alerts.channels import send
from gateway.config import GatewayConfig
from gateway.errors import VpatchError
from gateway.health.checks import Condition, evaluate
from gateway.health.history import HealthHistoryError, history_path, record
from gateway.health.notify import Sender, deliver, health_message
from gateway.health.probe import observe
from gateway.health.state import HealthState, Transition, load_state, save_state, transitions

__all__ = ["CheckResult", "HealthError", "run_check"]

log = logging.getLogger("vpatch.health")


class HealthError(VpatchError):
    """The health check could not keep its state (names the file and the cause)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    failing: dict[Condition, str]
    changes: tuple[Transition, ...]
    sent: int  # messages delivered (all channels)
    undelivered: int  # messages kept for the next check
    state: HealthState


def run_check(
    config: GatewayConfig, now: float | None = None, sender: Sender = send
) -> CheckResult:
    now = time.time() if now is None else now
    path = config.health.state
    before = load_state(path)
    failing, counters = evaluate(observe(config, now), before.counters, config.health)
    changes, conditions = transitions(before.conditions, failing, now)
    messages = [health_message(c, now) for c in changes]
    sent, left = deliver(config.policy.database, messages, before.pending, now, sender)
    state = HealthState(now, counters, conditions, tuple(left))
    try:
        save_state(path, state)
    except (OSError, VpatchError) as err:
        raise HealthError(f"health state {path}: cannot be written: {err}") from err
    try:  # the history reports read (gateway/health/history.py); alerts went out regardless
        reached = Condition.GATEWAY_UNREACHABLE not in failing
        record(history_path(path), now, counters if reached else None)
    except HealthHistoryError as err:
        log.warning("%s", err)
    return CheckResult(failing, tuple(changes), sent, len(left), state)
