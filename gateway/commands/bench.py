"""`vpatch bench`: the side-by-side benchmark (kernel alone, Suricata inline as installed and
tuned, vpatch) on the same traffic in one namespace lab; prints a table, writes JSON.

Figures, never assertions: exit status 0 when the run completed (even if a subject failed; its
errors are in the table and the JSON), 2 on a VpatchError that stopped the run (lab, missing
Suricata without --skip-suricata-if-missing). Needs root. See gateway/benchmark/runner.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.benchmark import BenchError
from gateway.benchmark.runner import (
    SUBJECTS,
    TESTS,
    BenchOptions,
    render_table,
    run_bench,
    write_json,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SURICATA_RULES = (
    REPO_ROOT / ".." / "shared" / "corpora" / "rules" / "etopen-target-cves.rules"
)
MAX_DURATION_S = 600
MAX_REPEAT = 20


def parse_only(text: str) -> tuple[str, ...]:
    """'kernel,suricata' -> ('kernel', 'suricata-default', 'suricata-tuned',
    'suricata-inspect-all'), in table order."""
    wanted: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "suricata":
            wanted |= {s for s in SUBJECTS if s.startswith("suricata")}
        elif item in SUBJECTS:
            wanted.add(item)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown subject {item!r} in --only {text!r}; choose from kernel, suricata, "
                f"{', '.join(SUBJECTS[1:])}"
            )
    if not wanted:
        raise argparse.ArgumentTypeError(f"--only {text!r} names no subject")
    return tuple(s for s in SUBJECTS if s in wanted)


def parse_tests(text: str) -> tuple[str, ...]:
    """'http_keepalive,bulk_up' -> ('bulk_up', 'http_keepalive'), in the order they run."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(TESTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown test {unknown[0]!r} in --tests {text!r}; choose from {', '.join(TESTS)}"
        )
    if not wanted:
        raise argparse.ArgumentTypeError(f"--tests {text!r} names no test")
    return tuple(t for t in TESTS if t in wanted)


def _duration(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--duration {text!r} is not whole seconds") from err
    if not 1 <= value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"--duration {value} outside 1..{MAX_DURATION_S}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="side-by-side benchmark: kernel alone, Suricata inline, vpatch",
        description="Build a namespace lab and measure, on the same traffic, the kernel alone, "
        "Suricata 7 inline (as installed, tuned, and tuned with unlimited depth) and vpatch: bulk "
        "TCP each way (iperf3), "
        "HTTP req/s and latency with keep-alive and new connections (wrk), and the CPU "
        "seconds of the inspecting processes. Needs root.",
    )
    parser.add_argument("--duration", type=_duration, default=5, help="seconds per test (5)")
    parser.add_argument(
        "--only",
        type=parse_only,
        default=SUBJECTS,
        help="comma list of kernel, suricata (its three variants), suricata-default, "
        "suricata-tuned, suricata-inspect-all, vpatch (default: all)",
    )
    parser.add_argument(
        "--tests",
        type=parse_tests,
        default=TESTS,
        help=f"comma list of the tests to run: {', '.join(TESTS)} (default: all; the others' "
        "rows read '-')",
    )
    parser.add_argument(
        "--skip-suricata-if-missing",
        action="store_true",
        help="leave the Suricata columns out instead of failing when suricata is not installed",
    )
    parser.add_argument(
        "--json-out", type=Path, default=Path("artifacts/bench.json"), help="JSON report path"
    )
    parser.add_argument(
        "--suricata-rules",
        type=Path,
        default=DEFAULT_SURICATA_RULES,
        help="rules file Suricata loads (default: the ET Open target-CVE rules of the corpora)",
    )
    parser.add_argument("--lab-name", default="vpbench", help="namespace prefix (vpbench)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument(
        "--iperf-port",
        type=int,
        default=445,
        help="iperf3 server port (445: a port both vpatch's SMB rules and Suricata inspect)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each test N times, report the median (1)"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="vpatch's workers time their stages (netlink receive, decode, flow, reassembly, "
        "match, verdict) and the table is followed by microseconds per request; costs about "
        "1-2 us per packet",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.connections < 1:
        raise BenchError(f"--connections {args.connections} must be at least 1")
    if not 1 <= args.repeat <= MAX_REPEAT:
        raise BenchError(f"--repeat {args.repeat} outside 1..{MAX_REPEAT}")
    opts = BenchOptions(
        duration=args.duration,
        subjects=tuple(args.only),
        skip_suricata_if_missing=args.skip_suricata_if_missing,
        suricata_rules=args.suricata_rules.resolve(),
        lab_name=args.lab_name,
        connections=args.connections,
        iperf_port=args.iperf_port,
        repeat=args.repeat,
        breakdown=args.breakdown,
        tests=tuple(args.tests),
    )
    report = run_bench(opts)
    print(render_table(report))
    write_json(report, args.json_out)
    print(f"JSON report: {args.json_out}")
    return 0
