"""Where a report's inputs come from, for the CLI, the timer and the UI (docs/reports.md).

`ReportSources.from_config(config)` names the event store (`events.sqlite`), the policy store
(`policy.database`), the rules (`rules`, with an installed rule pack in force in the bundled
pack's place) and the control socket (`control.socket`); `make_report(sources, period, top)`
opens each, builds the report and closes them. Guarantees: the event store is opened read-only
(a SQLite `mode=ro` URI: a report never alters evidence), and a missing one gives a report with
zero counts and a note, not an error; an unreachable gateway gives a report without live health
figures (status None), never an error; a bad policy database or rule file is a VpatchError
naming it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.config import GatewayConfig
from gateway.control.server import ControlError, control_request
from gateway.health.history import history_path, period_health
from gateway.match.rules import RuleSet, load_rules
from gateway.policy.store import Store
from gateway.reports.period import Period, ReportError
from gateway.reports.summary import DEFAULT_TOP, Report, build_report
from gateway.rulepack import effective_rule_paths

__all__ = ["ReportSources", "events_readonly", "live_status", "make_report"]

STATUS_TIMEOUT_S: Final = 2.0
BUSY_TIMEOUT_MS: Final = 5000


@dataclass(frozen=True, slots=True)
class ReportSources:
    events: Path | None
    policy: Path
    rule_paths: tuple[Path, ...]
    control_socket: Path | None
    health_history: Path | None = None  # the health check's samples (gateway/health/history.py)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ReportSources:
        paths = effective_rule_paths(list(config.rules), config.rule_pack.dir)
        return cls(config.events.sqlite, config.policy.database, tuple(paths),
                   config.control.socket, history_path(config.health.state))  # fmt: skip


def events_readonly(path: Path | None) -> sqlite3.Connection | None:
    """The event store opened read-only, or None when there is none."""
    if path is None or not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT 1 FROM events LIMIT 1")
    except sqlite3.Error as err:
        raise ReportError(f"events.sqlite {path}: cannot read the event store: {err}") from err
    return conn


def live_status(socket: Path | None) -> dict[str, Any] | None:
    """The running gateway's `status`, or None when it does not answer."""
    if socket is None:
        return None
    try:
        status = control_request(socket, "status", timeout=STATUS_TIMEOUT_S)
    except ControlError:
        return None
    return status if isinstance(status, dict) else None


def make_report(
    sources: ReportSources, period: Period, top: int = DEFAULT_TOP, rules: RuleSet | None = None
) -> Report:
    """The report of `period` from `sources` (`rules`: an already loaded rule set)."""
    ruleset = rules if rules is not None else load_rules(sources.rule_paths)
    events = events_readonly(sources.events)
    history = period_health(
        sources.health_history, period.start.timestamp(), period.end.timestamp()
    )
    try:
        with Store(sources.policy) as store:
            return build_report(events, store, ruleset, period,
                                live_status(sources.control_socket), top,
                                history=history)  # fmt: skip
    finally:
        if events is not None:
            events.close()
