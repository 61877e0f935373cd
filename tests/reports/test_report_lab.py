"""A report over real traffic: a real `vpatch run` in the namespace lab protects the lab server;
the test exploit is sent with curl from the client namespace, first with the rule in prevent
(reset: blocked), then, after an assignment to detect-only and a live reload, in detect (it
passes: detected). `vpatch report` over those minutes (JSON, CSV and HTML, from the gateway's
own configuration, with its control socket answering) has the event store's counts, checked
with SQL (SUM(count): the gateway's sink aggregates repeated events into one record)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.control.server import notify_gateway
from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.testing.inline import REPO, in_ns, package_env, running_gateway
from tests.reports.test_report import html_row

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

MARKER = "VPATCH-TEST-EXPLOIT-7f3a"
BLOCKED, DETECTED = 5, 3


def exploit(lab: Any) -> int:
    """curl's exit status for the test exploit to the lab server (0: answered, 56: reset)."""
    argv = ["curl", "-s", "-m", "3", "-o", "/dev/null", "-H", f"X-Test: {MARKER}",
            f"http://{lab.server_addr}/"]  # fmt: skip
    return in_ns(lab.client_ns, argv, timeout=10).returncode


def stored(events: Path, start: str) -> dict[str, int]:
    if not events.exists():
        return {}
    with sqlite3.connect(events) as conn:
        query = ("SELECT action, SUM(count) FROM events WHERE timestamp >= ? AND "
                 "event_type = 'alert' GROUP BY action")  # fmt: skip
        rows = conn.execute(query, (start,)).fetchall()
    return {str(a): int(n) for a, n in rows}


def report(config: Path, start: str, fmt: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "-c", str(config), "--from", start,
         "--format", fmt],
        capture_output=True, text=True, env=package_env(), timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_report_over_real_lab_traffic(lab: Any, tmp_path: Path) -> None:
    db, sock, events = tmp_path / "vpatch.db", tmp_path / "control.sock", tmp_path / "events.db"
    with Store(db) as store:
        host = Hosts(store).save_host(lab.server_addr, "test", name="lab server")
    cfg: dict[str, Any] = {
        "protected_hosts": [lab.server_addr],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml")],
        "queues": {"first": 0, "count": 1},
        "policy": {"database": str(db)},
        "events": {"sqlite": str(events), "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(sock)},
    }
    start = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds")
    with running_gateway(lab, tmp_path, cfg) as gw:
        assert [exploit(lab) for _ in range(BLOCKED)] == [56] * BLOCKED  # reset each time
        with Store(db) as store:
            Assignments(store).set_assignment(9000100, "host", host.id, "detect", "test")
        reloaded = notify_gateway(sock)
        assert "failed" not in reloaded and "no gateway" not in reloaded, reloaded
        assert [exploit(lab) for _ in range(DETECTED)] == [0] * DETECTED  # detect-only: passes
        deadline = time.monotonic() + 15  # aggregation windows close within events' 1 s
        while stored(events, start) != {"blocked": BLOCKED, "allowed": DETECTED}:
            assert time.monotonic() < deadline, stored(events, start)
            time.sleep(0.2)
        data = json.loads(report(gw.config, start, "json"))
        rows = list(csv.DictReader(io.StringIO(report(gw.config, start, "csv"))))
        html = report(gw.config, start, "html")
    with sqlite3.connect(events) as conn:
        records = conn.execute("SELECT COUNT(*) FROM events WHERE timestamp >= ?",
                               (start,)).fetchone()[0]  # fmt: skip
    assert (data["totals"]["blocked"], data["totals"]["detected"]) == (BLOCKED, DETECTED)
    assert data["totals"]["records"] == records  # fewer records than events when aggregated
    for section in ("by_host", "by_source", "by_cve", "top_rules"):
        (only,) = data[section]
        assert (only["blocked"], only["detected"]) == (BLOCKED, DETECTED), section
    assert data["by_host"][0]["key"] == lab.server_addr
    assert data["by_source"][0]["key"] == lab.client_addr
    assert data["by_cve"][0]["key"] == "CVE-0000-0001"
    assert data["health"]["reachable"] and data["health"]["live"]["workers_alive"] == 1
    hosts = {r["key"]: (int(r["blocked"]), int(r["detected"])) for r in rows
             if r["section"] == "host"}  # fmt: skip
    assert hosts == {lab.server_addr: (BLOCKED, DETECTED)}
    assert html_row(html, lab.server_addr) == (BLOCKED, DETECTED, BLOCKED + DETECTED)
