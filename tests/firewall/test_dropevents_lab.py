"""Firewall and host-mode events end to end, in the lab: `vpatch run` with a real event store;
real connections hit a deny, a reject and a log rule, a setup-protected host and a locked-down
host; each gives drop/flow events whose counts equal what the kernel logged (its rule
counters), in the event store, in EVE JSON and in the UI's event list and CSV export (Flask
test client on the gateway's own databases). A 100,000-packet UDP flood against a deny rule
gives a number of rows bounded by the aggregation window, and the kernel's rate limit keeps
what reaches the reader bounded too."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.control.server import control_request
from gateway.firewall.apply import probe_backend
from gateway.firewall.dropcount import DropCount, read_drop_counts
from gateway.firewall.dropevents import FW_SID_BASE, SID_SETUP_IN
from gateway.firewall.droplog import LOG_BURST, LOG_RATE
from gateway.firewall.policy import add_rule, delete_rule
from gateway.lab import LabSpec, netns_exec
from gateway.lifecycle.monitor import SID_NEW_PORT
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.testing.inline import running_gateway
from tests.lifecycle.test_modes_lab import connects, http_ok, listeners
from tests.lifecycle.test_run_lab import Gateway, hosts
from tests.webui.conftest import ADMIN_PW, REPO, Auth
from webui import create_app

pytestmark = pytest.mark.netns
__all__ = ["listeners"]  # the fixture, imported for the tests below
PREFIX = "VPATCH"
WINDOW = 1.0  # events.aggregate_window of the gateway under test
FLOOD_PACKETS = 100_000
FLOOD_PORT = 9999
SETTLE_TIMEOUT = 15.0
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dest, n = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3])
start = time.monotonic()
for _ in range(n):
    s.sendto(b"flood", dest)
print(time.monotonic() - start)
"""


@dataclass(frozen=True)
class Lab:
    lab: LabSpec
    gw: Gateway
    events_db: Path
    policy_db: Path


