"""Policy exceptions in the policy store: a rule (or every rule) turned off for a host, a port
or a URI, written by the UI's exception from an event, reviewed before saving (table exceptions of
gateway/policy/store.py, migration 1; docs/webui.md).

Guarantees: an exception names a normalised host address and a non-empty reason of at most
MAX_REASON_LEN characters; its port is 1..65535, its URI 1..MAX_URI_LEN characters, its expiry
(if any) in the future when it is added; an exception is active until it expires; every change
writes one audit row in its transaction. Errors are `StoreError` naming the value and the table.

URI scopes (issue 15, finding 5): `uri_scope(text, prefix)` is the one way a URI becomes an
exception. The text is normalised exactly as the engine normalises a request's URI before
comparing (gateway.decode.http `normalize_uri`: %-decoding, `%u`, dot segments, backslashes,
lower case; `drop_query` also drops what follows `?`), and every character of it is literal: a
`*` in it (e.g. from an attacker's request target `/*`) is stored as `%2a`, so it never makes a
prefix (spaces, control characters and bytes past ASCII are %-escaped as well). Only
`prefix=True`, an explicit choice of the admin, makes one, and a prefix that would cover every
URI (`/`) is refused. The stored text is checked to compile
(gateway.policy.compiled `normalize_exception_uri`) back to exactly the shown path and kind, so
what the admin confirms is what the engine compares.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from gateway.database import Row
from gateway.decode.http import normalize_uri
from gateway.policy.compiled import normalize_exception_uri
from gateway.policy.hosts import check_address
from gateway.policy.store import MAX_LIST, MAX_REASON_LEN, Store, StoreError

MAX_URI_LEN = 2048


def _literal(c: str) -> str:
    """`c` as stored: %-escaped if it is `*` (else a prefix), a space or control character
    (else stripped when compiled, or mangled in an HTML form) or a byte past ASCII."""
    n = ord(c)
    return f"%{n:02x}" if c == "*" or n <= 0x20 or 0x7F <= n <= 0xFF else c


@dataclass(frozen=True, slots=True)
class UriScope:
    """A URI scope as the engine compares it: `path` is a normalised `http.uri`; with `prefix`
    every URI that starts with it is covered, without it `path` itself (and, when `path` has
    no `?`, with any query)."""

    path: str
    prefix: bool

    @property
    def stored(self) -> str:
        """The text of the exceptions.uri column (trailing `*`: prefix); printable ASCII apart
        from characters past U+00FF, and typed as a URI it gives `path` again."""
        return "".join(_literal(c) for c in self.path) + ("*" if self.prefix else "")


def uri_scope(text: str, prefix: bool = False, drop_query: bool = False) -> UriScope:
    """The scope of URI `text` (a request target or a typed URI, every character literal); a
    prefix only when `prefix`. StoreError when it is empty, would cover every URI, is too long,
    or cannot be stored so that it compiles back to itself (a target %-encoded more times than
    the engine decodes)."""
    path = normalize_uri(text)
    if drop_query:
        path = path.partition("?")[0]
    scope = UriScope(path, prefix)
    if not path:
        raise StoreError(f"exceptions.uri {text[:80]!r}: empty once normalised")
    if prefix and path == "/":
        raise StoreError("exceptions.uri: a prefix of '/' covers every URI; "
                         "add an exception for the whole host if that is meant")  # fmt: skip
    if len(scope.stored) > MAX_URI_LEN:
        raise StoreError(f"exceptions.uri: longer than {MAX_URI_LEN} characters")
    if normalize_exception_uri(scope.stored) != (path, prefix):
        raise StoreError(
            f"exceptions.uri {text[:80]!r}: its normalised form {path[:80]!r} changes when "
            "normalised again; type the URI as the server sees it"
        )
    return scope


def stored_uri_scope(stored: str) -> UriScope:
    """The scope an exceptions.uri text stands for (as the engine compiles it)."""
    return UriScope(*normalize_exception_uri(stored))


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

    def uri_scope(self) -> UriScope | None:
        """What the engine compares the request's URI with (None: any URI)."""
        return None if self.uri is None else stored_uri_scope(self.uri)


class PolicyExceptions:
    """Policy exceptions, over one `Store` (its connection and audit)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    @staticmethod
    def _exception(r: Row) -> PolicyException:
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
        uri: str | UriScope | None = None,
        expires_at: float | None = None,
        event_id: int | None = None,
        uri_prefix: bool = False,
    ) -> PolicyException:
        """Store an exception. A `uri` text is literal (`uri_scope`: normalised, a `*` in it
        matches a `*`), and `uri_prefix` alone makes it a prefix; a UriScope (what the admin
        was shown) is stored only if it is exactly what `uri_scope` makes of it."""
        host = check_address(host)
        reason = reason.strip()
        if not reason:
            raise StoreError("exceptions.reason: a reason is required")
        if len(reason) > MAX_REASON_LEN:
            raise StoreError(f"exceptions.reason: longer than {MAX_REASON_LEN} characters")
        if port is not None and not 0 < port < 65536:
            raise StoreError(f"exceptions.port {port}: must be 1..65535")
        stored = None
        if uri is not None:
            text, prefix = (uri, uri_prefix) if isinstance(uri, str) else (uri.path, uri.prefix)
            if not text or len(text) > MAX_URI_LEN:
                raise StoreError(f"exceptions.uri: must be 1..{MAX_URI_LEN} characters")
            scope = uri_scope(text, prefix)
            if isinstance(uri, UriScope) and scope != uri:
                raise StoreError(f"exceptions.uri {uri.path[:80]!r}: not a normalised URI")
            stored = scope.stored
        if expires_at is not None and expires_at <= time.time():
            raise StoreError(f"exceptions.expires_at {expires_at}: lies in the past")
        with self.store.transaction():
            cur = self.db.execute(
                "INSERT INTO exceptions(rule_id, host, port, uri, reason, expires_at, created_by, "
                "created_at, event_id) VALUES (?,?,?,?,?,?,?,?,?)",
                (rule_id, host, port, stored, reason, expires_at, actor, time.time(), event_id),
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
