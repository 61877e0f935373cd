"""webui/dashboard.py through Flask's test client: the data endpoint's events over time (24
buckets of the window, blocked vs allowed), the top rules, CVEs, sources and hosts, the window
bounds (1 hour to 30 days), events outside the window left out, and the gateway's health when
no gateway answers. The figures come from the rollups (gateway/events/rollup.py) and equal a
recount of the events one by one; no dashboard query touches the events table (its cost does
not grow with the number of events; timings in bench/bench_dashboard.py)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.vocabulary import Action
from tests.webui.conftest import Auth, make_event, write_events
from webui.db import get_events
from webui.services import CHART_BUCKETS, TOP_N, dashboard_data, shared_dashboard_data


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


def recount(rows: list[tuple[float, str, str]], hours: int, now: int) -> dict[str, Any]:
    """The dashboard's figures counted one event at a time: an event counts in the bucket in
    which its minute starts; the tops cover the whole hours the window touches."""
    end = now - now % 60 + 60
    start = end - hours * 3600
    since_hour = start - start % 3600
    buckets = [{"allowed": 0, "blocked": 0} for _ in range(CHART_BUCKETS)]
    sources: Counter[str] = Counter()
    for ts, action, src in rows:
        minute = int(ts) - int(ts) % 60
        if start <= minute < end:
            i = min((minute - start) // (hours * 3600 // CHART_BUCKETS), CHART_BUCKETS - 1)
            buckets[i]["blocked" if action == "blocked" else "allowed"] += 1
        if since_hour <= int(ts) < end:
            sources[src] += 1
    return {"buckets": buckets, "total": sum(b["allowed"] + b["blocked"] for b in buckets),
            "sources": sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]}  # fmt: skip


def test_figures_equal_a_recount_of_the_events(app: Flask, tmp_path: Path) -> None:
    rng = random.Random(9)
    now = int(time.time())
    db = tmp_path / "events2.db"
    rows = [(now - rng.uniform(-120, 35 * 86400), rng.choice(["blocked", "allowed"]),
             f"198.18.1.{rng.randint(1, 30)}") for _ in range(3000)]  # fmt: skip
    write_events(db, [(make_event(timestamp=ts, src_ip=src, blocked=action == "blocked"), {})
                      for ts, action, src in rows])  # fmt: skip
    app.config["EVENTS_DB"] = str(db)
    for hours in (1, 24, 168, 720):
        with app.app_context():
            got = dashboard_data(hours, now=now)
        want = recount(rows, hours, now)
        assert [{k: b[k] for k in ("allowed", "blocked")} for b in got["buckets"]] == want[
            "buckets"
        ], hours
        assert got["total"] == want["total"] and got["counted"] is True
        assert [(s["key"], s["count"]) for s in got["top"]["sources"]] == want["sources"], hours


def test_the_dashboard_reads_rollups_never_the_events(app: Flask) -> None:
    statements: list[str] = []
    with app.app_context():
        conn = get_events()
        assert conn is not None
        conn.raw.set_trace_callback(statements.append)
        assert dashboard_data(720)["total"] == 3
    assert statements and not [s for s in statements if re.search(r"\bevents\b", s)]
    assert {"event_minutes", "event_tops"} <= set(re.findall(r"event_\w+", " ".join(statements)))


def test_open_dashboards_share_one_reading(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        first = shared_dashboard_data(5)
        write_events(tmp_path / "events.db", [(make_event(flow_id=77), {})])
        assert shared_dashboard_data(5) is first  # within DASHBOARD_CACHE_S: not read again
        assert dashboard_data(5)["total"] == first["total"] + 1
