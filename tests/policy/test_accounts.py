"""gateway/policy/accounts.py on a fresh policy store: password hashes, users and
authentication, API tokens stored hashed, expiring and revoked; sessions ended by password
and role changes; disabled accounts, password resets and the last-admin protection."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import pytest

from gateway.policy.accounts import (
    MAX_TOKEN_DAYS,
    SCRYPT_N,
    Accounts,
    LastAdminError,
    check_password,
    hash_password,
)
from gateway.policy.sessions import Sessions
from gateway.policy.store import MIGRATIONS, Store, StoreError


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
    accounts.create_user("root", "long-password", "admin", "root")  # alice is not the last admin
    alice = accounts.create_user("alice", "long-password", "admin", "root")
    now = 1_000_000.0
    sid = sessions.begin(alice.id, now)
    assert sid not in str(store.db.execute("SELECT * FROM ui_sessions").fetchall())
    assert sessions.user_id(sid, now + 1) == alice.id
    sessions.end(sid)  # logout
    assert sessions.user_id(sid, now + 2) is None
    for change in (
        lambda: accounts.set_password("alice", "another-password", "root"),
        lambda: accounts.reset_password("alice", "root"),
        lambda: accounts.set_disabled("alice", True, "root"),
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


def test_disabled_account_cannot_log_in_nor_use_its_tokens(
    accounts: Accounts, store: Store
) -> None:
    accounts.create_user("root", "long-password", "admin", "root")
    accounts.create_user("bob", "bob-password", "viewer", "root")
    token = accounts.create_token("bob", "t", "root")
    sessions = Sessions(store, idle=600, lifetime=3600)
    sid = sessions.begin(accounts.get_user("bob").id, 1_000_000.0)  # type: ignore[union-attr]
    accounts.set_disabled("bob", True, "root")
    assert sessions.user_id(sid, 1_000_001.0) is None  # the session ended with the disabling
    assert accounts.authenticate("bob", "bob-password") is None
    assert accounts.token_user(token) is None
    bob = accounts.get_user("bob")
    assert bob is not None and bob.disabled and bob.last_login is None
    accounts.set_disabled("bob", False, "root")
    assert accounts.authenticate("bob", "bob-password") is not None
    assert accounts.token_user(token) is not None
    actions = [e.action for e in store.list_audit() if e.target == "bob"]
    assert actions[:2] == ["user.enable", "user.disable"]


def test_reset_password_is_random_and_must_be_changed(accounts: Accounts, store: Store) -> None:
    accounts.create_user("bob", "bob-password", "viewer", "root")
    temporary = accounts.reset_password("bob", "root")
    assert len(temporary) >= 16 and temporary not in str(store.db.execute(
        "SELECT * FROM users").fetchall())  # fmt: skip
    assert accounts.authenticate("bob", "bob-password") is None
    bob = accounts.authenticate("bob", temporary)
    assert bob is not None and bob.must_change_password
    with pytest.raises(StoreError, match="current password is wrong"):
        accounts.change_own_password("bob", "bob-password", "new-password-2")
    with pytest.raises(StoreError, match="the old one"):
        accounts.change_own_password("bob", temporary, temporary)
    with pytest.raises(StoreError, match="at least 8"):
        accounts.change_own_password("bob", temporary, "short")
    accounts.change_own_password("bob", temporary, "new-password-2")
    bob = accounts.authenticate("bob", "new-password-2")
    assert bob is not None and not bob.must_change_password
    assert [e.action for e in store.list_audit() if e.target == "bob"][:2] == [
        "user.password", "user.reset"]  # fmt: skip


def test_last_enabled_admin_cannot_be_removed_disabled_or_demoted(
    accounts: Accounts, store: Store
) -> None:
    accounts.create_user("root", "long-password", "admin", "cli")
    accounts.create_user("bob", "bob-password", "viewer", "root")
    for change in (
        lambda: accounts.delete_user("root", "root"),
        lambda: accounts.set_disabled("root", True, "root"),
        lambda: accounts.set_role("root", "viewer", "root"),
    ):
        with pytest.raises(LastAdminError, match="'root': the last enabled admin"):
            change()
    root = accounts.get_user("root")
    assert root is not None and root.role == "admin" and not root.disabled
    # a disabled admin does not count: with `second` disabled, root is still the last one
    accounts.create_user("second", "long-password", "admin", "root")
    accounts.set_disabled("second", True, "root")
    with pytest.raises(LastAdminError):
        accounts.set_role("root", "viewer", "root")
    accounts.set_disabled("second", False, "root")
    accounts.set_role("root", "viewer", "second")  # now there is another enabled admin
    with pytest.raises(LastAdminError):
        accounts.delete_user("second", "second")
    accounts.delete_user("bob", "second")  # viewers come and go freely
    assert [u.username for u in accounts.list_users()] == ["root", "second"]


def test_migration_7_keeps_existing_accounts_enabled(tmp_path: Any) -> None:
    path = tmp_path / "old.db"
    with Store(path):
        pass
    db = sqlite3.connect(str(path))  # back to a version-6 database with one user
    db.execute("DROP TABLE users")
    db.execute("DROP TABLE policy_version")  # migration 8's
    db.execute("DROP TABLE gateways")
    db.execute("DROP TABLE tls_services")  # migration 9's
    db.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, "
               "password_hash TEXT NOT NULL, role TEXT NOT NULL, created REAL NOT NULL, "
               "last_login REAL NULL)")  # fmt: skip
    db.execute("INSERT INTO users(username, password_hash, role, created) VALUES (?,?,?,?)",
               ("old", hash_password("old-password"), "admin", 1.0))  # fmt: skip
    db.execute("PRAGMA user_version = 6")
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS) >= 7
        old = Accounts(store).authenticate("old", "old-password")
        assert old is not None and not old.disabled and not old.must_change_password
