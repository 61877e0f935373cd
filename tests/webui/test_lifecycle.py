"""Host lifecycle in the UI and the API (webui/lifecycle.py, webui/hosts.py) through Flask's
test client: the host page shows mode, exceptions, update sources, learned tuples and app
control; admins change them (audited), viewers are refused, CSRF is required; release from
setup; "allow this" on a lockdown event; a scan started from the UI runs as a real
`vpatch scan --job` subprocess against an HTTP server on loopback, its progress is polled,
its report shows the evidence, and applying it assigns the rule with history; the same
through the JSON API, listed in the OpenAPI document."""

from __future__ import annotations

import http.server
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.lifecycle.state import HostMode, LearnedTuple, LifecycleStore
from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.testing.loopback import serve_http, slow_listeners
from tests.webui.conftest import Auth, make_event, write_events

SCAN_DEADLINE_S = 60.0


def host_id(app: Flask, address: str = "198.18.0.20") -> int:
    with Store(Path(app.config["POLICY_DB"])) as store:
        h = Hosts(store).host_by_address(address) or Hosts(store).save_host(address, "test")
        return h.id


def test_host_page_shows_lifecycle(app: Flask, client: FlaskClient, auth: Auth) -> None:
    life = LifecycleStore(Path(app.config["POLICY_DB"]))
    hid = host_id(app)
    life.update_host(
        "198.18.0.20",
        mode=HostMode.LOCKDOWN,
        learned=(LearnedTuple("198.18.0.10", "198.18.0.20", "tcp", 80),),
        app_controls=("refuse-smb1",),
    )
    auth.login("viewer", "viewer-password-1")
    page = client.get(f"/hosts/{hid}").get_data(as_text=True)
    assert "lockdown" in page and "198.18.0.10 -&gt; 198.18.0.20:80/tcp" in page
    assert "refuse-smb1" in page and "hosts.js" in page
    assert "Save mode" not in page  # viewers get no forms
    index = client.get("/hosts/").get_data(as_text=True)
    assert f'href="/hosts/{hid}"' in index


