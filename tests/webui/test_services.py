"""webui/services.py, the operations shared by the pages and the API, called inside an
application context: rule defaults from the rule file, event filters (each bad value named),
paging bounds, the why of an event, reload and status without a gateway."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.webui.conftest import store_of
from webui.services import (
    MAX_PAGE_SIZE,
    InputError,
    dashboard_data,
    event_where,
    explain_event,
    export_events,
    gateway_status,
    get_event,
    list_events,
    set_rule_mode,
    would_block_counts,
)


def test_rule_default_mode_and_products_come_from_the_rule_file(tmp_path: Any) -> None:
    from gateway.match.rules import load_rules
    from webui.services import rule_default_mode, rule_products

    (tmp_path / "r.yaml").write_text(
        "id: 9000900\ntitle: t\nseverity: low\naction: reset\nprotocol: tcp\nports: [80]\n"
        "default_mode: detect\naffected:\n  - product: nginx\n"
        'patterns:\n  - content: "abc"\n'
    )
    rule = load_rules([tmp_path / "r.yaml"]).by_id[9000900]
    assert rule_default_mode(rule) == "detect"
    assert rule_products(rule) == ["nginx"]


def test_event_where_builds_bound_clauses() -> None:
    assert event_where({}) == ("", [])
    where, args = event_where({
        "since": "2030-01-02T03:04:05", "until": "2030-01-02T05:04:05+02:00", "host": "198.18.0.20",
        "rule": " 9000100 ", "cve": "cve-2017-0144", "action": "blocked", "address": "198.18.0.10",
        "ignored": "x",
    })  # fmt: skip
    assert where == (
        " WHERE timestamp >= ? AND timestamp <= ? AND dest_ip = ? AND signature_id = ? AND "
        "cves LIKE ? AND action = ? AND (src_ip = ? OR dest_ip = ?)"
    )
    assert args == [
        "2030-01-02T03:04:05.000000+00:00", "2030-01-02T03:04:05.000000+00:00", "198.18.0.20",
        9000100, "%,CVE-2017-0144,%", "blocked", "198.18.0.10", "198.18.0.10",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"since": "yesterday"}, "since 'yesterday': not an ISO 8601 time"),
        ({"until": "2030-13-01"}, "until '2030-13-01': not an ISO 8601 time"),
        ({"rule": "9000100 OR 1=1"}, "rule '9000100 OR 1=1': not an integer"),
        ({"action": "dropped"}, "action 'dropped': must be allowed or blocked"),
    ],
)
def test_event_where_names_the_bad_filter(filters: dict[str, str], reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)):
        event_where(filters)


def test_list_events_paging_bounds_and_order(app: Flask) -> None:
    with app.app_context():
        everything = list_events({}, page=0, per_page=10**6)
        assert (everything["page"], everything["per_page"], everything["total"]) == (
            1, MAX_PAGE_SIZE, 3
        )  # fmt: skip
        stamps = [e["timestamp"] for e in everything["events"]]
        assert stamps == sorted(stamps, reverse=True)
        one = list_events({"rule": "9000100"}, page=2, per_page=0)
        assert (one["per_page"], one["total"], len(one["events"])) == (1, 2, 1)
        assert list_events({}, page=5)["events"] == []
        assert would_block_counts() == {9000100: 1}


def test_without_an_event_store_everything_is_empty(app: Flask, tmp_path: Path) -> None:
    app.config["EVENTS_DB"] = str(tmp_path / "absent.db")
    with app.app_context():
        assert list_events({})["events"] == [] and list_events({})["total"] == 0
        assert export_events({}) == [] and get_event(1) is None
        assert would_block_counts() == {} and dashboard_data()["total"] == 0


def test_explain_event_known_and_unknown_rule(app: Flask) -> None:
    with app.app_context():
        by_rule = {e["signature_id"]: e for e in list_events({})["events"]}
        found = get_event(by_rule[9000100]["id"])
        assert found is not None
        why = explain_event(*found)
        assert why["rule_known"] and why["direction"] == "to_server"
        assert why["rule"] == "vpatch lab test exploit marker (split-pattern test)"
        unknown = dict(by_rule[9000001], signature_id=4242, signature="not in the rule set")
        why = explain_event(unknown, {"vpatch": "not a mapping", "http": ["odd"]})
        assert not why["rule_known"] and why["rule"] == "not in the rule set"
        assert why["url"] is None and why["field"] is None and why["conditions"] == []


def test_mode_changes_and_reload_without_a_gateway(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(InputError, match="rule 1: no such rule"):
            set_rule_mode(1, "global", None, "off", "admin")
        with pytest.raises(InputError, match="mode 'loud': must be one of"):
            set_rule_mode(9000100, "global", None, "loud", "admin")
        result = set_rule_mode(9000100, "global", None, None, "admin")  # inherit: nothing set
        assert result["assignment"] is None and result["reload"]["ok"] is False
        status = gateway_status()
        assert status["reachable"] is False and "control.sock" in status["error"]
    with store_of(app) as s:
        (entry,) = [e for e in s.list_audit() if e.action == "gateway.reload"]
        assert entry.actor == "admin" and entry.detail["after"]["ok"] is False
