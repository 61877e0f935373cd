"""Event sink: a background writer that stores events in SQLite (WAL) and EVE JSON lines.

What it does: `EventSink(db_path, jsonl_path, max_queue, aggregate_window, aggregate_keys)`
starts one writer thread. The packet path calls `emit(event)`, which hands the event to the
`Aggregator` (gateway/events/aggregate.py: per (rule, source, destination, blocked) window,
the first event passed on at once, the rest counted into one summary record with `count`) and
puts what it passes on a bounded `queue.Queue`; the writer turns records into EVE JSON
(`gateway.events.eve.to_eve`) and writes them in batches: one SQLite transaction and one
JSON-lines flush per batch (at most `MAX_BATCH` records: what is queued when the writer takes
the first, so a lone event is written at once), and every BATCH_WAIT writes the summaries of
the windows that closed. The
constructor's default is no aggregation (window 0); the gateway's sinks take
`events.aggregate_window` and `events.aggregate_keys`.

What it guarantees:
- `emit()` never blocks and never raises; it never waits on the database. When the queue is
  full the event goes back into its aggregation window (`unsent`) and is written with that
  window's summary; only without aggregation (or after `close()`) is it dropped and counted
  in `dropped`.
- Every event accepted by `emit()` before `close()` is written when `close()` returns, as a
  record of its own or in a summary's count (`events` = sum of counts written + held + lost).
- A store that fails (disk full, read-only, locked past the timeout) does not stop anything:
  the failure is counted (`write_errors`), shown (`failing`, `last_error`, `stats()`, which the
  worker publishes to `vpatch status`), logged once when it starts and once when it ends (and
  every FAILURE_LOG_INTERVAL while it lasts); the rows that did not commit are kept and
  retried with the next batch, up to `max_queue` rows; past that the oldest are given up and
  counted in `lost`. JSON-lines write failures are counted the same way (those lines are not
  retried).
- The event store is created with an explicit mode whatever the umask (0600, or 0660 for the
  group `vpatch` that the UI's user is in, when it exists; directory 0750/0770:
  gateway/statefiles.py), and an existing one that every user may read, or a world-writable
  directory, is refused (InsecureFileError, as a failing store when not strict). The EVE
  JSON-lines file is created 0640.
- The SQLite file is in WAL mode, so readers (the admin UI, a test) can read while the writer
  writes. Schema (table `events`; indexed columns for the UI's filters, plus the full EVE JSON):
      id INTEGER PRIMARY KEY, timestamp TEXT (ISO 8601 UTC, sorts as time), flow_id INTEGER,
      event_type TEXT, signature_id INTEGER, signature TEXT, action TEXT ("allowed"|"blocked"),
      rule_action TEXT, severity INTEGER, src_ip TEXT, src_port INTEGER, dest_ip TEXT,
      dest_port INTEGER, proto TEXT, app_proto TEXT, cves TEXT (",CVE-A,CVE-B," so
      `cves LIKE '%,CVE-2017-0144,%'` finds one), eve TEXT (the EVE JSON object), count INTEGER
      (events a record stands for), gateway TEXT (config `gateway.name` of the writer)
- The database (and its directory) is created and checked in the constructor, so a bad path
  fails at start-up with a ConfigError naming it, not later in the thread. With
  `strict=False` (the workers' sinks: a worker that cannot start inspects nothing) a store
  that cannot be opened (read-only, full, gone) is reported as failing instead, the events
  are held as for a failing write, and the writer tries to open it again every
  REOPEN_INTERVAL seconds.
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
from gateway.database import AnyConn, Db, connect, db_errors
from gateway.errors import ConfigError
from gateway.events.aggregate import Aggregator
from gateway.events.eve import Event, to_eve
from gateway.events.rollup import add_rollups, backfill_pending, backfill_step, create_rollups
from gateway.statefiles import InsecureFileError, check_file, create_file, make_dir, shared_gid

__all__ = [
    "BATCH_WAIT",
    "DEFAULT_MAX_QUEUE",
    "FAILURE_LOG_INTERVAL",
    "MAX_BATCH",
    "SCHEMA",
    "EventSink",
    "create_store",
    "store_rows",
]

DEFAULT_MAX_QUEUE: Final = EventsConfig().max_queue  # declared as events.max_queue
DEFAULT_AGGREGATE_KEYS: Final = EventsConfig().aggregate_keys  # events.aggregate_keys
_COUNT: Final = 16  # index of the count column in a row (_INSERT, _row)
MAX_BATCH: Final = 500  # events per SQLite transaction / JSONL flush
BATCH_WAIT: Final = 0.2  # seconds the writer waits for an event before closing due windows
JSONL_MODE: Final = 0o640  # the EVE file: log shippers may read it through its group
FAILURE_LOG_INTERVAL: Final = 60.0  # seconds between log lines while the store keeps failing
REOPEN_INTERVAL: Final = 2.0  # seconds between attempts to open a store that cannot be opened

log = logging.getLogger("vpatch.events")

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
    eve TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    gateway TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS events_flow_id ON events(flow_id);
CREATE INDEX IF NOT EXISTS events_signature_id ON events(signature_id);
CREATE INDEX IF NOT EXISTS events_action ON events(action);
CREATE INDEX IF NOT EXISTS events_src ON events(src_ip, src_port);
CREATE INDEX IF NOT EXISTS events_dest ON events(dest_ip, dest_port);
CREATE INDEX IF NOT EXISTS events_cves ON events(cves);
"""
_LATE_COLUMNS: Final = {  # added to stores created by older versions
    "count": "count INTEGER NOT NULL DEFAULT 1",
    "gateway": "gateway TEXT NOT NULL DEFAULT ''",
}

