"""webui/security.py through Flask's test client: anonymous users are sent to the login page
(HTML) or refused (writes, JSON), viewers change nothing, every state-changing form needs the
session's CSRF token, every page carries the security headers and no inline script; and the
escaping helpers (`bytes_escape`, the Jinja `bx` filter; `csv_safe`) on their own."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.accounts import Accounts
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Hosts
from tests.webui.conftest import Auth, api_token, store_of
from webui.security import bytes_escape, csv_safe

PAGES = [
    "/",
    "/dashboard/",
    "/dashboard/data",
    "/rules/",
    "/hosts/",
    "/events/",
    "/events/1",
    "/events/export.csv",
    "/events/export.json",
    "/events/exceptions",
    "/audit/",
    "/auth/tokens",
    "/auth/password",
    "/users/",
    "/users/?sort=-last_login&page=2",
]
WRITES = [("/rules/9000100/mode", {"mode": "off", "scope": "global"}),
          ("/hosts/", {"address": "198.18.0.20"}), ("/hosts/groups", {"name": "web"}),
          ("/hosts/1/delete", {}), ("/hosts/groups/1/delete", {}),
          ("/events/1/exception", {"reason": "false positive", "scope": "host"}),
          ("/events/exceptions/1/delete", {}), ("/auth/tokens", {"name": "t"}),
          ("/auth/tokens/1/revoke", {}),
          ("/users/", {"username": "mallory", "role": "admin", "password": "mallory-pw-1"}),
          ("/users/2/role", {"role": "admin"}), ("/users/1/disable", {}),
          ("/users/1/enable", {}), ("/users/1/reset", {}), ("/users/1/remove", {})]  # fmt: skip


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


def test_json_clients_get_401_and_json_errors_not_pages(client: FlaskClient) -> None:
    resp = client.get("/rules/", headers={"Accept": "application/json"})
    assert resp.status_code == 401 and resp.get_json() == {"error": "authentication required"}
    resp = client.get("/api/v1/no-such-thing")
    assert resp.status_code == 404 and "error" in resp.get_json()
    page = client.get("/no-such-page")
    assert page.status_code == 404 and page.mimetype == "text/html"


def test_more_security_headers_and_the_login_redirect_keeps_the_path(client: FlaskClient) -> None:
    resp = client.get("/events/?rule=1")
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Location"].endswith("/auth/login?next=/events/")


def test_csrf_token_in_a_header_is_accepted_and_the_api_needs_none(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    auth.login()
    resp = client.post(
        "/hosts/groups", data={"name": "web"}, headers={"X-CSRF-Token": auth.token()}
    )
    assert resp.status_code == 302
    # /api/v1 takes no CSRF token: its bearer token cannot ride on a browser's cookies
    resp = client.post("/api/v1/groups", json={"name": "db"}, headers=api_token(app, "admin"))
    assert resp.status_code == 201
    with store_of(app) as s:
        assert sorted(g.name for g in Hosts(s).list_groups()) == ["db", "web"]


def test_a_deleted_users_session_ends(client: FlaskClient, auth: Auth, app: Flask) -> None:
    with store_of(app) as s:
        Accounts(s).create_user("temp", "temp-password-1", "admin", "test")
    assert auth.login("temp", "temp-password-1").status_code == 302
    assert client.get("/rules/").status_code == 200
    with store_of(app) as s:
        Accounts(s).delete_user("temp", "test")
    assert client.get("/rules/").status_code == 302  # back to the login page


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, ""),
        (b"GET /\x00\xff\\", "GET /\\x00\\xff\\"),
        ("tab\tnl\ndel\x7f", "tab\\x09nl\\x0adel\\x7f"),
        ("c1\x85 \u00e9 \u4e2d", "c1\\x85 \u00e9 \u4e2d"),  # C1 controls shown, letters kept
        ("\u200b\u2028", "\\u200b\\u2028"),  # invisible and line-breaking characters shown
        ('<a href="x">&', "&lt;a href=&#34;x&#34;&gt;&amp;"),
        (42, "42"),
    ],
)
def test_bytes_escape(value: object, shown: str) -> None:
    assert str(bytes_escape(value)) == shown


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        (None, ""),
        (-5, "'-5"),
        (7, "7"),
    ],
)
def test_csv_safe(value: object, cell: str) -> None:
    assert csv_safe(value) == cell
