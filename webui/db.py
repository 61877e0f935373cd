"""Per-request access to the stores: the policy store (read/write), the event store
(read-only SQLite URI, so the UI can never alter evidence; or the shared PostgreSQL store of
every gateway's events, in a read-only transaction mode) and the loaded rule set."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g

from gateway.config import BUNDLED_RULES
from gateway.database import Db, Dialect, Target, is_url
from gateway.events.shared import open_shared_events
from gateway.match.rules import RuleSet, load_rules
from gateway.policy.store import Store
from gateway.rulepack import effective_rule_paths

_RULES_CACHE: dict[str, Any] = {}


def policy_db() -> Target:
    """The app's policy store: a SQLite file, or the shared database's URL."""
    target = str(current_app.config["POLICY_DB"])
    return target if is_url(target) else Path(target)


def get_store() -> Store:
    if "store" not in g:
        g.store = Store(policy_db())
    store: Store = g.store
    return store


def get_events() -> Db | None:
    """The event store opened read-only, or None when it does not exist (yet)."""
    if "events_db" not in g:
        target = current_app.config["EVENTS_DB"]
        if is_url(target):
            db = open_shared_events(target)  # its schema, should no gateway have written yet
            db.execute("SET default_transaction_read_only = on")
            g.events_db = db
        elif not Path(target).exists():
            g.events_db = None
        else:
            conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=5)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            g.events_db = Db(conn, Dialect.SQLITE, Path(target))
    conn_or_none: Db | None = g.events_db
    return conn_or_none


def get_rules() -> RuleSet:
    paths = [Path(p) for p in current_app.config["RULE_PATHS"] or [BUNDLED_RULES]]
    pack_dir = current_app.config.get("RULE_PACK_DIR")
    if pack_dir:  # an installed rule pack in force takes the bundled pack's place
        paths = effective_rule_paths(paths, Path(pack_dir))
    key = repr(sorted(str(p.resolve()) for p in paths))  # a pack switch is a new key
    if key not in _RULES_CACHE:
        _RULES_CACHE[key] = load_rules(paths)
    ruleset: RuleSet = _RULES_CACHE[key]
    return ruleset


def forget_rules() -> None:
    """Drop the cached rule sets: the next get_rules() reads the files again (rules reload)."""
    _RULES_CACHE.clear()


def close(_exc: BaseException | None = None) -> None:
    store = g.pop("store", None)
    if store is not None:
        store.close()
    conn = g.pop("events_db", None)
    if conn is not None:
        conn.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close)
