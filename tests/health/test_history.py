"""The health check's history (gateway/health/history.py) and a report's period health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.config import load_config
from gateway.control.server import ControlServer
from gateway.health.check import run_check
from gateway.health.checks import Counters
from gateway.health.history import history_path, period_health, record
from gateway.reports.period import Period, PeriodKind
from gateway.reports.render import to_csv
from gateway.reports.sources import ReportSources, make_report
from tests.health.test_check import config
from tests.health.test_checks import status

T0 = 1_700_000_000.0


def test_a_period_sums_each_instance_growth_and_its_own_start(tmp_path: Path) -> None:
    db = tmp_path / "h.history.db"
    a = T0 - 100  # instance A started before the period; one sample precedes it
    record(db, T0 - 30, Counters(a, restarts=0, queue_drops=10, uninspected=0))
    record(db, T0 + 30, Counters(a, restarts=1, queue_drops=20, uninspected=0))
    record(db, T0 + 90, Counters(a + 0.4, restarts=1, queue_drops=25, uninspected=5))
    record(db, T0 + 150, None)  # killed: two checks found nothing
    record(db, T0 + 210, None)
    b = T0 + 230  # instance B started in the period, counting from 0
    record(db, T0 + 270, Counters(b, restarts=0, queue_drops=3, uninspected=1))
    record(db, T0 + 330, Counters(b, restarts=2, queue_drops=3, uninspected=4))
    record(db, T0 + 700, Counters(b, restarts=9, queue_drops=99, uninspected=99))  # after it
    got = period_health(db, T0, T0 + 600)
    assert got == {
        "checks": 6, "unreachable_checks": 2, "first_check": T0 + 30, "last_check": T0 + 330,
        "gateway_starts": 1, "worker_restarts": 1 + 2, "queue_drops": 15 + 3,
        "uninspected_packets": 5 + 4, "complete": True,
    }  # fmt: skip
    # no sample before the period: what A counted before T0 + 30 is unknown
    fresh = tmp_path / "fresh.history.db"
    record(fresh, T0 + 30, Counters(a, restarts=1, queue_drops=20, uninspected=0))
    record(fresh, T0 + 90, Counters(a, restarts=1, queue_drops=25, uninspected=5))
    later = period_health(fresh, T0, T0 + 600)
    assert later is not None and later["complete"] is False
    assert later["queue_drops"] == 5 and later["gateway_starts"] == 0
    assert period_health(tmp_path / "none.db", T0, T0 + 1) is None


def test_the_check_records_and_the_report_shows_the_period(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path))
    now = datetime.now(UTC)
    answers = iter([status(uptime=50, drops=4), status(uptime=110, restarts=1, drops=9)])
    server = ControlServer(cfg.control.socket, {"status": lambda _r: next(answers)})
    server.start()
    try:
        run_check(cfg, now=now.timestamp() - 120)
        run_check(cfg, now=now.timestamp() - 60)
    finally:
        server.stop()
    run_check(cfg, now=now.timestamp() - 1)  # the gateway is gone
    period = Period(now - timedelta(hours=1), now, PeriodKind.CUSTOM)
    sources = ReportSources.from_config(cfg)
    assert sources.health_history == history_path(cfg.health.state)
    health = make_report(sources, period).health
    assert health["period"] == {
        **health["period"], "checks": 3, "unreachable_checks": 1, "gateway_starts": 1,
        "worker_restarts": 1, "queue_drops": 9, "uninspected_packets": 0, "complete": True,
    }  # fmt: skip
    assert health["not_kept"] == []
    assert "period_queue_drops" in to_csv(make_report(sources, period))
