"""gateway/policy/store.py on a fresh SQLite file per test: migrations, connection settings,
the owner-only file, transactions and the audit trail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.policy.store import MIGRATIONS, Store, StoreError, check_name


def test_migrations_set_version_wal_and_foreign_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "vpatch.db")
    assert store.schema_version == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store.close()
    Store(tmp_path / "vpatch.db").close()  # reopening does not re-run migrations
    conn = sqlite3.connect(tmp_path / "vpatch.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "vpatch.db")


def test_database_file_is_owner_only(tmp_path: Path) -> None:
    with Store(tmp_path / "vpatch.db") as store:
        assert Path(store.path).stat().st_mode & 0o777 == 0o600


def test_postgresql_migrations_are_versioned_once_and_refuse_a_newer_schema(
    postgres_url: str,
) -> None:
    with Store(postgres_url) as store:
        assert store.postgres and store.schema_version == len(MIGRATIONS)
        row = store.db.execute("SELECT version FROM schema_versions WHERE component = 'policy'")
        assert row.fetchone()[0] == len(MIGRATIONS)
    with Store(postgres_url) as store:  # reopening runs nothing again
        assert store.db.execute("SELECT COUNT(*) FROM policy_version").fetchone()[0] == 1
        store.db.execute("UPDATE schema_versions SET version = 99 WHERE component = 'policy'")
    with pytest.raises(StoreError, match="newer"):
        Store(postgres_url)


def test_every_audited_change_bumps_the_policy_version_and_a_record_does_not(
    store: Store,
) -> None:
    before = store.policy_version()
    with store.transaction():
        store.audit("alice", "thing.change", "thing 1", None, {"a": 1})
    assert store.policy_version() == before + 1
    store.record("alice", "gateway.reload", "gateway")
    assert store.policy_version() == before + 1


def test_audit_rows_are_written_with_the_transaction_or_not_at_all(store: Store) -> None:
    with store.transaction():
        store.audit("alice", "thing.change", "thing 1", {"a": 1}, {"a": 2})
    with pytest.raises(RuntimeError), store.transaction():
        store.audit("bob", "thing.change", "thing 2", None, None)
        raise RuntimeError("the change failed")
    store.record("carol", "gateway.reload", "gateway", {"ok": True})
    assert store.audit_count() == 2
    newest, oldest = store.list_audit()
    assert (oldest.actor, oldest.action, oldest.target) == ("alice", "thing.change", "thing 1")
    assert oldest.detail == {"before": {"a": 1}, "after": {"a": 2}}
    assert (newest.actor, newest.detail) == ("carol", {"before": None, "after": {"ok": True}})
    assert [e.actor for e in store.list_audit(limit=1, offset=1)] == ["alice"]


def test_check_name_strips_and_bounds() -> None:
    assert check_name("  web ", "groups.name") == "web"
    with pytest.raises(StoreError, match="groups.name '  '"):
        check_name("  ", "groups.name")
    with pytest.raises(StoreError, match="1..128"):
        check_name("x" * 129, "groups.name")
