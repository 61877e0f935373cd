"""gateway/policy/store.py on a fresh SQLite file per test: migrations, accounts, throttling,
tokens, audit rows for every change, exceptions folded into the policy snapshot."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.policy.store import (
    MIGRATIONS,
    THROTTLE_FREE_FAILURES,
    Store,
    StoreError,
    check_password,
    hash_password,
)  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "vpatch.db")
    yield s  # type: ignore[misc]
    s.close()


def test_migrations_set_version_wal_and_foreign_keys(store: Store, tmp_path: Path) -> None:
    assert store.schema_version == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    Store(tmp_path / "vpatch.db").close()  # reopening does not re-run migrations
    conn = sqlite3.connect(tmp_path / "vpatch.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "vpatch.db")


def test_password_hash_is_slow_salted_and_checked() -> None:
    a, b = hash_password("password-1"), hash_password("password-1")
    assert a != b and a.startswith("scrypt$") and "password-1" not in a
    assert check_password("password-1", a) and not check_password("password-2", a)
    assert not check_password("x", "garbage")


def test_users_and_authentication(store: Store) -> None:
    store.create_user("alice", "long-password", "viewer", "root")
    with pytest.raises(StoreError, match="already exists"):
        store.create_user("alice", "long-password", "viewer", "root")
    with pytest.raises(StoreError, match="role"):
        store.create_user("bob", "long-password", "god", "root")
    with pytest.raises(StoreError, match="8 characters"):
        store.create_user("bob", "short", "admin", "root")
    assert store.authenticate("alice", "wrong-password") is None
    assert store.authenticate("nobody", "long-password") is None
    user = store.authenticate("alice", "long-password")
    assert user is not None and user.role == "viewer" and user.last_login is not None
    store.set_password("alice", "another-password", "root")
    assert store.authenticate("alice", "long-password") is None
    assert store.authenticate("alice", "another-password") is not None
    raw = store.db.execute("SELECT password_hash FROM users").fetchone()[0]
    assert "another-password" not in raw


def test_throttling_backs_off_exponentially_per_user_and_source(store: Store) -> None:
    now = 1_000_000.0
    for i in range(THROTTLE_FREE_FAILURES):
        assert store.login_wait("alice", "198.18.0.10", now + i) == 0
        store.record_login("alice", "198.18.0.10", False, now + i)
    last = now + THROTTLE_FREE_FAILURES - 1
    assert store.login_wait("alice", "198.18.0.99", last) == pytest.approx(1.0)  # per user
    assert store.login_wait("carol", "198.18.0.10", last) == pytest.approx(1.0)  # per source
    assert store.login_wait("carol", "198.18.0.99", last) == 0
    store.record_login("alice", "198.18.0.10", False, last + 1)
    store.record_login("alice", "198.18.0.10", False, last + 3)
    assert store.login_wait("alice", "x", last + 3) == pytest.approx(4.0)  # 2**2
    store.record_login("alice", "198.18.0.10", True, last + 10)
    assert store.login_wait("alice", "x", last + 10) == 0  # a success resets the count


def test_tokens_are_stored_hashed_and_revocable(store: Store) -> None:
    store.create_user("alice", "long-password", "admin", "root")
    token = store.create_token("alice", "ci", "alice")
    assert token.startswith("vpt_")
    assert token not in str(store.db.execute("SELECT * FROM api_tokens").fetchall())
    user = store.token_user(token)
    assert user is not None and user.username == "alice"
    assert store.token_user(token + "x") is None
    (t,) = store.list_tokens("alice")
    assert t.last_used is not None
    store.revoke_token(t.id, "alice")
    assert store.token_user(token) is None
    with pytest.raises(StoreError):
        store.create_token("nobody", "x", "root")


def test_every_change_is_audited_with_before_and_after(store: Store) -> None:
    g = store.create_group("web", "front", "alice")
    h = store.save_host("198.18.0.20", "alice", "srv", g.id)
    store.save_host("198.18.0.20", "bob", "srv2", g.id)
    store.set_assignment(9000100, "host", h.id, "detect", "alice")
    store.set_assignment(9000100, "host", h.id, "prevent", "bob")
    store.set_assignment(9000100, "host", h.id, None, "bob")
    e = store.add_exception("198.18.0.20", "fp", "alice", 9000100, port=80)
    store.delete_exception(e.id, "bob")
    store.delete_host(h.id, "bob")
    store.delete_group(g.id, "bob")
    audit = list(reversed(store.list_audit()))
    assert [(a.actor, a.action) for a in audit] == [
        ("alice", "group.create"), ("alice", "host.save"), ("bob", "host.save"),
        ("alice", "assignment.set"), ("bob", "assignment.set"), ("bob", "assignment.set"),
        ("alice", "exception.add"), ("bob", "exception.delete"), ("bob", "host.delete"),
        ("bob", "group.delete"),
    ]  # fmt: skip
    assert audit[2].detail["before"]["name"] == "srv" and audit[2].detail["after"]["name"] == "srv2"
    assert [(a.detail["before"], a.detail["after"]) for a in audit[3:6]] == [
        (None, "detect"),
        ("detect", "prevent"),
        ("prevent", None),
    ]


def test_validation_names_the_value(store: Store) -> None:
    with pytest.raises(StoreError, match="'not-an-ip'"):
        store.save_host("not-an-ip", "a")
    with pytest.raises(StoreError, match="'sometimes'"):
        store.set_assignment(1, "global", None, "sometimes", "a")
    with pytest.raises(StoreError, match="no such host"):
        store.set_assignment(1, "host", 42, "off", "a")
    with pytest.raises(StoreError, match="reason"):
        store.add_exception("198.18.0.20", "  ", "a")
    with pytest.raises(StoreError, match="past"):
        store.add_exception("198.18.0.20", "r", "a", expires_at=time.time() - 1)


def test_snapshot_folds_active_host_exceptions_in_as_off(store: Store) -> None:
    g = store.create_group("web", "", "a")
    h = store.save_host("198.18.0.20", "a", group_id=g.id)
    store.save_host("198.18.5.0/24", "a")
    store.set_assignment(9000100, "global", None, "prevent", "a")
    store.set_assignment(9000100, "host", h.id, "prevent", "a")
    store.add_exception("198.18.0.20", "fp", "a", rule_id=9000100)
    store.add_exception("198.18.0.30", "fp", "a", rule_id=9000100, expires_at=time.time() + 3600)
    store.add_exception("198.18.0.40", "port only", "a", rule_id=9000100, port=80)
    ex = store.add_exception(
        "198.18.0.50", "expired", "a", rule_id=9000100, expires_at=time.time() + 3600
    )
    hosts, groups, assignments = store.policy_snapshot(
        now=ex.expires_at + 1 if ex.expires_at else None
    )
    by_addr = {x.address: x for x in hosts}
    assert "198.18.5.0/24" in by_addr and [gr.name for gr in groups] == ["web"]
    host_modes = {(by_addr_inv, a.mode, a.source) for a in assignments if a.scope == "host"
                  for by_addr_inv in [next(x.address for x in hosts if x.id == a.scope_id)]}  # fmt: skip
    assert ("198.18.0.20", "off", "exception") in host_modes
    assert ("198.18.0.20", "prevent", "admin") not in host_modes  # the exception replaced it
    assert "198.18.0.40" not in by_addr  # port-scoped: not part of the snapshot


def test_compiled_policy_accepts_the_snapshot(store: Store) -> None:
    compiled = pytest.importorskip("gateway.policy.compiled")
    h = store.save_host("198.18.0.20", "a")
    store.set_assignment(9000100, "host", h.id, "off", "a")
    store.set_assignment(9000100, "global", None, "detect", "a")
    policy = compiled.CompiledPolicy(*store.policy_snapshot())
    from gateway.match.rules import load_rules

    rule = load_rules(
        [Path(__file__).resolve().parents[2] / "rules" / "vpatch-test-split.yaml"]
    ).by_id[9000100]
    assert policy.mode("198.18.0.20", rule).value == "off"
    assert policy.mode("198.18.0.21", rule).value == "detect"
