"""gateway/metrics.py: the endpoint served by a real HTTP server thread on loopback, its text
parsed with prometheus_client's parser; every metric comes from the status it reads at the
scrape (and the health state), names as in the docs' table; an unreadable status gives
`vpatch_status_ok 0`; a port in use leaves the gateway running without the endpoint."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.health.checks import Condition
from gateway.health.state import ConditionState, HealthState, save_state
from gateway.metrics import METRICS, MetricsServer, ReloadTimes
from tests.alerts.conftest import free_port

STATUS: dict[str, Any] = {
    "uptime": 12.5, "rules_loaded": 40, "uninspected_packets": 7, "uninspected_bytes": 700,
    "limits": {"flow_table": 2},
    "queues": {"0": {"packets": 10, "bytes": 1000, "accepted": 8, "dropped": 1, "reset": 1,
                     "errors": 0, "bypassed": 3, "queue_drops": 5, "restarts": 1, "alive": True,
                     "flows_active": 4},
               "1": {"packets": 2, "bytes": 100, "accepted": 2, "dropped": 0, "reset": 0,
                     "errors": 0, "bypassed": 0, "queue_drops": None, "restarts": 0,
                     "alive": False, "flows_active": 0}},
    "rule_hits": {"9010020": {"blocked": 3, "alerted": 0}, "9001001": {"blocked": 0,
                                                                      "alerted": 2}},
    "event_store": {"written": 5, "aggregated": 1, "dropped": 0, "lost": 0, "backlog": 9,
                    "failing": 0},
    "alerts": {"sent": 4, "suppressed": 2, "failures": 1, "dropped": 0, "queued": 1,
               "channels": 2, "failing": 1},
}  # fmt: skip


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_every_figure_from_the_status_at_each_scrape(tmp_path: Path) -> None:
    health = tmp_path / "health.json"
    down = ConditionState(True, 1.0, "no socket")
    save_state(health, HealthState(123.0, None, {Condition.GATEWAY_UNREACHABLE: down}))
    reloads = ReloadTimes()
    reloads.record("rules", 0.5)
    reloads.record("rules", 0.25)
    status = dict(STATUS, reloads=reloads.as_dict())
    server = MetricsServer(lambda: status, "127.0.0.1", free_port(), health)
    assert server.start()
    try:
        got = scrape(server.port)
        status["queues"] = {"0": {**STATUS["queues"]["0"], "packets": 11}}
        again = scrape(server.port)
    finally:
        server.stop()
    assert got[("vpatch_status_ok", ())] == 1
    assert got[("vpatch_packets_inspected_total", (("queue", "0"),))] == 10
    assert again[("vpatch_packets_inspected_total", (("queue", "0"),))] == 11
    assert got[("vpatch_bytes_inspected_total", (("queue", "1"),))] == 100
    assert got[("vpatch_verdicts_total", (("action", "reset"), ("queue", "0")))] == 1
    assert got[("vpatch_rule_drops_total", (("sid", "9010020"),))] == 3
    assert got[("vpatch_rule_alerts_total", (("sid", "9001001"),))] == 2
    assert got[("vpatch_queue_drops_total", (("queue", "0"),))] == 5
    assert ("vpatch_queue_drops_total", (("queue", "1"),)) not in got  # not known: absent
    assert got[("vpatch_uninspected_packets_total", ())] == 7
    assert got[("vpatch_worker_restarts_total", (("queue", "0"),))] == 1
    assert got[("vpatch_worker_up", (("queue", "1"),))] == 0
    assert got[("vpatch_reload_duration_seconds_count", (("kind", "rules"),))] == 2
    assert got[("vpatch_reload_duration_seconds_sum", (("kind", "rules"),))] == 0.75
    assert got[("vpatch_reload_last_duration_seconds", (("kind", "rules"),))] == 0.25
    assert got[("vpatch_flows_active", (("queue", "0"),))] == 4
    assert got[("vpatch_limits_reached_total", (("limit", "flow_table"),))] == 2
    assert got[("vpatch_event_backlog", ())] == 9
    assert got[("vpatch_alert_channels", (("state", "failing"),))] == 1
    assert got[("vpatch_alert_messages_total", (("outcome", "suppressed"),))] == 2
    assert got[("vpatch_health_condition", (("condition", "gateway_unreachable"),))] == 1
    assert got[("vpatch_health_condition", (("condition", "disk_low"),))] == 0
    assert got[("vpatch_health_last_check_timestamp_seconds", ())] == 123
    documented = {name for name, *_ in METRICS}
    for name, _labels in got:
        base = name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
        assert base in documented, name


def test_unreadable_status_and_port_in_use() -> None:
    def broken() -> dict[str, Any]:
        raise OSError("no /proc")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = MetricsServer(broken, "127.0.0.1", taken.getsockname()[1])
        assert not busy.start()
        assert "127.0.0.1" in busy.error and not busy.describe()["serving"]
    server = MetricsServer(broken, "127.0.0.1", free_port())
    assert server.start()
    try:
        assert scrape(server.port) == {("vpatch_status_ok", ()): 0}
    finally:
        server.stop()
    assert not MetricsServer(broken, "127.0.0.1", 0).start()  # port 0: no endpoint


def test_the_docs_list_every_metric() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    for name, kind, _labels, _help in METRICS:
        assert f"`{name}{'_total' if kind == 'counter' else ''}`" in docs, name
