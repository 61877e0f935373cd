"""webui/events.py through Flask's test client: attacker bytes escaped in the list, the detail,
CSV and JSON exports; filters and pagination; an exception from an event needs a reason and is
stored; and the CSV writer and expiry parser on their own."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.events.eve import DropReason, EventType
from gateway.firewall.dropevents import FW_SID_BASE, SID_SETUP_IN
from gateway.lifecycle.monitor import SID_NEW_PORT
from gateway.policy.exceptions import PolicyExceptions, UriScope
from tests.webui.conftest import EVIL, Auth, api_token, make_event, store_of, write_events
from tests.webui.exception_review import add_exception, review
from webui.events import csv_text, parse_expiry
from webui.inputs import InputError
from webui.services import EVENT_COLUMNS


def _evil_row_id(client: FlaskClient) -> int:
    page = client.get("/events/?address=198.18.0.11").get_data(as_text=True)
    ids = re.findall(r'href="/events/(\d+)"', page)
    assert len(ids) == 1
    return int(ids[0])


def test_attacker_bytes_are_escaped_in_list_detail_csv_json(
    client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    listing = client.get("/events/").get_data(as_text=True)
    for page in (listing, client.get(f"/events/{_evil_row_id(client)}").get_data(as_text=True)):
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;\\x00\\x1b\\x7f" in page
        assert "\x00" not in page and "\x1b" not in page
    rows = list(csv.reader(io.StringIO(client.get("/events/export.csv").get_data(as_text=True))))
    sigs = [r[4] for r in rows[1:]]
    assert EVIL in sigs  # CSV keeps the value (text/csv is not rendered as HTML)...
    assert '\'=HYPERLINK("http://x")' in sigs  # ...but never lets a formula start a cell
    data = json.loads(client.get("/events/export.json").get_data(as_text=True))
    assert EVIL in [e["signature"] for e in data]
    resp = client.get("/events/export.json")
    assert (
        resp.mimetype == "application/json" and resp.headers["X-Content-Type-Options"] == "nosniff"
    )


def test_event_filters_and_pagination(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    assert "Events (3)" in client.get("/events/").get_data(as_text=True)
    assert "Events (1)" in client.get("/events/?cve=CVE-2017-0144").get_data(as_text=True)
    assert "Events (2)" in client.get("/events/?rule=9000100").get_data(as_text=True)
    assert "Events (1)" in client.get("/events/?action=allowed").get_data(as_text=True)
    assert "Events (0)" in client.get("/events/?since=2999-01-01T00:00:00").get_data(as_text=True)
    page = client.get("/events/?per_page=1&page=2").get_data(as_text=True)
    assert (
        len(re.findall(r'href="/events/\d+"', page)) == 1 and "previous" in page and "next" in page
    )
    assert client.get("/events/?rule=abc").status_code == 400


def test_exception_needs_reason_and_is_stored(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    ev = _evil_row_id(client)
    assert add_exception(client, auth.token(), ev, " ", scope="port").status_code == 400
    resp = add_exception(client, auth.token(), ev, "scanner of ours", scope="uri",
                         expires="2999-01-01T00:00:00")  # fmt: skip
    assert resp.status_code == 302
    with store_of(app) as s:
        (exc,) = PolicyExceptions(s).list_exceptions()
        assert exc.host == "198.18.0.20" and exc.rule_id == 9000100
        # the recorded target, every character literal: control characters %-escaped
        assert exc.uri == "/" + EVIL.replace("\x00", "%00").replace("\x1b", "%1b").replace(
            "\x7f", "%7f"
        )
        assert exc.uri_scope() == UriScope("/" + EVIL, prefix=False)
    assert "&lt;script&gt;" in client.get("/events/exceptions").get_data(as_text=True)


def test_csv_text_header_cves_and_formula_cells() -> None:
    row = {c: "" for c in EVENT_COLUMNS} | {
        "id": 1,
        "signature": "=cmd|' /C calc'!A0",
        "cves": ["CVE-2017-0144", "CVE-2017-0145"],
        "src_port": 40000,
    }
    header, line = list(csv.reader(io.StringIO(csv_text([row]))))
    assert header == list(EVENT_COLUMNS)
    cells = dict(zip(header, line, strict=True))
    assert cells["signature"] == "'=cmd|' /C calc'!A0"
    assert cells["cves"] == "CVE-2017-0144,CVE-2017-0145" and cells["src_port"] == "40000"
    assert list(csv.reader(io.StringIO(csv_text([])))) == [list(EVENT_COLUMNS)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("  ", None),
        ("2030-01-02T03:04:05", 1893553445.0),  # no zone: UTC
        ("2030-01-02T05:04:05+02:00", 1893553445.0),
        (" 2030-01-02 03:04:05 ", 1893553445.0),
    ],
)
def test_parse_expiry(value: str, expected: float | None) -> None:
    assert parse_expiry(value) == expected


def test_parse_expiry_names_a_bad_value() -> None:
    with pytest.raises(InputError, match="expires 'next week': not an ISO 8601 time"):
        parse_expiry("next week")


def test_exception_errors_name_what_is_wrong(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    plain = next(e for e in client.get("/api/v1/events", headers=api_token(app, "admin")).get_json()
                 ["events"] if e["signature_id"] == 9000001)  # fmt: skip
    cases = [
        (plain["id"], {"scope": "uri"}, "this event records no URI"),
        (plain["id"], {"scope": "flow"}, "scope 'flow': host, port or uri"),
        (plain["id"], {"scope": "uri", "uri": "/x", "match": "glob"}, "match 'glob'"),
        (plain["id"], {"scope": "uri", "uri": "/", "match": "prefix"}, "covers every URI"),
        (999, {"scope": "host"}, "event 999: not found"),
    ]
    for event_id, form, reason in cases:
        resp = review(client, auth.token(), event_id, reason="why not", **form)
        assert resp.status_code == 400, reason
        assert reason in html.unescape(resp.get_data(as_text=True))
    resp = add_exception(client, auth.token(), plain["id"], "why not", expires="soon")
    assert resp.status_code == 400 and "expires 'soon'" in html.unescape(resp.text)
    # a URI typed by the admin is taken even where the event records none
    resp = add_exception(client, auth.token(), plain["id"], "ok", scope="uri", uri="/typed")
    assert resp.status_code == 302
    with store_of(app) as s:
        (exc,) = PolicyExceptions(s).list_exceptions()
        assert (exc.uri, exc.rule_id, exc.host) == ("/typed", 9000001, "198.18.0.20")


def test_export_formats(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    assert client.get("/events/export.xml").status_code == 404
    resp = client.get("/events/export.csv?rule=9000001")
    assert resp.headers["Content-Disposition"] == "attachment; filename=vpatch-events.csv"
    assert len(list(csv.reader(io.StringIO(resp.get_data(as_text=True))))) == 2
    assert client.get("/events/export.json?action=maybe").status_code == 400


def test_event_list_sorts_and_pages_through_the_url(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = client.get("/events/?sort=source").get_data(as_text=True)
    sources = re.findall(r"<td>(198\.18\.0\.1\d):\d+</td>", page)
    assert sources == sorted(sources) and len(sources) == 3
    assert 'aria-sort="ascending"' in page
    assert 'href="/events/?sort=-source"' in page  # the next click reverses it
    page = client.get("/events/?sort=-source&rule=9000100&per_page=1").get_data(as_text=True)
    assert re.findall(r"<td>(198\.18\.0\.1\d):\d+</td>", page) == ["198.18.0.11"]
    # the pager keeps the filters and the order, and no empty filter
    assert 'href="/events/?page=2&amp;rule=9000100&amp;sort=-source"' in page
    assert "page 1 of 2" in page
    empty = client.get("/events/?rule=1").get_data(as_text=True)
    assert 'class="empty"' in empty and "No event matches these filters" in empty
    default = client.get("/events/?sort=signature;DROP").get_data(as_text=True)
    assert 'class="sortable sorted" aria-sort="descending"' in default  # time, newest first


def test_kind_filter_and_csv_columns_for_firewall_and_host_mode_events(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    db = Path(app.config["EVENTS_DB"])
    write_events(db, [
        (make_event(signature_id=FW_SID_BASE + 7, signature="firewall rule 7 deny: no telnet",
                    event_type=EventType.DROP, reason=DropReason.FIREWALL, fw_rule_id=7,
                    count=1234, first_seen=time.time() - 90, dest_port=23), {}),
        (make_event(signature_id=FW_SID_BASE + 8, signature="firewall rule 8 log: web",
                    event_type=EventType.FLOW, reason=DropReason.FIREWALL, blocked=False), {}),
        (make_event(signature_id=SID_SETUP_IN, signature="setup protection: inbound",
                    event_type=EventType.DROP, reason=DropReason.SETUP), {}),
        (make_event(signature_id=SID_NEW_PORT, signature="lockdown: new port",
                    event_type=EventType.DROP, reason=DropReason.LOCKDOWN), {}),
    ])  # fmt: skip
    auth.login()
    counts = {"": 7, "alert": 3, "drop": 3, "flow": 1, "firewall": 2, "setup": 1, "lockdown": 1}
    for kind, n in counts.items():
        assert f"Events ({n})" in client.get(f"/events/?kind={kind}").get_data(as_text=True)
    assert client.get("/events/?kind=nonsense").status_code == 400
    page = client.get("/events/?kind=firewall").get_data(as_text=True)
    assert "firewall rule 7 deny: no telnet" in page and ">1234<" in page
    rows = list(csv.DictReader(io.StringIO(
        client.get("/events/export.csv?kind=drop").get_data(as_text=True))))  # fmt: skip
    fw = next(r for r in rows if r["signature_id"] == str(FW_SID_BASE + 7))
    assert (fw["event_type"], fw["count"], fw["mode"], fw["dest_port"]) == (
        "drop", "1234", "firewall", "23")  # fmt: skip
    assert fw["first_seen"] < fw["last_seen"] == fw["timestamp"]
    assert {r["mode"] for r in rows} == {"firewall", "setup", "lockdown"}
    data = json.loads(client.get("/events/export.json?kind=flow").get_data(as_text=True))
    assert [(e["event_type"], e["action"]) for e in data] == [("flow", "allowed")]
