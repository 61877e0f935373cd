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
from gateway.lifecycle.monitor import COUNTERS_INTERVAL_S, SID_NEW_PORT
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


def rows(d: Lab, sids: tuple[int, ...], after: int = 0) -> list[sqlite3.Row]:
    """The events of `sids` stored after event id `after`."""
    if not d.events_db.exists():
        return []
    conn = sqlite3.connect(str(d.events_db))
    conn.row_factory = sqlite3.Row
    try:
        marks = ",".join("?" * len(sids))
        return conn.execute(
            f"SELECT * FROM events WHERE signature_id IN ({marks}) AND id > ? ORDER BY id",
            (*sids, after),
        ).fetchall()
    finally:
        conn.close()


def last_id(d: Lab) -> int:
    """The newest event's id (a deleted firewall rule's id is given again to the next rule:
    a test counts only the events stored after it started)."""
    if not d.events_db.exists():
        return 0
    conn = sqlite3.connect(str(d.events_db))
    try:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def settled(d: Lab, sids: tuple[int, ...], key: str, after: int = 0) -> list[sqlite3.Row]:
    """The events of `sids` stored after event id `after`, once their counts sum to the
    kernel's logged packets of `key` (the kernel's counters restart with each chain rewrite)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        found, logged = rows(d, sids, after), kernel(d, key).logged
        if logged and sum(r["count"] for r in found) == logged:
            return found
        if time.monotonic() > deadline:
            status = control_request(d.gw.socket, "status", timeout=30)["drop_log"]
            raise AssertionError((logged, [dict(r) for r in found], status))
        time.sleep(0.2)


def eve_lines(d: Lab) -> set[str]:
    return set(d.gw.eve.read_text().splitlines()) if d.gw.eve.exists() else set()


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


def check_drop_eve(d: Lab, found: list[sqlite3.Row], reason: str, rule_id: int) -> None:
    """The stored records are in EVE JSON, as drop events of `reason` and `rule_id`."""
    lines = eve_lines(d)
    for row in found:
        assert row["eve"] in lines
        e = json.loads(row["eve"])
        assert e["event_type"] == "drop" and e["drop"]["reason"] == reason
        fw = e["vpatch"]["firewall"]
        assert fw["mode"] == reason and fw["rule_id"] == rule_id
        assert fw["first_seen"] <= fw["last_seen"] == e["timestamp"]
        assert e["vpatch"]["count"] == row["count"]


def test_deny_reject_and_log_rules_give_events_with_counts(drops_lab: Lab, ui: FlaskClient) -> None:
    d, start = drops_lab, last_id(drops_lab)
    deny = add_fw(d, protocol="tcp", port_from="8090", action="deny", comment="no 8090")
    reject = add_fw(d, protocol="tcp", port_from="8091", action="reject")
    log = add_fw(d, protocol="tcp", port_from="80", action="log", comment="web seen")
    try:
        assert not connects(d.lab, 8090) and not connects(d.lab, 8091)
        assert http_ok(d.lab), "a log rule lets the connection pass"
        denied = settled(d, (FW_SID_BASE + deny,), f"fw:{deny}", start)
        assert sum(r["count"] for r in denied) >= 2  # the SYN and its retransmission
        assert {r["event_type"] for r in denied} == {"drop"} and denied[0]["dest_port"] == 8090
        assert denied[0]["signature"] == f"firewall rule {deny} deny: no 8090"
        assert kernel(d, f"fw:{deny}").refused >= kernel(d, f"fw:{deny}").logged
        rejected = settled(d, (FW_SID_BASE + reject,), f"fw:{reject}", start)
        assert rejected and rejected[0]["rule_action"] == "reset"
        logged = settled(d, (FW_SID_BASE + log,), f"fw:{log}", start)
        assert {(r["event_type"], r["action"]) for r in logged} == {("flow", "allowed")}
        check_drop_eve(d, denied, "firewall", deny)
        page = ui.get("/events/?kind=firewall").get_data(as_text=True)
        assert f"firewall rule {deny} deny: no 8090" in page and "web seen" in page
        by_sig: dict[int, int] = {}
        for r in (r for r in ui_csv(ui, "drop") if int(r["id"]) > start):
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
    d, host, start = drops_lab, drops_lab.lab.server_addr, last_id(drops_lab)
    try:
        hosts(d.gw, "set", host, "--mode", "setup", "--exception",
              f"{d.lab.client_addr}/32:tcp/3389")  # fmt: skip
        assert not http_ok(d.lab)
        setup = settled(d, (SID_SETUP_IN,), "setup:in", start)
        assert setup[0]["dest_port"] == 80 and setup[0]["event_type"] == "drop"
        check_drop_eve(d, setup, "setup", 0)
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
        start = last_id(d)  # the lockdown chain's counters start now
        time.sleep(1.5)  # the monitor re-reads the host modes every second
        assert not connects(d.lab, 8082)
        locked = settled(d, (SID_NEW_PORT,), "lockdown", start)
        assert sum(r["count"] for r in locked) >= 2  # the SYN and its retransmission
        check_drop_eve(d, locked, "lockdown", 0)
        page = ui.get("/events/?kind=lockdown").get_data(as_text=True)
        assert f"{d.lab.client_addr} -&gt; {host}:8082/tcp" in page
    finally:
        hosts(d.gw, "set", host, "--mode", "normal", "--clear-exceptions")


def test_flood_against_a_deny_rule_gives_a_bounded_number_of_rows(
    drops_lab: Lab, ui: FlaskClient
) -> None:
    d, start = drops_lab, last_id(drops_lab)
    rid = add_fw(d, protocol="udp", port_from=str(FLOOD_PORT), action="deny")
    try:
        began = time.monotonic()
        out = netns_exec(
            d.lab.client_ns,
            [sys.executable, "-c", FLOOD, d.lab.server_addr, str(FLOOD_PORT), str(FLOOD_PACKETS)],
            timeout=60,
        )
        sent_for = time.monotonic() - began
        assert float(out.stdout) < 30
        found = settled(d, (FW_SID_BASE + rid,), f"fw:{rid}", start)
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
        check_drop_eve(d, found, "firewall", rid)
        time.sleep(COUNTERS_INTERVAL_S)  # past any cached reading
        status = control_request(d.gw.socket, "status", timeout=30)["drop_log"]
        assert status["kernel"][f"fw:{rid}"] == {
            "logged": counted.logged, "refused": counted.refused,
            "suppressed": counted.suppressed,
        }  # fmt: skip
        monitor = status["monitor"]
        assert monitor["malformed_packets"] == monitor["malformed_messages"] == 0
        assert monitor["overruns"] == 0 and status["sink"]["lost"] == 0
        csv_rows = [r for r in ui_csv(ui, "firewall") if int(r["id"]) > start]
        csv_rows = [r for r in csv_rows if int(r["signature_id"]) == FW_SID_BASE + rid]
        assert len(csv_rows) == len(found)
        assert sum(int(r["count"]) for r in csv_rows) == counted.logged
    finally:
        remove_fw(d, rid)
