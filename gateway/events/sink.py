"""Event sink: a background writer that stores events in SQLite (WAL) and EVE JSON lines.

What it does: `EventSink(db_path, jsonl_path, max_queue)` starts one writer thread. The packet
path calls `emit(event)`, which only puts the record on a bounded `queue.Queue`; the writer
turns events into EVE JSON (`gateway.events.eve.to_eve`) and writes them in batches: one SQLite
transaction and one JSON-lines flush per batch (at most `MAX_BATCH` events, or what arrived
within `BATCH_WAIT` seconds).

What it guarantees:
- `emit()` never blocks and never raises: when the queue is full the event is dropped and
  counted in `dropped`, and per rule in `dropped_by_rule` (signature id -> count; at most
  MAX_DROPPED_RULES ids, the rest under id 0), which the writer logs as one warning line per
  batch it writes afterwards, so a storm loses rows, never the count of what happened.
  `emit()` returns whether the event was queued.
- Every event accepted by `emit()` before `close()` is written when `close()` returns (unless
  the disk fails: write failures are counted in `write_errors` and the writer keeps going).
- The SQLite file is in WAL mode, so readers (the admin UI, a test) can read while the writer
  writes. Schema (table `events`; indexed columns for the UI's filters, plus the full EVE JSON):
      id INTEGER PRIMARY KEY, timestamp TEXT (ISO 8601 UTC, sorts as time), flow_id INTEGER,
      event_type TEXT, signature_id INTEGER, signature TEXT, action TEXT ("allowed"|"blocked"),
      rule_action TEXT, severity INTEGER, src_ip TEXT, src_port INTEGER, dest_ip TEXT,
      dest_port INTEGER, proto TEXT, app_proto TEXT, cves TEXT (",CVE-A,CVE-B," so
      `cves LIKE '%,CVE-2017-0144,%'` finds one), eve TEXT (the EVE JSON object)
- The database (and its directory) is created and checked in the constructor, so a bad path
  fails at start-up with a ConfigError naming it, not later in the thread. It is created with
  an explicit mode whatever the umask (0600, or 0660 for the group `vpatch` that the UI's user
  is in, when it exists; directory 0750/0770: gateway/statefiles.py), and an existing one that
  every user may read, or a world-writable directory, is refused (InsecureFileError). The
  EVE JSON-lines file is created 0640.
- The dashboard's rollups (gateway/events/rollup.py) are written in the same transaction as the
  events they count (`store_rows`); events stored before the rollups existed are counted by
  the writer in chunks, between batches (`rollup.backfill_step`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Any, Final, Self

from gateway.config import EventsConfig, check_value
from gateway.errors import ConfigError
from gateway.events.eve import Event, to_eve
from gateway.events.rollup import add_rollups, backfill_pending, backfill_step, create_rollups
from gateway.sqlite_wal import use_wal
from gateway.statefiles import check_file, create_file, make_dir, shared_gid

__all__ = [
    "BATCH_WAIT",
    "DEFAULT_MAX_QUEUE",
    "MAX_BATCH",
    "MAX_DROPPED_RULES",
    "SCHEMA",
    "EventSink",
    "create_store",
    "store_rows",
]

log = logging.getLogger("vpatch.events")

DEFAULT_MAX_QUEUE: Final = EventsConfig().max_queue  # declared as events.max_queue
MAX_BATCH: Final = 500  # events per SQLite transaction / JSONL flush
MAX_DROPPED_RULES: Final = 1024  # rule ids counted apart in dropped_by_rule
BATCH_WAIT: Final = 0.2  # seconds the writer waits to fill a batch
JSONL_MODE: Final = 0o640  # the EVE file: log shippers may read it through its group

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    flow_id INTEGER,
    event_type TEXT NOT NULL,
    signature_id INTEGER,
    signature TEXT,
    action TEXT,
    rule_action TEXT,
    severity INTEGER,
    src_ip TEXT,
    src_port INTEGER,
    dest_ip TEXT,
    dest_port INTEGER,
    proto TEXT,
    app_proto TEXT,
    cves TEXT,
    eve TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS events_flow_id ON events(flow_id);
CREATE INDEX IF NOT EXISTS events_signature_id ON events(signature_id);
CREATE INDEX IF NOT EXISTS events_action ON events(action);
CREATE INDEX IF NOT EXISTS events_src ON events(src_ip, src_port);
CREATE INDEX IF NOT EXISTS events_dest ON events(dest_ip, dest_port);
CREATE INDEX IF NOT EXISTS events_cves ON events(cves);
"""

_INSERT: Final = (
    "INSERT INTO events (timestamp, flow_id, event_type, signature_id, signature, action,"
    " rule_action, severity, src_ip, src_port, dest_ip, dest_port, proto, app_proto, cves, eve)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_STOP: Final = object()


OPEN_TIMEOUT_S: Final = 10.0  # how long a writer waits for another's lock, WAL switch included


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=OPEN_TIMEOUT_S, isolation_level=None)
    try:
        use_wal(conn, OPEN_TIMEOUT_S)  # several workers start at once and race to create it
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def create_store(conn: sqlite3.Connection) -> None:
    """The events table, its indexes and the rollups, unless they exist (autocommit `conn`)."""
    conn.executescript(SCHEMA)
    create_rollups(conn)


