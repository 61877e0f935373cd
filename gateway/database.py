"""The dialect layer: one connection type over SQLite and PostgreSQL, so every store keeps one
copy of its queries.

A store's location (`Target`) is a SQLite file (a Path) or a database URL (a str,
`postgresql://user:password@host:port/dbname` or `postgresql:///dbname?host=/run/dir`: any URL
libpq understands, the password also from ~/.pgpass or PGPASSWORD). `connect(target)` opens it
and returns a `Db`: `execute`, `executemany`, `executescript` and `close`, autocommit, with
explicit `BEGIN IMMEDIATE` / `COMMIT` / `ROLLBACK` statements as the stores already write them
for SQLite. Queries are written once, in SQLite's dialect; on PostgreSQL `to_postgres` rewrites
them (cached):
- placeholders `?` become `%s` (and a literal `%` becomes `%%`);
- `INSERT OR IGNORE INTO` becomes `INSERT INTO ... ON CONFLICT DO NOTHING` (the upsert form
  `ON CONFLICT(...) DO UPDATE SET ... excluded.x` is the same in both);
- `x IS ?` becomes `x IS NOT DISTINCT FROM %s`, `x IS NOT ?` becomes `x IS DISTINCT FROM %s`;
- in DDL, `id INTEGER PRIMARY KEY` (SQLite's autoincrementing rowid) becomes `BIGSERIAL`,
  `INTEGER` becomes `BIGINT`, `REAL` becomes `DOUBLE PRECISION`, `WITHOUT ROWID` goes;
- `BEGIN IMMEDIATE` becomes `BEGIN` plus a transaction-scoped advisory lock, so writers are
  serialised as SQLite serialises them (the stores do read-modify-write in one transaction).
A cursor's `lastrowid` is `lastval()` on PostgreSQL (the id of the row just inserted).
Rows index by position and by column name on both (`row[0]`, `row["name"]`, `keys()`).

`migrate(db, component, migrations)` applies numbered migrations: on SQLite the version is
`PRAGMA user_version` (one component per file), on PostgreSQL one row per component in
`schema_versions`, under an advisory lock so gateways and UIs starting together migrate once.
Errors of either driver are caught as `db_errors()` / `integrity_errors()`: sqlite3's classes,
and psycopg's once psycopg is loaded. psycopg is imported only when a PostgreSQL URL is opened
(`connect`): on a SQLite store no process loads it (about 22 MB of RSS each, issue 16), and
no psycopg error can be raised before it is loaded.
"""

from __future__ import annotations

import enum
import functools
import re
import socket
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from gateway.config import GatewayConfig
from gateway.errors import VpatchError
from gateway.sqlite_wal import use_wal

__all__ = [
    "AnyConn",
    "Cursor",
    "Db",
    "DatabaseError",
    "Dialect",
    "Row",
    "Target",
    "connect",
    "db_errors",
    "gateway_name",
    "integrity_errors",
    "policy_target",
    "describe",
    "is_postgres",
    "is_url",
    "migrate",
    "table_exists",
    "target_arg",
    "target_exists",
    "to_postgres",
]

Target: TypeAlias = Path | str  # a SQLite file, or a postgresql:// URL
URL_SCHEMES: Final = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S: Final = 5  # libpq connect_timeout: a dead server fails fast
WRITE_LOCK: Final = 0x7670617463680001  # advisory lock key of `BEGIN IMMEDIATE`
MIGRATE_LOCK: Final = 0x7670617463680002  # advisory lock key of migrations
_SQLITE_ERRORS: Final[tuple[type[Exception], ...]] = (sqlite3.Error,)
_SQLITE_INTEGRITY: Final[tuple[type[Exception], ...]] = (sqlite3.IntegrityError,)


def _psycopg() -> ModuleType:
    """The PostgreSQL driver, imported on first use (see the module comment)."""
    import psycopg  # only for a PostgreSQL store (~22 MB per process)

    return psycopg


