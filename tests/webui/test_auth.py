"""webui/auth.py through Flask's test client: login (wrong password refused and audited, the
form needs its CSRF token, throttling per user and per source), logout, and API tokens made on
the tokens page."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.accounts import Accounts
from tests.webui.conftest import ADMIN_PW, Auth, store_of


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


def test_login_form_needs_csrf(client: FlaskClient) -> None:
    client.get("/auth/login")
    resp = client.post("/auth/login", data={"username": "admin", "password": ADMIN_PW})
    assert resp.status_code == 400


def test_logout(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    assert client.post("/auth/logout", data={"csrf_token": auth.token()}).status_code == 302
    assert client.get("/rules/").status_code == 302


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


@pytest.mark.parametrize(
    ("next_path", "target"),
    [
        ("/events/?rule=1", "/events/?rule=1"),
        ("//evil.example/x", "/dashboard/"),  # scheme-relative: another site
        ("https://evil.example/", "/dashboard/"),
        ("", "/dashboard/"),
    ],
)
def test_login_goes_to_the_next_path_on_this_site_only(
    client: FlaskClient, auth: Auth, next_path: str, target: str
) -> None:
    resp = client.post(
        "/auth/login?next=" + next_path,
        data={"username": "admin", "password": ADMIN_PW, "csrf_token": auth.csrf()},
    )
    assert resp.status_code == 302 and resp.headers["Location"] == target


# What `next` holds once the query is decoded: each is a way to another site that a check for
# a leading "//" alone lets through (a browser drops tabs and newlines, reads "\\" as "/")
OFFSITE_NEXT = (
    "/\t/evil.example/x", "/\r\n/evil.example/x", "/\n/evil.example", "/\x00/evil.example",
    "/\\evil.example", "\\/evil.example", "/\\/evil.example", "///evil.example",
    "////evil.example", "http:evil.example", "https:/evil.example", "HTTP://evil.example",
    "javascript:alert(1)", " //evil.example", "/%2F/evil.example", "/%2f%2fevil.example",
    "/%5Cevil.example", "/%5c/evil.example", "/\u3000/evil.example", "/\uff0fevil.example",
    "/\x7f/evil.example", "evil.example",
)  # fmt: skip


@pytest.mark.parametrize("next_path", OFFSITE_NEXT)
def test_login_never_redirects_off_site(client: FlaskClient, auth: Auth, next_path: str) -> None:
    resp = client.post(
        "/auth/login",
        query_string={"next": next_path},
        data={"username": "admin", "password": ADMIN_PW, "csrf_token": auth.csrf()},
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/dashboard/"


def test_login_refuses_the_reported_tab_redirect(client: FlaskClient, auth: Auth) -> None:
    resp = client.post(
        "/auth/login?next=/%09/evil.example/x",
        data={"username": "admin", "password": ADMIN_PW, "csrf_token": auth.csrf()},
    )
    assert resp.headers["Location"] == "/dashboard/"


def test_tokens_are_revoked_by_their_owner_only(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    with store_of(app) as s:
        theirs = Accounts(s).create_token("viewer", "viewer's", "test")
    auth.login()
    page = client.post("/auth/tokens", data={"name": "ci", "csrf_token": auth.token()})
    token = re.search(r'id="new-token">([^<]+)<', page.get_data(as_text=True))
    assert token
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    assert client.get("/api/v1/hosts", headers=bearer).status_code == 200
    with store_of(app) as s:
        (mine,) = Accounts(s).list_tokens("admin")
        (other,) = Accounts(s).list_tokens("viewer")
    resp = client.post(f"/auth/tokens/{other.id}/revoke", data={"csrf_token": auth.token()})
    assert resp.status_code == 404 and "not one of yours" in resp.get_data(as_text=True)
    other_bearer = {"Authorization": f"Bearer {theirs}"}
    assert client.get("/api/v1/hosts", headers=other_bearer).status_code == 200
    resp = client.post(f"/auth/tokens/{mine.id}/revoke", data={"csrf_token": auth.token()})
    assert resp.status_code == 302
    assert client.get("/api/v1/hosts", headers=bearer).status_code == 401