@pytest.fixture(scope="module")
def drops_lab(lab: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("droplab")
    cfg = {
        "protected_hosts": [lab.server_addr],
        "queues": {"first": 0, "count": 1},
        "events": {"sqlite": str(tmp / "events.db"), "jsonl": str(tmp / "eve.json"),
                   "aggregate_window": WINDOW},
        "control": {"socket": str(tmp / "control.sock")},
        "policy": {"database": str(tmp / "vpatch.db")},
    }  # fmt: skip
    with running_gateway(lab, tmp, cfg) as gw:
        yield Lab(lab, Gateway(gw.config, gw.control, tmp / "eve.json", gw.log),
                  tmp / "events.db", tmp / "vpatch.db")  # fmt: skip


def add_fw(d: Lab, **rule: Any) -> int:
    with Store(d.policy_db) as store:
        rid = add_rule(store, {"scope": "global", "direction": "in", **rule}, "test").id
    control_request(d.gw.socket, "reload", timeout=30)
    return rid


def remove_fw(d: Lab, rid: int) -> None:
    with Store(d.policy_db) as store:
        delete_rule(store, rid, "test")
    control_request(d.gw.socket, "reload", timeout=30)


def kernel(d: Lab, key: str) -> DropCount:
    counts = read_drop_counts(probe_backend(netns=d.lab.gw_ns), PREFIX, d.lab.gw_ns)
    assert counts.available
    return counts.counts.get(key, DropCount())


def rows(d: Lab, sids: tuple[int, ...]) -> list[sqlite3.Row]:
    conn = sqlite3.connect(str(d.events_db))
    conn.row_factory = sqlite3.Row
    try:
        marks = ",".join("?" * len(sids))
        return conn.execute(
            f"SELECT * FROM events WHERE signature_id IN ({marks}) ORDER BY id", sids
        ).fetchall()
    finally:
        conn.close()


def settled(d: Lab, sids: tuple[int, ...], key: str) -> list[sqlite3.Row]:
    """The events of `sids` once their counts sum to the kernel's logged packets of `key`."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        found, logged = rows(d, sids), kernel(d, key).logged
        if logged and sum(r["count"] for r in found) == logged:
            return found
        assert time.monotonic() < deadline, (logged, [dict(r) for r in found])
        time.sleep(0.2)


def eve_records(d: Lab, sid: int) -> list[dict[str, Any]]:
    lines = d.gw.eve.read_text().splitlines() if d.gw.eve.exists() else []
    return [e for e in map(json.loads, lines) if e["alert"]["signature_id"] == sid]


@pytest.fixture(scope="module")
def ui(drops_lab: Lab) -> FlaskClient:
    """The admin UI on the gateway's own policy database and event store."""
    app = create_app({
        "TESTING": True, "POLICY_DB": str(drops_lab.policy_db),
        "EVENTS_DB": str(drops_lab.events_db), "CONTROL_SOCKET": str(drops_lab.gw.socket),
        "RULE_PATHS": [str(REPO / "rules")], "SESSION_COOKIE_SECURE": False,
    })  # fmt: skip
    with Store(drops_lab.policy_db) as store:
        Accounts(store).create_user("admin", ADMIN_PW, "admin", "test")
    client = app.test_client()
    Auth(client).login()
    return client


def ui_csv(ui: FlaskClient, kind: str) -> list[dict[str, str]]:
    text = ui.get(f"/events/export.csv?kind={kind}").get_data(as_text=True)
    return list(csv.DictReader(io.StringIO(text)))


def check_drop_eve(d: Lab, sid: int, reason: str, rule_id: int, total: int) -> None:
    records = eve_records(d, sid)
    assert sum(e["vpatch"]["count"] for e in records) == total
    for e in records:
        assert e["event_type"] == "drop" and e["drop"]["reason"] == reason
        fw = e["vpatch"]["firewall"]
        assert fw["mode"] == reason and fw["rule_id"] == rule_id
        assert fw["first_seen"] <= fw["last_seen"] == e["timestamp"]


def test_deny_reject_and_log_rules_give_events_with_counts(drops_lab: Lab, ui: FlaskClient) -> None:
    d = drops_lab
    deny = add_fw(d, protocol="tcp", port_from="8090", action="deny", comment="no 8090")
    reject = add_fw(d, protocol="tcp", port_from="8091", action="reject")
    log = add_fw(d, protocol="tcp", port_from="80", action="log", comment="web seen")
    try:
        assert not connects(d.lab, 8090) and not connects(d.lab, 8091)
        assert http_ok(d.lab), "a log rule lets the connection pass"
        denied = settled(d, (FW_SID_BASE + deny,), f"fw:{deny}")
        assert sum(r["count"] for r in denied) >= 2  # the SYN and its retransmission
        assert {r["event_type"] for r in denied} == {"drop"} and denied[0]["dest_port"] == 8090
        assert denied[0]["signature"] == f"firewall rule {deny} deny: no 8090"
        assert kernel(d, f"fw:{deny}").refused >= kernel(d, f"fw:{deny}").logged
        rejected = settled(d, (FW_SID_BASE + reject,), f"fw:{reject}")
        assert rejected and rejected[0]["rule_action"] == "reset"
        logged = settled(d, (FW_SID_BASE + log,), f"fw:{log}")
        assert {(r["event_type"], r["action"]) for r in logged} == {("flow", "allowed")}
        check_drop_eve(d, FW_SID_BASE + deny, "firewall", deny, sum(r["count"] for r in denied))
        page = ui.get("/events/?kind=firewall").get_data(as_text=True)
        assert f"firewall rule {deny} deny: no 8090" in page and "web seen" in page
        by_sig = {}
        for r in ui_csv(ui, "drop"):
            by_sig[int(r["signature_id"])] = by_sig.get(int(r["signature_id"]), 0) + int(r["count"])
        assert by_sig[FW_SID_BASE + deny] == sum(r["count"] for r in denied)
        assert FW_SID_BASE + log not in by_sig  # a flow event, not a drop
        assert any(r["event_type"] == "flow" for r in ui_csv(ui, "flow"))
    finally:
        for rid in (deny, reject, log):
            remove_fw(d, rid)


def test_setup_protection_and_lockdown_give_drop_events(
    drops_lab: Lab, ui: FlaskClient, listeners: None
) -> None:
    d, host = drops_lab, drops_lab.lab.server_addr
    try:
        hosts(d.gw, "set", host, "--mode", "setup", "--exception",
              f"{d.lab.client_addr}/32:tcp/3389")  # fmt: skip
        assert not http_ok(d.lab)
        setup = settled(d, (SID_SETUP_IN,), "setup:in")
        assert setup[0]["dest_port"] == 80 and setup[0]["event_type"] == "drop"
        check_drop_eve(d, SID_SETUP_IN, "setup", 0, sum(r["count"] for r in setup))
        assert "setup protection: inbound connection refused" in ui.get(
            "/events/?kind=setup").get_data(as_text=True)  # fmt: skip

        hosts(d.gw, "set", host, "--mode", "learning", "--clear-exceptions")
        time.sleep(1.5)  # the monitor re-reads the host modes every second
        assert http_ok(d.lab) and connects(d.lab, 3389)
        deadline = time.monotonic() + 10
        while f"{d.lab.client_addr} -> {host}:80/tcp" not in hosts(d.gw, "learned", host):
            assert time.monotonic() < deadline, "not learned"
            time.sleep(0.2)
        hosts(d.gw, "set", host, "--mode", "lockdown")
        time.sleep(1.5)  # the monitor re-reads the host modes every second
        assert not connects(d.lab, 8082)
        locked = settled(d, (SID_NEW_PORT,), "lockdown")
        assert sum(r["count"] for r in locked) >= 2  # the SYN and its retransmission
        check_drop_eve(d, SID_NEW_PORT, "lockdown", 0, sum(r["count"] for r in locked))
        page = ui.get("/events/?kind=lockdown").get_data(as_text=True)
        assert f"{d.lab.client_addr} -&gt; {host}:8082/tcp" in page
    finally:
        hosts(d.gw, "set", host, "--mode", "normal", "--clear-exceptions")


def test_flood_against_a_deny_rule_gives_a_bounded_number_of_rows(
    drops_lab: Lab, ui: FlaskClient
) -> None:
    d = drops_lab
    rid = add_fw(d, protocol="udp", port_from=str(FLOOD_PORT), action="deny")
    try:
        start = time.monotonic()
        out = netns_exec(
            d.lab.client_ns,
            [sys.executable, "-c", FLOOD, d.lab.server_addr, str(FLOOD_PORT), str(FLOOD_PACKETS)],
            timeout=60,
        )
        sent_for = time.monotonic() - start  # fmt: skip
        assert float(out.stdout) < 30
        found = settled(d, (FW_SID_BASE + rid,), f"fw:{rid}")
        counted = kernel(d, f"fw:{rid}")
        # the kernel saw (nearly) the whole flood and logged only what its limit lets through
        assert counted.refused >= FLOOD_PACKETS * 0.9, counted
        assert counted.logged <= LOG_BURST + LOG_RATE * (sent_for + 1)
        assert counted.suppressed == counted.refused - counted.logged
        # one key (one source port): at most the first event and one summary per window
        bound = 2 * (math.ceil((sent_for + 1) / WINDOW) + 1)
        print(f"flood: {sent_for:.1f} s, {len(found)} rows (bound {bound}), {counted}")
        assert 2 <= len(found) <= bound, (len(found), bound)
        assert sum(r["count"] for r in found) == counted.logged
        assert sum(e["vpatch"]["count"] for e in eve_records(d, FW_SID_BASE + rid)) == (
            counted.logged
        )
        csv_rows = [r for r in ui_csv(ui, "firewall")
                    if int(r["signature_id"]) == FW_SID_BASE + rid]  # fmt: skip
        assert len(csv_rows) == len(found)
        assert sum(int(r["count"]) for r in csv_rows) == counted.logged
    finally:
        remove_fw(d, rid)
