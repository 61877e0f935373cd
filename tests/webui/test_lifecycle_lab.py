"""Host lifecycle from the UI against a real `vpatch run` in the lab (gateway.testing.inline
running_gateway): "Allow this" on a lockdown event (the gateway's own event store, read by the
UI) unblocks the tuple on the running gateway; a scan started from the UI (subprocess in the
client namespace, SCAN_NETNS) identifies the lab's nginx and Samba; the scheduled-scan loop
(`vpatch scan --scheduled -c CONFIG`, run in the client namespace) scans on a short interval,
records each run in the history, auto-applies for an auto-apply host and reloads the gateway."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lab import LabSpec
from gateway.lab.netns import stop_pids
from gateway.lifecycle.state import HostMode, LifecycleStore
from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.scan.jobs import GLOBAL, ScanJobs
from gateway.testing.inline import RunningGateway, package_env, running_gateway
from tests.lifecycle.test_modes_lab import connects, http_ok, listeners
from tests.webui.conftest import ADMIN_PW
from webui import create_app

pytestmark = pytest.mark.netns
__all__ = ["listeners"]  # a fixture the tests below use

SCAN_PORTS = "80,445,u53"
TEST_RULES = Path(__file__).resolve().parents[1] / "data" / "lifecycle"  # nginx/samba/bind


@pytest.fixture(scope="module")
def gateway(lab: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("lifecycle-lab")
    cfg = {
        "protected_hosts": [lab.server_addr],
        "queues": {"first": 0, "count": 1},
        "events": {"sqlite": str(tmp / "events.db"), "jsonl": str(tmp / "eve.json")},
        "control": {"socket": str(tmp / "control.sock")},
        "policy": {"database": str(tmp / "vpatch.db")},
    }
    with Store(tmp / "vpatch.db") as store:
        Accounts(store).create_user("admin", ADMIN_PW, "admin", "test")
        Hosts(store).save_host(lab.server_addr, "test")
    with running_gateway(lab, tmp, cfg) as gw:
        yield gw


def ui(gw: RunningGateway, lab: LabSpec, **extra: Any) -> Any:
    cfg = json.loads(json.dumps(__import__("yaml").safe_load(gw.config.read_text())))
    app = create_app({
        "TESTING": True, "POLICY_DB": cfg["policy"]["database"],
        "EVENTS_DB": cfg["events"]["sqlite"], "CONTROL_SOCKET": cfg["control"]["socket"],
        "SESSION_COOKIE_SECURE": False, "RELOAD_TIMEOUT": 10.0, **extra,
    })  # fmt: skip
    return app


def login(client: Any) -> str:
    import re

    page = client.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    client.post(
        "/auth/login", data={"username": "admin", "password": ADMIN_PW, "csrf_token": token}
    )
    page = client.get("/auth/tokens").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def db(gw: RunningGateway) -> Path:
    return gw.config.parent / "vpatch.db"


def host_id(gw: RunningGateway, lab: LabSpec) -> int:
    with Store(db(gw)) as store:
        h = Hosts(store).host_by_address(lab.server_addr)
        assert h is not None
        return h.id


def test_allow_this_from_the_ui_unblocks_on_the_running_gateway(
    lab: LabSpec, gateway: RunningGateway, listeners: None
) -> None:
    app = ui(gateway, lab)
    client = app.test_client()
    csrf = login(client)
    hid = host_id(gateway, lab)
    life = LifecycleStore(db(gateway))
    try:
        r = client.post(f"/hosts/{hid}/lifecycle", data={"mode": "learning", "csrf_token": csrf})
        assert r.status_code == 302
        assert http_ok(lab)
        deadline = time.monotonic() + 20
        while not any(t.port == 80 for t in life.host(lab.server_addr).learned):
            assert time.monotonic() < deadline, "HTTP not learned by the gateway's monitor"
            # the monitor reads the host modes once a second: a request made before it knew
            # of learning mode is not learned, the next one is
            assert http_ok(lab)
            time.sleep(0.2)
        r = client.post(f"/hosts/{hid}/lifecycle", data={"mode": "lockdown", "csrf_token": csrf})
        assert "gateway reloaded" in client.get(f"/hosts/{hid}").get_data(as_text=True)
        assert http_ok(lab)
        assert not connects(lab, 8082), "an unlearned port must be blocked in lockdown"
        events = Path(json.loads(json.dumps(app.config["EVENTS_DB"])))
        deadline = time.monotonic() + 10
        event_id = None
        while event_id is None:
            assert time.monotonic() < deadline, "no lockdown event in the gateway's store"
            time.sleep(0.2)
            if events.exists():
                with sqlite3.connect(f"file:{events}?mode=ro", uri=True) as conn:
                    row = conn.execute(
                        "SELECT id FROM events WHERE signature_id = 9100002 AND dest_port = 8082"
                    ).fetchone()
                event_id = None if row is None else int(row[0])
        page = client.get("/events/?rule=9100002").get_data(as_text=True)
        assert "Allow this" in page
        r = client.post(f"/hosts/allow-event/{event_id}", data={"csrf_token": csrf})
        assert r.status_code == 302
        assert "gateway reloaded" in client.get(f"/hosts/{hid}").get_data(as_text=True)
        assert connects(lab, 8082), "allowed from the UI: the tuple must pass now"
        assert not connects(lab, 3389), "other unlearned ports stay blocked"
    finally:
        life.update_host(lab.server_addr, mode=HostMode.NORMAL, learned=())
        client.post("/api/v1/reload")  # no token: refused; reload through the control socket:
        from gateway.control.server import control_request

        control_request(gateway.control, "reload", timeout=30)


def test_scan_from_the_ui_in_the_lab(lab: LabSpec, gateway: RunningGateway) -> None:
    app = ui(gateway, lab, SCAN_NETNS=lab.client_ns, SCAN_PORTS=SCAN_PORTS, SCAN_TIMEOUT=1.0)
    client = app.test_client()
    csrf = login(client)
    hid = host_id(gateway, lab)
    r = client.post(f"/hosts/{hid}/scan", data={"csrf_token": csrf},
                    headers={"Accept": "application/json"})  # fmt: skip
    assert r.status_code == 201, r.get_data(as_text=True)
    run_id = r.get_json()["id"]
    deadline = time.monotonic() + 60
    while (p := client.get(f"/hosts/{hid}/scans/{run_id}/progress").get_json())["status"] not in (
        "done", "failed"
    ):  # fmt: skip
        assert time.monotonic() < deadline, p
        time.sleep(0.2)
    assert p["status"] == "done", p
    report = client.get(f"/hosts/{hid}/scans/{run_id}").get_data(as_text=True)
    assert "nginx" in report and "samba" in report and "bind" in report
    assert "smb1" in report  # the evidence of the SMB1 probe


def test_scheduled_scans_by_the_loop(lab: LabSpec, gateway: RunningGateway) -> None:
    jobs = ScanJobs(db(gateway))
    life = LifecycleStore(db(gateway))
    life.update_host(lab.server_addr, auto_apply=True, assigned=())
    jobs.set_schedule(GLOBAL, 2.0, "test")
    before = gateway.status()["policy_version"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "gateway.cli", "scan",
         "--scheduled", "-c", str(gateway.config), "--ports", SCAN_PORTS, "--timeout", "1",
         "--rules", str(TEST_RULES)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=package_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(done := [r for r in jobs.runs(lab.server_addr) if r.trigger == "schedule"
                           and r.status == "done"]) < 2:  # fmt: skip
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, [r.as_dict() for r in jobs.runs(lab.server_addr)]
            time.sleep(0.3)
    finally:
        jobs.set_schedule(GLOBAL, None, "test")
        stop_pids([proc.pid])
        proc.wait(10)
        life.update_host(lab.server_addr, auto_apply=False, assigned=())
    first = done[-1]  # runs() is newest first
    assert first.applied and first.report is not None
    assert first.report.get("reload", {}).get("ok"), (
        first.report.get("reload"),
        first.report["recommendations"],
    )
    assert gateway.status()["policy_version"] > before, "the gateway was reloaded"
    assigned_rules = {int(r["rule_id"]) for r in first.report["recommendations"]
                      if r["action"] == "assign"}  # fmt: skip
    assert assigned_rules, first.report["recommendations"]
    history = life.history(lab.server_addr)
    scans = [e for e in history if e.action == "scan" and "schedule scan by scheduler" in e.reason]
    assert len(scans) >= 2 and "auto-apply" in scans[0].reason
    assert any(e.action == "assign" and "auto-apply" in e.reason for e in history)