def db_errors(*also: type[Exception]) -> tuple[type[Exception], ...]:
    """The database errors of either driver: sqlite3.Error, and psycopg.Error once psycopg is
    loaded (no psycopg error exists before), after the classes `also`. For
    `except db_errors():` and `except db_errors(OSError):`."""
    loaded = sys.modules.get("psycopg")
    return (*also, *(_SQLITE_ERRORS if loaded is None else (sqlite3.Error, loaded.Error)))


def integrity_errors() -> tuple[type[Exception], ...]:
    """The constraint violations of either driver (as `db_errors`)."""
    loaded = sys.modules.get("psycopg")
    return _SQLITE_INTEGRITY if loaded is None else (sqlite3.IntegrityError, loaded.IntegrityError)


class DatabaseError(VpatchError):
    """A database could not be opened or migrated (names the target, password hidden)."""


class Dialect(enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class Row(Protocol):
    def __getitem__(self, key: Any, /) -> Any: ...
    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def lastrowid(self) -> int | None: ...
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


def is_url(target: Target) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def target_exists(target: Target) -> bool:
    """A URL always "exists" (the server says otherwise when connecting); a file must."""
    return is_url(target) or Path(target).exists()


def describe(target: Target) -> str:
    """The target for messages and status, with any password in a URL hidden."""
    if not is_url(target):
        return str(target)
    parts = urlsplit(str(target))
    if parts.password is None:
        return str(target)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# -- SQL rewriting ---------------------------------------------------------------------------

_DDL_RULES: Final = (
    (re.compile(r"\bid INTEGER PRIMARY KEY\b", re.I), "id BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\)\s*WITHOUT ROWID", re.I), ")"),
)
_OR_IGNORE: Final = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_IS_NOT_PARAM: Final = re.compile(r"\bIS\s+NOT\s+\?", re.I)
_IS_PARAM: Final = re.compile(r"\bIS\s+\?", re.I)
_DDL: Final = re.compile(r"^\s*(CREATE|ALTER)\b", re.I)


_NAMED: Final = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _placeholders(sql: str) -> str:
    """`?` and `:name` outside string literals to `%s` and `%(name)s`, every `%` to `%%`
    (psycopg's escaping)."""
    out: list[str] = []
    for i, part in enumerate(sql.split("'")):
        part = part.replace("%", "%%")
        if i % 2 == 0:  # outside a literal ('' inside one splits into an empty literal part)
            part = _NAMED.sub(r"%(\1)s", part.replace("?", "%s"))
        out.append(part)
    return "'".join(out)


@functools.lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    """One statement in SQLite's dialect, as PostgreSQL says it (see the module comment)."""
    if _DDL.match(sql):
        for pattern, replacement in _DDL_RULES:
            sql = pattern.sub(replacement, sql)
    if _OR_IGNORE.match(sql):
        sql = _OR_IGNORE.sub("INSERT INTO", sql).rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    sql = _IS_NOT_PARAM.sub("IS DISTINCT FROM ?", sql)
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql)
    return _placeholders(sql)


# -- connections -----------------------------------------------------------------------------


class PgRow:
    """A PostgreSQL row that reads like sqlite3.Row: by position, by column name, keys()."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (PgRow, tuple)) else False

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"PgRow({self._values!r})"

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_rows(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(values, index)

    return make


class PgCursor:
    """A psycopg cursor with sqlite3.Cursor's reading surface (lastrowid from lastval())."""

    def __init__(self, raw: Any, conn: Any) -> None:
        self._raw = raw
        self._conn = conn

    @property
    def lastrowid(self) -> int | None:
        try:
            row = self._conn.execute("SELECT lastval()").fetchone()
        except _psycopg().errors.ObjectNotInPrerequisiteState:
            return None
        return int(row[0]) if row is not None else None

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)

    def fetchone(self) -> Any:
        return self._raw.fetchone() if self._raw.description is not None else None

    def fetchall(self) -> list[Any]:
        return list(self._raw.fetchall()) if self._raw.description is not None else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class Db:
    """One autocommit connection to a SQLite file or a PostgreSQL database."""

    def __init__(self, raw: Any, dialect: Dialect, target: Target) -> None:
        self.raw = raw
        self.dialect = dialect
        self.target = target

    @property
    def postgres(self) -> bool:
        return self.dialect is Dialect.POSTGRESQL

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        if not self.postgres:
            cursor: Cursor = self.raw.execute(sql, params)
            return cursor
        if sql.strip().upper() == "BEGIN IMMEDIATE":
            self.raw.execute("BEGIN")
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            return PgCursor(self.raw.cursor(), self.raw)
        args = dict(params) if isinstance(params, Mapping) else tuple(params)
        return PgCursor(self.raw.execute(to_postgres(sql), args), self.raw)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if not self.postgres:
            self.raw.executemany(sql, rows)
            return
        rows = [tuple(r) for r in rows]
        if rows:
            with self.raw.cursor() as cur:
                cur.executemany(to_postgres(sql), rows)

    def executescript(self, script: str) -> None:
        if not self.postgres:
            self.raw.executescript(script)
            return
        for statement in script.split(";"):
            if statement.strip():
                self.raw.execute(to_postgres(statement.strip()))

    def close(self) -> None:
        self.raw.close()


