# ruff: noqa: F811  (the receiver fixtures are imported from tests/alerts/conftest.py)
"""webui/alerts.py: channels configured through the real form (CSRF token), validation error
names the field, the "send test" button delivers to a real webhook receiver and a real UDP
syslog receiver on 127.0.0.1 and says so, a failed test says why, secrets are never shown back,
viewers and anonymous users change nothing, the JSON API does the same with a token."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from gateway.alerts.channels import list_channels
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from tests.alerts.conftest import (  # noqa: F401 (fixtures)
    _smtp,
    free_port,
    smtp_tls,
    syslog_udp,
    tls_cert,
    wait_for,
    webhook,
)
from tests.webui.conftest import VIEWER_PW


def store_of(app: Any) -> Store:
    return Store(__import__("pathlib").Path(app.config["POLICY_DB"]))


def add(client: Any, auth: Any, **form: str) -> Any:
    return client.post("/alerts/", data={"csrf_token": auth.token(), **form})


def test_webhook_channel_and_send_test(app: Any, client: Any, auth: Any, webhook: Any) -> None:
    auth.login()
    resp = add(client, auth, name="ops-hook", kind="webhook", url=webhook.url, secret="k3y-secret",
               rate_per_min="30", burst="3", min_severity="2")  # fmt: skip
    assert resp.status_code == 302
    page = client.get("/alerts/").get_data(as_text=True)
    assert "ops-hook" in page and "(signed)" in page and "k3y-secret" not in page
    with store_of(app) as store:
        (ch,) = list_channels(store)
    assert (ch.rate_per_min, ch.burst, ch.min_severity) == (30.0, 3, 2)
    client.post(f"/alerts/{ch.id}/test", data={"csrf_token": auth.token()})
    ((headers, body),) = wait_for(webhook.requests)
    assert json.loads(body)["type"] == "test" and "x-vpatch-signature" in headers
    page = client.get("/alerts/").get_data(as_text=True)
    assert "OK: test message sent through ops-hook" in page
    audit = client.get("/audit/").get_data(as_text=True)
    assert "alerts.save" in audit and "alerts.test" in audit and "k3y-secret" not in audit


def test_syslog_send_test_and_failure_message(client: Any, auth: Any, syslog_udp: Any,
                                              app: Any) -> None:  # fmt: skip
    auth.login()
    add(client, auth, name="sys", kind="syslog", transport="udp", host="127.0.0.1",
        port=str(syslog_udp.port), facility="local1")  # fmt: skip
    add(client, auth, name="dead", kind="webhook", url=f"http://127.0.0.1:{free_port()}/x")
    with store_of(app) as store:
        ids = {c.name: c.id for c in list_channels(store)}
    client.post(f"/alerts/{ids['sys']}/test", data={"csrf_token": auth.token()})
    (msg,) = wait_for(syslog_udp.messages)
    assert msg.startswith(b"<141>1 ") and b" test [vpatch@32473 " in msg  # local1.notice
    client.post(f"/alerts/{ids['dead']}/test", data={"csrf_token": auth.token()})
    page = client.get("/alerts/").get_data(as_text=True)
    assert "FAILED: webhook channel &#39;dead&#39;" in page and "Connection refused" in page


def test_invalid_channel_refused_with_field(client: Any, auth: Any, app: Any) -> None:
    auth.login()
    resp = add(client, auth, name="x", kind="email", host="h", sender="a@b", to="not-an-address")
    assert resp.status_code == 400
    assert "to: " in resp.get_data(as_text=True)
    resp = add(client, auth, name="y", kind="webhook", url="javascript:alert(1)")
    assert resp.status_code == 400 and "url: " in resp.get_data(as_text=True)
    with store_of(app) as store:
        assert list_channels(store) == []


def test_csrf_viewer_anonymous(client: Any, auth: Any, app: Any) -> None:
    assert client.get("/alerts/").status_code == 302  # to the login page
    assert client.post("/alerts/", data={"name": "a"}).status_code in (400, 401)
    auth.login()
    no_csrf = {"name": "a", "kind": "webhook", "url": "http://127.0.0.1/"}
    assert client.post("/alerts/", data=no_csrf).status_code == 400
    client.post("/auth/logout", data={"csrf_token": auth.token()})
    auth.login("viewer", VIEWER_PW)
    assert client.get("/alerts/").status_code == 200
    assert "Send test" not in client.get("/alerts/").get_data(as_text=True)
    assert add(client, auth, name="v", kind="webhook", url="http://127.0.0.1/").status_code == 403
    with store_of(app) as store:
        assert list_channels(store) == []


def test_api(client: Any, app: Any, webhook: Any) -> None:
    with store_of(app) as store:
        admin = Accounts(store).create_token("admin", "t", "test")
        viewer = Accounts(store).create_token("viewer", "t", "test")
    h = {"Authorization": f"Bearer {admin}"}
    body = {"name": "api-hook", "kind": "webhook", "settings": {"url": webhook.url, "secret": "zz"}}
    resp = client.post("/api/v1/alerts", json=body, headers=h)
    assert resp.status_code == 201, resp.get_json()
    cid = resp.get_json()["id"]
    assert resp.get_json()["settings"]["secret"] == "********"
    assert client.post(f"/api/v1/alerts/{cid}/test", headers=h).get_json()["ok"] is True
    wait_for(webhook.requests)
    bad = client.put(f"/api/v1/alerts/{cid}", json={**body, "rate_per_min": -1}, headers=h)
    assert bad.status_code == 400 and bad.get_json()["field"] == "rate_per_min"
    vh = {"Authorization": f"Bearer {viewer}"}
    assert client.get("/api/v1/alerts", headers=vh).get_json()[0]["name"] == "api-hook"
    assert client.delete(f"/api/v1/alerts/{cid}", headers=vh).status_code == 403
    assert client.delete(f"/api/v1/alerts/{cid}", headers=h).status_code == 200
    assert client.delete(f"/api/v1/alerts/{cid}", headers=h).status_code == 404


def test_stored_smtp_password_never_goes_to_a_new_server(
    client: Any, app: Any, smtp_tls: Any, tls_cert: Any
) -> None:
    """Changing where an email channel sends (host, port, user, STARTTLS) and pressing "send
    test" must not hand the stored password to the new server: the password is asked again."""
    with store_of(app) as store:
        h = {"Authorization": f"Bearer {Accounts(store).create_token('admin', 't', 'test')}"}
    settings = {"host": "127.0.0.1", "port": smtp_tls.port, "starttls": True, "username": "gw",
                "password": "smtp-secret", "sender": "gw@lab.test", "to": "ops@lab.test",
                "ca_file": str(smtp_tls.cert)}  # fmt: skip
    body = {"name": "mail", "kind": "email", "settings": settings}
    cid = client.post("/api/v1/alerts", json=body, headers=h).get_json()["id"]
    with contextlib.contextmanager(_smtp)(tls_cert) as other:
        for change in ({"port": other.port}, {"host": "localhost", "port": other.port},
                       {"username": "someone"}, {"starttls": False}):  # fmt: skip
            moved = {**body, "settings": {**settings, "password": "", **change}}
            resp = client.put(f"/api/v1/alerts/{cid}", json=moved, headers=h)
            assert resp.status_code == 400 and resp.get_json()["field"] == "password", change
            assert "enter the password again" in resp.get_json()["error"]
        # unchanged destination: an empty password keeps the stored one
        same = {**body, "min_severity": 2, "settings": {**settings, "password": ""}}
        assert client.put(f"/api/v1/alerts/{cid}", json=same, headers=h).status_code == 200
        assert client.post(f"/api/v1/alerts/{cid}/test", headers=h).get_json()["ok"] is True
        wait_for(smtp_tls.messages)
        assert other.logins == [] and smtp_tls.logins == [("gw", "smtp-secret")]
        # a new server with the password entered again is fine
        moved = {**body, "settings": {**settings, "port": other.port}}
        assert client.put(f"/api/v1/alerts/{cid}", json=moved, headers=h).status_code == 200
