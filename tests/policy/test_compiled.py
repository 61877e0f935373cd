"""Tests for gateway/policy/compiled.py: precedence host > group > global > default_mode,
CIDR host entries (most specific wins), validation errors naming the entry."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.match.rules import Pattern, Rule
from gateway.policy.compiled import CompiledPolicy
from gateway.vocabulary import Action, Direction, Mode


@dataclass(frozen=True)
class H:
    id: int
    address: str
    group_id: int | None


@dataclass(frozen=True)
class G:
    id: int


@dataclass(frozen=True)
class A:
    rule_id: int
    scope: str
    scope_id: int | None
    mode: str


RULE = Rule(
    1,
    "t",
    (),
    "high",
    Action.DROP,
    "tcp",
    (80,),
    frozenset({Direction.TO_SERVER}),
    (Pattern("content", b"x"),),
    (),
    Path("t.yaml"),
)


def test_precedence_host_group_global_default() -> None:
    hosts = [H(1, "198.18.0.20", 10), H(2, "198.18.0.21", 10), H(3, "198.18.0.22", None)]
    assigns = [A(1, "host", 1, "off"), A(1, "group", 10, "detect"), A(1, "global", None, "prevent")]
    policy = CompiledPolicy(hosts, [G(10)], assigns)
    assert policy.mode("198.18.0.20", RULE) is Mode.OFF
    assert policy.mode("198.18.0.21", RULE) is Mode.DETECT
    assert policy.mode("198.18.0.22", RULE) is Mode.PREVENT
    assert policy.mode("198.18.9.9", RULE) is Mode.PREVENT
    empty = CompiledPolicy()
    assert empty.mode("198.18.0.20", replace(RULE, default_mode=Mode.DETECT)) is Mode.DETECT
    assert empty.mode("not an address", RULE) is Mode.PREVENT


def test_cidr_most_specific_prefix_wins() -> None:
    hosts = [H(1, "198.18.0.0/16", None), H(2, "198.18.5.0/24", None), H(3, "2001:db8::/32", None)]
    assigns = [A(1, "host", 1, "detect"), A(1, "host", 2, "off"), A(1, "host", 3, "off")]
    policy = CompiledPolicy(hosts, [], assigns)
    assert policy.mode("198.18.5.7", RULE) is Mode.OFF
    assert policy.mode("198.18.6.7", RULE) is Mode.DETECT
    assert policy.mode("2001:db8::1", RULE) is Mode.OFF
    assert policy.mode("198.19.0.1", RULE) is Mode.PREVENT


@pytest.mark.parametrize(
    ("hosts", "assigns", "message"),
    [
        ([H(1, "nope", None)], [], "host 1: address 'nope'"),
        ([H(1, "198.18.0.1", 5)], [], "host 1: group 5 does not exist"),
        ([], [A(7, "global", None, "loud")], "rule 7 (global None): mode 'loud'"),
        ([], [A(7, "host", 4, "off")], "host 4 does not exist"),
        ([], [A(7, "galaxy", None, "off")], "scope 'galaxy'"),
    ],
)
def test_invalid_entries_are_named(hosts: list[H], assigns: list[A], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CompiledPolicy(hosts, [], assigns)