def connect(target: Target, timeout_s: float = 5.0) -> Db:
    """Open `target` (autocommit; rows by position and name). SQLite: WAL, busy timeout and
    foreign keys on, as the stores set them. Raises the driver's error."""
    if is_url(target):
        raw = _psycopg().connect(
            str(target), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, row_factory=_pg_rows
        )
        return Db(raw, Dialect.POSTGRESQL, target)
    conn = sqlite3.connect(str(target), timeout=timeout_s, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        use_wal(conn, timeout_s)
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error:
        conn.close()
        raise
    return Db(conn, Dialect.SQLITE, target)


AnyConn: TypeAlias = "Db | sqlite3.Connection"  # the event writers also take a bare SQLite one


def is_postgres(conn: AnyConn) -> bool:
    return isinstance(conn, Db) and conn.postgres


def table_exists(db: AnyConn, name: str) -> bool:
    if is_postgres(db):
        sql = "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(sql, (name,)).fetchone() is not None


# -- versioned migrations --------------------------------------------------------------------


def schema_version(db: Db, component: str) -> int:
    if not db.postgres:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if not table_exists(db, "schema_versions"):
        return 0
    row = db.execute("SELECT version FROM schema_versions WHERE component = ?", (component,))
    found = row.fetchone()
    return int(found[0]) if found is not None else 0


def _set_version(db: Db, component: str, number: int) -> None:
    if not db.postgres:
        db.execute(f"PRAGMA user_version = {int(number)}")
        return
    db.execute(
        "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
        " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
        (component, number),
    )


def migrate(db: Db, component: str, migrations: Sequence[str]) -> None:
    """Apply migrations[current:] in order, each in its own transaction (see the module
    comment); a database newer than `migrations` is refused (DatabaseError)."""
    current = schema_version(db, component)
    if current > len(migrations):
        raise DatabaseError(
            f"{component} database {describe(db.target)}: schema version {current} is newer "
            f"than this vpatch knows ({len(migrations)})"
        )
    if current == len(migrations):
        return
    if db.postgres:
        db.execute("BEGIN")
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions"
            " (component TEXT PRIMARY KEY, version BIGINT NOT NULL)"
        )
        db.execute("COMMIT")
    for number in range(current + 1, len(migrations) + 1):
        db.execute("BEGIN IMMEDIATE")
        if db.postgres:
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
        try:
            if schema_version(db, component) < number:  # else another process did it
                for statement in migrations[number - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                _set_version(db, component, number)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


# -- where the configuration puts the stores -------------------------------------------------


def policy_target(config: GatewayConfig) -> Target:
    """The policy store: `database.url` when set, else the SQLite file `policy.database`."""
    return config.database.url or config.policy.database


def gateway_name(config: GatewayConfig) -> str:
    """This gateway's name (`gateway.name`, else the host name)."""
    return config.gateway.name or socket.gethostname()


def target_arg(text: str) -> Target:
    """A command-line store argument: a postgresql:// URL as given, anything else a path."""
    return text if is_url(text) else Path(text)
