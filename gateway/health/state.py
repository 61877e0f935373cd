"""The health check's own state file (JSON, `health.state`): what the last check saw.

It holds the gateway counters of the last check, each condition's state (failing or not,
since when, its detail) and the messages a channel has not taken yet. Guarantees:
- `transitions(previous, failing, now)` reports a condition only when it changes: raised
  (was not failing) or resolved (was failing); a condition failing at two checks in a row is
  reported once;
- `save` replaces the file atomically (a new file, mode 0600, or 0660 for the group `vpatch`
  so the admin UI may read it, then rename(2)); a reader sees the old or the new state;
- `load` never raises: a missing file is a first check, an unreadable or malformed one is
  logged and treated as a first check (the conditions start from "not failing");
- bounds: at most MAX_PENDING undelivered messages are kept (the oldest goes first).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.health.checks import Condition, Counters
from gateway.statefiles import create_file, make_dir, shared_gid

__all__ = ["ConditionState", "HealthState", "Transition", "load_state", "save_state",
           "transitions"]  # fmt: skip

log = logging.getLogger("vpatch.health")

STATE_VERSION: Final = 1
MAX_PENDING: Final = 100


@dataclass(frozen=True, slots=True)
class ConditionState:
    failing: bool
    since: float  # wall clock of the change to this state
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    condition: Condition
    failing: bool  # True: raised, False: resolved
    detail: str
    since: float  # when the condition started failing (for a resolved one: how long it was)


@dataclass(frozen=True, slots=True)
class HealthState:
    checked_at: float = 0.0
    counters: Counters | None = None
    conditions: dict[Condition, ConditionState] = field(default_factory=dict, hash=False)
    # (channel id, message as JSON) not delivered yet, oldest first
    pending: tuple[tuple[int, str], ...] = ()

    def failing(self) -> dict[Condition, ConditionState]:
        return {c: s for c, s in self.conditions.items() if s.failing}


def transitions(
    previous: dict[Condition, ConditionState], failing: dict[Condition, str], now: float
) -> tuple[list[Transition], dict[Condition, ConditionState]]:
    """The changes since the previous check and every condition's new state."""
    changes: list[Transition] = []
    states: dict[Condition, ConditionState] = {}
    for cond in Condition:
        before = previous.get(cond)
        was = before is not None and before.failing
        if cond in failing:
            since = before.since if was and before is not None else now
            states[cond] = ConditionState(True, since, failing[cond])
            if not was:
                changes.append(Transition(cond, True, failing[cond], now))
        else:
            since = now if was or before is None else before.since
            states[cond] = ConditionState(False, since)
            if was and before is not None:
                changes.append(Transition(cond, False, before.detail, before.since))
    return changes, states


def _to_json(state: HealthState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "checked_at": state.checked_at,
        "counters": asdict(state.counters) if state.counters is not None else None,
        "conditions": {c.value: asdict(s) for c, s in state.conditions.items()},
        "pending": [list(p) for p in state.pending[-MAX_PENDING:]],
    }


def _from_json(data: Any) -> HealthState:
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError("not a version 1 health state")
    counters = Counters(**data["counters"]) if data.get("counters") else None
    conditions = {
        Condition(name): ConditionState(bool(s["failing"]), float(s["since"]), str(s["detail"]))
        for name, s in dict(data.get("conditions") or {}).items()
    }
    pending = tuple((int(cid), str(text)) for cid, text in data.get("pending") or [])
    return HealthState(float(data.get("checked_at") or 0.0), counters, conditions, pending)


def load_state(path: Path) -> HealthState:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return HealthState()
    except OSError as err:
        log.error("health state %s unreadable (%s): starting afresh", path, err)
        return HealthState()
    try:
        return _from_json(json.loads(text))
    except (ValueError, TypeError, KeyError) as err:
        log.error("health state %s malformed (%s): starting afresh", path, err)
        return HealthState()


def save_state(path: Path, state: HealthState) -> None:
    """Write `state` to `path` atomically (OSError when the directory is not writable)."""
    gid = shared_gid()
    make_dir(path.parent, gid)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    create_file(tmp, gid, json.dumps(_to_json(state), sort_keys=True).encode())
    os.replace(tmp, path)
