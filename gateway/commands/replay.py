"""`vpatch replay`: run the inspection engine over capture files, like `suricata -r`.

What it does: for every capture (pcap or pcapng) in order, a fresh Engine (same rules, one
compiled Matcher shared by all files; bounds from `-c CONFIG` or EngineConfig defaults)
processes every frame with the capture's own timestamps as the clock
(gateway/intake/replay.py), and every event (alert, or alert with action "blocked") is printed
on stdout as one EVE JSON object per line; `--eve FILE` also appends them to FILE.

What it guarantees:
- Exit status 0 when every capture was read to its end, whatever was found.
- A missing, truncated or corrupt capture: the events from the records before the damage are
  printed, then one line on stderr names the file and byte offset (the CaptureError message);
  the remaining files are still processed and the exit status is 2.
- Rule problems (RuleError) stop before any capture is read (exit status 2, via gateway.cli).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

from gateway.engine_config import EngineConfig
from gateway.intake.replay import replay_file
from gateway.match.matcher import Matcher
from gateway.match.rules import all_rules_on, default_rule_dir, load_rules

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="run the engine over capture files, print EVE JSON events",
        description="Run the inspection engine over pcap/pcapng capture files (timestamps from "
        "the captures) and print one EVE JSON object per line on stdout for every alert and "
        "every blocked packet's alert. Exit status 0 when all captures were read, whatever "
        "was found; 2 when a capture could not be read to its end (the error, naming the file "
        "and byte offset, goes to stderr after the events found before the damage) or the "
        "rules are invalid.",
    )
    parser.add_argument(
        "--rules",
        metavar="PATH",
        action="append",
        type=Path,
        help="rule file or directory (repeatable; default: the bundled rules/ directory)",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        type=Path,
        help="gateway configuration (YAML): its rules, stream depths, engine bounds and fail "
        "policy are used (--rules still overrides its rules)",
    )
    parser.add_argument(
        "--eve", metavar="FILE", type=Path, help="also append the EVE JSON lines to FILE"
    )
    parser.add_argument(
        "--all-rules",
        action="store_true",
        help="judge the rules that are off by default (default_mode: off, e.g. the TLS "
        "heartbeat restriction) as if assigned in prevent mode",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print per-capture engine counters as JSON on stderr",
    )
    parser.add_argument("pcaps", metavar="PCAP", nargs="+", type=Path, help="capture files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        from gateway.config import load_config

        gateway_config = load_config(args.config)
        paths = args.rules or list(gateway_config.rules)
        config = EngineConfig.from_gateway(gateway_config)
    else:
        paths = args.rules or [default_rule_dir()]
        config = EngineConfig()
    ruleset = load_rules(paths)
    if args.all_rules:
        ruleset = all_rules_on(ruleset)
    matcher = Matcher(ruleset, config.identify_any_port)
    status = 0
    eve: IO[str] | None = open(args.eve, "a", encoding="utf-8") if args.eve else None  # noqa: SIM115
    try:
        for path in args.pcaps:
            engine, error = replay_file(path, matcher, config, sys.stdout, eve)
            if error is not None:
                print(f"vpatch replay: error: {error}", file=sys.stderr)
                status = 2
            if args.stats:
                counters = {"capture": str(path), **engine.stats.as_dict()}
                print(json.dumps(counters), file=sys.stderr)
    finally:
        if eve is not None:
            eve.close()
    return status
