"""The shared event store on PostgreSQL, and the forwarder that fills it from one gateway's spool.

With `database.url` set, every gateway keeps writing its events to its local SQLite store
(`events.sqlite`, gateway/events/sink.py): that file is the spool, on the gateway's own disk,
so the packet path never waits on the network and nothing is lost while the database is away.
One `EventForwarder` per gateway (a thread of `vpatch run`) copies the spool's rows, in id order,
to the shared `events` table, tagged with the gateway's name, and counts them in the shared
rollups (the dashboard's tables, gateway/events/rollup.py).

What it guarantees:
- exactly once: each batch (at most BATCH rows) is one PostgreSQL transaction holding the
  rows, their rollup counts and the gateway's cursor (`event_forward.last_id`, the last spool
  id forwarded); the cursor is read back from the database before each batch, so a batch that
  failed (server stopped, connection lost mid-commit) is sent again from where the committed
  one ended, never twice (`UNIQUE(gateway, local_id)` also refuses a second copy);
- spool ids only grow in commit order (the sinks' transactions are serialised, `BEGIN
  IMMEDIATE`), so a row committed to the spool after the cursor passed it cannot exist;
- a failing database is retried every `interval`, reported (`failing`, `last_error`,
  `backlog`: spool rows not yet forwarded, in `stats()` and the gateway's heartbeat) and
  logged once when it starts and once when it ends; the spool keeps everything meanwhile
  (its bound is the spool's disk, as for the SQLite event store).
Schema: EVENT_MIGRATIONS, component "events" of the shared database (gateway/database.py).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Final

from gateway.database import DatabaseError, Db, connect, db_errors, describe, migrate
from gateway.events.rollup import add_rollups

__all__ = ["BATCH", "EVENT_MIGRATIONS", "EventForwarder", "open_shared_events"]

BATCH: Final = 1000  # spool rows per PostgreSQL transaction

log = logging.getLogger("vpatch.events")

EVENT_MIGRATIONS: Final = (
    # 1: events of every gateway (the SQLite store's columns + gateway and the spool's id),
    # the dashboard's rollups, and each gateway's forwarding cursor
    """
    CREATE TABLE events(
        id BIGSERIAL PRIMARY KEY, timestamp TEXT NOT NULL, flow_id BIGINT,
        event_type TEXT NOT NULL, signature_id BIGINT, signature TEXT, action TEXT,
        rule_action TEXT, severity BIGINT, src_ip TEXT, src_port BIGINT, dest_ip TEXT,
        dest_port BIGINT, proto TEXT, app_proto TEXT, cves TEXT, eve TEXT NOT NULL,
        count BIGINT NOT NULL DEFAULT 1, gateway TEXT NOT NULL, local_id BIGINT NOT NULL,
        UNIQUE(gateway, local_id));
    CREATE INDEX events_timestamp ON events(timestamp);
    CREATE INDEX events_gateway ON events(gateway, timestamp);
    CREATE INDEX events_signature_id ON events(signature_id);
    CREATE INDEX events_action ON events(action);
    CREATE INDEX events_src ON events(src_ip, src_port);
    CREATE INDEX events_dest ON events(dest_ip, dest_port);
    CREATE INDEX events_cves ON events(cves);
    CREATE TABLE event_minutes(
        minute BIGINT PRIMARY KEY, allowed BIGINT NOT NULL DEFAULT 0,
        blocked BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE event_tops(
        dim TEXT NOT NULL, hour BIGINT NOT NULL, key TEXT NOT NULL, label TEXT,
        n BIGINT NOT NULL, PRIMARY KEY (dim, hour, key));
    CREATE TABLE event_rollup_state(name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    CREATE TABLE event_forward(gateway TEXT PRIMARY KEY, last_id BIGINT NOT NULL);
    """,
)

_SPOOL_COLUMNS: Final = (
    "timestamp, flow_id, event_type, signature_id, signature, action, rule_action, severity,"
    " src_ip, src_port, dest_ip, dest_port, proto, app_proto, cves, eve, count"
)
_INSERT: Final = (
    f"INSERT INTO events ({_SPOOL_COLUMNS}, gateway, local_id) VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (gateway, local_id) DO NOTHING"
)


def open_shared_events(url: str) -> Db:
    """A connection to the shared event store, its schema migrated (DatabaseError, or the
    driver's error)."""
    db = connect(url)
    try:
        migrate(db, "events", EVENT_MIGRATIONS)
    except BaseException:
        db.close()
        raise
    return db


class EventForwarder:
    """Copies one gateway's spool (its local SQLite event store) to the shared store."""

    def __init__(self, spool: Path, url: str, gateway: str, interval: float) -> None:
        self.spool = spool
        self.url = url
        self.gateway = gateway
        self.interval = interval
        self.forwarded = 0  # rows committed to the shared store by this process
        self.backlog = 0  # spool rows past the cursor at the last look
        self.failing = False
        self.last_error = ""
        self._db: Db | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vpatch-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """One last round (what the sinks wrote before they closed), then stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "backlog": self.backlog,
            "failing": self.failing,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop.is_set()
                while self.forward_once() >= BATCH:  # catch up without waiting
                    pass
                if stopping:
                    return
                self._stop.wait(self.interval)
        finally:
            if self._db is not None:
                self._db.close()

    def forward_once(self) -> int:
        """Forward one batch; the number of rows forwarded (0 on failure or nothing new)."""
        if not self.spool.exists():
            return 0
        try:
            if self._db is None:
                self._db = open_shared_events(self.url)
            sent = self._batch(self._db)
        except db_errors(DatabaseError, OSError) as err:
            self._failed(err)
            return 0
        if self.failing:
            log.warning("shared event store %s reachable again", describe(self.url))
            self.failing = False
        return sent

    def _batch(self, db: Db) -> int:
        found = db.execute(
            "SELECT last_id FROM event_forward WHERE gateway = ?", (self.gateway,)
        ).fetchone()
        cursor = int(found[0]) if found is not None else 0
        spool = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=10)
        try:
            spool.execute("PRAGMA busy_timeout = 10000")
            rows = spool.execute(
                f"SELECT {_SPOOL_COLUMNS}, id FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, BATCH),
            ).fetchall()
            newest = spool.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        finally:
            spool.close()
        self.backlog = max(0, int(newest) - cursor)
        if not rows:
            return 0
        tagged = [(*r[:17], self.gateway, r[17]) for r in rows]
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, tagged)
            add_rollups(db, [(*r[:17], self.gateway) for r in rows])
            db.execute(
                "INSERT INTO event_forward (gateway, last_id) VALUES (?, ?) ON CONFLICT(gateway)"
                " DO UPDATE SET last_id = excluded.last_id",
                (self.gateway, rows[-1][17]),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.forwarded += len(rows)
        self.backlog = max(0, int(newest) - int(rows[-1][17]))
        return len(rows)

    def _failed(self, err: BaseException) -> None:
        self.last_error = f"shared event store {describe(self.url)}: {err}"
        if self._db is not None:
            with contextlib.suppress(*db_errors()):
                self._db.close()
            self._db = None
        if not self.failing:
            self.failing = True
            log.error("%s; events stay in the spool %s", self.last_error, self.spool)
