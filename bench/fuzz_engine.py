"""Long-running corpus mutator against the whole engine: figures, not assertions.

Feeds gateway/testing/enginefuzz.py's mutator (corpus frames with bytes flipped, truncated,
spliced; corpus connections and evasion sessions with segments shuffled, duplicated, dropped,
cut, overlapped by differing copies; random bytes) through one Engine with small bounds, and
every `--every` seconds prints packets/s, decisions by action, internal errors, the flow
table, open Hyperscan streams, the largest flow state and the process RSS. Every `--check`
seconds it also checks every bound (gateway/testing/enginefuzz.py `bound_violations`); a
violation or an internal error is printed with the unit that caused it (its kind and the
inputs' hex in a file under --out) and makes the exit status 1.

    PYTHONPATH=. .venv/bin/python bench/fuzz_engine.py --duration 600
    PYTHONPATH=. .venv/bin/python bench/fuzz_engine.py --duration 14400 --every 60 --seed 7
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.enginefuzz import (
    DECODER_STATE_BOUND,
    CorpusMutator,
    Unit,
    bound_violations,
    evasion_cases,
    feed,
    flow_state_bytes,
    load_corpus,
)

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(out: Path, unit: Unit, why: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fuzz-{int(time.time() * 1000)}.json"
    path.write_text(
        json.dumps(
            {"why": why, "kind": unit.kind, "inputs": [[lt, d.hex()] for lt, d in unit.inputs]}
        )
    )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between figure lines")
    ap.add_argument("--check", type=float, default=30.0, help="seconds between bound checks")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--max-flows", type=int, default=256)
    ap.add_argument("--max-pending", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "fuzz")
    args = ap.parse_args(argv)

    started = time.monotonic()
    matcher = Matcher(load_rules([default_rule_dir()]))
    records = load_corpus(args.corpora) if args.corpora.is_dir() else []
    mutator = CorpusMutator(records, evasion_cases(matcher.ruleset), args.seed)
    config = EngineConfig(
        max_flows=args.max_flows,
        max_pending=args.max_pending,
        retransmit_history=1024,
        http_memo_entries=64,
    )
    engine = Engine(matcher.ruleset, config, matcher=matcher)
    per_flow = DECODER_STATE_BOUND + 2 * (config.max_pending + 2 * config.retransmit_history)
    print(
        f"# {len(records)} corpus frames, {len(mutator.flows)} flows, {len(mutator.cases)} "
        f"evasion cases, {len(matcher.ruleset.rules)} rules; max_flows {config.max_flows}, "
        f"max_pending {config.max_pending}; set up in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    print(
        "# elapsed_s  packets  pkt/s  accept alert drop reset  internal_errors decode_errors"
        "  flows streams max_flow_KiB  rss_MiB",
        flush=True,
    )
    actions: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    packets = failures = 0
    now = 1_700_000_000.0
    t0 = last_print = last_check = time.monotonic()
    last_packets = 0
    errors = 0
    for unit in mutator:
        try:
            decisions = feed(engine, unit, now)
        except Exception:  # noqa: BLE001 - an escape is the bug this hunts: report and go on
            failures += 1
            print(f"! exception escaped on a {unit.kind} unit: {save(args.out, unit, 'raise')}")
            traceback.print_exc()
            continue
        kinds[unit.kind] += 1
        packets += len(decisions)
        for d in decisions:
            actions[d.action.value] += 1
        now += 0.01 + (700.0 if mutator.rng.random() < 0.0005 else 0.0)
        if engine.stats.internal_errors + engine.stats.app_internal_errors > errors:
            errors = engine.stats.internal_errors + engine.stats.app_internal_errors
            failures += 1
            print(f"! internal error on a {unit.kind} unit: {save(args.out, unit, 'internal')}")
        mono = time.monotonic()
        if mono - last_check >= args.check:
            last_check = mono
            broken = bound_violations(engine, per_flow)
            if broken:
                failures += 1
                print(f"! bounds: {broken[:5]} (last unit: {save(args.out, unit, 'bounds')})")
        if mono - last_print >= args.every or mono - t0 >= args.duration:
            rate = (packets - last_packets) / max(mono - last_print, 1e-9)
            last_print, last_packets = mono, packets
            largest = max((flow_state_bytes(f) for f in engine.table), default=0)
            print(
                f"{mono - t0:9.0f} {packets:9d} {rate:6.0f}  "
                f"{actions['accept']} {actions['alert']} {actions['drop']} {actions['reset']}  "
                f"{engine.stats.internal_errors + engine.stats.app_internal_errors} "
                f"{engine.stats.decode_errors}  {len(engine.table)} "
                f"{engine.matcher.streams_open} {largest / 1024:.1f}  {rss_mib():.1f}",
                flush=True,
            )
        if mono - t0 >= args.duration:
            break
    broken = bound_violations(engine, per_flow)
    stats = engine.stats.as_dict()
    print(f"# units by kind: {dict(kinds)}")
    print(f"# engine counters: {json.dumps(stats, sort_keys=True)}")
    print(f"# bounds at the end: {'held' if not broken else broken[:5]}")
    print(f"# failures: {failures}")
    return 1 if failures or broken else 0


if __name__ == "__main__":
    sys.exit(main())
