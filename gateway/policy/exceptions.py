"""Policy exceptions in the policy store: a rule (or every rule) turned off for a host, a port
or a URI, written by the UI's one-click exception on an event (table exceptions of
gateway/policy/store.py, migration 1; docs/webui.md).

Guarantees: an exception names a normalised host address and a non-empty reason of at most
MAX_REASON_LEN characters; its port is 1..65535, its URI 1..MAX_URI_LEN characters, its expiry
(if any) in the future when it is added; an exception is active until it expires; every change
writes one audit row in its transaction. Errors are `StoreError` naming the value and the table.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass

from gateway.policy.hosts import check_address
from gateway.policy.store import MAX_LIST, MAX_REASON_LEN, Store, StoreError

MAX_URI_LEN = 2048


@dataclass(frozen=True, slots=True)
class PolicyException:
    id: int
    rule_id: int | None  # None: every rule
    host: str
    port: int | None
    uri: str | None
    reason: str
    expires_at: float | None
    created_by: str
    created_at: float
    event_id: int | None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


class PolicyExceptions:
    """Policy exceptions, over one `Store` (its connection and audit)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    @staticmethod
    def _exception(r: sqlite3.Row) -> PolicyException:
        return PolicyException(
            r["id"], r["rule_id"], r["host"], r["port"], r["uri"], r["reason"], r["expires_at"],
            r["created_by"], r["created_at"], r["event_id"],
        )  # fmt: skip

    def list_exceptions(self, include_expired: bool = True) -> list[PolicyException]:
        rows = self.db.execute("SELECT * FROM exceptions ORDER BY id DESC LIMIT ?", (MAX_LIST,))
        now = time.time()
        out = [self._exception(r) for r in rows]
        return out if include_expired else [e for e in out if e.active(now)]

    def add_exception(
        self,
        host: str,
        reason: str,
        actor: str,
        rule_id: int | None = None,
        port: int | None = None,
        uri: str | None = None,
        expires_at: float | None = None,
        event_id: int | None = None,
    ) -> PolicyException:
        host = check_address(host)
        reason = reason.strip()
        if not reason:
            raise StoreError("exceptions.reason: a reason is required")
        if len(reason) > MAX_REASON_LEN:
            raise StoreError(f"exceptions.reason: longer than {MAX_REASON_LEN} characters")
        if port is not None and not 0 < port < 65536:
            raise StoreError(f"exceptions.port {port}: must be 1..65535")
        if uri is not None and (not uri or len(uri) > MAX_URI_LEN):
            raise StoreError(f"exceptions.uri: must be 1..{MAX_URI_LEN} characters")
        if expires_at is not None and expires_at <= time.time():
            raise StoreError(f"exceptions.expires_at {expires_at}: lies in the past")
        with self.store.transaction():
            cur = self.db.execute(
                "INSERT INTO exceptions(rule_id, host, port, uri, reason, expires_at, created_by, "
                "created_at, event_id) VALUES (?,?,?,?,?,?,?,?,?)",
                (rule_id, host, port, uri, reason, expires_at, actor, time.time(), event_id),
            )
            row = self.db.execute(
                "SELECT * FROM exceptions WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
            exc = self._exception(row)
            self.store.audit(actor, "exception.add", host, None, asdict(exc))
        return exc

    def delete_exception(self, exception_id: int, actor: str) -> None:
        with self.store.transaction():
            row = self.db.execute(
                "SELECT * FROM exceptions WHERE id = ?", (exception_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"exceptions.id {exception_id}: no such exception")
            self.db.execute("DELETE FROM exceptions WHERE id = ?", (exception_id,))
            self.store.audit(
                actor, "exception.delete", row["host"], asdict(self._exception(row)), None
            )
