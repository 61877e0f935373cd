"""Switching an SQLite connection to WAL when several processes open a new database at once.

Guarantee: `use_wal(conn, timeout_s)` returns once SQLite has run the switch (`conn` is then
in WAL mode wherever the file system allows it), or raises the `sqlite3.OperationalError` it
last saw. Turning a fresh (rollback-journal) file into WAL needs an exclusive lock, and SQLite
does not call the busy handler for it when another connection holds a lock on that file, so
`busy_timeout` does not help: the pragma fails at once with "database is locked". Here that
error is retried for up to `timeout_s`. Once the file is in WAL mode the pragma succeeds at
once, even while another connection writes, so later opens pay nothing.

Seen on the policy store, which the workers and threads of `vpatch run` and the UI can open at
about the same moment on a first start: 6 processes opening one new file together failed 3-6
times in 180 opens (tests/test_sqlite_wal.py).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Final

RETRY_S: Final = 0.02


def use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_S)
