"""webui/db.py: the per-request stores. The event store is opened read-only (the UI can never
alter evidence) and may not exist yet (the pages then show no events); the rule set is loaded
once per set of rule paths; the policy store and the event connection are closed when the
request's context ends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from flask import Flask, g
from flask.testing import FlaskClient

from gateway.policy.hosts import Hosts
from tests.webui.conftest import REPO, Auth
from webui.db import get_events, get_rules, get_store


def test_the_event_store_is_read_only(app: Flask) -> None:
    with app.app_context():
        conn = get_events()
        assert conn is not None and get_events() is conn  # one connection per context
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM events")


def test_no_event_store_yet(app: Flask, client: FlaskClient, auth: Auth, tmp_path: Path) -> None:
    absent = tmp_path / "not-yet.db"
    app.config["EVENTS_DB"] = str(absent)
    with app.app_context():
        assert get_events() is None
    assert not absent.exists()  # looking did not create it
    auth.login()
    assert "Events (0)" in client.get("/events/").get_data(as_text=True)
    assert client.get("/events/1").status_code == 404


def test_rules_are_loaded_once_per_set_of_paths(app: Flask) -> None:
    with app.app_context():
        first = get_rules()
        assert 9000100 in first.by_id and get_rules() is first
    app.config["RULE_PATHS"] = [str(REPO / "rules" / "vpatch-test-split.yaml")]
    with app.app_context():
        only = get_rules()
        assert only is not first and set(only.by_id) == {9000100}
    app.config["RULE_PATHS"] = None  # the bundled rules/ directory
    with app.app_context():
        assert set(get_rules().by_id) == set(first.by_id)


def test_stores_are_closed_with_the_context(app: Flask) -> None:
    with app.app_context():
        store = get_store()
        assert get_store() is store
        conn = get_events()
        assert conn is not None
        assert "store" in g and "events_db" in g
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        Hosts(store).list_groups()