_INSERT: Final = (
    "INSERT INTO events (timestamp, flow_id, event_type, signature_id, signature, action,"
    " rule_action, severity, src_ip, src_port, dest_ip, dest_port, proto, app_proto, cves, eve,"
    " count, gateway) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_STOP: Final = object()


OPEN_TIMEOUT_S: Final = 10.0  # how long a writer waits for another's lock, WAL switch included


def _connect(path: Path) -> Db:
    conn = connect(path, OPEN_TIMEOUT_S)  # WAL: several workers start at once and race
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
    except db_errors():
        conn.close()
        raise
    return conn


def create_store(conn: AnyConn) -> None:
    """The events table, its indexes and the rollups, unless they exist (autocommit `conn`);
    a table from before aggregation gets its `count` column (1 for the rows it holds), one
    from before several gateways its `gateway` column ('')."""
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    for name, definition in _LATE_COLUMNS.items():
        if name in columns:
            continue
        try:
            conn.execute(f"ALTER TABLE events ADD COLUMN {definition}")
        except sqlite3.OperationalError as err:  # another worker added it first
            if "duplicate column" not in str(err):
                raise
    conn.execute("CREATE INDEX IF NOT EXISTS events_gateway ON events(gateway, timestamp)")
    create_rollups(conn)


def store_rows(conn: AnyConn, rows: list[tuple[Any, ...]]) -> None:
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


def _row(eve: dict[str, Any], text: str, gateway: str = "") -> tuple[Any, ...]:
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
        int(eve["vpatch"].get("count", 1)),
        gateway,
    )


