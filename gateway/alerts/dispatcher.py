"""The alert dispatcher: tails the events SQLite store and sends alerts through the channels.

It runs in its own thread of `vpatch run` (or anywhere else: `poll(now)` does one round and is
what the tests drive), reads the event store read-only and never touches the packet path: the
workers only hand events to their sink, and a slow or dead receiver delays nothing but this
thread. Guarantees:
- Only events written after the dispatcher started are sent (it starts at the store's last id).
- Per channel: only `alert` events (and lockdown's `drop` events, which were alerts before
  firewall events existed) whose EVE severity is <= the channel's `min_severity`; a
  token bucket (`rate_per_min`, `burst`) limits sends; what it holds back is counted and sent
  as one summary message as soon as a token is free again (at the next poll).
- Bounds: at most MAX_EVENTS_PER_POLL events read per poll; channels are re-read from the
  policy store every CHANNEL_REFRESH seconds (a changed rate resets that channel's bucket).
- A failed send is counted (`failures`), logged with the channel's name, and the message
  waits in that channel's outbox (memory, at most OUTBOX_LIMIT messages: the oldest goes first
  when it is full). While a channel has an outbox, new messages join it in order instead of
  being tried one by one against a dead receiver; the outbox is retried after RETRY_DELAYS
  (5 s, 30 s, 2 min, then every 5 min). A message still undelivered RETRY_FOR seconds after its
  first failure, or pushed out of a full outbox, is given up: counted (`dropped`) and logged.
- Durable state (`state_db`, optional; `vpatch run` keeps it beside the event store): the
  outboxes and the id of the last event read survive a restart. A restarted dispatcher first
  sends what the last one read but could not deliver (at once, oldest first, each still given
  up RETRY_FOR seconds after its first failure, measured on the wall clock), then the events
  written after its last read (those the workers flushed as `vpatch run` stopped included),
  instead of starting at the newest event. The state is written in one transaction at the end
  of every poll that changed it. An unreadable or unwritable state file is logged with its
  path and reason and the dispatcher goes on in memory; a stored message that does not parse
  is given up and counted.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.alerts.channels import (
    AlertMessage,
    AlertSendError,
    Channel,
    list_channels,
    message_from_eve,
    send,
    summary_message,
)
from gateway.alerts.ratelimit import TokenBucket
from gateway.database import Target, target_exists
from gateway.policy.store import Store
from gateway.statefiles import create_file

log = logging.getLogger("vpatch.alerts")

MAX_EVENTS_PER_POLL = 1000
POLL_INTERVAL = 0.5  # seconds between polls of the event store
CHANNEL_REFRESH = 2.0  # seconds between re-reads of the channel table
OUTBOX_LIMIT = 200  # undelivered messages kept per channel
RETRY_DELAYS = (5.0, 30.0, 120.0, 300.0)  # seconds before the 1st, 2nd, 3rd, later retries
RETRY_FOR = 3600.0  # seconds after its first failure that a message is given up
MAX_RETRY_SENDS = 100  # messages of one outbox sent per poll once the receiver answers again

Sender = Callable[[Channel, AlertMessage], None]


@dataclass
class Outbox:
    """A channel's undelivered messages, oldest first, each with the time it first failed."""

    messages: deque[tuple[float, AlertMessage]] = field(default_factory=deque)
    failed_tries: int = 0  # consecutive failed retries
    next_try: float = 0.0


def alert_state_path(events_db: Path) -> Path:
    """Where `vpatch run` keeps the dispatcher's durable state: beside the event store, named
    after it (events.db -> events.alert-state.db)."""
    return events_db.with_name(f"{events_db.stem}.alert-state.db")


_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    events_db TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    channel_id INTEGER NOT NULL,
    first_failed REAL NOT NULL,  -- wall clock (Unix time) of the first failed send
    message TEXT NOT NULL        -- AlertMessage fields as JSON
);
"""


class DispatcherState:
    """The dispatcher's durable part: read cursor and outboxes in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ok = True

    def _fail(self, doing: str, err: Exception) -> None:
        if self.ok:
            log.error(
                "alert state %s: cannot %s (%s); undelivered alerts are kept in memory only",
                self.path, doing, err,
            )  # fmt: skip
        self.ok = False

    def _connect(self) -> sqlite3.Connection:
        create_file(self.path)  # owner-only whatever the umask: it holds alert texts
        conn = sqlite3.connect(str(self.path), timeout=5)
        conn.executescript(_STATE_SCHEMA)
        return conn

    def load(self, events_db: Path) -> tuple[int | None, list[tuple[int, float, str]]]:
        """(last event id read from `events_db` or None, [(channel, wall time, message)])."""
        if not self.path.exists():
            return None, []
        try:
            conn = self._connect()
            try:
                row = conn.execute(
                    "SELECT last_id FROM cursor WHERE events_db = ?", (str(events_db),)
                ).fetchone()
                rows = conn.execute(
                    "SELECT channel_id, first_failed, message FROM outbox ORDER BY seq"
                ).fetchall()
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as err:
            self._fail("read it", err)
            return None, []
        last = int(row[0]) if row is not None else None
        return last, [(int(c), float(t), str(m)) for c, t, m in rows]

    def save(self, events_db: Path, last_id: int, outbox: list[tuple[int, float, str]]) -> None:
        try:
            conn = self._connect()
            try:
                with conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO cursor (events_db, last_id) VALUES (?, ?)",
                        (str(events_db), last_id),
                    )
                    conn.execute("DELETE FROM outbox")
                    conn.executemany(
                        "INSERT INTO outbox (channel_id, first_failed, message) VALUES (?, ?, ?)",
                        outbox,
                    )
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as err:
            self._fail("write it", err)
            return
        self.ok = True


