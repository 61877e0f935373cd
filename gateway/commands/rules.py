"""`vpatch rules`: check, inspect, assign, import and export virtual-patch rules.

What it does:
- `validate [PATH...]`: loads the rules and compiles them with Hyperscan exactly as the engine
  would; prints a one-line summary, or every problem as `file:line: reason` on stderr.
- `list [PATH...] [--json] [--cve X] [--app Y] [--severity S]`: one line per rule (or a JSON
  list): id, action, protocol/ports, direction, severity, CVEs, title.
- `show ID [PATH...] [--json]`: one rule in full (text, or JSON).
- `enable|disable ID [--host ADDR | --group NAME] [--mode M]`: writes an assignment (source
  `cli`) to the policy store (gateway/policy/store.py; database from `--database`, else the
  config's `policy.database`); without --host/--group the assignment is global. A running
  gateway picks it up on the control socket's `reload`.
- `reload [-c CONFIG] [--socket S]`: validates the configuration's rule files (the whole set:
  nothing changes when any rule is bad; exit 1 with `file:line: reason`), then asks the
  running gateway (`rules-reload` on the control socket) to use them without a restart.
- `update SOURCE [--sha256 HEX]`, `rollback [--to VERSION|bundled]`, `packs [--json]`: rule
  pack updates (gateway/rulepack.py: fetched, verified, validated with the other configured
  rules, switched atomically), then a `reload` as above; when the gateway does not take the
  new rules the switch is undone.
- `import-suricata FILE [-o DIR] [--include-disabled] [--any-ports P,...]`: converts the rules
  that map (gateway/match/suricata/, docs/suricata.md), writes them as YAML (one file per
  rule in DIR, or one `rules:` document on stdout) and reports every rule it did not convert
  with its sid, line and reason, then the counts and the reasons histogram.
- `export-suricata [PATH...] [-o FILE]`: the rules as Suricata 7 rules; a rule that cannot be
  expressed becomes a `# vpatch: ... not exported: reason` comment.
PATH defaults to the bundled rules/ directory.

What it guarantees: exit status 0 on success; `validate` exits 1 when any rule is invalid and
loads nothing; `show` of an unknown id and `enable|disable` of an unknown rule exit 1; other
VpatchErrors are printed by gateway.cli (exit status 2). Files written by `import-suricata`
pass `validate` (each was validated by gateway.match.rules.build_rule before it was written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config import BUNDLED_RULES, load_config
from gateway.control.server import ControlError, control_request
from gateway.database import policy_target, target_arg
from gateway.errors import RuleError, VpatchError
from gateway.match.matcher import Matcher
from gateway.match.rules import SEVERITIES, Rule, RuleSet, default_rule_dir, load_rules
from gateway.match.suricata import (
    ImportReport,
    dump_rule,
    export_rules,
    import_rules,
    parse_rules_text,
)
from gateway.policy.appcontrol import rule_paths
from gateway.rulepack import RulePackError, RulePacks, record_update

__all__ = ["format_content", "register", "rule_to_dict", "run"]

MAX_IMPORT_FILE_BYTES = 64 << 20  # a .rules file larger than this is refused unread
RELOAD_TIMEOUT_S = 180.0  # the gateway compiles, then waits for every worker (up to 120 s)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rules",
        help="validate, list, show, enable/disable, import and export rules",
        description="Validate, list, show, assign, import and export virtual-patch rules "
        "(YAML). PATH is a rule file or a directory searched recursively for *.yaml/*.yml; "
        "default: the bundled rules/.",
    )
    sub = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    p = sub.add_parser("validate", help="check rules and compile them with Hyperscan")
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    p = sub.add_parser("list", help="one line per rule (or JSON)")
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    p.add_argument("--json", action="store_true", help="a JSON list of rules")
    p.add_argument("--cve", help="only rules naming this CVE")
    p.add_argument("--app", help="only rules of this app (raw, http, smb, ...)")
    p.add_argument("--severity", choices=SEVERITIES, help="only rules of this severity")
    p = sub.add_parser("show", help="one rule in full")
    p.add_argument("rule_id", metavar="ID", type=int)
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    for name, helptext in (
        ("enable", "assign a rule (mode prevent, or --mode) globally, to a host or a group"),
        ("disable", "switch a rule off globally, for a host or for a group"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("rule_id", metavar="ID", type=int)
        where = p.add_mutually_exclusive_group()
        where.add_argument("--host", metavar="ADDR", help="a protected server (address or CIDR)")
        where.add_argument("--group", metavar="NAME", help="a host group")
        if name == "enable":
            p.add_argument("--mode", choices=("detect", "prevent"), default="prevent")
        p.add_argument("--reason", default="", help="why (kept in the audit trail)")
        p.add_argument("--database", type=target_arg, help="policy store (default: from --config)")
        p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
        p.add_argument(
            "--rules", metavar="PATH", action="append", type=Path, help="rule files/dirs"
        )
    p = sub.add_parser(
        "reload",
        help="have the running gateway load its rule files again (no restart)",
        description="Validate the configuration's rule files (the whole set; any bad rule "
        "refuses the reload and names file, line and reason), then have the running `vpatch "
        "run` use them: every worker swaps to the new set between packets, flows in progress "
        "finish with the rules they started with, and the kernel queues the new rules' ports.",
    )
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument("--socket", type=Path, help="control socket (default: the config's)")
    p = sub.add_parser(
        "update",
        help="install a rule pack (URL or path, SHA-256 verified) and reload the gateway",
        description="Fetch a rule pack (tarball with manifest.yaml and rule files) from an "
        "http(s) URL or a local path, verify its SHA-256 (--sha256, else <SOURCE>.sha256), "
        "validate every rule with the rest of the configured rules, switch to it atomically "
        "and have the running gateway reload its rules; nothing changes on any error.",
    )
    p.add_argument("source", metavar="SOURCE", help="http(s) URL or local path of the tarball")
    p.add_argument("--sha256", metavar="HEX", help="the pack's SHA-256 (64 hex digits)")
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument("--socket", type=Path, help="control socket (default: the config's)")
    p = sub.add_parser(
        "rollback", help="go back to the previous rule pack (or the bundled one) and reload"
    )
    p.add_argument("--to", metavar="VERSION", help="an installed version, or `bundled`")
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument("--socket", type=Path, help="control socket (default: the config's)")
    p = sub.add_parser("packs", help="the rule pack in force and the installed ones")
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("import-suricata", help="convert Suricata/Snort rules to vpatch YAML")
    p.add_argument("file", metavar="FILE", type=Path)
    p.add_argument("-o", "--output", metavar="DIR", type=Path, help="write one YAML per rule")
    p.add_argument(
        "--include-disabled", action="store_true", help="also convert `#`-commented rules"
    )
    p.add_argument(
        "--any-ports",
        metavar="P,...",
        default="",
        help="server ports for rules whose header says `any` with a plain tcp/udp protocol",
    )
    p = sub.add_parser("export-suricata", help="write the rules as Suricata 7 rules")
    p.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    p.add_argument("-o", "--output", metavar="FILE", type=Path, help="default: stdout")
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
        "default_mode": rule.default_mode.value,
        "protocol": rule.protocol,
        "app": rule.app,
        "ports": rule.ports_json,
        "direction": rule.direction,
        "patterns": [
            {
                p.kind: p.expr.decode("utf-8") if p.kind == "regex" else format_content(p.expr),
                "nocase": p.nocase,
            }
            for p in rule.patterns
        ],
        "conditions": repr(rule.conditions) if rule.conditions is not None else None,
        "references": list(rule.references),
        "affected": [
            {"product": a.product, "versions": list(a.versions), "features": list(a.features)}
            for a in rule.affected
        ],
        "samples": len(rule.samples),
        "description": rule.description,
        "file": f"{rule.path}:{rule.line}",
    }


def _load(paths: list[Path] | None) -> RuleSet:
    return load_rules(paths or [default_rule_dir()])


def run(args: argparse.Namespace) -> int:
    command = args.rules_command
    if command == "validate":
        return _validate(args.paths)
    if command == "list":
        return _list(args)
    if command == "show":
        return _show(args)
    if command in ("enable", "disable"):
        return _assign(args)
    if command == "reload":
        return _reload(args)
    if command in ("update", "rollback", "packs"):
        return _packs(args, command)
    if command == "import-suricata":
        return _import(args)
    return _export(args)


def _validate(paths: list[Path]) -> int:
    try:
        ruleset = _load(paths)
    except RuleError as err:
        print(f"vpatch rules validate: {err}", file=sys.stderr)
        return 1
    matcher = Matcher(ruleset)
    files = len({r.path for r in ruleset})
    print(
        f"ok: {len(ruleset)} rules from {files} files; {matcher.stats.databases} Hyperscan "
        f"databases, {matcher.stats.database_bytes} bytes, compiled in "
        f"{matcher.stats.compile_seconds * 1000:.1f} ms"
    )
    return 0


def _reload(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    paths = rule_paths(config)
    try:
        ruleset = load_rules(paths)
        Matcher(ruleset)
    except RuleError as err:
        print(f"vpatch rules reload: nothing changed: {err}", file=sys.stderr)
        return 1
    socket_path = args.socket or config.control.socket
    if not socket_path.exists():
        print(f"no gateway running at {socket_path}: the rules apply when `vpatch run` starts")
        return 0
    try:
        reply = control_request(socket_path, "rules-reload", timeout=RELOAD_TIMEOUT_S)
    except ControlError as err:
        print(f"vpatch rules reload: {err}", file=sys.stderr)
        return 1
    state = "in use by every worker" if reply.get("complete") else "NOT yet in use by every worker"
    print(
        f"rules version {reply.get('version')}: {reply.get('rules')} rules from "
        f"{', '.join(map(str, paths))}, {state} after {reply.get('seconds', 0):.2f} s"
    )
    return 0 if reply.get("complete") and not reply.get("rules_errors") else 1


def _packs(args: argparse.Namespace, command: str) -> int:
    """update / rollback / packs (gateway/rulepack.py); a switch the gateway refuses is undone."""
    config = load_config(args.config)
    packs = RulePacks(config.rule_pack.dir, config.rule_pack.keep)
    if command == "packs":
        listing = packs.describe()
        if args.json:
            print(json.dumps(listing, indent=2))
            return 0
        current = listing["current"]
        print(f"in force: {_pack_line(current) if current else 'the bundled pack'}")
        for pack in listing["history"]:
            print(f"  installed: {_pack_line(pack)}")
        return 0
    before = packs.current()
    if command == "update":
        source = args.source
        bundled = BUNDLED_RULES.resolve()
        if not any(p.resolve() == bundled for p in config.rules):
            raise RulePackError(
                f"{config.source}: `rules` does not list the bundled pack ({BUNDLED_RULES}), "
                "whose place an installed pack takes: add it, or drop rule files into a local "
                "rules directory and use `vpatch rules reload`"
            )
        others = [p for p in rule_paths(config) if p != config.rule_pack.dir / "current"]
        others = [p for p in others if p.resolve() != bundled]

        def validate(pack: Path) -> int:
            ruleset = load_rules([pack, *others])
            Matcher(ruleset)
            return len(load_rules([pack]))

        try:
            new = packs.install(source, args.sha256, validate)
        except VpatchError as err:
            _record(config.rule_pack.dir, source, str(err) or type(err).__name__)
            raise
        if before is not None and new == before:
            _record(config.rule_pack.dir, source)
            print(f"rule pack {new.version} is in force already: nothing to do")
            return 0
        print(f"rule pack {new.version} installed ({new.rules} rules, sha256 {new.sha256})")
    else:
        target = args.to if args.to is not None else packs.previous()
        packs.switch(None if target in (None, "bundled") else target)
        print(f"rule pack in force: {target or 'the bundled pack'}")
    status = _reload(argparse.Namespace(config=args.config, socket=args.socket))
    if command == "update":
        refused = "the running gateway did not take the new rules"
        _record(config.rule_pack.dir, args.source, "" if status == 0 else refused)
    if status != 0:
        packs.switch(before.version if before else None)
        print(
            "vpatch rules: the gateway did not take the new rules; switched back to "
            f"{before.version if before else 'the bundled pack'}",
            file=sys.stderr,
        )
    return status


def _record(root: Path, source: str, error: str = "") -> None:
    """The update's outcome for the health check (`vpatch health check`: rule_update)."""
    try:
        record_update(root, source, error)
    except OSError as err:
        print(f"vpatch rules update: outcome not recorded in {root}: {err}", file=sys.stderr)


