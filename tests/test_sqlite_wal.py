"""Processes that open one new SQLite database at the same instant all succeed (WAL switch race).

Without gateway/sqlite_wal.py, 6 processes opening a new policy store together failed with
"database is locked" 3-6 times in 180 opens; here 120 opens must all succeed.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import VpatchError
from gateway.events.sink import EventSink
from gateway.policy.store import Store

PROCESSES = 6
FILES = 20


def _open_policy_store(path: Path) -> None:
    with Store(path) as store:
        store.audit("test", "open", str(path), None, None)


def _open_event_store(path: Path) -> None:
    EventSink(path, None).close()


def _opener(target: Any, path: Path, barrier: Any, results: Any) -> None:
    barrier.wait()  # all at once: the race is on the first open of the file
    try:
        target(path)
        results.put("")
    except (VpatchError, sqlite3.Error) as err:  # reported to the test, which names it
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.parametrize("target", [_open_policy_store, _open_event_store])
def test_processes_creating_one_database_together_all_open_it(tmp_path: Path, target: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    errors: list[str] = []
    for n in range(FILES):
        path = tmp_path / f"{n}.db"
        barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [ctx.Process(target=_opener, args=(target, path, barrier, results))
                 for _ in range(PROCESSES)]  # fmt: skip
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        errors += [e for e in outcomes if e]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", path
    assert errors == [], errors