_MESSAGE_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "title": (str,), "text": (str,), "severity": (int,),
    "timestamp": (int, float), "event": (dict, type(None)), "suppressed": (dict, type(None)),
}  # fmt: skip


def _message_from_json(text: str) -> AlertMessage:
    """A stored AlertMessage; ValueError/TypeError naming the field when it is not one."""
    data: Any = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    if set(data) != set(_MESSAGE_TYPES):
        raise ValueError(f"fields {sorted(data)} instead of {sorted(_MESSAGE_TYPES)}")
    for name, types in _MESSAGE_TYPES.items():
        if not isinstance(data[name], types) or isinstance(data[name], bool):
            raise TypeError(f"field {name!r} has type {type(data[name]).__name__}")
    return AlertMessage(**data)


class Dispatcher:
    def __init__(
        self,
        events_db: Path,
        policy_db: Target,
        sender: Sender = send,
        state_db: Path | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.events_db = events_db
        self.policy_db = policy_db
        self.sender = sender
        self.state = DispatcherState(state_db) if state_db is not None else None
        self.wall_clock = wall_clock  # stored failure times are wall-clock, `now` is monotonic
        self._restored = False
        self._saved: tuple[int | None, int] = (None, 0)  # (last_id, outbox changes) last saved
        self._changes = 0  # outbox changes so far
        self._resume_from: int | None = None  # last event id read before a restart
        self.last_id: int | None = None
        self.buckets: dict[int, tuple[tuple[float, int], TokenBucket]] = {}
        self.channels: list[Channel] = []
        self.channels_read = -1e18
        self.sent = 0
        self.suppressed = 0
        self.failures = 0
        self.dropped = 0
        self.outboxes: dict[int, Outbox] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round ----------------------------------------------------------------------------

    def _events(self) -> list[tuple[int, str, str]]:
        if not self.events_db.exists():
            if self.last_id is None:
                self.last_id = 0
            return []
        conn = sqlite3.connect(f"file:{self.events_db}?mode=ro", uri=True, timeout=5)
        try:
            if self.last_id is None:
                newest = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
                if self._resume_from is None or self._resume_from > newest:
                    self.last_id = newest  # first start, or the store was replaced: no history
                    return []
                self.last_id = self._resume_from
            rows = conn.execute(
                "SELECT id, event_type, eve FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (self.last_id, MAX_EVENTS_PER_POLL),
            ).fetchall()
        except sqlite3.OperationalError as err:  # table not created yet
            log.debug("event store %s: %s", self.events_db, err)
            if self.last_id is None:
                self.last_id = 0
            return []
        finally:
            conn.close()
        if rows:
            self.last_id = int(rows[-1][0])
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def _refresh_channels(self, now: float) -> None:
        if now - self.channels_read < CHANNEL_REFRESH:
            return
        self.channels_read = now
        if not target_exists(self.policy_db):
            self.channels = []
            return
        with Store(self.policy_db) as store:
            self.channels = [c for c in list_channels(store) if c.enabled]
        live = {c.id for c in self.channels}
        for cid in [cid for cid in self.outboxes if cid not in live]:
            self.dropped += len(self.outboxes.pop(cid).messages)  # channel removed or disabled
            self._changes += 1

    def _bucket(self, ch: Channel) -> TokenBucket:
        key = (ch.rate_per_min, ch.burst)
        held = self.buckets.get(ch.id)
        if held is None or held[0] != key:
            held = (key, TokenBucket(ch.rate_per_min / 60.0, ch.burst))
            self.buckets[ch.id] = held
        return held[1]

    def _send(self, ch: Channel, msg: AlertMessage) -> bool:
        try:
            self.sender(ch, msg)
        except AlertSendError as err:
            self.failures += 1
            log.warning("alert not delivered: %s", err)
            return False
        self.sent += 1
        return True

    def _deliver(self, ch: Channel, msg: AlertMessage, now: float) -> None:
        box = self.outboxes.get(ch.id)
        if box is not None:  # the receiver is failing: keep the order, do not hammer it
            self._hold(ch, box, now, msg)
        elif not self._send(ch, msg):
            box = self.outboxes[ch.id] = Outbox(next_try=now + RETRY_DELAYS[0])
            self._hold(ch, box, now, msg)

    def _hold(self, ch: Channel, box: Outbox, now: float, msg: AlertMessage) -> None:
        box.messages.append((now, msg))
        self._changes += 1
        if len(box.messages) > OUTBOX_LIMIT:
            box.messages.popleft()
            self.dropped += 1
            log.warning("alert channel %r: outbox full, oldest undelivered alert given up", ch.name)

    def _expire(self, ch: Channel, box: Outbox, now: float) -> None:
        expired = 0
        while box.messages and now - box.messages[0][0] > RETRY_FOR:
            box.messages.popleft()
            expired += 1
        if expired:
            self.dropped += expired
            self._changes += 1
            log.warning(
                "alert channel %r: %d alert(s) undelivered for %.0f s, given up",
                ch.name, expired, RETRY_FOR,
            )  # fmt: skip

    def _retry(self, ch: Channel, box: Outbox, now: float) -> None:
        """Send from the head of the outbox while that works."""
        sent = 0
        while box.messages and sent < MAX_RETRY_SENDS:
            if not self._send(ch, box.messages[0][1]):
                box.failed_tries += 1
                box.next_try = now + RETRY_DELAYS[min(box.failed_tries, len(RETRY_DELAYS) - 1)]
                return
            box.messages.popleft()
            self._changes += 1
            sent += 1
        if box.messages:
            box.next_try = now  # the rest at the next poll
        else:
            del self.outboxes[ch.id]

    def poll(self, now: float | None = None) -> int:
        """One round: read new events, send or count them; returns the events read."""
        now = time.monotonic() if now is None else now
        if not self._restored:
            self._restore(now)
        self._refresh_channels(now)
        events = self._events()
        for ch in self.channels:
            box = self.outboxes.get(ch.id)
            if box is not None:
                self._expire(ch, box, now)
                if now >= box.next_try:
                    self._retry(ch, box, now)
                elif not box.messages:
                    del self.outboxes[ch.id]
            bucket = self._bucket(ch)
            if bucket.suppressed and bucket.take(now):
                self._deliver(ch, summary_message(*bucket.take_summary()), now)
        for _id, event_type, eve_text in events:
            if event_type not in ("alert", "drop"):
                continue
            try:
                eve = json.loads(eve_text)
            except ValueError:
                continue
            if event_type == "drop" and (eve.get("drop") or {}).get("reason") != "lockdown":
                continue  # firewall and setup-protection drops go to the event list only
            msg = message_from_eve(eve)
            for ch in self.channels:
                if msg.severity > ch.min_severity:
                    continue
                bucket = self._bucket(ch)
                if bucket.take(now):
                    self._deliver(ch, msg, now)
                else:
                    self.suppressed += 1
                    sig = f"{(eve.get('alert') or {}).get('signature_id', '?')}"
                    bucket.suppress(now, sig)
        self._save(now)
        return len(events)

    # -- durable state ------------------------------------------------------------------------

    def _restore(self, now: float) -> None:
        """Before the first round: the cursor and outboxes a previous run left (retried now)."""
        self._restored = True
        if self.state is None:
            return
        self._resume_from, rows = self.state.load(self.events_db)
        wall = self.wall_clock()
        restored = 0
        for channel_id, first_failed, text in rows:
            try:
                msg = _message_from_json(text)
            except (ValueError, TypeError) as err:
                self.dropped += 1
                log.warning("alert state %s: stored alert unreadable (%s), given up",
                            self.state.path, err)  # fmt: skip
                continue
            box = self.outboxes.setdefault(channel_id, Outbox(next_try=now))
            box.messages.append((now - max(0.0, wall - first_failed), msg))
            restored += 1
        if restored:
            log.info("alerts: %d undelivered alert(s) restored from %s", restored, self.state.path)
        self._saved = (self._resume_from, self._changes)

    def _save(self, now: float) -> None:
        if self.state is None or self.last_id is None:
            return
        if (self.last_id, self._changes) == self._saved and self.state.ok:
            return
        wall = self.wall_clock()
        outbox = [
            (cid, wall - (now - failed), json.dumps(asdict(msg)))
            for cid, box in self.outboxes.items()
            for failed, msg in box.messages
        ]
        self.state.save(self.events_db, self.last_id, outbox)
        self._saved = (self.last_id, self._changes)

    def stats(self) -> dict[str, int]:
        """Counters for `vpatch run status`: messages sent, alerts held back by the rate limit,
        failed sends, messages waiting for a retry, messages given up, whether the waiting
        ones are on disk (`durable`: false without a state file or when it cannot be written)
        and the channels whose receiver is failing (`failing`: those with an outbox)."""
        return {"sent": self.sent, "suppressed": self.suppressed, "failures": self.failures,
                "queued": sum(len(b.messages) for b in self.outboxes.values()),
                "failing": len(self.outboxes),
                "dropped": self.dropped, "channels": len(self.channels),
                "durable": self.state is not None and self.state.ok}  # fmt: skip

    # -- thread -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vpatch-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("alert dispatcher round failed")
            self._stop.wait(POLL_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
