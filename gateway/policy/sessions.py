"""Server-side sessions of the admin UI (table `ui_sessions`, migration 5 of
gateway/policy/store.py).

The browser's cookie carries only a random session id (signed by Flask besides); the row,
keyed by the id's SHA-256, names the user by id. Guarantees:
- a session ends at logout (`end`), when its user's password or role changes or the user is
  deleted (`end_all`, called by gateway/policy/accounts.py in the same transaction; deletion
  cascades), after `idle` seconds without a request and `lifetime` seconds after login,
  whichever comes first;
- a user deleted and created again has a new id, so an old cookie never revives;
- `last_seen` is written at most every TOUCH_INTERVAL_S (a poll every few seconds does not
  write every time), so the idle timeout is exact to within that.
"""

from __future__ import annotations

import hashlib
import secrets

from gateway.database import Db
from gateway.policy.store import Store

SESSION_ID_BYTES = 32
TOUCH_INTERVAL_S = 30.0
MAX_SESSIONS_PER_USER = 50  # the oldest beyond this are ended at login


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def end_all(db: Db, user_id: int) -> None:
    """End every session of `user_id` (call inside the caller's transaction)."""
    db.execute("DELETE FROM ui_sessions WHERE user_id = ?", (user_id,))


class Sessions:
    """The UI's sessions over one `Store`; `idle` and `lifetime` in seconds."""

    def __init__(self, store: Store, idle: float, lifetime: float) -> None:
        self.store = store
        self.db = store.db
        self.idle = idle
        self.lifetime = lifetime

    def begin(self, user_id: int, now: float) -> str:
        """A new session of `user_id`; returns its id (for the cookie, not stored in clear)."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        with self.store.transaction():
            self._expire(now)
            self.db.execute(
                "INSERT INTO ui_sessions(id_hash, user_id, created, last_seen) VALUES (?,?,?,?)",
                (_key(session_id), user_id, now, now),
            )
            self.db.execute(
                "DELETE FROM ui_sessions WHERE user_id = ? AND id_hash NOT IN (SELECT id_hash "
                "FROM ui_sessions WHERE user_id = ? ORDER BY created DESC LIMIT ?)",
                (user_id, user_id, MAX_SESSIONS_PER_USER),
            )
        return session_id

    def user_id(self, session_id: str, now: float) -> int | None:
        """The user id of a live session (its last_seen refreshed), None when it has ended."""
        row = self.db.execute(
            "SELECT user_id, created, last_seen FROM ui_sessions WHERE id_hash = ?",
            (_key(session_id),),
        ).fetchone()
        if row is None:
            return None
        if now - row["created"] > self.lifetime or now - row["last_seen"] > self.idle:
            self.end(session_id)
            return None
        if now - row["last_seen"] >= TOUCH_INTERVAL_S:
            self.db.execute(
                "UPDATE ui_sessions SET last_seen = ? WHERE id_hash = ?", (now, _key(session_id))
            )
        return int(row["user_id"])

    def end(self, session_id: str) -> None:
        self.db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (_key(session_id),))

    def _expire(self, now: float) -> None:
        self.db.execute(
            "DELETE FROM ui_sessions WHERE created < ? OR last_seen < ?",
            (now - self.lifetime, now - self.idle),
        )
