"""The `vpatch` command: one module per subcommand under gateway.commands.

Each command module has `register(subparsers)` that adds its parser (with `func=run`) and
`run(args) -> int`. Errors of the VpatchError family are printed on one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gateway import __version__
from gateway.errors import VpatchError

# Subcommand modules, in the order `vpatch --help` lists them.
COMMANDS = ("run", "replay", "rules", "scan", "hosts", "lab", "bench", "ui")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpatch",
        description="Virtual-patching gateway: inline inspection that blocks exploits of known "
        "vulnerabilities in front of servers that cannot be patched.",
    )
    parser.add_argument("--version", action="version", version=f"vpatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gateway.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except VpatchError as err:
        print(f"vpatch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
