"""Benchmark of the engine: per-packet cost of Engine.process over real captures, and the
matcher's database layout (one database per port set vs one per protocol/direction).

Prints figures (microseconds per packet, packets per second); asserts nothing.
Run: .venv/bin/python bench/bench_engine.py [--corpora DIR] [--repeat N] [--rules PATH ...]

Figures:
1. process_frame (decode + pipeline) and process (pipeline only, packets pre-decoded) over
   every capture of the corpora, frames held in memory, a fresh engine per capture and round.
2. The same with only inspected packets counted: captures of SMB/HTTP (ports the bundled
   rules cover) vs the rest.
3. Matcher layout: stream-scanning 1460-byte segments with a database holding only the rules
   for the flow's port vs one holding every rule of the protocol (filtering by port after
   the match), for a synthetic set of content rules spread over many ports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.decode.packet import DecodeError, Packet, parse_frame
from gateway.engine import Engine
from gateway.errors import CaptureError
from gateway.intake.pcap import read_capture
from gateway.match.matcher import Matcher
from gateway.match.rules import Pattern, Rule, RuleSet, default_rule_dir, load_rules
from gateway.vocabulary import Action, Direction

DEFAULT_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def load_captures(corpora: Path) -> list[tuple[Path, list[tuple[float, int, bytes]]]]:
    out = []
    for path in sorted(corpora.rglob("*")):
        if path.suffix not in (".pcap", ".pcapng") or not path.is_file():
            continue
        frames: list[tuple[float, int, bytes]] = []
        try:
            for rec in read_capture(path):
                frames.append((rec.timestamp, rec.linktype, rec.data))
        except CaptureError:
            pass
        if frames:
            out.append((path, frames))
    return out


def bench_process(
    ruleset: RuleSet, captures: list[tuple[Path, list[tuple[float, int, bytes]]]], repeat: int
) -> None:
    matcher = Matcher(ruleset)
    total = sum(len(f) for _, f in captures)
    best_frame = best_pkt = float("inf")
    decoded: list[list[tuple[float, Packet]]] = []
    for _, frames in captures:
        pkts = []
        for ts, lt, data in frames:
            with contextlib.suppress(DecodeError):
                pkts.append((ts, parse_frame(data, lt)))
        decoded.append(pkts)
    n_decoded = sum(len(p) for p in decoded)
    for _ in range(repeat):
        started = time.perf_counter()
        for _, frames in captures:
            engine = Engine(ruleset, matcher=matcher)
            process_frame = engine.process_frame
            for ts, lt, data in frames:
                process_frame(data, lt, ts)
        best_frame = min(best_frame, time.perf_counter() - started)
        started = time.perf_counter()
        for pkts in decoded:
            engine = Engine(ruleset, matcher=matcher)
            process = engine.process
            for ts, pkt in pkts:
                process(pkt, ts)
        best_pkt = min(best_pkt, time.perf_counter() - started)
    print(f"captures: {len(captures)}, frames: {total}, IP packets: {n_decoded}")
    print(
        f"process_frame (decode + pipeline): {best_frame / total * 1e6:7.2f} us/packet "
        f"{total / best_frame:10.0f} packets/s"
    )
    print(
        f"process (pipeline, pre-decoded):   {best_pkt / n_decoded * 1e6:7.2f} us/packet "
        f"{n_decoded / best_pkt:10.0f} packets/s"
    )
    # inspected vs not: split by whether the capture's flows hit covered ports
    for label, keep in (("covered ports (smb/http) ", True), ("other captures          ", False)):
        subset = [
            p
            for (path, _), p in zip(captures, decoded, strict=True)
            if (("/smb/" in str(path) or "/http/" in str(path) or "eternal" in path.name) == keep)
        ]
        n = sum(len(p) for p in subset)
        if not n:
            continue
        best = float("inf")
        inspected = 0
        for _ in range(repeat):
            started = time.perf_counter()
            inspected = 0
            for pkts in subset:
                engine = Engine(ruleset, matcher=matcher)
                for ts, pkt in pkts:
                    engine.process(pkt, ts)
                inspected += engine.stats.flows_inspected
            best = min(best, time.perf_counter() - started)
        print(
            f"  {label}: {n:6d} packets, {inspected:5d} flows inspected, "
            f"{best / n * 1e6:6.2f} us/packet {n / best:10.0f} packets/s"
        )


def synthetic_rules(n_rules: int, n_ports: int, all_ports: bool) -> RuleSet:
    rules = []
    for i in range(n_rules):
        port = 1000 + i % n_ports
        rules.append(
            Rule(
                id=i + 1,
                title=f"synthetic {i}",
                cves=(),
                severity="low",
                action=Action.ALERT,
                protocol="tcp",
                ports=tuple(1000 + p for p in range(n_ports)) if all_ports else (port,),
                directions=frozenset({Direction.TO_SERVER}),
                patterns=(Pattern("content", os.urandom(6).hex().encode()),),
                references=(),
                path=Path("synthetic"),
            )
        )
    return RuleSet(rules)


def bench_layout(repeat: int) -> None:
    n_rules, n_ports, segments = 2000, 50, 2000
    payload = os.urandom(1460)
    print(
        f"matcher layout: {n_rules} content rules over {n_ports} ports, "
        f"{segments} x 1460-byte segments"
    )
    for label, all_ports in (("db per port set (used) ", False), ("one db for all ports   ", True)):
        matcher = Matcher(synthetic_rules(n_rules, n_ports, all_ports))
        group = matcher.group(6, Direction.TO_SERVER, 1000)
        assert group is not None
        best = float("inf")
        for _ in range(repeat):
            state = matcher.open_stream(group)
            started = time.perf_counter()
            for _ in range(segments):
                matcher.scan_stream(state, payload)
            best = min(best, time.perf_counter() - started)
            matcher.close_stream(state)
        stats = matcher.stats
        print(
            f"  {label}: {best / segments * 1e6:6.2f} us/segment, {stats.databases} databases, "
            f"{stats.database_bytes / 1024:.0f} KiB, "
            f"compiled in {stats.compile_seconds * 1000:.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", type=Path, action="append")
    args = parser.parse_args()
    ruleset = load_rules(args.rules or [default_rule_dir()])
    print(f"rules: {len(ruleset)}")
    captures = load_captures(args.corpora)
    bench_process(ruleset, captures, args.repeat)
    bench_layout(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
