"""The dialect layer (gateway/database.py): queries written in SQLite's dialect as PostgreSQL
reads them, rows by position and name on both, URLs told from paths and passwords hidden."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.database import (
    PgRow,
    connect,
    db_errors,
    describe,
    integrity_errors,
    is_url,
    table_exists,
    target_arg,
    to_postgres,
)


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = '?%'", "SELECT * FROM t WHERE a = %s AND b = '?%%'"),
        ("UPDATE t SET a = :a WHERE id = :id", "UPDATE t SET a = %(a)s WHERE id = %(id)s"),
        ("SELECT 'it''s :x ?'", "SELECT 'it''s :x ?'"),
        ("INSERT OR IGNORE INTO t(a) VALUES (?)",
         "INSERT INTO t(a) VALUES (%s) ON CONFLICT DO NOTHING"),
        ("SELECT 1 FROM t WHERE s IS ? AND n IS NOT ?",
         "SELECT 1 FROM t WHERE s IS NOT DISTINCT FROM %s AND n IS DISTINCT FROM %s"),
        ("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, ts REAL)",
         "CREATE TABLE t(id BIGSERIAL PRIMARY KEY, n BIGINT NOT NULL, ts DOUBLE PRECISION)"),
        ("CREATE TABLE k(a TEXT, PRIMARY KEY (a)) WITHOUT ROWID",
         "CREATE TABLE k(a TEXT, PRIMARY KEY (a))"),
        ("SELECT x FROM t WHERE y LIKE ?", "SELECT x FROM t WHERE y LIKE %s"),
    ],
)  # fmt: skip
def test_sqlite_dialect_as_postgresql_reads_it(sqlite: str, postgres: str) -> None:
    assert to_postgres(sqlite) == postgres


def test_rows_read_by_position_and_name() -> None:
    row = PgRow((1, "a"), {"id": 0, "name": 1})
    assert (row[0], row["name"], list(row), row.keys(), len(row)) == (1, "a", [1, "a"],
                                                                     ["id", "name"], 2)  # fmt: skip
    assert dict(zip(row.keys(), row, strict=True)) == {"id": 1, "name": "a"}


def test_urls_paths_and_hidden_passwords() -> None:
    url = "postgresql://vpatch:s3cret@db.example/vpatch"
    assert is_url(url) and not is_url(Path("/var/lib/vpatch/vpatch.db"))
    assert describe(url) == "postgresql://vpatch:***@db.example/vpatch"
    assert target_arg("postgres:///x") == "postgres:///x" and target_arg("a.db") == Path("a.db")


def test_the_same_statements_on_both(db_target: object) -> None:
    db = connect(db_target)  # type: ignore[arg-type]
    try:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)")
        cur = db.execute("INSERT INTO t(name, n) VALUES (?, ?)", ("a", 1))
        assert cur.lastrowid == 1
        db.execute("INSERT OR IGNORE INTO t(name, n) VALUES (?, ?)", ("a", 2))
        db.execute("UPDATE t SET n = :n WHERE name = :name", {"n": 5, "name": "a"})
        row = db.execute("SELECT * FROM t WHERE name IS ?", ("a",)).fetchone()
        assert (row["id"], row["name"], row["n"]) == (1, "a", 5)
        assert table_exists(db, "t") and not table_exists(db, "nope")
    finally:
        db.close()


def test_the_driver_errors_on_both(db_target: object) -> None:
    """A duplicate key is caught as `integrity_errors()` and a bad statement as `db_errors()`
    on either driver (psycopg's classes count once it is loaded, by `connect`)."""
    db = connect(db_target)  # type: ignore[arg-type]
    try:
        db.execute("CREATE TABLE u(name TEXT UNIQUE)")
        db.execute("INSERT INTO u(name) VALUES (?)", ("a",))
        with pytest.raises(integrity_errors()):
            db.execute("INSERT INTO u(name) VALUES (?)", ("a",))
        with pytest.raises(db_errors()):
            db.execute("SELECT nope FROM u")
        assert db_errors(OSError)[0] is OSError and sqlite3.Error in db_errors()
    finally:
        db.close()


def test_psycopg_is_loaded_only_for_a_postgresql_store(tmp_path: Path) -> None:
    """A queue worker's imports and a SQLite store leave psycopg unloaded (about 22 MB of RSS
    per process, issue 16); the error tuples then hold sqlite3's classes only."""
    code = (
        "import sys, gateway.intake.nfqueue\n"
        "from gateway.database import connect, db_errors, integrity_errors\n"
        f"connect({str(tmp_path / 'x.db')!r}).execute('SELECT 1')\n"
        "assert 'psycopg' not in sys.modules, 'psycopg loaded'\n"
        "assert len(db_errors()) == 1 and len(integrity_errors()) == 1\n"
        "import psycopg\n"
        "assert db_errors()[1] is psycopg.Error\n"
        "assert integrity_errors()[1] is psycopg.IntegrityError\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
