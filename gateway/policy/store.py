"""The policy store: SQLite (WAL) holding who gets which virtual patch, and the UI's accounts.

Owns the schema of docs/policy.md (hosts, groups, assignments, audit) plus users, api_tokens,
login_attempts and exceptions, created by numbered migrations (`MIGRATIONS`, applied in order,
recorded in `PRAGMA user_version`; a migration is never edited once shipped, a new one is
appended). Guarantees:
- every connection runs with WAL, `busy_timeout` (BUSY_TIMEOUT_MS) and foreign keys on;
- every change made through a method of `Store` writes one audit row (actor, action, target,
  before/after as JSON) in the same transaction as the change itself;
- passwords are stored only as scrypt hashes (hashlib.scrypt, random salt, SCRYPT_N/R/P), API
  tokens only as SHA-256 digests (they are 256-bit random, so a fast hash is enough);
- login throttling: after THROTTLE_FREE_FAILURES failures (per user and per source address,
  counted since the last success within THROTTLE_WINDOW_S) each further attempt must wait
  2**k seconds (k = failures beyond the free ones), capped at THROTTLE_MAX_DELAY_S;
- `policy_snapshot()` returns plain records (frozen dataclasses) for
  `gateway.policy.compiled.CompiledPolicy`; active host-wide exceptions are folded in as
  `off` host assignments (source "exception").
Errors are `StoreError` naming the value and the table it concerns.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from gateway.errors import VpatchError
from gateway.sqlite_wal import use_wal
from gateway.vocabulary import Mode

DEFAULT_DATABASE = Path("/var/lib/vpatch/vpatch.db")
BUSY_TIMEOUT_MS = 5000
SCRYPT_N = 2**14  # ~50 ms per hash here: slow for guessing, fine for a login
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
TOKEN_BYTES = 32
THROTTLE_FREE_FAILURES = 3
THROTTLE_WINDOW_S = 3600.0
THROTTLE_MAX_DELAY_S = 900.0
MAX_LOGIN_ATTEMPT_ROWS = 100_000  # older rows are pruned beyond this
MAX_NAME_LEN = 128
MAX_REASON_LEN = 1000
MAX_URI_LEN = 2048
MAX_LIST = 10_000  # rows any list method returns at most

_MODE_NAMES = tuple(m.value for m in Mode)  # as stored in assignments.mode
SCOPES = ("global", "group", "host")
SOURCES = ("admin", "scan", "cli", "exception")
ROLES = ("admin", "viewer")
HOST_MODES = ("normal", "setup", "learning", "lockdown")


class StoreError(VpatchError):
    """A policy-store operation was refused (names the value and the table)."""


MIGRATIONS: tuple[str, ...] = (
    # 1: docs/policy.md core + accounts, tokens, throttling, exceptions
    """
    CREATE TABLE groups(
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '');
    CREATE TABLE hosts(
        id INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE, name TEXT NOT NULL DEFAULT '',
        group_id INTEGER NULL REFERENCES groups(id) ON DELETE SET NULL,
        mode TEXT NOT NULL DEFAULT 'normal', auto_apply INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, updated_at REAL NOT NULL);
    CREATE TABLE assignments(
        id INTEGER PRIMARY KEY, rule_id INTEGER NOT NULL, scope TEXT NOT NULL,
        scope_id INTEGER NULL, mode TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'admin',
        reason TEXT NOT NULL DEFAULT '', updated_by TEXT NOT NULL, updated_at REAL NOT NULL,
        UNIQUE(rule_id, scope, scope_id));
    CREATE UNIQUE INDEX assignments_global ON assignments(rule_id) WHERE scope = 'global';
    CREATE TABLE audit(
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail_json TEXT NOT NULL);
    CREATE INDEX audit_ts ON audit(ts);
    CREATE TABLE users(
        id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
        role TEXT NOT NULL, created REAL NOT NULL, last_login REAL NULL);
    CREATE TABLE api_tokens(
        id INTEGER PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '', created REAL NOT NULL, last_used REAL NULL);
    CREATE TABLE login_attempts(
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, username TEXT NOT NULL, source TEXT NOT NULL,
        success INTEGER NOT NULL);
    CREATE INDEX login_attempts_user ON login_attempts(username, ts);
    CREATE INDEX login_attempts_source ON login_attempts(source, ts);
    CREATE TABLE exceptions(
        id INTEGER PRIMARY KEY, rule_id INTEGER NULL, host TEXT NOT NULL, port INTEGER NULL,
        uri TEXT NULL, reason TEXT NOT NULL, expires_at REAL NULL, created_by TEXT NOT NULL,
        created_at REAL NOT NULL, event_id INTEGER NULL);
    """,
    # 2: firewall rules (gateway/firewall/policy.py) and alert channels (gateway/alerts/)
    """
    CREATE TABLE firewall_rules(
        id INTEGER PRIMARY KEY, position INTEGER NOT NULL, scope TEXT NOT NULL,
        scope_id INTEGER NULL, direction TEXT NOT NULL, address TEXT NOT NULL DEFAULT '',
        protocol TEXT NOT NULL DEFAULT 'any', port_from INTEGER NULL, port_to INTEGER NULL,
        mac TEXT NOT NULL DEFAULT '', action TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1, updated_by TEXT NOT NULL, updated_at REAL NOT NULL);
    CREATE INDEX firewall_rules_position ON firewall_rules(position);
    CREATE TABLE alert_channels(
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1, min_severity INTEGER NOT NULL DEFAULT 3,
        rate_per_min REAL NOT NULL DEFAULT 10, burst INTEGER NOT NULL DEFAULT 5,
        settings_json TEXT NOT NULL DEFAULT '{}', updated_by TEXT NOT NULL,
        updated_at REAL NOT NULL);
    """,
    # 3: host lifecycle (issue 5, docs/lifecycle.md): setup exceptions and update sources,
    # lockdown action, scan-assigned rules, learned tuples, history, scan results, app control
    """
    CREATE TABLE host_lifecycle(
        host_id INTEGER PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
        lockdown_action TEXT NOT NULL DEFAULT 'drop');
    CREATE TABLE host_endpoints(
        id INTEGER PRIMARY KEY, host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, endpoint TEXT NOT NULL, position INTEGER NOT NULL);
    CREATE INDEX host_endpoints_host ON host_endpoints(host_id, kind, position);
    CREATE TABLE host_rules(
        host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        rule_id INTEGER NOT NULL, PRIMARY KEY(host_id, rule_id));
    CREATE TABLE learned_tuples(
        id INTEGER PRIMARY KEY, host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        src TEXT NOT NULL, dst TEXT NOT NULL, proto TEXT NOT NULL, port INTEGER NOT NULL,
        learned_at REAL NOT NULL, UNIQUE(host_id, src, dst, proto, port));
    CREATE TABLE lifecycle_history(
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, host TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, reason TEXT NOT NULL, evidence_json TEXT NOT NULL DEFAULT '[]');
    CREATE INDEX lifecycle_history_host ON lifecycle_history(host, id);
    CREATE TABLE scan_services(
        id INTEGER PRIMARY KEY, host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        port INTEGER NOT NULL, proto TEXT NOT NULL, service TEXT NOT NULL,
        product TEXT NOT NULL DEFAULT '', version TEXT NOT NULL DEFAULT '',
        features_json TEXT NOT NULL DEFAULT '{}', evidence_json TEXT NOT NULL DEFAULT '[]',
        scanned_at REAL NOT NULL);
    CREATE INDEX scan_services_host ON scan_services(host_id);
    CREATE TABLE app_controls(
        id INTEGER PRIMARY KEY, host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        rule TEXT NOT NULL, updated_by TEXT NOT NULL, updated_at REAL NOT NULL,
        UNIQUE(host_id, rule));
    """,
    # 4: scan runs (UI, API, CLI and scheduled scans; one active run per host) and scan
    # schedules (per host, or host '*' for every host) (gateway/scan/jobs.py)
    """
    CREATE TABLE scan_runs(
        id INTEGER PRIMARY KEY, host TEXT NOT NULL, trigger TEXT NOT NULL, actor TEXT NOT NULL,
        status TEXT NOT NULL, queued_at REAL NOT NULL, started_at REAL NULL,
        finished_at REAL NULL, done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
        step TEXT NOT NULL DEFAULT '', pid INTEGER NULL, report_json TEXT NULL,
        applied INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '');
    CREATE UNIQUE INDEX scan_runs_active ON scan_runs(host) WHERE status IN ('queued', 'running');
    CREATE INDEX scan_runs_host ON scan_runs(host, id);
    CREATE TABLE scan_schedules(
        id INTEGER PRIMARY KEY, host TEXT NOT NULL UNIQUE, interval_s REAL NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1, last_run REAL NULL, updated_by TEXT NOT NULL,
        updated_at REAL NOT NULL);
    """,
)


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class Host:
    id: int
    address: str  # an address or a CIDR
    name: str
    group_id: int | None
    mode: str  # normal | setup | learning | lockdown
    auto_apply: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Assignment:
    id: int
    rule_id: int
    scope: str  # global | group | host
    scope_id: int | None  # group or host id; None for global
    mode: str  # off | detect | prevent
    source: str
    reason: str
    updated_by: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    created: float
    last_login: float | None


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    username: str
    name: str
    created: float
    last_used: float | None


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


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Passwords and tokens


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), want)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(15)


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LEN:
        raise StoreError(f"{what} {value!r}: must be 1..{MAX_NAME_LEN} characters")
    return value.strip()


def _check_address(address: str) -> str:
    try:
        return str(ipaddress.ip_network(address.strip(), strict=False)).removesuffix(
            "/32" if ":" not in address else "/128"
        )
    except ValueError as err:
        raise StoreError(f"hosts.address {address!r}: not an address or CIDR") from err


def _check_mode(mode: str) -> str:
    if mode not in _MODE_NAMES:
        raise StoreError(f"assignments.mode {mode!r}: must be one of {', '.join(_MODE_NAMES)}")
    return mode


# --------------------------------------------------------------------------------------------
# The store


class Store:
    """One connection to the policy database (use one Store per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # it holds password hashes: owner only (-wal/-shm follow it)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self.db = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
        except sqlite3.Error as err:
            raise StoreError(f"policy database {path}: cannot open: {err}") from err
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        use_wal(self.db, BUSY_TIMEOUT_MS / 1000)
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"policy database {self.path}: schema version {current} is newer than this "
                f"vpatch knows ({len(MIGRATIONS)})"
            )
        for number in range(current + 1, len(MIGRATIONS) + 1):
            with self.transaction():
                if self.schema_version >= number:  # another process migrated meanwhile
                    continue
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        detail = json.dumps({"before": before, "after": after}, default=str, sort_keys=True)
        self.db.execute(
            "INSERT INTO audit(ts, actor, action, target, detail_json) VALUES (?,?,?,?,?)",
            (time.time(), actor, action, target, detail),
        )

    # -- users --------------------------------------------------------------------------------

    def user_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(row["id"], row["username"], row["role"], row["created"], row["last_login"])

    def get_user(self, username: str) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return self._user(row) if row else None

    def list_users(self) -> list[User]:
        rows = self.db.execute("SELECT * FROM users ORDER BY username LIMIT ?", (MAX_LIST,))
        return [self._user(r) for r in rows]

    def create_user(self, username: str, password: str, role: str, actor: str) -> User:
        username = _check_name(username, "users.username")
        if role not in ROLES:
            raise StoreError(f"users.role {role!r}: must be one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise StoreError(f"users.password for {username!r}: at least 8 characters")
        with self.transaction():
            if self.get_user(username) is not None:
                raise StoreError(f"users.username {username!r}: already exists")
            self.db.execute(
                "INSERT INTO users(username, password_hash, role, created) VALUES (?,?,?,?)",
                (username, hash_password(password), role, time.time()),
            )
            self._audit(actor, "user.create", username, None, {"role": role})
        user = self.get_user(username)
        assert user is not None
        return user

    def set_password(self, username: str, password: str, actor: str) -> None:
        if len(password) < 8:
            raise StoreError(f"users.password for {username!r}: at least 8 characters")
        with self.transaction():
            cur = self.db.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?",
                (hash_password(password), username),
            )
            if cur.rowcount == 0:
                raise StoreError(f"users.username {username!r}: no such user")
            self._audit(actor, "user.password", username, None, None)

    def delete_user(self, username: str, actor: str) -> None:
        with self.transaction():
            user = self.get_user(username)
            if user is None:
                raise StoreError(f"users.username {username!r}: no such user")
            self.db.execute("DELETE FROM users WHERE id = ?", (user.id,))
            self._audit(actor, "user.delete", username, {"role": user.role}, None)

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right (last_login updated), else None."""
        row = self.db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            check_password(password, hash_password("x" * 8))  # same cost for unknown users
            return None
        if not check_password(password, row["password_hash"]):
            return None
        self.db.execute("UPDATE users SET last_login = ? WHERE id = ?", (time.time(), row["id"]))
        return self.get_user(username)

    # -- login throttling ---------------------------------------------------------------------

    def _failures(self, column: str, value: str, now: float) -> tuple[int, float]:
        since_row = self.db.execute(
            f"SELECT MAX(ts) FROM login_attempts WHERE {column} = ? AND success = 1", (value,)
        ).fetchone()
        since = max(since_row[0] or 0.0, now - THROTTLE_WINDOW_S)
        row = self.db.execute(
            f"SELECT COUNT(*), MAX(ts) FROM login_attempts "
            f"WHERE {column} = ? AND success = 0 AND ts > ?",
            (value, since),
        ).fetchone()
        return int(row[0]), float(row[1] or 0.0)

    def login_wait(self, username: str, source: str, now: float | None = None) -> float:
        """Seconds the next login attempt for this user or from this source must still wait."""
        now = time.time() if now is None else now
        wait = 0.0
        for column, value in (("username", username), ("source", source)):
            count, last = self._failures(column, value, now)
            extra = count - THROTTLE_FREE_FAILURES
            if extra >= 0:
                delay = min(2.0**extra, THROTTLE_MAX_DELAY_S)
                wait = max(wait, last + delay - now)
        return max(wait, 0.0)

    def record_login(
        self, username: str, source: str, success: bool, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self.transaction():
            self.db.execute(
                "INSERT INTO login_attempts(ts, username, source, success) VALUES (?,?,?,?)",
                (now, username[:MAX_NAME_LEN], source[:64], int(success)),
            )
            self.db.execute(
                "DELETE FROM login_attempts WHERE id <= (SELECT MAX(id) FROM login_attempts) - ?",
                (MAX_LOGIN_ATTEMPT_ROWS,),
            )
            if not success:
                self._audit(username[:MAX_NAME_LEN], "login.failed", source[:64], None, None)

    # -- API tokens ---------------------------------------------------------------------------

    def create_token(self, username: str, name: str, actor: str) -> str:
        """A new bearer token for `username`; the plaintext is returned once, only its hash kept."""
        user = self.get_user(username)
        if user is None:
            raise StoreError(f"api_tokens: user {username!r} does not exist")
        token = "vpt_" + secrets.token_urlsafe(TOKEN_BYTES)
        with self.transaction():
            self.db.execute(
                "INSERT INTO api_tokens(token_hash, user_id, name, created) VALUES (?,?,?,?)",
                (token_digest(token), user.id, name[:MAX_NAME_LEN], time.time()),
            )
            self._audit(actor, "token.create", username, None, {"name": name[:MAX_NAME_LEN]})
        return token

    def token_user(self, token: str) -> User | None:
        row = self.db.execute(
            "SELECT t.id AS tid, u.* FROM api_tokens t JOIN users u ON u.id = t.user_id "
            "WHERE t.token_hash = ?",
            (token_digest(token),),
        ).fetchone()
        if row is None:
            return None
        self.db.execute(
            "UPDATE api_tokens SET last_used = ? WHERE id = ?", (time.time(), row["tid"])
        )
        return self._user(row)

    def list_tokens(self, username: str | None = None) -> list[ApiToken]:
        sql = (
            "SELECT t.id, u.username, t.name, t.created, t.last_used FROM api_tokens t "
            "JOIN users u ON u.id = t.user_id"
        )
        args: tuple[Any, ...] = ()
        if username is not None:
            sql += " WHERE u.username = ?"
            args = (username,)
        rows = self.db.execute(sql + " ORDER BY t.id LIMIT ?", (*args, MAX_LIST))
        return [ApiToken(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def revoke_token(self, token_id: int, actor: str) -> None:
        with self.transaction():
            cur = self.db.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,))
            if cur.rowcount == 0:
                raise StoreError(f"api_tokens.id {token_id}: no such token")
            self._audit(actor, "token.revoke", str(token_id), None, None)

    # -- groups and hosts ---------------------------------------------------------------------

    def list_groups(self) -> list[Group]:
        rows = self.db.execute("SELECT * FROM groups ORDER BY name LIMIT ?", (MAX_LIST,))
        return [Group(r["id"], r["name"], r["description"]) for r in rows]

    def get_group(self, group_id: int) -> Group | None:
        r = self.db.execute("SELECT * FROM groups WHERE id = ?", (group_id,)).fetchone()
        return Group(r["id"], r["name"], r["description"]) if r else None

    def create_group(self, name: str, description: str, actor: str) -> Group:
        name = _check_name(name, "groups.name")
        with self.transaction():
            try:
                cur = self.db.execute(
                    "INSERT INTO groups(name, description) VALUES (?, ?)",
                    (name, description[:MAX_REASON_LEN]),
                )
            except sqlite3.IntegrityError as err:
                raise StoreError(f"groups.name {name!r}: already exists") from err
            group = Group(int(cur.lastrowid or 0), name, description[:MAX_REASON_LEN])
            self._audit(actor, "group.create", name, None, asdict(group))
        return group

    def delete_group(self, group_id: int, actor: str) -> None:
        with self.transaction():
            group = self.get_group(group_id)
            if group is None:
                raise StoreError(f"groups.id {group_id}: no such group")
            self.db.execute(
                "DELETE FROM assignments WHERE scope = 'group' AND scope_id = ?", (group_id,)
            )
            self.db.execute("DELETE FROM groups WHERE id = ?", (group_id,))
            self._audit(actor, "group.delete", group.name, asdict(group), None)

    @staticmethod
    def _host(r: sqlite3.Row) -> Host:
        return Host(
            r["id"], r["address"], r["name"], r["group_id"], r["mode"], bool(r["auto_apply"]),
            r["created_at"], r["updated_at"],
        )  # fmt: skip

    def list_hosts(self) -> list[Host]:
        rows = self.db.execute("SELECT * FROM hosts ORDER BY address LIMIT ?", (MAX_LIST,))
        return [self._host(r) for r in rows]

    def get_host(self, host_id: int) -> Host | None:
        r = self.db.execute("SELECT * FROM hosts WHERE id = ?", (host_id,)).fetchone()
        return self._host(r) if r else None

    def host_by_address(self, address: str) -> Host | None:
        r = self.db.execute(
            "SELECT * FROM hosts WHERE address = ?", (_check_address(address),)
        ).fetchone()
        return self._host(r) if r else None

    def save_host(
        self,
        address: str,
        actor: str,
        name: str = "",
        group_id: int | None = None,
        mode: str = "normal",
    ) -> Host:
        """Create the host, or update name/group/mode of the one with this address."""
        address = _check_address(address)
        if mode not in HOST_MODES:
            raise StoreError(f"hosts.mode {mode!r}: must be one of {', '.join(HOST_MODES)}")
        if group_id is not None and self.get_group(group_id) is None:
            raise StoreError(f"hosts.group_id {group_id}: no such group")
        now = time.time()
        with self.transaction():
            before = self.host_by_address(address)
            if before is None:
                self.db.execute(
                    "INSERT INTO hosts(address, name, group_id, mode, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (address, name[:MAX_NAME_LEN], group_id, mode, now, now),
                )
            else:
                self.db.execute(
                    "UPDATE hosts SET name = ?, group_id = ?, mode = ?, updated_at = ? "
                    "WHERE id = ?",
                    (name[:MAX_NAME_LEN], group_id, mode, now, before.id),
                )
            after = self.host_by_address(address)
            assert after is not None
            self._audit(
                actor, "host.save", address, asdict(before) if before else None, asdict(after)
            )
        return after

    def delete_host(self, host_id: int, actor: str) -> None:
        with self.transaction():
            host = self.get_host(host_id)
            if host is None:
                raise StoreError(f"hosts.id {host_id}: no such host")
            self.db.execute(
                "DELETE FROM assignments WHERE scope = 'host' AND scope_id = ?", (host_id,)
            )
            self.db.execute("DELETE FROM hosts WHERE id = ?", (host_id,))
            self._audit(actor, "host.delete", host.address, asdict(host), None)

    def host_services(self, host_id: int) -> list[dict[str, Any]]:
        """Services of the host's last scan, when a scanner's `scan_services` table exists."""
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scan_services'"
        ).fetchone()
        if not exists:
            return []
        try:
            rows = self.db.execute(
                "SELECT * FROM scan_services WHERE host_id = ? LIMIT ?", (host_id, MAX_LIST)
            )
            return [dict(r) for r in rows]
        except sqlite3.Error:
            return []

    # -- assignments --------------------------------------------------------------------------

    @staticmethod
    def _assignment(r: sqlite3.Row) -> Assignment:
        return Assignment(
            r["id"], r["rule_id"], r["scope"], r["scope_id"], r["mode"], r["source"], r["reason"],
            r["updated_by"], r["updated_at"],
        )  # fmt: skip

    def list_assignments(self, rule_id: int | None = None) -> list[Assignment]:
        if rule_id is None:
            rows = self.db.execute(
                "SELECT * FROM assignments ORDER BY rule_id, scope, scope_id LIMIT ?", (MAX_LIST,)
            )
        else:
            rows = self.db.execute(
                "SELECT * FROM assignments WHERE rule_id = ? ORDER BY scope, scope_id", (rule_id,)
            )
        return [self._assignment(r) for r in rows]

    def find_assignment(self, rule_id: int, scope: str, scope_id: int | None) -> Assignment | None:
        """The assignment of rule_id for exactly this scope, if there is one."""
        return self._find_assignment(rule_id, scope, scope_id)

    def _find_assignment(self, rule_id: int, scope: str, scope_id: int | None) -> Assignment | None:
        r = self.db.execute(
            "SELECT * FROM assignments WHERE rule_id = ? AND scope = ? AND scope_id IS ?",
            (rule_id, scope, scope_id),
        ).fetchone()
        return self._assignment(r) if r else None

    def set_assignment(
        self,
        rule_id: int,
        scope: str,
        scope_id: int | None,
        mode: str | None,
        actor: str,
        source: str = "admin",
        reason: str = "",
    ) -> Assignment | None:
        """Set the mode of a rule for a scope; mode None removes the assignment (inherit)."""
        if scope not in SCOPES:
            raise StoreError(f"assignments.scope {scope!r}: must be one of {', '.join(SCOPES)}")
        if source not in SOURCES:
            raise StoreError(f"assignments.source {source!r}: must be one of {', '.join(SOURCES)}")
        if scope == "global":
            scope_id = None
        elif scope_id is None:
            raise StoreError(f"assignments.scope_id: required for scope {scope!r}")
        elif scope == "host" and self.get_host(scope_id) is None:
            raise StoreError(f"assignments.scope_id {scope_id}: no such host")
        elif scope == "group" and self.get_group(scope_id) is None:
            raise StoreError(f"assignments.scope_id {scope_id}: no such group")
        if mode is not None:
            _check_mode(mode)
        target = f"rule {rule_id} {scope}" + (f" {scope_id}" if scope_id is not None else "")
        with self.transaction():
            before = self._find_assignment(rule_id, scope, scope_id)
            if mode is None:
                if before is not None:
                    self.db.execute("DELETE FROM assignments WHERE id = ?", (before.id,))
            elif before is None:
                self.db.execute(
                    "INSERT INTO assignments(rule_id, scope, scope_id, mode, source, reason, "
                    "updated_by, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        rule_id,
                        scope,
                        scope_id,
                        mode,
                        source,
                        reason[:MAX_REASON_LEN],
                        actor,
                        time.time(),
                    ),
                )
            else:
                self.db.execute(
                    "UPDATE assignments SET mode = ?, source = ?, reason = ?, updated_by = ?, "
                    "updated_at = ? WHERE id = ?",
                    (mode, source, reason[:MAX_REASON_LEN], actor, time.time(), before.id),
                )
            after = self._find_assignment(rule_id, scope, scope_id)
            self._audit(
                actor,
                "assignment.set",
                target,
                before.mode if before else None,
                after.mode if after else None,
            )
        return after

    # -- exceptions ---------------------------------------------------------------------------

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
        host = _check_address(host)
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
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO exceptions(rule_id, host, port, uri, reason, expires_at, created_by, "
                "created_at, event_id) VALUES (?,?,?,?,?,?,?,?,?)",
                (rule_id, host, port, uri, reason, expires_at, actor, time.time(), event_id),
            )
            row = self.db.execute(
                "SELECT * FROM exceptions WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
            exc = self._exception(row)
            self._audit(actor, "exception.add", host, None, asdict(exc))
        return exc

    def delete_exception(self, exception_id: int, actor: str) -> None:
        with self.transaction():
            row = self.db.execute(
                "SELECT * FROM exceptions WHERE id = ?", (exception_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"exceptions.id {exception_id}: no such exception")
            self.db.execute("DELETE FROM exceptions WHERE id = ?", (exception_id,))
            self._audit(actor, "exception.delete", row["host"], asdict(self._exception(row)), None)

    # -- audit --------------------------------------------------------------------------------

    def list_audit(self, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        limit = max(1, min(limit, MAX_LIST))
        rows = self.db.execute(
            "SELECT * FROM audit ORDER BY id DESC LIMIT ? OFFSET ?", (limit, max(0, offset))
        )
        return [
            AuditEntry(
                r["id"], r["ts"], r["actor"], r["action"], r["target"], json.loads(r["detail_json"])
            )
            for r in rows
        ]

    def audit_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    def audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        """One audit row; call inside `transaction()` together with the change it describes
        (used by gateway/lifecycle/state.py for the lifecycle tables of migration 3)."""
        self._audit(actor, action, target, before, after)

    def record(self, actor: str, action: str, target: str, detail: Any = None) -> None:
        """An audit row for an action that changes nothing in this database (e.g. a reload)."""
        with self.transaction():
            self._audit(actor, action, target, None, detail)

    # -- the gateway's view -------------------------------------------------------------------

    def policy_snapshot(
        self, now: float | None = None, fold_exceptions: bool = True
    ) -> tuple[list[Host], list[Group], list[Assignment]]:
        """(hosts, groups, assignments) for CompiledPolicy, read in one transaction.

        Active exceptions that cover a whole host (no port, no URI) for one rule are added as
        host assignments with mode `off` and source `exception` (most specific, so they win);
        the host is matched by address (a host entry is synthesised, id < 0, when the address
        has none). Port- and URI-scoped exceptions are not part of the snapshot (see
        docs/webui.md). `fold_exceptions=False` leaves all exceptions out: the gateway passes
        `list_exceptions(include_expired=False)` to CompiledPolicy's exception scopes instead,
        which also expire on time without a reload.
        """
        now = time.time() if now is None else now
        self.db.execute("BEGIN")
        try:
            hosts = self.list_hosts()
            groups = self.list_groups()
            assignments = self.list_assignments()
            exceptions = self.list_exceptions(include_expired=False)
        finally:
            self.db.execute("COMMIT")
        by_addr = {h.address: h for h in hosts}
        synthetic = -1
        for exc in exceptions if fold_exceptions else ():
            if exc.port is not None or exc.uri is not None or exc.rule_id is None:
                continue
            host = by_addr.get(exc.host)
            if host is None:
                host = Host(
                    synthetic, exc.host, "", None, "normal", False, exc.created_at, exc.created_at
                )
                synthetic -= 1
                by_addr[exc.host] = host
                hosts.append(host)
            assignments = [
                a for a in assignments
                if not (a.scope == "host" and a.scope_id == host.id and a.rule_id == exc.rule_id)
            ]  # fmt: skip
            folded = Assignment(
                -exc.id, exc.rule_id, "host", host.id, "off", "exception", exc.reason,
                exc.created_by, exc.created_at,
            )  # fmt: skip
            assignments.append(folded)
        return hosts, groups, assignments
