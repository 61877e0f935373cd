"""Tests for gateway/match/suricata/compare.py: rules compared by meaning, not by form."""

from __future__ import annotations

from typing import Any

from gateway.match.rules import Rule, build_rule
from gateway.match.suricata.compare import rule_differences

BASE: dict[str, Any] = {
    "id": 5,
    "title": "t",
    "severity": "low",
    "action": "alert",
    "protocol": "tcp",
    "ports": [80],
    "app": "http",
}


def _rule(**changes: Any) -> Rule:
    return build_rule({**BASE, **changes}, "c.yaml", 1)


def test_same_meaning_written_differently_is_no_difference() -> None:
    a = _rule(
        conditions=[
            {"field": "raw", "content": "x;y"},
            {"field": "http.uri", "length": True, "le": 10},
            {"field": "http.method", "equals": "GET"},
        ]
    )
    b = _rule(
        conditions=[
            {"field": "http.method", "equals": "GET"},
            {"field": "http.uri", "length": True, "lt": 11},
            {"field": "raw", "regex": "x\\x3by"},
        ]
    )
    assert rule_differences(a, b) == []
    one = _rule(conditions=[{"field": "http.method", "equals": "GET"}])
    listed = _rule(conditions={"all": [{"field": "http.method", "equals": "GET"}]})
    assert rule_differences(one, listed) == []


def test_differences_name_the_attribute() -> None:
    a = _rule(conditions=[{"field": "http.uri", "content": "/a"}])
    b = _rule(conditions=[{"field": "http.uri", "content": "/b"}], severity="high", ports=[80, 81])
    diffs = rule_differences(a, b)
    assert [d.split(":", 1)[0] for d in diffs] == ["severity", "ports", "conditions"]
    assert diffs[0] == "severity: 'low' != 'high'"
