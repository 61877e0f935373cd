"""Evasion benchmark: every attack sample through every evasion technique, through the engine,
judged by the model of the server's receive path (gateway/testing/evasion_run.py).

Prints one row per technique class: attack cases (subject x technique x target), those valid
(the target really reads the exploit without a gateway), stopped (an event names the CVE, or
the gateway blocked so the exploit no longer arrives), missed; benign look-alike cases that are
valid, those with any event (false positives), and those the gateway did not let through whole
(broken). Asserts nothing.

Run: .venv/bin/python bench/bench_evasion.py [--detail] [--misses] [--no-corpora]
         [--only CLASS,...] [--subject TEXT] [--technique TEXT]
Subjects: the inline TCP samples of the bundled rules (client to server), and the client stream
of the exploit connection of each attack capture in ../shared/corpora (up to 128 KiB).
Targets: Linux and Windows Server 2003 (gateway/testing/receiver.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.evasion import TECHNIQUES
from gateway.testing.evasion_run import (
    Outcome,
    corpus_subjects,
    evaluate,
    format_table,
    rule_subjects,
    table,
)
from gateway.testing.receiver import TARGETS

DEFAULT_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detail", action="store_true", help="missed cases per technique")
    ap.add_argument("--misses", action="store_true", help="list every missed case")
    ap.add_argument("--no-corpora", action="store_true", help="rule samples only")
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    ap.add_argument("--only", default="", help="technique classes, comma-separated")
    ap.add_argument("--subject", default="", help="subjects whose name contains this")
    ap.add_argument("--technique", default="", help="techniques whose name contains this")
    args = ap.parse_args(argv)
    matcher = Matcher(load_rules([default_rule_dir()]))
    subjects = rule_subjects(matcher.ruleset)
    if not args.no_corpora:
        subjects += corpus_subjects(args.corpora, matcher)
    subjects = [s for s in subjects if args.subject in s.name]
    classes = set(filter(None, args.only.split(",")))
    techniques = [
        t
        for t in TECHNIQUES.values()
        if (not classes or t.cls in classes) and args.technique in t.name
    ]
    attacks = sum(s.kind == "attack" for s in subjects)
    print(
        f"{attacks} attack and {len(subjects) - attacks} benign subjects, "
        f"{len(techniques)} techniques, targets: {', '.join(t.name for t in TARGETS)}"
    )
    start = time.perf_counter()
    results = evaluate(matcher, subjects, techniques, TARGETS)
    print(format_table(table(results), detail=args.detail))
    if args.misses:
        for r in results:
            if r.outcome in (Outcome.MISSED, Outcome.FALSE_POSITIVE):
                print(
                    f"{r.outcome.value:<15} {r.technique.name:<40} {r.target.name:<13} "
                    f"{r.subject.name}"
                )
    print(f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