class EventSink:
    """Aggregator + bounded queue + writer thread to SQLite and/or an EVE JSON-lines file."""

    def __init__(
        self,
        db_path: Path | str | None,
        jsonl_path: Path | str | None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        aggregate_window: float = 0.0,
        aggregate_keys: int = DEFAULT_AGGREGATE_KEYS,
        strict: bool = True,
        gateway: str = "",
    ) -> None:
        check_value("events.max_queue", max_queue, "EventSink")
        check_value("events.aggregate_window", aggregate_window, "EventSink")
        check_value("events.aggregate_keys", aggregate_keys, "EventSink")
        self.db_path = Path(db_path) if db_path is not None else None
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.max_queue = max_queue
        self.gateway = gateway  # each row's `gateway` (config gateway.name)
        self.aggregator = Aggregator(aggregate_window, aggregate_keys)
        self.emitted = 0  # events accepted by emit()
        self.written = 0  # records written (each standing for `count` events)
        self.written_events = 0  # events those records stand for
        self.dropped = 0  # events refused by emit() (queue full without aggregation, closed)
        self.lost = 0  # events given up after failed writes (retry bound reached)
        self.write_errors = 0  # failed batch writes (SQLite or JSON lines)
        self.failing = False  # the last write failed
        self.last_error = ""
        self._retry: list[tuple[Any, ...]] = []  # rows whose SQLite commit failed
        self._failing_since = 0.0
        self._last_failure_log = 0.0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._backfill = False
        self._db_ready = self.db_path is None
        self._jsonl: IO[str] | None = None
        self._next_open = 0.0
        self._strict = strict
        error = self._open()
        if error is not None:
            if strict:
                raise ConfigError(error)
            self._health(error)
        self._thread = threading.Thread(target=self._run, name="vpatch-event-sink", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        """Aggregate and queue one event for writing; never blocks (see the module comment)."""
        if self._closed:
            self.dropped += 1
            return
        self.emitted += 1
        record = self.aggregator.add(event)
        if record is None:
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            if self.aggregator.window > 0:
                self.aggregator.unsent(record)
            else:
                self.emitted -= 1
                self.dropped += 1

    def stats(self) -> dict[str, int | bool | str]:
        """The sink's counters and health (published by the worker, shown by `vpatch status`)."""
        agg = self.aggregator
        return {
            "emitted": self.emitted,
            "written": self.written,
            "written_events": self.written_events,
            "aggregated": agg.aggregated,
            "folded": agg.folded,
            "open_windows": len(agg),
            "queued": self._queue.qsize(),
            "retry_rows": len(self._retry),
            "dropped": self.dropped,
            "lost": self.lost,
            "write_errors": self.write_errors,
            "failing": self.failing,
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued and every aggregation window so far (retrying a failing
        store once more), then stop the writer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> str | None:
        """Create/check the store and open the JSON-lines file where not done yet; the error
        (naming the key and path) or None."""
        if not self._db_ready and self.db_path is not None:
            try:
                gid = shared_gid()
                make_dir(self.db_path.parent, gid)
                create_file(self.db_path, gid)  # SQLite gives -wal and -shm the same mode
                check_file(self.db_path, "the event store")
                self._backfill = _create(self.db_path)
                self._db_ready = True
            except InsecureFileError as err:
                if self._strict:
                    raise  # refused at start-up, naming the file and its mode
                return str(err)
            except db_errors(OSError) as err:
                return f"events.sqlite {self.db_path}: cannot open: {err}"
        if self._jsonl is None and self.jsonl_path is not None:
            try:
                make_dir(self.jsonl_path.parent)
                create_file(self.jsonl_path, mode=JSONL_MODE)
                self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as err:
                return f"events.jsonl {self.jsonl_path}: cannot open: {err}"
        return None

    def _connection(self, conn: Db | None) -> Db | None:
        """The writer's connection, (re)opened when missing, and the JSON-lines file reopened
        when missing (at most every REOPEN_INTERVAL while that keeps failing); None while the
        store cannot be opened."""
        want_db = conn is None and self.db_path is not None
        if not want_db and (self._jsonl is not None or self.jsonl_path is None):
            return conn
        now = time.monotonic()
        if now < self._next_open:
            return conn
        self._next_open = now + REOPEN_INTERVAL
        error = self._open()
        if error is None and want_db and self._db_ready and self.db_path is not None:
            try:
                conn = _connect(self.db_path)
            except db_errors() as err:
                error = f"events.sqlite {self.db_path}: cannot open: {err}"
        if error is not None:
            self.write_errors += 1
            self._health(error)
        return conn

    def _run(self) -> None:
        conn: Db | None = None
        try:
            stop = False
            while not stop:
                conn = self._connection(conn)
                if conn is not None and self._backfill:
                    self._backfill_step(conn)
                batch: list[Event] = []
                try:
                    item = self._queue.get(timeout=BATCH_WAIT)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    stop = True
                elif item is not None:
                    batch.append(item)  # type: ignore[arg-type]
                    while len(batch) < MAX_BATCH:  # what is queued already, without waiting:
                        try:  # a lone event is written at once (a killed worker loses less)
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if item is _STOP:
                            stop = True
                            break
                        batch.append(item)  # type: ignore[arg-type]
                batch.extend(self.aggregator.close_all() if stop else self.aggregator.close_due())
                if stop and conn is None and self.db_path is not None:
                    self._next_open = 0.0  # one last attempt to open the store
                    conn = self._connection(conn)
                if batch or self._retry:
                    self._write(conn, batch)
        finally:
            if conn is not None:
                conn.close()
            if self._jsonl is not None:
                with contextlib.suppress(OSError):
                    self._jsonl.close()

    def _backfill_step(self, conn: Db) -> None:
        try:
            self._backfill = backfill_step(conn, time.time())
        except db_errors():
            self.write_errors += 1  # tried again after the next batch

    def _write(self, conn: Db | None, batch: list[Event]) -> None:
        rows = []
        lines = []
        for event in batch:
            try:
                eve = to_eve(event)
                text = json.dumps(eve, ensure_ascii=True, separators=(",", ":"))
            except (TypeError, ValueError, KeyError, AttributeError):
                self.write_errors += 1
                self.lost += event.count
                continue
            rows.append(_row(eve, text, self.gateway))
            lines.append(text)
        error: str | None = None
        if conn is not None and (rows or self._retry):
            error = self._store(conn, rows)
        elif conn is None and self.db_path is not None:  # the store could not be opened
            self._hold(self._retry + rows)
            error = self.last_error or f"events.sqlite {self.db_path}: not open"
        jsonl_ok = True
        if self._jsonl is not None and lines:
            try:
                self._jsonl.write("\n".join(lines) + "\n")
                self._jsonl.flush()
            except OSError as err:
                jsonl_ok = False
                self.write_errors += 1
                error = error or f"{self.jsonl_path}: {err}"
        if self.db_path is None:  # the JSON lines are the only record
            if jsonl_ok:
                self._count_written(rows)
            else:
                self._give_up(rows)
        self._health(error)

    def _store(self, conn: Db, rows: list[tuple[Any, ...]]) -> str | None:
        """Commit the rows held from failed batches and `rows`; keep them on failure (up to
        max_queue rows, the oldest given up past it). The error text, or None."""
        pending = self._retry + rows
        try:
            conn.execute("BEGIN IMMEDIATE")
            store_rows(conn, pending)
            conn.execute("COMMIT")
        except db_errors() as err:
            self.write_errors += 1
            with contextlib.suppress(*db_errors()):
                conn.execute("ROLLBACK")
            self._hold(pending)
            return f"events.sqlite {self.db_path}: {err}"
        self._retry = []
        self._count_written(pending)
        return None

    def _hold(self, pending: list[tuple[Any, ...]]) -> None:
        """Keep rows for the next attempt: at most max_queue, the oldest given up past it."""
        over = len(pending) - self.max_queue
        if over > 0:
            self._give_up(pending[:over])
            pending = pending[over:]
        self._retry = pending

    def _count_written(self, rows: list[tuple[Any, ...]]) -> None:
        self.written += len(rows)
        self.written_events += sum(int(row[_COUNT]) for row in rows)

    def _give_up(self, rows: list[tuple[Any, ...]]) -> None:
        self.lost += sum(int(row[_COUNT]) for row in rows)

    def _health(self, error: str | None) -> None:
        """Track failing/recovered, with one log line at each change (and every
        FAILURE_LOG_INTERVAL while failing)."""
        now = time.monotonic()
        if error is None:
            if self.failing:
                log.warning(
                    "event store writable again after %.0f s (%d write errors, %d events lost)",
                    now - self._failing_since, self.write_errors, self.lost,
                )  # fmt: skip
                self.failing = False
            return
        self.last_error = error
        if not self.failing:
            self.failing = True
            self._failing_since = self._last_failure_log = now
            log.error("event store failing, inspection goes on: %s", error)
        elif now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            log.error(
                "event store still failing (%d rows held for retry, %d events lost): %s",
                len(self._retry), self.lost, error,
            )  # fmt: skip
