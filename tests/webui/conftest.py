"""Fixtures for the web UI: a fresh policy database and event store per test (tmp_path), the
Flask test client, users `admin` and `viewer`, and an `auth` helper that logs in (through the
real login form, with its CSRF token); helpers `store_of(app)` and `api_token(app, user)`."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.events.eve import Event, to_eve
from gateway.events.sink import _row, create_store, store_rows
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.vocabulary import Action, Direction
from webui import create_app

REPO = Path(__file__).resolve().parents[2]
ADMIN_PW = "admin-password-1"
VIEWER_PW = "viewer-password-1"
EVIL = '<script>alert("x")</script>\'\x00\x1b\x7f'


def write_events(db: Path, events: list[tuple[Event, dict[str, Any]]]) -> None:
    """Events into the real event-store schema (gateway/events/sink.py), with EVE extras."""
    conn = sqlite3.connect(str(db))
    create_store(conn)
    rows = []
    for event, extra in events:
        eve = to_eve(event)
        for key, value in extra.items():
            if isinstance(value, dict):
                eve.setdefault(key, {}).update(value)
            else:
                eve[key] = value
        rows.append(_row(eve, json.dumps(eve)))
    store_rows(conn, rows)  # with the dashboard's rollups, as the gateway's writer does
    conn.commit()
    conn.close()


def make_event(**kw: Any) -> Event:
    base: dict[str, Any] = {
        "timestamp": time.time() - 60,
        "flow_id": 1234,
        "src_ip": "198.18.0.10",
        "src_port": 40000,
        "dest_ip": "198.18.0.20",
        "dest_port": 80,
        "proto": 6,
        "server_port": 80,
        "direction": Direction.TO_SERVER,
        "signature_id": 9000100,
        "signature": "vpatch lab test exploit marker (split-pattern test)",
        "severity": "high",
        "cves": ("CVE-0000-0001",),
        "rule_action": Action.RESET,
        "blocked": True,
    }
    base.update(kw)
    return Event(**base)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({
        "TESTING": True,
        "POLICY_DB": str(tmp_path / "vpatch.db"),
        "EVENTS_DB": str(tmp_path / "events.db"),
        "CONTROL_SOCKET": str(tmp_path / "control.sock"),
        "RULE_PATHS": [str(REPO / "rules")],
        "SESSION_COOKIE_SECURE": False,
        "RELOAD_TIMEOUT": 1.0,
    })  # fmt: skip
    with Store(tmp_path / "vpatch.db") as store:
        accounts = Accounts(store)
        accounts.create_user("admin", ADMIN_PW, "admin", "test")
        accounts.create_user("viewer", VIEWER_PW, "viewer", "test")
    write_events(tmp_path / "events.db", [
        (make_event(), {}),
        (make_event(flow_id=99, signature=EVIL, src_ip="198.18.0.11", blocked=False,
                    rule_action=Action.RESET),
         {"vpatch": {"would_block": True, "excerpt": EVIL, "field": "http.uri"},
          "http": {"url": "/" + EVIL}}),
        (make_event(flow_id=100, signature="=HYPERLINK(\"http://x\")", signature_id=9000001,
                    cves=("CVE-2017-0144",), dest_port=445, server_port=445), {}),
    ])  # fmt: skip
    yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Auth:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def csrf(self) -> str:
        page = self.client.get("/auth/login").get_data(as_text=True)
        m = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert m, page
        return m.group(1)

    def login(self, username: str = "admin", password: str = ADMIN_PW) -> Any:
        return self.client.post(
            "/auth/login",
            data={"username": username, "password": password, "csrf_token": self.csrf()},
        )

    def token(self) -> str:
        """The CSRF token of the current session (from any page's meta tag)."""
        return self.token_from("/auth/tokens")

    def token_from(self, path: str) -> str:
        """The CSRF token of the current session, from the page at `path`."""
        page = self.client.get(path).get_data(as_text=True)
        m = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert m
        return m.group(1)


@pytest.fixture
def auth(client: FlaskClient) -> Auth:
    return Auth(client)


def store_of(app: Flask) -> Store:
    """The app's policy store, opened by the test (use as a context manager)."""
    return Store(Path(app.config["POLICY_DB"]))


def api_token(app: Flask, user: str) -> dict[str, str]:
    """Authorization headers with a new API token of `user`."""
    with store_of(app) as s:
        return {"Authorization": f"Bearer {Accounts(s).create_token(user, 'test', 'test')}"}
