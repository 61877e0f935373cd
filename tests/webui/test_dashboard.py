"""webui/dashboard.py through Flask's test client: the data endpoint's events over time (24
buckets of the window, blocked vs allowed), the top rules, CVEs, sources and hosts, the window
bounds (1 hour to 30 days), events outside the window left out, and the gateway's health when
no gateway answers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.vocabulary import Action
from tests.webui.conftest import Auth, make_event, write_events
from webui.services import CHART_BUCKETS


def data(client: FlaskClient, query: str = "") -> dict[str, Any]:
    resp = client.get("/dashboard/data" + query)
    assert resp.status_code == 200
    body: dict[str, Any] = resp.get_json()
    return body


def test_counts_buckets_and_tops(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    body = data(client)
    events = body["events"]
    assert events["hours"] == 24 and events["total"] == 3
    assert len(events["buckets"]) == CHART_BUCKETS
    # the three fixture events are a minute old: all in the last bucket, one of them allowed
    assert events["buckets"][-1] | {"start": None} == {"start": None, "allowed": 1, "blocked": 2}
    assert sum(b["allowed"] + b["blocked"] for b in events["buckets"]) == 3
    top = events["top"]
    assert [(r["key"], r["count"]) for r in top["rules"]] == [(9000100, 2), (9000001, 1)]
    assert {c["key"]: c["count"] for c in top["cves"]} == {"CVE-0000-0001": 2, "CVE-2017-0144": 1}
    assert {s["key"]: s["count"] for s in top["sources"]} == {"198.18.0.10": 2, "198.18.0.11": 1}
    assert [(h["key"], h["count"]) for h in top["hosts"]] == [("198.18.0.20", 3)]
    assert body["health"]["reachable"] is False


@pytest.mark.parametrize(("query", "hours"), [("?hours=1", 1), ("?hours=", 24), ("?hours=0", 1),
                         ("?hours=-5", 1), ("?hours=100000", 720)])  # fmt: skip
def test_window_bounds(client: FlaskClient, auth: Auth, query: str, hours: int) -> None:
    auth.login()
    assert data(client, query)["events"]["hours"] == hours


def test_a_window_that_is_not_a_number_is_refused(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    resp = client.get("/dashboard/data?hours=x", headers={"Accept": "application/json"})
    assert resp.status_code == 400 and resp.get_json() == {"error": "hours 'x': not an integer"}
    page = client.get("/dashboard/data?hours=x")  # a browser's address bar: the error page
    assert page.status_code == 400 and "hours &#39;x&#39;: not an integer" in page.text


def test_events_outside_the_window_are_left_out(
    app: Flask, client: FlaskClient, auth: Auth, tmp_path: Path
) -> None:
    old = time.time() - 3 * 86400
    write_events(tmp_path / "events.db", [
        (make_event(timestamp=old, flow_id=7, src_ip="198.18.0.99", blocked=False,
                    rule_action=Action.RESET), {}),
    ])  # fmt: skip
    auth.login()
    assert data(client)["events"]["total"] == 3
    week = data(client, "?hours=168")["events"]
    assert week["total"] == 4 and "198.18.0.99" in {s["key"] for s in week["top"]["sources"]}
    assert week["buckets"][0]["start"] < week["buckets"][-1]["start"]


def test_dashboard_page_renders_the_same_figures(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    for path in ("/", "/dashboard/"):
        page = client.get(path).get_data(as_text=True)
        assert "CVE-2017-0144" in page and "198.18.0.11" in page
