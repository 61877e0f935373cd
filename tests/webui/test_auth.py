"""webui/auth.py through Flask's test client: login (wrong password refused and audited, the
form needs its CSRF token, throttling per user and per source), logout, and API tokens made on
the tokens page (an admin sees and revokes every user's, with their expiry; also through the
API)."""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.accounts import Accounts
from tests.webui.conftest import ADMIN_PW, VIEWER_PW, Auth, api_token, store_of
from webui import security as security_module
from webui.auth import client_address


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


def test_admins_see_and_revoke_every_users_tokens(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    with store_of(app) as s:
        theirs = Accounts(s).create_token("viewer", "viewer's", "test", days=3)
    auth.login()
    page = client.post(
        "/auth/tokens", data={"name": "ci", "expires": "", "csrf_token": auth.token()}
    )
    token = re.search(r'id="new-token">([^<]+)<', page.get_data(as_text=True))
    assert token
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    assert client.get("/api/v1/hosts", headers=bearer).status_code == 200
    with store_of(app) as s:
        (mine,) = Accounts(s).list_tokens("admin")
        (other,) = Accounts(s).list_tokens("viewer")
    assert mine.expires is None and other.expires is not None
    page = client.get("/auth/tokens").get_data(as_text=True)  # every user's, with the expiry
    assert "viewer&#39;s" in page and ">never</td>" in page
    expiry = time.strftime("%Y-%m-%d", time.gmtime(other.expires))
    assert re.search(rf'class="expires">{expiry} \d\d:\d\d UTC<', page)
    other_bearer = {"Authorization": f"Bearer {theirs}"}
    assert client.get("/api/v1/hosts", headers=other_bearer).status_code == 200
    resp = client.post(f"/auth/tokens/{other.id}/revoke", data={"csrf_token": auth.token()})
    assert resp.status_code == 302
    assert client.get("/api/v1/hosts", headers=other_bearer).status_code == 401
    resp = client.post("/auth/tokens/999999/revoke", data={"csrf_token": auth.token()})
    assert resp.status_code == 404
    resp = client.post(f"/auth/tokens/{mine.id}/revoke", data={"csrf_token": auth.token()})
    assert resp.status_code == 302
    assert client.get("/api/v1/hosts", headers=bearer).status_code == 401


def test_token_expiry_from_the_page_and_its_bounds(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    auth.login()
    page = client.post(
        "/auth/tokens", data={"name": "ci", "expires": "0.5", "csrf_token": auth.token()}
    )
    assert page.status_code == 200
    with store_of(app) as s:
        (mine,) = Accounts(s).list_tokens("admin")
    assert mine.expires is not None and 0.49 * 86400 < mine.expires - mine.created <= 43200
    for bad in ("soon", "0", "-1", "99999"):
        resp = client.post(
            "/auth/tokens", data={"name": "x", "expires": bad, "csrf_token": auth.token()}
        )
        assert resp.status_code == 400 and "expires" in resp.get_data(as_text=True), bad


def test_viewers_see_only_their_own_tokens(client: FlaskClient, auth: Auth, app: Flask) -> None:
    with store_of(app) as s:
        Accounts(s).create_token("admin", "admin's", "test")
        Accounts(s).create_token("viewer", "viewer's", "test")
    auth.login("viewer", VIEWER_PW)
    page = client.get("/auth/tokens").get_data(as_text=True)
    assert "viewer&#39;s" in page and "admin&#39;s" not in page and "Revoke" not in page


def test_api_lists_and_revokes_tokens(client: FlaskClient, app: Flask) -> None:
    admin = api_token(app, "admin")
    viewer = api_token(app, "viewer")
    listed = client.get("/api/v1/tokens", headers=admin).get_json()
    assert sorted(t["username"] for t in listed) == ["admin", "viewer"]
    assert set(listed[0]) == {"id", "username", "name", "created", "last_used", "expires"}
    own = client.get("/api/v1/tokens", headers=viewer).get_json()
    assert [t["username"] for t in own] == ["viewer"]
    (viewers,) = own
    assert client.delete(f"/api/v1/tokens/{viewers['id']}", headers=viewer).status_code == 403
    resp = client.delete(f"/api/v1/tokens/{viewers['id']}", headers=admin)
    assert resp.status_code == 200 and resp.get_json() == {"ok": True}
    assert client.get("/api/v1/tokens", headers=viewer).status_code == 401  # it was revoked
    resp = client.delete(f"/api/v1/tokens/{viewers['id']}", headers=admin)
    assert resp.status_code == 404 and "not found" in resp.get_json()["error"]


# -- sessions (issue 15.4) ---------------------------------------------------------------------


def _saved_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("vpatch_session")
    assert cookie is not None
    return cookie.value


def _replay(app: Flask, cookie: str) -> int:
    """Status of /rules/ for a fresh browser that presents a saved session cookie."""
    other = app.test_client()
    other.set_cookie("vpatch_session", cookie)
    return other.get("/rules/").status_code


def test_a_saved_cookie_dies_with_logout(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    saved = _saved_cookie(client)
    assert _replay(app, saved) == 200
    client.post("/auth/logout", data={"csrf_token": auth.token()})
    assert _replay(app, saved) == 302


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.set_password("admin", "new-admin-password", "test"),
        lambda a: a.set_role("admin", "viewer", "test"),
        lambda a: a.set_disabled("admin", True, "test"),
        lambda a: a.reset_password("admin", "test"),
        lambda a: (
            a.delete_user("admin", "test"),
            a.create_user("admin", ADMIN_PW, "viewer", "test"),
        ),  # fmt: skip
    ],
    ids=["password", "role", "disable", "reset", "delete-and-recreate"],
)
def test_a_saved_cookie_dies_with_account_changes(
    client: FlaskClient, auth: Auth, app: Flask, change: Any
) -> None:
    auth.login()
    saved = _saved_cookie(client)
    with store_of(app) as s:
        Accounts(s).create_user("admin2", ADMIN_PW, "admin", "test")  # not the last admin
        change(Accounts(s))
    assert _replay(app, saved) == 302
    assert client.get("/rules/").status_code == 302


def test_session_idle_timeout_and_lifetime(
    client: FlaskClient, auth: Auth, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [time.time()]
    monkeypatch.setattr(security_module.time, "time", lambda: clock[0])
    app.config.update(SESSION_IDLE=600.0, SESSION_LIFETIME=3600.0)
    auth.login()
    clock[0] += 599
    assert client.get("/rules/").status_code == 200
    clock[0] += 601
    assert client.get("/rules/").status_code == 302
    auth.login()
    start = clock[0]
    while clock[0] + 300 < start + 3600:
        clock[0] += 300
        assert client.get("/rules/").status_code == 200
    clock[0] = start + 3601
    assert client.get("/rules/").status_code == 302


def test_session_cookie_names_the_user_id_not_the_name(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    with client.session_transaction() as sess:
        assert "user" not in sess and isinstance(sess["uid"], int) and sess["sid"]
        sess["uid"] = sess["uid"] + 1  # another user's id with this session: refused
    assert client.get("/rules/").status_code == 302


# -- throttling (issue 15.2) ---------------------------------------------------------------------


def _login_from(client: FlaskClient, auth: Auth, address: str, user: str, pw: str) -> int:
    return int(
        client.post(
            "/auth/login",
            data={"username": user, "password": pw, "csrf_token": auth.csrf()},
            headers={"X-Forwarded-For": address},
        ).status_code
    )


@pytest.fixture
def behind_proxy(app: Flask) -> Flask:
    """The test client connects from 127.0.0.1: make that the trusted reverse proxy."""
    app.config["TRUSTED_PROXIES"] = (ipaddress.ip_network("127.0.0.1/32"),)
    return app


def test_attacker_behind_the_same_proxy_does_not_lock_out_the_admin(
    behind_proxy: Flask, client: FlaskClient, auth: Auth
) -> None:
    attacker = behind_proxy.test_client()
    attacker_auth = Auth(attacker)
    for i in range(20):  # one client polling unknown names and wrong passwords
        _login_from(attacker, attacker_auth, "198.18.0.66", f"user{i}", "x" * 9)
        _login_from(attacker, attacker_auth, "198.18.0.66", "admin", "x" * 9)
    assert _login_from(attacker, attacker_auth, "198.18.0.66", "admin", ADMIN_PW) == 429
    # the admin comes through the same proxy from another address: logged in
    assert _login_from(client, auth, "198.18.0.10", "admin", ADMIN_PW) == 302


def test_attack_from_many_addresses_does_not_stop_the_admins_browser(
    behind_proxy: Flask, client: FlaskClient, auth: Auth
) -> None:
    assert _login_from(client, auth, "198.18.0.10", "admin", ADMIN_PW) == 302  # yesterday
    client.post("/auth/logout", data={"csrf_token": auth.token()})
    attacker = behind_proxy.test_client()
    attacker_auth = Auth(attacker)
    for i in range(40):  # unknown names and wrong admin passwords, each from a new address
        _login_from(attacker, attacker_auth, f"198.18.1.{i + 1}", f"user{i}", "x" * 9)
        _login_from(attacker, attacker_auth, f"198.18.2.{i + 1}", "admin", "x" * 9)
    # a new browser has to wait a little (the account is being guessed) ...
    assert _login_from(attacker, attacker_auth, "198.18.3.1", "admin", ADMIN_PW) == 429
    # ... the admin's own browser logs in now, even from an address the attacker used
    assert _login_from(client, auth, "198.18.2.1", "admin", ADMIN_PW) == 302
    assert client.get("/rules/").status_code == 200


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    for i in range(3):  # spoofed X-Forwarded-For from an untrusted peer: one client still
        _login_from(client, auth, f"198.18.0.{i + 1}", f"nobody{i}", "x" * 9)
    assert _login_from(client, auth, "198.18.0.99", "admin", ADMIN_PW) == 429


@pytest.mark.parametrize(
    ("forwarded", "client_is"),
    [
        ("198.18.0.7", "198.18.0.7"),
        ("6.6.6.6, 198.18.0.7", "198.18.0.7"),  # what the client wrote itself is not believed
        ("198.18.0.7, 10.0.0.1", "198.18.0.7"),  # 10.0.0.1 is a trusted proxy too
        ("garbage, 198.18.0.7", "198.18.0.7"),
        ("198.18.0.7, garbage", "127.0.0.1"),  # a trusted hop wrote nonsense: stop at it
        ("", "127.0.0.1"),
    ],
)
def test_client_address_is_the_rightmost_untrusted_hop(
    app: Flask, forwarded: str, client_is: str
) -> None:
    app.config["TRUSTED_PROXIES"] = tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.1/32", "10.0.0.0/8")
    )
    with app.test_request_context(
        "/auth/login",
        headers={"X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    ):
        assert client_address() == client_is