def store_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert events rows (`_row`) and count them in the rollups, in the caller's transaction."""
    conn.executemany(_INSERT, rows)
    add_rollups(conn, rows)


def _create(path: Path) -> bool:
    """Open (creating if needed) the store and its schema; True when old events still need
    counting in the rollups."""
    conn = _connect(path)
    try:
        create_store(conn)
        return backfill_pending(conn)
    finally:
        conn.close()


def _row(eve: dict[str, Any], text: str) -> tuple[Any, ...]:
    alert = eve["alert"]
    cves = alert["metadata"]["cve"]
    return (
        eve["timestamp"],
        eve["flow_id"],
        eve["event_type"],
        alert["signature_id"],
        alert["signature"],
        alert["action"],
        eve["vpatch"]["rule_action"],
        alert["severity"],
        eve["src_ip"],
        eve["src_port"],
        eve["dest_ip"],
        eve["dest_port"],
        eve["proto"],
        eve["app_proto"],
        "," + ",".join(cves) + "," if cves else "",
        text,
    )


class EventSink:
    """Bounded queue + writer thread to SQLite and/or an EVE JSON-lines file."""

    def __init__(
        self,
        db_path: Path | str | None,
        jsonl_path: Path | str | None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        check_value("events.max_queue", max_queue, "EventSink")
        self.db_path = Path(db_path) if db_path is not None else None
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.max_queue = max_queue
        self.emitted = 0
        self.written = 0
        self.dropped = 0
        self.dropped_by_rule: dict[int, int] = {}
        self._dropped_logged = 0
        self.write_errors = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._backfill = False
        if self.db_path is not None:
            try:
                gid = shared_gid()
                make_dir(self.db_path.parent, gid)
                create_file(self.db_path, gid)  # SQLite gives -wal and -shm the same mode
                check_file(self.db_path, "the event store")
                self._backfill = _create(self.db_path)
            except (OSError, sqlite3.Error) as err:
                raise ConfigError(f"events.sqlite {self.db_path}: cannot open: {err}") from err
        self._jsonl: IO[str] | None = None
        if self.jsonl_path is not None:
            try:
                make_dir(self.jsonl_path.parent)
                create_file(self.jsonl_path, mode=JSONL_MODE)
                self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as err:
                raise ConfigError(f"events.jsonl {self.jsonl_path}: cannot open: {err}") from err
        self._thread = threading.Thread(target=self._run, name="vpatch-event-sink", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> bool:
        """Queue one event for writing; never blocks (drops and counts when full). True when
        queued."""
        if not self._closed:
            try:
                self._queue.put_nowait(event)
                self.emitted += 1
                return True
            except queue.Full:
                pass
        self.dropped += 1
        by_rule = self.dropped_by_rule
        sid = event.signature_id
        if sid not in by_rule and len(by_rule) >= MAX_DROPPED_RULES:
            sid = 0
        by_rule[sid] = by_rule.get(sid, 0) + 1
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then stop the writer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        conn = _connect(self.db_path) if self.db_path is not None else None
        try:
            stop = False
            while not stop:
                if conn is not None and self._backfill:
                    self._backfill_step(conn)
                try:
                    item = self._queue.get(timeout=BATCH_WAIT if self._backfill else None)
                except queue.Empty:
                    continue
                batch: list[Event] = []
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
                    while len(batch) < MAX_BATCH:
                        try:
                            item = self._queue.get(timeout=BATCH_WAIT)
                        except queue.Empty:
                            break
                        if item is _STOP:
                            stop = True
                            break
                        batch.append(item)  # type: ignore[arg-type]
                if batch:
                    self._write(conn, batch)
                self._log_dropped()
        finally:
            if conn is not None:
                conn.close()
            if self._jsonl is not None:
                self._jsonl.close()

    def _backfill_step(self, conn: sqlite3.Connection) -> None:
        try:
            self._backfill = backfill_step(conn, time.time())
        except sqlite3.Error:
            self.write_errors += 1  # tried again after the next batch

    def _log_dropped(self) -> None:
        """One warning for the events dropped since the last one, counted per rule."""
        dropped = self.dropped
        if dropped == self._dropped_logged:
            return
        self._dropped_logged = dropped
        rules = ", ".join(f"{sid}: {n}" for sid, n in sorted(dict(self.dropped_by_rule).items()))
        log.warning(
            "%d events dropped so far (event queue of %d full); per rule id: %s",
            dropped, self.max_queue, rules,
        )  # fmt: skip

    def _write(self, conn: sqlite3.Connection | None, batch: list[Event]) -> None:
        rows = []
        lines = []
        for event in batch:
            try:
                eve = to_eve(event)
                text = json.dumps(eve, ensure_ascii=True, separators=(",", ":"))
            except (TypeError, ValueError, KeyError, AttributeError):
                self.write_errors += 1
                continue
            rows.append(_row(eve, text))
            lines.append(text)
        ok = True
        if conn is not None and rows:
            try:
                conn.execute("BEGIN IMMEDIATE")
                store_rows(conn, rows)
                conn.execute("COMMIT")
            except sqlite3.Error:
                ok = False
                self.write_errors += 1
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        if self._jsonl is not None and lines:
            try:
                self._jsonl.write("\n".join(lines) + "\n")
                self._jsonl.flush()
            except OSError:
                ok = False
                self.write_errors += 1
        if ok:
            self.written += len(lines)
