"""`vpatch policy export|import`: the policy (groups, hosts and their modes, rule assignments,
firewall rules, exceptions) as JSON or CSV (gateway/transfer.py; docs/policy.md
"Export and import").

  export [--format json|csv] [-o FILE|DIR]    JSON: one document (stdout or FILE); CSV: one
                                              file per section in DIR (SECTION.csv), or one
                                              section on stdout with --section
  import FILE... [--replace] [--dry-run]      a JSON document, or CSV files (one per section,
                                              told apart by their header); validated whole,
                                              then applied in one transaction; the running
                                              gateway is told to reload
Exit status 0 on success; 2 with the offending section, row and field otherwise (nothing
written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.control.server import notify_gateway
from gateway.errors import ConfigError
from gateway.policy.store import Store
from gateway.transfer import (
    SECTIONS,
    TransferError,
    check_policy,
    export_policy,
    import_policy,
    merge_csv,
    to_csv,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "policy", help="export/import hosts, groups, assignments, firewall rules, exceptions",
        description="Export or import the policy as JSON or CSV (one file per section).",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    exp = sub.add_parser("export", help="write the policy as JSON or CSV")
    exp.add_argument("--format", choices=("json", "csv"), default="json")
    exp.add_argument("--section", choices=tuple(SECTIONS), help="CSV: this section to stdout")
    exp.add_argument("-o", "--output", type=Path, help="JSON: file; CSV: directory")
    imp = sub.add_parser("import", help="validate, then apply in one transaction")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="empty the five sections first (default: merge by name/address)",
    )
    imp.add_argument("--dry-run", action="store_true", help="validate only")  # fmt: skip
    for p in (exp, imp):
        p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
        p.add_argument("--state", type=Path, metavar="DB", help="policy database (default: "
                       "the config's policy.database)")  # fmt: skip
        p.set_defaults(func=run)


def _export(args: argparse.Namespace, store: Store) -> int:
    doc = export_policy(store)
    if args.format == "json":
        text = json.dumps(doc, indent=1) + "\n"
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
        return 0
    if args.section is not None:
        sys.stdout.write(to_csv(doc, args.section))
        return 0
    if args.output is None:
        raise ConfigError("policy export --format csv: give -o DIR (or --section NAME)")
    args.output.mkdir(parents=True, exist_ok=True)
    for section in SECTIONS:
        (args.output / f"{section}.csv").write_text(to_csv(doc, section), encoding="utf-8")
    print(f"vpatch policy: {len(SECTIONS)} CSV files written to {args.output}", file=sys.stderr)
    return 0


def read_document(files: list[Path]) -> dict[str, Any]:
    """A JSON document (one .json file) or the CSV files merged into one."""
    texts = []
    for path in files:
        try:
            texts.append((path.name, path.read_text(encoding="utf-8-sig")))
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read: {err}") from err
    if len(texts) == 1 and texts[0][1].lstrip().startswith("{"):
        try:
            doc = json.loads(texts[0][1])
        except json.JSONDecodeError as err:
            raise TransferError(texts[0][0], err.lineno, "", f"not JSON: {err.msg}") from err
        if not isinstance(doc, dict):
            raise TransferError(texts[0][0], 1, "", "not a JSON object")
        return doc
    return merge_csv(texts)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with Store(args.state or config.policy.database) as store:
        if args.action == "export":
            return _export(args, store)
        doc = read_document(args.files)
        if args.dry_run:
            rows = check_policy(store, doc, args.replace)
            print("vpatch policy: valid (dry run, nothing written): "
                  + ", ".join(f"{n} {s}" for s, n in rows.items()))  # fmt: skip
            return 0
        result = import_policy(store, doc, "cli", args.replace)
    for section in SECTIONS:
        print(f"{section}: {result.written[section]} written, "
              f"{result.unchanged[section]} already so")  # fmt: skip
    print(f"gateway reload: {notify_gateway(config.control.socket)}")
    return 0