def test_admin_changes_mode_audited_viewer_refused_csrf_required(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    hid = host_id(app)
    form = {"mode": "setup", "lockdown_action": "drop", "exceptions": "198.18.0.0/24:tcp/3389",
            "update_sources": "198.18.5.5:tcp/443"}  # fmt: skip
    auth.login("viewer", "viewer-password-1")
    assert (
        client.post(
            f"/hosts/{hid}/lifecycle", data={**form, "csrf_token": auth.token()}
        ).status_code
        == 403
    )
    client.post("/auth/logout", data={"csrf_token": auth.token()})
    auth.login()
    assert client.post(f"/hosts/{hid}/lifecycle", data=form).status_code == 400  # no CSRF token
    life = LifecycleStore(Path(app.config["POLICY_DB"]))
    assert life.host("198.18.0.20").mode.value == "normal"
    resp = client.post(f"/hosts/{hid}/lifecycle", data={**form, "csrf_token": auth.token()})
    assert resp.status_code == 302
    p = life.host("198.18.0.20")
    assert p.mode.value == "setup" and [str(e) for e in p.exceptions] == ["198.18.0.0/24:tcp/3389"]
    assert [str(e) for e in p.update_sources] == ["198.18.5.5/32:tcp/443"]
    page = client.get(f"/hosts/{hid}").get_data(as_text=True)
    assert "gateway not reloaded" in page  # no gateway running here: said on the page
    assert "Release from setup" in page
    audit = client.get("/audit/").get_data(as_text=True)
    assert "lifecycle.host" in audit and "gateway.reload" in audit
    bad = client.post(f"/hosts/{hid}/lifecycle",
                      data={"exceptions": "198.18.0.999", "csrf_token": auth.token()})  # fmt: skip
    assert bad.status_code == 400 and "198.18.0.999" in bad.get_data(as_text=True)
    assert (
        client.post(f"/hosts/{hid}/release", data={"csrf_token": auth.token()}).status_code == 302
    )
    assert life.host("198.18.0.20").mode.value == "normal"
    assert [e.action for e in life.history("198.18.0.20")][-2:] == ["mode", "release"]
    # app control: validated, canonical text stored
    bad = {"add": "min-tls 0.9", "csrf_token": auth.token()}
    assert client.post(f"/hosts/{hid}/app-control", data=bad).status_code == 400
    client.post(
        f"/hosts/{hid}/app-control", data={"add": "REFUSE-smb1", "csrf_token": auth.token()}
    )
    assert life.host("198.18.0.20").app_controls == ("refuse-smb1",)


def test_allow_this_on_a_lockdown_event(app: Flask, client: FlaskClient, auth: Auth) -> None:
    life = LifecycleStore(Path(app.config["POLICY_DB"]))
    host_id(app)
    life.update_host("198.18.0.20", mode=HostMode.LOCKDOWN)
    sig = "lockdown: new port 198.18.0.10 -> 198.18.0.20:8082/tcp not learned"
    write_events(
        Path(app.config["EVENTS_DB"]),
        [(make_event(signature_id=9100002, signature=sig, dest_port=8082, cves=()), {})],
    )
    auth.login()
    page = client.get("/events/?rule=9100002").get_data(as_text=True)
    assert "Allow this" in page
    event_id = 4  # conftest wrote three events first
    assert "Allow this" in client.get(f"/events/{event_id}").get_data(as_text=True)
    assert "Allow this" not in client.get("/events/1").get_data(as_text=True)
    assert client.post(f"/hosts/allow-event/{event_id}").status_code == 400  # CSRF
    resp = client.post(f"/hosts/allow-event/{event_id}", data={"csrf_token": auth.token()})
    assert resp.status_code == 302
    assert (
        LearnedTuple("198.18.0.10", "198.18.0.20", "tcp", 8082) in life.host("198.18.0.20").learned
    )
    assert life.history("198.18.0.20")[-1].action == "allow"
    assert client.post("/hosts/allow-event/1", data={"csrf_token": auth.token()}).status_code == 404


class _Nginx(http.server.BaseHTTPRequestHandler):
    server_version = "Apache/2.4.49"
    sys_version = ""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_OPTIONS = do_GET

    def log_message(self, *_a: object) -> None:
        pass


@pytest.fixture
def loopback_http() -> Iterator[int]:
    with serve_http(_Nginx) as port:
        yield port


def wait_done(client: FlaskClient, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + SCAN_DEADLINE_S
    while True:
        p: dict[str, Any] = client.get(url, headers={"Accept": "application/json"}).get_json()
        if p["status"] in ("done", "failed", "cancelled"):
            return p
        assert time.monotonic() < deadline, p
        time.sleep(0.2)


def test_scan_from_the_ui_progress_report_apply(
    app: Flask, client: FlaskClient, auth: Auth, loopback_http: int
) -> None:
    app.config.update(SCAN_PORTS=str(loopback_http), SCAN_TIMEOUT=1.0)
    hid = host_id(app, "127.0.0.1")
    auth.login()
    resp = client.post(f"/hosts/{hid}/scan", data={"csrf_token": auth.token()},
                       headers={"Accept": "application/json"})  # fmt: skip
    assert resp.status_code == 201, resp.get_data(as_text=True)
    run_id = resp.get_json()["id"]
    busy = client.post(f"/hosts/{hid}/scan", data={"csrf_token": auth.token()})
    assert busy.status_code in (201, 302, 400)
    if busy.status_code == 400:  # one scan per host at a time (unless the first one finished)
        assert "one scan per host at a time" in busy.get_data(as_text=True)
    progress = wait_done(client, f"/hosts/{hid}/scans/{run_id}/progress")
    assert progress["status"] == "done", progress
    report = client.get(f"/hosts/{hid}/scans/{run_id}").get_data(as_text=True)
    assert "apache-httpd" in report and "2.4.49" in report and "Apply recommendation" in report
    assert "assign" in report and "http" in report  # the recommendation with its evidence
    resp = client.post(f"/hosts/{hid}/scans/{run_id}/apply", data={"csrf_token": auth.token()})
    assert resp.status_code == 302
    life = LifecycleStore(Path(app.config["POLICY_DB"]))
    assigned = life.host("127.0.0.1").assigned
    assert assigned, "applying the nginx recommendation assigns rules"
    page = client.get(f"/hosts/{hid}").get_data(as_text=True)
    assert f"scan run {run_id} applied by admin" in page and "ui scan by admin" in page
    again = client.post(f"/hosts/{hid}/scans/{run_id}/apply", data={"csrf_token": auth.token()})
    assert again.status_code == 400


def test_api_lifecycle_scan_schedule_allow(
    app: Flask, client: FlaskClient, loopback_http: int
) -> None:
    app.config.update(SCAN_PORTS=str(loopback_http), SCAN_TIMEOUT=1.0)
    with Store(Path(app.config["POLICY_DB"])) as store:
        admin = Accounts(store).create_token("admin", "t", "test")
        viewer = Accounts(store).create_token("viewer", "t", "test")
    hid = host_id(app, "127.0.0.1")
    A = {"Authorization": f"Bearer {admin}"}
    V = {"Authorization": f"Bearer {viewer}"}
    assert (
        client.put(
            f"/api/v1/hosts/{hid}/lifecycle", json={"mode": "learning"}, headers=V
        ).status_code
        == 403
    )
    r = client.put(
        f"/api/v1/hosts/{hid}/lifecycle", json={"mode": "learning", "auto_apply": True}, headers=A
    )
    assert r.status_code == 200 and r.get_json()["policy"]["mode"] == "learning"
    assert (
        client.put(f"/api/v1/hosts/{hid}/lifecycle", json={"mode": "bogus"}, headers=A).status_code
        == 400
    )
    assert client.post(f"/api/v1/hosts/{hid}/release", headers=A).status_code == 400  # not in setup
    assert client.get("/api/v1/hosts/999/lifecycle", headers=V).status_code == 404
    r = client.put(f"/api/v1/hosts/{hid}/schedule", json={"interval_minutes": 60}, headers=A)
    assert r.status_code == 200 and r.get_json()["schedule"]["interval_s"] == 3600
    assert (
        client.put("/api/v1/schedule", json={"interval_minutes": 1440}, headers=A).status_code
        == 200
    )
    r = client.post(f"/api/v1/hosts/{hid}/scans", headers=A)
    assert r.status_code == 201
    run_id = r.get_json()["id"]
    deadline = time.monotonic() + SCAN_DEADLINE_S
    while (run := client.get(f"/api/v1/scans/{run_id}", headers=V).get_json())["status"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert run["status"] == "done" and run["applied"]  # auto-apply on: applied by the scan
    assert (
        run["report"]["recommendations"]
        and run["report"]["findings"][0]["product"] == "apache-httpd"
    )
    assert client.post(f"/api/v1/scans/{run_id}/apply", headers=A).status_code == 400
    view = client.get(f"/api/v1/hosts/{hid}/lifecycle", headers=V).get_json()
    assert view["policy"]["assigned"] and view["schedule"]["host"] == "127.0.0.1"
    assert [h["action"] for h in view["history"]][:1] != []
    doc = client.get("/api/v1/openapi.json").get_json()
    for path in ("/hosts/{host_id}/lifecycle", "/hosts/{host_id}/scans", "/scans/{run_id}",
                 "/scans/{run_id}/apply", "/hosts/{host_id}/schedule", "/schedule",
                 "/events/{event_id}/allow", "/hosts/{host_id}/release",
                 "/hosts/{host_id}/app-control"):  # fmt: skip
        assert path in doc["paths"], path


def test_allow_this_for_a_network_or_any_client_and_delete_one_by_one(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    life = LifecycleStore(Path(app.config["POLICY_DB"]))
    hid = host_id(app)
    life.update_host("198.18.0.20", mode=HostMode.LOCKDOWN)
    sig = "lockdown: new peer 198.18.0.10 -> 198.18.0.20:80/tcp not learned"
    write_events(
        Path(app.config["EVENTS_DB"]),
        [(make_event(signature_id=9100001, signature=sig, dest_port=80, cves=()), {})],
    )
    event_id = 4  # conftest wrote three events first
    auth.login()
    page = client.get(f"/events/{event_id}").get_data(as_text=True)
    assert 'value="198.18.0.0/24"' in page and 'value="any"' in page
    resp = client.post(f"/hosts/allow-event/{event_id}",
                       data={"csrf_token": auth.token(), "source": "any"})  # fmt: skip
    assert resp.status_code == 302
    assert LearnedTuple("any", "198.18.0.20", "tcp", 80) in life.host("198.18.0.20").learned
    bad = client.post(f"/hosts/allow-event/{event_id}",
                      data={"csrf_token": auth.token(), "source": "198.18.9.0/24"})  # fmt: skip
    assert bad.status_code == 400 and "does not hold" in bad.get_data(as_text=True)
    # the learned list: add a network entry, then delete entries one by one
    resp = client.post(f"/hosts/{hid}/allow", data={
        "csrf_token": auth.token(), "tuple": "198.18.7.0/24 -> 198.18.0.20:443/tcp"})  # fmt: skip
    assert resp.status_code == 302
    page = client.get(f"/hosts/{hid}").get_data(as_text=True)
    assert "198.18.7.0/24 -&gt; 198.18.0.20:443/tcp" in page
    assert "any -&gt; 198.18.0.20:80/tcp" in page
    assert page.count('class="disallow"') == 2
    wrong_side = client.post(f"/hosts/{hid}/allow", data={
        "csrf_token": auth.token(), "tuple": "any -> 198.18.0.99:443/tcp"})  # fmt: skip
    assert wrong_side.status_code == 400 and "must be the responder" in wrong_side.get_data(
        as_text=True
    )
    resp = client.post(f"/hosts/{hid}/disallow", data={
        "csrf_token": auth.token(), "tuple": "any -> 198.18.0.20:80/tcp"})  # fmt: skip
    assert resp.status_code == 302
    assert [str(t) for t in life.host("198.18.0.20").learned] == [
        "198.18.7.0/24 -> 198.18.0.20:443/tcp"
    ]
    assert life.history("198.18.0.20")[-1].action == "disallow"
    again = client.post(f"/hosts/{hid}/disallow", data={
        "csrf_token": auth.token(), "tuple": "any -> 198.18.0.20:80/tcp"})  # fmt: skip
    assert again.status_code == 400 and "no learned or allowed entry" in again.get_data(
        as_text=True
    )


def test_api_allow_and_disallow_entries(app: Flask, client: FlaskClient) -> None:
    with Store(Path(app.config["POLICY_DB"])) as store:
        admin = Accounts(store).create_token("admin", "t", "test")
        viewer = Accounts(store).create_token("viewer", "t", "test")
    hid = host_id(app)
    A = {"Authorization": f"Bearer {admin}"}
    V = {"Authorization": f"Bearer {viewer}"}
    entry = {"tuple": "any -> 198.18.0.20:80/tcp"}
    assert client.post(f"/api/v1/hosts/{hid}/allow", json=entry, headers=V).status_code == 403
    r = client.post(f"/api/v1/hosts/{hid}/allow", json=entry, headers=A)
    assert r.status_code == 201 and r.get_json()["policy"]["learned"] == [entry["tuple"]]
    r = client.post(f"/api/v1/hosts/{hid}/allow", json={"tuple": "nonsense"}, headers=A)
    assert r.status_code == 400 and "SRC -> DST:PORT/PROTO" in r.get_json()["error"]
    r = client.post(f"/api/v1/hosts/{hid}/disallow", json=entry, headers=A)
    assert r.status_code == 201 and r.get_json()["policy"]["learned"] == []
    assert client.post(f"/api/v1/hosts/{hid}/disallow", json=entry, headers=A).status_code == 400
    doc = client.get("/api/v1/openapi.json").get_json()
    assert "/hosts/{host_id}/allow" in doc["paths"] and "/hosts/{host_id}/disallow" in doc["paths"]


def wait_running(client: FlaskClient, url: str) -> None:
    deadline = time.monotonic() + SCAN_DEADLINE_S
    while client.get(url, headers={"Accept": "application/json"}).get_json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_cancel_a_scan_from_the_ui_and_the_api(app: Flask, client: FlaskClient, auth: Auth) -> None:
    with Store(Path(app.config["POLICY_DB"])) as store:
        admin = Accounts(store).create_token("admin", "t", "test")
        viewer = Accounts(store).create_token("viewer", "t", "test")
    hid = host_id(app, "127.0.0.1")
    with slow_listeners(3) as slow:  # every probe waits for its timeout: a slow scan
        app.config.update(SCAN_PORTS=",".join(map(str, slow)), SCAN_TIMEOUT=1.0)
        auth.login()
        run_id = client.post(f"/hosts/{hid}/scan", data={"csrf_token": auth.token()},
                             headers={"Accept": "application/json"}).get_json()["id"]  # fmt: skip
        progress_url = f"/hosts/{hid}/scans/{run_id}/progress"
        wait_running(client, progress_url)
        assert 'class="cancel-scan"' in client.get(f"/hosts/{hid}").get_data(as_text=True)
        assert client.post(f"/hosts/{hid}/scans/{run_id}/cancel").status_code == 400  # CSRF
        resp = client.post(f"/hosts/{hid}/scans/{run_id}/cancel", data={"csrf_token": auth.token()})
        assert resp.status_code == 302
        assert wait_done(client, progress_url)["status"] == "cancelled"
        report = client.get(f"/hosts/{hid}/scans/{run_id}").get_data(as_text=True)
        assert "Cancelled by admin: partial report" in report and "probes done" in report
        assert "Apply recommendation" not in report
        # the API: viewers may not, admins may; a finished run cannot be cancelled
        A, V = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {viewer}"}
        run_id = client.post(f"/api/v1/hosts/{hid}/scans", headers=A).get_json()["id"]
        wait_running(client, f"/hosts/{hid}/scans/{run_id}/progress")
        assert client.post(f"/api/v1/scans/{run_id}/cancel", headers=V).status_code == 403
        r = client.post(f"/api/v1/scans/{run_id}/cancel", headers=A)
        assert r.status_code == 201 and r.get_json()["status"] in ("running", "cancelled")
        deadline = time.monotonic() + SCAN_DEADLINE_S
        while (run := client.get(f"/api/v1/scans/{run_id}", headers=V).get_json())[
            "status"
        ] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert run["status"] == "cancelled" and run["report"]["cancelled"]
    assert run["report"]["probes_done"] < run["report"]["probes_total"]
    again = client.post(f"/api/v1/scans/{run_id}/cancel", headers=A)
    assert again.status_code == 400 and "nothing to cancel" in again.get_json()["error"]
    assert client.post("/api/v1/scans/999/cancel", headers=A).status_code == 404
    doc = client.get("/api/v1/openapi.json").get_json()
    assert "/scans/{run_id}/cancel" in doc["paths"]
