"""The admin UI through Flask's test client: every route, auth, roles, CSRF, escaping,
throttling, audit, API tokens and the OpenAPI document."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.accounts import Accounts
from gateway.policy.assignments import Assignments
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store

ADMIN_PW = "admin-password-1"  # as in tests/webui/conftest.py
EVIL = '<script>alert("x")</script>\'\x00\x1b\x7f'
Auth = Any  # tests/webui/conftest.py's Auth helper (fixture `auth`)

PAGES = ["/", "/dashboard/", "/dashboard/data", "/rules/", "/hosts/", "/events/", "/events/1",
         "/events/export.csv", "/events/export.json", "/events/exceptions", "/audit/", "/auth/tokens"]  # fmt: skip
WRITES = [("/rules/9000100/mode", {"mode": "off", "scope": "global"}),
          ("/hosts/", {"address": "198.18.0.20"}), ("/hosts/groups", {"name": "web"}),
          ("/hosts/1/delete", {}), ("/hosts/groups/1/delete", {}),
          ("/events/1/exception", {"reason": "false positive", "scope": "host"}),
          ("/events/exceptions/1/delete", {}), ("/auth/tokens", {"name": "t"}),
          ("/auth/tokens/1/revoke", {})]  # fmt: skip


def store_of(app: Flask) -> Store:
    from pathlib import Path

    return Store(Path(app.config["POLICY_DB"]))


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_sent_to_login(client: FlaskClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code in (302, 401)
    if resp.status_code == 302:
        assert "/auth/login" in resp.headers["Location"]


@pytest.mark.parametrize("path,form", WRITES)
def test_anonymous_cannot_write(
    client: FlaskClient, auth: Auth, path: str, form: dict[str, str]
) -> None:
    resp = client.post(path, data={**form, "csrf_token": auth.csrf()})
    assert resp.status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_for_admin_with_security_headers(
    client: FlaskClient, auth: Auth, path: str
) -> None:
    assert auth.login().status_code == 302
    resp = client.get(path)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    if resp.mimetype == "text/html":
        assert "<script>" not in resp.get_data(as_text=True)  # no inline scripts at all


def test_session_cookie_flags(app: Flask, auth: Auth) -> None:
    app.config["SESSION_COOKIE_SECURE"] = True
    resp = auth.login()
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("vpatch_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie


def test_wrong_password_is_refused_and_audited(client: FlaskClient, auth: Auth, app: Flask) -> None:
    assert auth.login(password="wrong-password").status_code == 401
    assert client.get("/rules/").status_code == 302
    with store_of(app) as s:
        assert any(e.action == "login.failed" and e.actor == "admin" for e in s.list_audit())


def test_login_throttling_per_user(client: FlaskClient, auth: Auth) -> None:
    for _ in range(3):  # THROTTLE_FREE_FAILURES
        assert auth.login(password="wrong-password").status_code == 401
    # the fourth attempt comes too soon: refused even with the right password
    resp = auth.login()
    assert resp.status_code == 429
    assert "try again" in resp.get_data(as_text=True)


def test_login_throttling_per_source_across_users(client: FlaskClient, auth: Auth) -> None:
    for i in range(3):
        assert auth.login(username=f"nobody{i}", password="x" * 9).status_code == 401
    assert auth.login().status_code == 429


def test_form_without_csrf_token_is_refused(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    resp = client.post("/hosts/groups", data={"name": "web"})
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    resp = client.post("/hosts/groups", data={"name": "web", "csrf_token": "forged"})
    assert resp.status_code == 400
    with store_of(app) as s:
        assert Hosts(s).list_groups() == []
    resp = client.post("/hosts/groups", data={"name": "web", "csrf_token": auth.token()})
    assert resp.status_code == 302
    with store_of(app) as s:
        assert [g.name for g in Hosts(s).list_groups()] == ["web"]


def test_login_form_needs_csrf(client: FlaskClient) -> None:
    client.get("/auth/login")
    resp = client.post("/auth/login", data={"username": "admin", "password": ADMIN_PW})
    assert resp.status_code == 400


@pytest.mark.parametrize("path,form", WRITES)
def test_viewer_cannot_change_anything(
    client: FlaskClient, auth: Auth, app: Flask, path: str, form: dict[str, str]
) -> None:
    with store_of(app) as s:
        Hosts(s).create_group("g", "", "test")
        Hosts(s).save_host("198.18.0.30", "test")
        PolicyExceptions(s).add_exception("198.18.0.30", "r", "test", rule_id=1)
        Accounts(s).create_token("viewer", "mine", "test")
        before = s.audit_count()
    auth.login("viewer", "viewer-password-1")
    resp = client.post(path, data={**form, "csrf_token": auth.token()})
    assert resp.status_code == 403, (path, resp.status_code)
    with store_of(app) as s:
        assert s.audit_count() == before


def test_rule_mode_change_is_stored_audited_and_reload_reported(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    auth.login()
    resp = client.post(
        "/rules/9000100/mode",
        data={"mode": "detect", "scope": "global", "csrf_token": auth.token()},
    )
    assert resp.status_code == 302
    with store_of(app) as s:
        assert [(a.rule_id, a.scope, a.mode) for a in Assignments(s).list_assignments()] == [
            (9000100, "global", "detect")
        ]
        actions = [e.action for e in s.list_audit()]
        assert "assignment.set" in actions and "gateway.reload" in actions
        entry = next(e for e in s.list_audit() if e.action == "assignment.set")
        assert entry.actor == "admin" and entry.detail == {"before": None, "after": "detect"}
    page = client.get("/rules/").get_data(as_text=True)
    assert "gateway NOT reloaded" in page  # no gateway runs in this test: said, not hidden
    assert (
        client.post("/rules/1/mode", data={"mode": "off", "csrf_token": auth.token()}).status_code
        == 400
    )


def test_rules_filters(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = client.get("/rules/?cve=CVE-2017-0144").get_data(as_text=True)
    assert 'id="rule-9001001"' in page and 'id="rule-9000100"' not in page
    page = client.get("/rules/?protocol=udp").get_data(as_text=True)
    assert 'id="rule-9000100"' not in page
    page = client.get("/rules/?cve=CVE-0000-0001").get_data(as_text=True)
    assert 'id="rule-9000100"' in page and "1 flows" in page  # the would_block event


def test_rules_page_and_api_show_ports_or_any(app: Flask, client: FlaskClient, auth: Auth) -> None:
    from gateway.policy.appcontrol import APP_CONTROL_RULES  # holds a `ports: any` rule

    app.config["RULE_PATHS"] = [*app.config["RULE_PATHS"], str(APP_CONTROL_RULES)]
    auth.login()
    page = client.get("/rules/").get_data(as_text=True)
    rows = dict(re.findall(r'<tr id="rule-(\d+)">(.*?)</tr>', page, re.DOTALL))
    assert "<td>tcp/any</td>" in rows["9200031"]  # app control: HTTP on any port
    assert re.search(r"<td>tcp/\d+(,\d+)*</td>", rows["9001001"]), rows["9001001"]
    api = {
        r["id"]: r for r in client.get("/api/v1/rules", headers=api_token(app, "admin")).get_json()
    }
    assert (api[9200031]["ports"], api[9200031]["ports_text"]) == ("any", "any")
    assert api[9001001]["ports_text"] == ",".join(map(str, api[9001001]["ports"]))


def _evil_row_id(client: FlaskClient) -> int:
    page = client.get("/events/?address=198.18.0.11").get_data(as_text=True)
    ids = re.findall(r'href="/events/(\d+)"', page)
    assert len(ids) == 1
    return int(ids[0])


def test_attacker_bytes_are_escaped_in_list_detail_csv_json(
    client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    listing = client.get("/events/").get_data(as_text=True)
    for page in (listing, client.get(f"/events/{_evil_row_id(client)}").get_data(as_text=True)):
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;\\x00\\x1b\\x7f" in page
        assert "\x00" not in page and "\x1b" not in page
    rows = list(csv.reader(io.StringIO(client.get("/events/export.csv").get_data(as_text=True))))
    sigs = [r[4] for r in rows[1:]]
    assert EVIL in sigs  # CSV keeps the value (text/csv is not rendered as HTML)...
    assert '\'=HYPERLINK("http://x")' in sigs  # ...but never lets a formula start a cell
    data = json.loads(client.get("/events/export.json").get_data(as_text=True))
    assert EVIL in [e["signature"] for e in data]
    resp = client.get("/events/export.json")
    assert (
        resp.mimetype == "application/json" and resp.headers["X-Content-Type-Options"] == "nosniff"
    )


def test_event_filters_and_pagination(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    assert "Events (3)" in client.get("/events/").get_data(as_text=True)
    assert "Events (1)" in client.get("/events/?cve=CVE-2017-0144").get_data(as_text=True)
    assert "Events (2)" in client.get("/events/?rule=9000100").get_data(as_text=True)
    assert "Events (1)" in client.get("/events/?action=allowed").get_data(as_text=True)
    assert "Events (0)" in client.get("/events/?since=2999-01-01T00:00:00").get_data(as_text=True)
    page = client.get("/events/?per_page=1&page=2").get_data(as_text=True)
    assert (
        len(re.findall(r'href="/events/\d+"', page)) == 1 and "previous" in page and "next" in page
    )
    assert client.get("/events/?rule=abc").status_code == 400


def test_exception_needs_reason_and_is_stored(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    ev = _evil_row_id(client)
    resp = client.post(
        f"/events/{ev}/exception", data={"scope": "port", "reason": " ", "csrf_token": auth.token()}
    )
    assert resp.status_code == 400
    resp = client.post(f"/events/{ev}/exception", data={
        "scope": "uri", "reason": "scanner of ours", "expires": "2999-01-01T00:00:00",
        "csrf_token": auth.token()})  # fmt: skip
    assert resp.status_code == 302
    with store_of(app) as s:
        (exc,) = PolicyExceptions(s).list_exceptions()
        assert exc.uri == "/" + EVIL and exc.host == "198.18.0.20" and exc.rule_id == 9000100
    assert "&lt;script&gt;" in client.get("/events/exceptions").get_data(as_text=True)


def test_hosts_and_groups(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    client.post("/hosts/groups", data={"name": "web", "csrf_token": auth.token()})
    client.post(
        "/hosts/",
        data={"address": "198.18.0.20", "name": "srv", "group_id": "1", "csrf_token": auth.token()},
    )
    assert (
        client.post("/hosts/", data={"address": "nope", "csrf_token": auth.token()}).status_code
        == 400
    )
    client.post(
        "/rules/9000100/mode", data={"mode": "off", "scope": "group:1", "csrf_token": auth.token()}
    )
    page = client.get("/hosts/").get_data(as_text=True)
    assert "198.18.0.20" in page and "rule 9000100 (group): off" in page


def test_audit_page_lists_changes(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    client.post("/hosts/groups", data={"name": "<b>grp</b>", "csrf_token": auth.token()})
    page = client.get("/audit/").get_data(as_text=True)
    assert "group.create" in page and "&lt;b&gt;grp&lt;/b&gt;" in page


def test_logout(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    assert client.post("/auth/logout", data={"csrf_token": auth.token()}).status_code == 302
    assert client.get("/rules/").status_code == 302


# -- API ------------------------------------------------------------------------------------


def api_token(app: Flask, user: str) -> dict[str, str]:
    with store_of(app) as s:
        return {"Authorization": f"Bearer {Accounts(s).create_token(user, 'test', 'test')}"}


def test_api_refuses_without_token_and_ignores_cookies(client: FlaskClient, auth: Auth) -> None:
    assert client.get("/api/v1/rules").status_code == 401
    assert (
        client.get("/api/v1/rules", headers={"Authorization": "Bearer vpt_nope"}).status_code == 401
    )
    auth.login()
    assert client.get("/api/v1/rules").status_code == 401  # a session cookie is not enough
    assert client.put("/api/v1/rules/9000100/mode", json={"mode": "off"}).status_code == 401


def test_api_admin_operations(client: FlaskClient, app: Flask) -> None:
    h = api_token(app, "admin")
    rules = client.get("/api/v1/rules?cve=CVE-0000-0001", headers=h).get_json()
    assert [r["id"] for r in rules] == [9000100] and rules[0]["would_block_flows"] == 1
    r = client.put("/api/v1/rules/9000100/mode", headers=h, json={"mode": "detect"})
    assert r.status_code == 200 and r.get_json()["assignment"]["mode"] == "detect"
    assert r.get_json()["reload"]["ok"] is False
    assert (
        client.put("/api/v1/rules/9000100/mode", headers=h, json={"mode": "bogus"}).status_code
        == 400
    )
    gr = client.post("/api/v1/groups", headers=h, json={"name": "web"}).get_json()
    host = client.post(
        "/api/v1/hosts", headers=h, json={"address": "198.18.0.20", "group_id": gr["id"]}
    )
    assert host.status_code == 201
    assert client.get("/api/v1/hosts", headers=h).get_json()[0]["address"] == "198.18.0.20"
    events = client.get("/api/v1/events?address=198.18.0.11", headers=h).get_json()
    assert events["total"] == 1
    ev_id = events["events"][0]["id"]
    detail = client.get(f"/api/v1/events/{ev_id}", headers=h).get_json()
    assert detail["why"]["field"] == "http.uri" and detail["event"]["signature"] == EVIL
    exc = client.post(
        f"/api/v1/events/{ev_id}/exception", headers=h, json={"reason": "ok", "scope": "port"}
    )
    assert exc.status_code == 201 and exc.get_json()["exception"]["port"] == 80
    assert len(client.get("/api/v1/exceptions", headers=h).get_json()) == 1
    assert (
        client.delete(
            f"/api/v1/exceptions/{exc.get_json()['exception']['id']}", headers=h
        ).status_code
        == 200
    )
    audit = client.get("/api/v1/audit", headers=h).get_json()
    assert {"assignment.set", "exception.add", "exception.delete", "host.save"} <= {
        a["action"] for a in audit
    }
    assert client.get("/api/v1/dashboard", headers=h).get_json()["total"] == 3
    assert client.get("/api/v1/status", headers=h).get_json()["reachable"] is False
    assert client.delete(f"/api/v1/hosts/{host.get_json()['id']}", headers=h).status_code == 200
    assert client.delete(f"/api/v1/groups/{gr['id']}", headers=h).status_code == 200
    assert client.post("/api/v1/reload", headers=h).get_json()["ok"] is False


def test_api_viewer_reads_only(client: FlaskClient, app: Flask) -> None:
    h = api_token(app, "viewer")
    assert client.get("/api/v1/rules", headers=h).status_code == 200
    assert (
        client.put("/api/v1/rules/9000100/mode", headers=h, json={"mode": "off"}).status_code == 403
    )
    assert client.post("/api/v1/groups", headers=h, json={"name": "x"}).status_code == 403
    assert client.post("/api/v1/reload", headers=h).status_code == 403


def test_openapi_document_matches_routes(client: FlaskClient, app: Flask) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), "/api/v1" + re.sub(r"\{(\w+)\}", r"<\1>", p))
                  for p, ops in doc["paths"].items() for m in ops}  # fmt: skip
    served = {(m, re.sub(r"<int:(\w+)>", r"<\1>", r.rule)) for r in app.url_map.iter_rules()
              if r.rule.startswith("/api/v1/") and r.endpoint != "api.openapi"
              for m in r.methods - {"HEAD", "OPTIONS"}}  # fmt: skip
    assert documented == served


def test_openapi_every_get_answers_without_server_error(client: FlaskClient, app: Flask) -> None:
    h = api_token(app, "admin")
    doc = client.get("/api/v1/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        for method in ops:
            url = "/api/v1" + re.sub(r"\{\w+\}", "1", path)
            resp = client.open(url, method=method.upper(), headers=h, json={})
            assert resp.status_code < 500, (method, url, resp.status_code)
            assert str(resp.status_code) in ops[method]["responses"] or resp.status_code == 200, (
                method,
                url,
                resp.status_code,
            )


def test_ui_token_page_creates_token(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = client.post("/auth/tokens", data={"name": "ci", "csrf_token": auth.token()}).get_data(
        as_text=True
    )
    token = re.search(r'id="new-token">([^<]+)<', page)
    assert token
    assert (
        client.get(
            "/api/v1/hosts", headers={"Authorization": f"Bearer {token.group(1)}"}
        ).status_code
        == 200
    )


def test_secret_key_generated_0600_and_stable(tmp_path: Any) -> None:
    import os

    from webui import create_app

    cfg = {"POLICY_DB": str(tmp_path / "p.db")}
    a = create_app(cfg)
    b = create_app(cfg)
    assert a.config["SECRET_KEY"] == b.config["SECRET_KEY"] and len(a.config["SECRET_KEY"]) == 32
    assert os.stat(tmp_path / "ui-secret.key").st_mode & 0o777 == 0o600


def test_rule_default_mode_and_products_come_from_the_rule_file(tmp_path: Any) -> None:
    from gateway.match.rules import load_rules
    from webui.services import rule_default_mode, rule_products

    (tmp_path / "r.yaml").write_text(
        "id: 9000900\ntitle: t\nseverity: low\naction: reset\nprotocol: tcp\nports: [80]\n"
        "default_mode: detect\naffected:\n  - product: nginx\n"
        'patterns:\n  - content: "abc"\n'
    )
    rule = load_rules([tmp_path / "r.yaml"]).by_id[9000900]
    assert rule_default_mode(rule) == "detect"
    assert rule_products(rule) == ["nginx"]
