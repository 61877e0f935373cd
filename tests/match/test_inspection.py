"""Tests for gateway/match/inspection.py: a rule with raw patterns and field conditions fires
once both halves held, in either order, per direction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gateway.config import LimitsConfig
from gateway.flow.limits import LimitTable
from gateway.match.inspection import Inspection
from gateway.match.matcher import Matcher
from gateway.match.rules import RuleSet
from gateway.vocabulary import Direction
from tests.test_engine import HTTP_RULE, app_rules, rule

TS, TC = Direction.TO_SERVER, Direction.TO_CLIENT

POLICIES = LimitTable(LimitsConfig()).default


def test_combine_waits_for_both_halves_in_either_order(tmp_path: Path) -> None:
    (with_fields,) = app_rules(tmp_path, HTTP_RULE)
    plain = rule(1, b"plain")
    both = replace(with_fields, patterns=plain.patterns)  # raw patterns and field conditions
    insp = Inspection(Matcher(RuleSet([plain])), POLICIES, 0.0)
    assert insp.combine(TS, (plain, both), ()) == (plain,)  # raw half of `both` only
    assert insp.combine(TC, (), (both,)) == ()  # other direction: its own halves
    assert insp.combine(TS, (), (both,)) == (both,)
    insp = Inspection(Matcher(RuleSet([plain])), POLICIES, 0.0)
    assert insp.combine(TS, (), (both,)) == ()
    assert insp.combine(TS, (both,), ()) == (both,)


def test_close_is_idempotent() -> None:
    insp = Inspection(Matcher(RuleSet([rule(1, b"x")])), POLICIES, 0.0)
    for way in insp.ways:
        way.active = True
    insp.close(TS)
    insp.release()
    insp.release()
    assert not any(way.active or way.reasm for way in insp.ways)
