"""The evasion harness over the bundled rules' samples: per technique class, every valid
evasion of every attack sample is stopped (an event names the rule's CVE, or the gateway blocked
so the server no longer reads the exploit), and no benign look-alike raises any event.

Subjects are the inline client-to-server TCP samples of rules/ (bench/bench_evasion.py adds the
corpora's exploit connections); techniques and targets are those of gateway/testing/evasion.py
and gateway/testing/receiver.py. A class the gateway does not handle yet is marked xfail
(strict) naming the gap: the fix that closes it makes the test pass, and must remove the mark.
"""

from __future__ import annotations

from functools import cache

import pytest

from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.evasion import CLASSES, TECHNIQUES, Technique
from gateway.testing.evasion_run import (
    Outcome,
    Result,
    Subject,
    evaluate,
    rule_subjects,
    run_case,
)
from gateway.testing.receiver import TARGETS


@cache
def matcher() -> Matcher:
    return Matcher(load_rules([default_rule_dir()]))


@cache
def subjects() -> tuple[Subject, ...]:
    return tuple(rule_subjects(matcher().ruleset))


def of_class(cls: str) -> list[Technique]:
    return [t for t in TECHNIQUES.values() if t.cls == cls]


# Classes the gateway does not handle yet, and why (the gap a fix must close).
GAPS: dict[str, str] = {}


def summary(results: list[Result]) -> str:
    bad = [r for r in results if r.outcome in (Outcome.MISSED, Outcome.FALSE_POSITIVE)]
    lines = [f"{r.outcome.value} {r.technique.name} {r.target.name} {r.subject.name}" for r in bad]
    return f"{len(bad)} failures:\n" + "\n".join(lines[:40])


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=GAPS[c])) if c in GAPS else c
        for c in CLASSES
    ],
)
def test_every_valid_evasion_is_stopped_and_no_benign_look_alike_fires(cls: str) -> None:
    results = evaluate(matcher(), subjects(), of_class(cls), TARGETS)
    valid = [r for r in results if r.subject.kind == "attack" and r.outcome is not Outcome.INVALID]
    assert valid, f"class {cls}: no valid attack case (the harness tests nothing)"
    assert not any(r.outcome in (Outcome.MISSED, Outcome.FALSE_POSITIVE) for r in results), summary(
        results
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_every_class_has_valid_cases_for_each_target_it_aims_at(cls: str) -> None:
    """The model, not the gateway: each class's techniques work against some target for
    most attack samples (a technique valid nowhere would measure nothing)."""
    techs = of_class(cls)
    attack = next(s for s in subjects() if s.kind == "attack" and s.app == "http")
    if cls == "smb":
        attack = next(s for s in subjects() if s.kind == "attack" and s.app == "smb")
    if cls == "smb-write":  # the pipe writes of an SMB DCE/RPC sample (MS08-067's)
        attack = next(s for s in subjects() if s.kind == "attack" and s.sid == 9001010)
    for tech in techs:
        results = run_case(matcher(), attack, tech, TARGETS)
        if not results:
            continue  # the rewrite does not apply to this sample
        assert any(r.outcome is not Outcome.INVALID for r in results), tech.name


def test_baseline_catches_every_attack_sample() -> None:
    """The plain session: every attack sample raises an event naming its CVE (the harness
    wiring, the engine and the samples agree before any evasion)."""
    results = evaluate(matcher(), subjects(), of_class("baseline"), TARGETS)
    assert results and all(r.outcome in (Outcome.STOPPED, Outcome.CLEAN) for r in results), summary(
        results
    )
