"""gateway/policy/accounts.py on a fresh policy store: password hashes, users and
authentication, login throttling, API tokens stored hashed."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.policy.accounts import (
    SCRYPT_N,
    THROTTLE_FREE_FAILURES,
    Accounts,
    check_password,
    hash_password,
)
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


def test_throttling_backs_off_exponentially_per_user_and_source(accounts: Accounts) -> None:
    now = 1_000_000.0
    for i in range(THROTTLE_FREE_FAILURES):
        assert accounts.login_wait("alice", "198.18.0.10", now + i) == 0
        accounts.record_login("alice", "198.18.0.10", False, now + i)
    last = now + THROTTLE_FREE_FAILURES - 1
    assert accounts.login_wait("alice", "198.18.0.99", last) == pytest.approx(1.0)  # per user
    assert accounts.login_wait("carol", "198.18.0.10", last) == pytest.approx(1.0)  # per source
    assert accounts.login_wait("carol", "198.18.0.99", last) == 0
    accounts.record_login("alice", "198.18.0.10", False, last + 1)
    accounts.record_login("alice", "198.18.0.10", False, last + 3)
    assert accounts.login_wait("alice", "x", last + 3) == pytest.approx(4.0)  # 2**2
    accounts.record_login("alice", "198.18.0.10", True, last + 10)
    assert accounts.login_wait("alice", "x", last + 10) == 0  # a success resets the count


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