def _pack_line(pack: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pack["installed_at"]))
    return f"{pack['version']} ({pack['rules']} rules, installed {when} from {pack['source']})"


def _list(args: argparse.Namespace) -> int:
    rules = [
        r
        for r in _load(args.paths)
        if (args.cve is None or args.cve.upper() in r.cves)
        and (args.app is None or r.app == args.app)
        and (args.severity is None or r.severity == args.severity)
    ]
    if args.json:
        print(json.dumps([rule_to_dict(r) for r in rules], indent=2))
        return 0
    for r in rules:
        ports = r.ports_text
        cves = ",".join(r.cves) or "-"
        print(
            f"{r.id:>10}  {r.action.value:<6} {r.protocol}/{ports:<12} {r.app:<6} "
            f"{r.direction:<9} {r.severity:<8} {cves}  {r.title}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    rule = _load(args.paths).by_id.get(args.rule_id)
    if rule is None:
        print(f"vpatch rules show: no rule with id {args.rule_id}", file=sys.stderr)
        return 1
    data = rule_to_dict(rule)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)
        print(f"{key + ':':<14}{value if value not in (None, '') else '-'}")
    return 0


def _assign(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.policy.assignments import Assignments
    from gateway.policy.hosts import Hosts
    from gateway.policy.store import Store

    ruleset = _load(args.rules)
    if args.rule_id not in ruleset.by_id:
        print(f"vpatch rules {args.rules_command}: no rule with id {args.rule_id}", file=sys.stderr)
        return 1
    database = args.database or policy_target(load_config(args.config))
    mode = "off" if args.rules_command == "disable" else args.mode
    with Store(database) as store:
        hosts = Hosts(store)
        scope, scope_id, where = "global", None, "globally"
        if args.host:
            host = hosts.host_by_address(args.host) or hosts.save_host(args.host, actor="cli")
            scope, scope_id, where = "host", host.id, f"for host {host.address}"
        elif args.group:
            found = [g for g in hosts.list_groups() if g.name == args.group]
            if not found:
                raise VpatchError(f"group {args.group!r}: no such group in {database}")
            scope, scope_id, where = "group", found[0].id, f"for group {args.group}"
        Assignments(store).set_assignment(
            args.rule_id, scope, scope_id, mode, actor="cli", source="cli", reason=args.reason
        )
    print(f"rule {args.rule_id}: {mode} {where} (policy store {database}); reload to apply")
    return 0


def _print_report(report: ImportReport, out: Any) -> None:
    for conv in report.skipped:
        sid = conv.sid if conv.sid is not None else "?"
        print(f"skipped sid {sid} ({conv.source}:{conv.line}): {'; '.join(conv.reasons)}", file=out)
    for problem in report.parse_problems:
        print(f"unparsed ({problem.source}:{problem.line}): {problem.reason}", file=out)
    print(
        f"{report.total} rules ({report.disabled_seen} commented-out rules "
        f"{'included' if report.total > len(report.converted) + len(report.skipped) else 'seen'}"
        f"), {len(report.converted)} imported, {len(report.skipped)} not imported",
        file=out,
    )
    if report.skipped:
        print("reasons (a rule may have several):", file=out)
        for key, count in report.histogram():
            print(f"  {count:5}  {key}", file=out)
    if report.converted:
        warned = report.warning_histogram()
        if warned:
            print("imported with a caveat:", file=out)
            for key, count in warned:
                print(f"  {count:5}  {key}", file=out)


def _import(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_FILE_BYTES:
            raise VpatchError(f"{path}: {size} bytes, over {MAX_IMPORT_FILE_BYTES}")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise VpatchError(f"{path}: cannot read: {err}") from err
    try:
        any_ports = tuple(int(p) for p in args.any_ports.split(",") if p.strip())
    except ValueError as err:
        raise VpatchError(f"--any-ports {args.any_ports!r}: not a list of ports") from err
    if any(not 1 <= p <= 65535 for p in any_ports):
        raise VpatchError(f"--any-ports {args.any_ports!r}: ports are 1..65535")
    rules, problems = parse_rules_text(text, str(path))
    report = import_rules(rules, args.include_disabled, any_ports)
    report.parse_problems.extend(problems)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        for conv in report.converted:
            (args.output / f"suricata-{conv.sid}.yaml").write_text(
                dump_rule(conv.rule or {}), encoding="utf-8"
            )
        _print_report(report, sys.stdout)
        print(f"wrote {len(report.converted)} files to {args.output}")
    else:
        import yaml

        if report.converted:
            print(
                yaml.safe_dump(
                    {"rules": [c.rule for c in report.converted]}, sort_keys=False, width=100
                ),
                end="",
            )
        _print_report(report, sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    ruleset = _load(args.paths)
    lines, written, skipped = export_rules(ruleset)
    header = [
        "# vpatch rules exported as Suricata 7 rules",
        f"# {written} rules written, {skipped} not expressible (commented below with the reason)",
    ]
    text = "\n".join(header + lines) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {written} rules to {args.output} ({skipped} not exported)")
    return 0
