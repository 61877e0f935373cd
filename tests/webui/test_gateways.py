"""The Gateways page and the events' gateway column and filter, on the UI's own (SQLite) stores:
a heartbeat row written as a gateway writes it is listed with its age, a silent one is marked,
and events written by two gateways are told apart."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from flask import Flask

from gateway.database import connect
from gateway.events.eve import to_eve
from gateway.events.sink import _row, store_rows
from gateway.policy.sync import heartbeat_row
from tests.webui.conftest import make_event, store_of


def test_gateways_are_listed_with_their_heartbeat(app: Flask, client: Any, auth: Any) -> None:
    with store_of(app) as store:
        heartbeat_row(
            store, "gw-a", time.time() - 60, store.policy_version(), {"alive": 2, "workers": 2}
        )
        heartbeat_row(store, "gw-old", time.time() - 600, 0, {})
        store.db.execute(
            "UPDATE gateways SET last_seen = ? WHERE name = 'gw-old'", (time.time() - 300,)
        )
    auth.login()
    page = client.get("/gateways/").get_data(as_text=True)
    assert re.search(r'<tr class="gateway">\s*<td>gw-a</td>', page)
    assert re.search(r'<tr class="gateway silent">\s*<td>gw-old</td>', page)
    data = client.get("/gateways/data").get_json()
    assert [g["name"] for g in data["gateways"]] == ["gw-a", "gw-old"]
    assert data["gateways"][0]["current"] and not data["gateways"][1]["current"]


def test_events_are_shown_and_filtered_by_gateway(app: Flask, client: Any, auth: Any) -> None:
    db = connect(Path(app.config["EVENTS_DB"]))
    try:
        rows = []
        for gw, flow in (("gw-a", 501), ("gw-b", 502)):
            eve = to_eve(make_event(flow_id=flow))
            rows.append(_row(eve, json.dumps(eve), gw))
        store_rows(db, rows)
    finally:
        db.close()
    auth.login()
    page = client.get("/events/?gateway=gw-b").get_data(as_text=True)
    assert '<td class="gateway">gw-b</td>' in page and '<td class="gateway">gw-a</td>' not in page
    assert "Events (1)" in page
    assert "Events (5)" in client.get("/events/").get_data(as_text=True)
