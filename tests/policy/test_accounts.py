"""gateway/policy/accounts.py on a fresh policy store: password hashes, users and
authentication, API tokens stored hashed, expiring and revoked; sessions ended by password
and role changes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.policy.accounts import (
    MAX_TOKEN_DAYS,
    SCRYPT_N,
    Accounts,
    check_password,
    hash_password,
)
from gateway.policy.sessions import Sessions
from gateway.policy.store import Store, StoreError


@pytest.fixture
def accounts(store: Store) -> Accounts:
    return Accounts(store)


def test_password_hash_is_slow_salted_and_checked() -> None:
    a, b = hash_password("password-1"), hash_password("password-1")
    assert a != b and a.startswith("scrypt$") and "password-1" not in a
    assert check_password("password-1", a) and not check_password("password-2", a)
    assert not check_password("x", "garbage")


def test_users_and_authentication(accounts: Accounts, store: Store) -> None:
    accounts.create_user("alice", "long-password", "viewer", "root")
    with pytest.raises(StoreError, match="already exists"):
        accounts.create_user("alice", "long-password", "viewer", "root")
    with pytest.raises(StoreError, match="role"):
        accounts.create_user("bob", "long-password", "god", "root")
    with pytest.raises(StoreError, match="8 characters"):
        accounts.create_user("bob", "short", "admin", "root")
    assert accounts.authenticate("alice", "wrong-password") is None
    assert accounts.authenticate("nobody", "long-password") is None
    user = accounts.authenticate("alice", "long-password")
    assert user is not None and user.role == "viewer" and user.last_login is not None
    accounts.set_password("alice", "another-password", "root")
    assert accounts.authenticate("alice", "long-password") is None
    assert accounts.authenticate("alice", "another-password") is not None
    raw = store.db.execute("SELECT password_hash FROM users").fetchone()[0]
    assert "another-password" not in raw
    assert [u.username for u in accounts.list_users()] == ["alice"]
    accounts.delete_user("alice", "root")
    assert accounts.user_count() == 0
    actions = [a.action for a in reversed(store.list_audit())]
    assert actions == ["user.create", "user.password", "user.delete"]


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "long-password"), ("alice", "wrong-password"), ("nobody", "long-password")],
)
def test_every_login_costs_one_scrypt_run(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch, username: str, password: str
) -> None:
    """Unknown names, wrong and right passwords do the same work (no timing oracle)."""
    accounts.create_user("alice", "long-password", "viewer", "root")
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    accounts.authenticate(username, password)
    assert calls == [SCRYPT_N]


def test_tokens_are_stored_hashed_and_revocable(accounts: Accounts, store: Store) -> None:
    accounts.create_user("alice", "long-password", "admin", "root")
    token = accounts.create_token("alice", "ci", "alice")
    assert token.startswith("vpt_")
    assert token not in str(store.db.execute("SELECT * FROM api_tokens").fetchall())
    user = accounts.token_user(token)
    assert user is not None and user.username == "alice"
    assert accounts.token_user(token + "x") is None
    (t,) = accounts.list_tokens("alice")
    assert t.last_used is not None
    accounts.revoke_token(t.id, "alice")
    assert accounts.token_user(token) is None
    with pytest.raises(StoreError):
        accounts.create_token("nobody", "x", "root")


def test_tokens_expire(accounts: Accounts) -> None:
    accounts.create_user("alice", "long-password", "admin", "root")
    token = accounts.create_token("alice", "ci", "root", days=1)
    (t,) = accounts.list_tokens("alice")
    assert t.expires is not None and t.expires - t.created == pytest.approx(86400)
    assert accounts.token_user(token, now=t.expires - 1) is not None
    assert accounts.token_user(token, now=t.expires) is None
    for days in (0, -1, MAX_TOKEN_DAYS + 1):
        with pytest.raises(StoreError, match="api_tokens.expires"):
            accounts.create_token("alice", "ci", "root", days=days)


def test_sessions_end_on_logout_password_role_and_deletion(
    accounts: Accounts, store: Store
) -> None:
    sessions = Sessions(store, idle=600, lifetime=3600)
    alice = accounts.create_user("alice", "long-password", "admin", "root")
    now = 1_000_000.0
    sid = sessions.begin(alice.id, now)
    assert sid not in str(store.db.execute("SELECT * FROM ui_sessions").fetchall())
    assert sessions.user_id(sid, now + 1) == alice.id
    sessions.end(sid)  # logout
    assert sessions.user_id(sid, now + 2) is None
    for change in (
        lambda: accounts.set_password("alice", "another-password", "root"),
        lambda: accounts.set_role("alice", "viewer", "root"),
        lambda: accounts.delete_user("alice", "root"),
    ):
        sid = sessions.begin(alice.id, now)
        change()
        assert sessions.user_id(sid, now + 1) is None
    # the same name created again (SQLite may even give it the same id): the old session
    # ended with the deletion and does not come back
    accounts.create_user("alice", "long-password", "viewer", "root")
    assert sessions.user_id(sid, now) is None


def test_sessions_have_an_idle_timeout_and_an_absolute_lifetime(
    accounts: Accounts, store: Store
) -> None:
    sessions = Sessions(store, idle=600, lifetime=3600)
    uid = accounts.create_user("alice", "long-password", "admin", "root").id
    now = 1_000_000.0
    idle = sessions.begin(uid, now)
    assert sessions.user_id(idle, now + 599) == uid
    assert sessions.user_id(idle, now + 599 + 601) is None  # 601 s without a request
    busy = sessions.begin(uid, now)
    t = now
    while t + 300 < now + 3600:
        t += 300
        assert sessions.user_id(busy, t) == uid  # a request every 5 minutes keeps it alive
    assert sessions.user_id(busy, now + 3601) is None  # ... until its lifetime is over
