"""Tests for gateway/events/eve.py: EVE field names and JSON safety."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from gateway.events.eve import Event, app_proto_for_port, format_timestamp, to_eve, to_json
from gateway.vocabulary import Action, Direction


def make_event(**kw: object) -> Event:
    fields: dict[str, object] = {
        "timestamp": 1492363369.382646,
        "flow_id": (1 << 52) - 1,
        "src_ip": "198.18.0.10",
        "src_port": 51112,
        "dest_ip": "198.18.0.20",
        "dest_port": 445,
        "proto": 6,
        "server_port": 445,
        "direction": Direction.TO_SERVER,
        "signature_id": 9001002,
        "signature": "MS17-010 EternalBlue",
        "severity": "critical",
        "cves": ("CVE-2017-0143", "CVE-2017-0144"),
        "rule_action": Action.RESET,
        "blocked": True,
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def test_eve_fields() -> None:
    eve = to_eve(make_event())
    assert eve["timestamp"] == "2017-04-16T17:22:49.382646+00:00"
    assert eve["event_type"] == "alert" and eve["flow_id"] == (1 << 52) - 1
    assert (eve["src_ip"], eve["src_port"], eve["dest_ip"], eve["dest_port"]) == (
        "198.18.0.10",
        51112,
        "198.18.0.20",
        445,
    )
    assert eve["proto"] == "TCP" and eve["app_proto"] == "smb" and eve["direction"] == "to_server"
    alert = eve["alert"]
    assert alert["action"] == "blocked" and alert["signature_id"] == 9001002
    assert alert["signature"] == "MS17-010 EternalBlue" and alert["severity"] == 1
    assert alert["metadata"]["cve"] == ["CVE-2017-0143", "CVE-2017-0144"]
    assert isinstance(alert["category"], str) and alert["category"]
    assert eve["vpatch"]["rule_action"] == "reset"


def test_direction_is_written_as_its_label() -> None:
    assert to_eve(make_event(direction=Direction.TO_CLIENT))["direction"] == "to_client"


def test_allowed_udp_and_severity_mapping() -> None:
    eve = to_eve(
        make_event(
            proto=17, blocked=False, rule_action=Action.ALERT, severity="low", server_port=53
        )
    )
    assert eve["proto"] == "UDP" and eve["alert"]["action"] == "allowed"
    assert eve["alert"]["severity"] == 3 and eve["app_proto"] == "dns"
    assert to_eve(make_event(severity="medium"))["alert"]["severity"] == 2


@pytest.mark.parametrize(
    ("port", "name"),
    [(80, "http"), (443, "tls"), (139, "smb"), (3389, "rdp"), (135, "dcerpc"), (4242, "failed")],
)
def test_app_proto_guess(port: int, name: str) -> None:
    assert app_proto_for_port(port) == name


def test_timestamp_is_iso8601_with_microseconds_and_offset() -> None:
    text = format_timestamp(0.5)
    assert text == "1970-01-01T00:00:00.500000+00:00"
    assert datetime.fromisoformat(text).timestamp() == 0.5
    for bad in (float("nan"), float("inf"), -5.0, 1e20):
        assert format_timestamp(bad) == "1970-01-01T00:00:00.000000+00:00"


def test_json_is_one_line_and_safe_for_odd_text() -> None:
    event = make_event(
        signature='caf\u00e9 "quoted"\n\ud800 lone surrogate', timestamp=float("nan")
    )
    line = to_json(event)
    assert "\n" not in line
    back = json.loads(line)
    assert back["alert"]["signature"].startswith("caf\u00e9")
    line.encode("ascii")  # ensure_ascii: always writable to any file
