"""The policy store: one connection to the policy database (SQLite, WAL), its schema and the
audit trail.

Owns the schema of docs/policy.md (hosts, groups, assignments, audit, and the tables every
feature added), created by numbered migrations (`MIGRATIONS`, applied in order, recorded in
`PRAGMA user_version`; a migration is never edited once shipped, a new one is appended).
The rows of each table are read and written by the module of the feature that owns it, over a
`Store`: gateway/policy/accounts.py (users, api_tokens), throttle.py (login_attempts),
sessions.py (ui_sessions, migration 5), hosts.py (hosts, groups), assignments.py,
exceptions.py, snapshot.py (the gateway's read of them), gateway/lifecycle/state.py
(migration 3), gateway/firewall/policy.py and gateway/alerts/ (migration 2),
gateway/scan/jobs.py (migration 4), gateway/tls/stored.py (tls_services, migration 9). Guarantees:
- every connection runs with WAL, `busy_timeout` (BUSY_TIMEOUT_MS) and foreign keys on;
- the database file (it holds password hashes) and its directory are created with explicit
  modes whatever the umask: 0600/0750, or 0660/0770 for the group `vpatch` when it exists
  (the UI's user shares it, gateway/statefiles.py); a world-writable directory or a database
  readable by every user is refused (InsecureFileError naming the file and its mode);
- `audit()` writes one audit row (actor, action, target, before/after as JSON); every change
  made through those modules calls it in the same transaction as the change itself.
Errors are `StoreError` naming the value and the table it concerns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from gateway.database import (
    DatabaseError,
    Db,
    Target,
    connect,
    db_errors,
    describe,
    is_url,
    migrate,
)
from gateway.database import schema_version as stored_version
from gateway.errors import VpatchError
from gateway.statefiles import check_file, create_file, make_dir, shared_gid
from gateway.vocabulary import Mode

DEFAULT_DATABASE = Path("/var/lib/vpatch/vpatch.db")
BUSY_TIMEOUT_MS = 5000
MAX_NAME_LEN = 128
MAX_REASON_LEN = 1000
MAX_LIST = 10_000  # rows any list method returns at most

# The values the schema's text columns take (checked by the modules that write them)
MODES = tuple(m.value for m in Mode)  # as stored in assignments.mode
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
    # 5: server-side UI sessions, API token expiry, login attempts per client and account
    # (issue 15: gateway/policy/sessions.py, accounts.py, throttle.py)
    """
    CREATE TABLE ui_sessions(
        id_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created REAL NOT NULL, last_seen REAL NOT NULL);
    CREATE INDEX ui_sessions_user ON ui_sessions(user_id);
    ALTER TABLE api_tokens ADD COLUMN expires REAL NULL;
    ALTER TABLE login_attempts ADD COLUMN account INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE login_attempts ADD COLUMN device TEXT NOT NULL DEFAULT '';
    CREATE INDEX login_attempts_device ON login_attempts(device, ts);
    """,
    # 6: scan cancel (gateway/scan/jobs.py): who asked to cancel a running scan
    """
    ALTER TABLE scan_runs ADD COLUMN cancel_by TEXT NULL;
    """,
    # 7: account management (issue 13, gateway/policy/accounts.py): a disabled account cannot
    # log in or use its tokens; a reset password must be changed at the next login
    """
    ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: several gateways on one store (issue 14, docs/multi-gateway.md): the policy version
    # every audited change bumps (gateways poll it and reload), and each gateway's heartbeat
    """
    CREATE TABLE policy_version(
        id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, changed_at REAL NOT NULL);
    INSERT INTO policy_version(id, version, changed_at) VALUES (1, 1, 0);
    CREATE TABLE gateways(
        name TEXT PRIMARY KEY, started_at REAL NOT NULL, last_seen REAL NOT NULL,
        policy_version INTEGER NOT NULL DEFAULT 0, status_json TEXT NOT NULL DEFAULT '{}');
    """,
    # 9: HTTPS services edited in the UI and API (issue 11, gateway/tls/stored.py,
    # docs/https.md): one row per proxied (host, port), its settings as the configuration's
    # `tls_proxy.services` entry (JSON)
    """
    CREATE TABLE tls_services(
        id INTEGER PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
        settings_json TEXT NOT NULL, updated_by TEXT NOT NULL, updated_at REAL NOT NULL,
        UNIQUE(host, port));
    """,
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def check_name(value: str, what: str) -> str:
    """`value` stripped, when it is a name of 1..MAX_NAME_LEN characters (`what`: table.column)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LEN:
        raise StoreError(f"{what} {value!r}: must be 1..{MAX_NAME_LEN} characters")
    return value.strip()


class Store:
    """One connection to the policy database (use one Store per thread)."""

    def __init__(self, path: Target) -> None:
        self.path = path
        if not is_url(path):
            path = Path(path)
            gid = shared_gid()
            make_dir(path.parent, gid)
            create_file(path, gid)  # it holds password hashes (SQLite gives -wal/-shm its mode)
            check_file(path, "the policy database")
        try:
            self.db = connect(path, BUSY_TIMEOUT_MS / 1000)
        except db_errors() as err:
            raise StoreError(f"policy database {describe(path)}: cannot open: {err}") from err
        try:
            migrate(self.db, "policy", MIGRATIONS)
        except DatabaseError as err:
            self.db.close()
            raise StoreError(str(err)) from err

    @property
    def postgres(self) -> bool:
        return self.db.postgres

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- schema and transactions --------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return stored_version(self.db, "policy")

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- audit --------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        """One audit row; call inside `transaction()` together with the change it describes.
        Bumps the policy version: every gateway on this store reloads."""
        self._audit_row(actor, action, target, before, after)
        self.db.execute(
            "UPDATE policy_version SET version = version + 1, changed_at = ? WHERE id = 1",
            (time.time(),),
        )

    def policy_version(self) -> int:
        """The number every audited change bumps: a gateway whose applied version differs
        reloads (gateway/policy/sync.py)."""
        row = self.db.execute("SELECT version FROM policy_version WHERE id = 1").fetchone()
        return int(row[0]) if row is not None else 0

    def _audit_row(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        detail = json.dumps({"before": before, "after": after}, default=str, sort_keys=True)
        self.db.execute(
            "INSERT INTO audit(ts, actor, action, target, detail_json) VALUES (?,?,?,?,?)",
            (time.time(), actor, action, target, detail),
        )

    def record(self, actor: str, action: str, target: str, detail: Any = None) -> None:
        """An audit row for an action that changes nothing in this database (e.g. a reload;
        the policy version stays)."""
        with self.transaction():
            self._audit_row(actor, action, target, None, detail)

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
