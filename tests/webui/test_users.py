"""webui/users.py and the forced password change through Flask's test client: an admin creates
a viewer (temporary password, changed at the first login), changes roles, disables, resets and
removes accounts, with the last enabled admin protected; a viewer reaches none of it; a user
whose password was reset reaches nothing but the password page until it is changed."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.accounts import Accounts
from tests.webui.conftest import Auth, store_of


def _user_id(app: Flask, name: str) -> int:
    with store_of(app) as s:
        user = Accounts(s).get_user(name)
        assert user is not None
        return user.id


def _issued(page: str) -> str:
    m = re.search(r'<code id="issued-password">([^<]+)</code>', page)
    assert m, page
    return m.group(1)


def test_admin_creates_a_viewer_who_must_change_the_password(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    auth.login()
    resp = client.post("/users/", data={"username": "carol", "role": "viewer",
                                        "csrf_token": auth.token()})  # fmt: skip
    assert resp.status_code == 200
    temporary = _issued(resp.get_data(as_text=True))
    client.post("/auth/logout", data={"csrf_token": auth.token()})
    resp = auth.login("carol", temporary)
    assert resp.headers["Location"].endswith("/auth/password")
    # every other page leads to the password page; writes and JSON are refused
    assert client.get("/events/").headers["Location"].endswith("/auth/password")
    assert client.get("/dashboard/data", headers={"Accept": "application/json"}).status_code == 403
    token = auth.token_from("/auth/password")
    resp = client.post(
        "/auth/password",
        data={
            "current": temporary,
            "new": "carol-pw-22",
            "confirm": "carol-pw-2",
            "csrf_token": token,
        },
    )
    assert resp.status_code == 400 and "differ" in resp.get_data(as_text=True)
    resp = client.post(
        "/auth/password",
        data={
            "current": temporary,
            "new": "carol-pw-22",
            "confirm": "carol-pw-22",
            "csrf_token": token,
        },
    )
    assert resp.status_code == 302  # and this browser stays logged in, with a new session
    assert client.get("/events/").status_code == 200
    assert client.get("/users/").status_code == 403  # a viewer
    with store_of(app) as s:
        carol = Accounts(s).authenticate("carol", "carol-pw-22")
        assert carol is not None and not carol.must_change_password and carol.role == "viewer"


def test_admin_disables_resets_and_removes(client: FlaskClient, auth: Auth, app: Flask) -> None:
    viewer = app.test_client()
    Auth(viewer).login("viewer", "viewer-password-1")
    assert viewer.get("/events/").status_code == 200
    auth.login()
    uid = _user_id(app, "viewer")
    resp = client.post(f"/users/{uid}/disable", data={"csrf_token": auth.token()})
    assert resp.status_code == 303
    assert viewer.get("/events/").status_code == 302  # the viewer's session ended
    assert Auth(viewer).login("viewer", "viewer-password-1").status_code == 401
    page = client.get("/users/").get_data(as_text=True)
    assert 'id="user-viewer" class="disabled"' in page and "never" not in page.split(
        'id="user-admin"')[1].split("</tr>")[0]  # admin's last login is shown  # fmt: skip
    client.post(f"/users/{uid}/enable", data={"csrf_token": auth.token()})
    resp = client.post(f"/users/{uid}/reset", data={"csrf_token": auth.token()})
    temporary = _issued(resp.get_data(as_text=True))
    assert Auth(viewer).login("viewer", "viewer-password-1").status_code == 401
    assert Auth(viewer).login("viewer", temporary).headers["Location"].endswith("/auth/password")
    client.post(f"/users/{uid}/role", data={"role": "admin", "csrf_token": auth.token()})
    with store_of(app) as s:
        assert Accounts(s).get_user("viewer").role == "admin"  # type: ignore[union-attr]
    client.post(f"/users/{uid}/remove", data={"csrf_token": auth.token()})
    with store_of(app) as s:
        assert Accounts(s).get_user("viewer") is None
        actions = [e.action for e in s.list_audit(10) if e.target == "viewer"]
    assert actions[:5] == ["user.delete", "user.role", "user.reset", "user.enable",
                           "user.disable"]  # fmt: skip


def test_the_last_admin_is_protected_in_the_ui(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    uid = _user_id(app, "admin")
    for change, form in (("disable", {}), ("remove", {}), ("role", {"role": "viewer"})):
        resp = client.post(f"/users/{uid}/{change}", data={**form, "csrf_token": auth.token()},
                           follow_redirects=True)  # fmt: skip
        assert "the last enabled admin" in resp.get_data(as_text=True), change
    with store_of(app) as s:
        admin = Accounts(s).get_user("admin")
    assert admin is not None and admin.role == "admin" and not admin.disabled


def test_users_table_sorts_and_pages_through_the_url(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    with store_of(app) as s:
        for n in range(55):
            Accounts(s).create_user(f"u{n:02d}", "long-password", "viewer", "test")
    auth.login()
    first = client.get("/users/?sort=-username").get_data(as_text=True)
    names = re.findall(r'<tr id="user-([^"]+)"', first)
    assert names[:3] == ["viewer", "u54", "u53"] and len(names) == 50
    assert 'href="/users/?page=2&amp;sort=-username"' in first
    second = client.get("/users/?sort=-username&page=2").get_data(as_text=True)
    assert re.findall(r'<tr id="user-([^"]+)"', second) == ["u05", "u04", "u03", "u02", "u01",
                                                             "u00", "admin"]  # fmt: skip
    bogus = client.get("/users/?sort=password_hash").get_data(as_text=True)
    assert re.findall(r'<tr id="user-([^"]+)"', bogus)[0] == "admin"  # the default order
