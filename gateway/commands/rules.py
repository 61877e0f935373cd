"""`vpatch rules validate|list|show`: check and inspect rule files.

What it does:
- `validate [PATH...]`: loads the rules (every problem reported as file:line: reason) and
  compiles them with Hyperscan exactly as the engine would; prints a one-line summary.
- `list [PATH...]`: one line per rule: id, action, protocol/ports, direction, severity, CVEs,
  title.
- `show ID [PATH...]`: one rule in full, as JSON.
PATH defaults to the bundled rules/ directory.

What it guarantees: exit status 0 on success; invalid rules raise RuleError (printed by
gateway.cli with every problem, exit status 2); `show` of an unknown id exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, RuleSet, default_rule_dir, load_rules

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rules",
        help="validate, list and show rules",
        description="Validate, list and show virtual-patch rules (YAML). PATH is a rule file "
        "or a directory searched recursively for *.yaml/*.yml; default: the bundled rules/.",
    )
    sub = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    p = sub.add_parser("validate", help="check rules and compile them with Hyperscan")
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    p = sub.add_parser("list", help="one line per rule")
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    p = sub.add_parser("show", help="one rule in full (JSON)")
    p.add_argument("rule_id", metavar="ID", type=int)
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    parser.set_defaults(func=run)


def format_content(data: bytes) -> str:
    """Bytes in Suricata content syntax: printable ASCII as text, the rest as |hex|."""
    out = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"|\\" else f"|{b:02X}|" for b in data)
    return out.replace("||", " ")


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """A rule as JSON-safe data (patterns shown as they would be written in the file)."""
    return {
        "id": rule.id,
        "title": rule.title,
        "cve": list(rule.cves),
        "severity": rule.severity,
        "action": rule.action.value,
        "protocol": rule.protocol,
        "ports": list(rule.ports),
        "direction": rule.direction,
        "patterns": [
            {
                p.kind: p.expr.decode("utf-8") if p.kind == "regex" else format_content(p.expr),
                "nocase": p.nocase,
            }
            for p in rule.patterns
        ],
        "references": list(rule.references),
        "description": rule.description,
        "file": f"{rule.path}:{rule.line}",
    }


def _load(paths: list[Path]) -> RuleSet:
    return load_rules(paths or [default_rule_dir()])


def run(args: argparse.Namespace) -> int:
    ruleset = _load(args.paths)
    if args.rules_command == "validate":
        matcher = Matcher(ruleset)
        files = len({r.path for r in ruleset})
        print(
            f"ok: {len(ruleset)} rules from {files} files; {matcher.stats.databases} Hyperscan "
            f"databases, {matcher.stats.database_bytes} bytes, compiled in "
            f"{matcher.stats.compile_seconds * 1000:.1f} ms"
        )
        return 0
    if args.rules_command == "list":
        for r in ruleset:
            ports = ",".join(str(p) for p in r.ports)
            cves = ",".join(r.cves) or "-"
            print(
                f"{r.id:>10}  {r.action.value:<6} {r.protocol}/{ports:<12} {r.direction:<9} "
                f"{r.severity:<8} {cves}  {r.title}"
            )
        return 0
    rule = ruleset.by_id.get(args.rule_id)
    if rule is None:
        print(f"vpatch rules show: no rule with id {args.rule_id}", file=sys.stderr)
        return 1
    print(json.dumps(rule_to_dict(rule), indent=2))
    return 0
