"""The `vpatch` command: one module per subcommand under gateway.commands.

Each command module has `register(subparsers)` that adds its parser (with `func=run`) and
`run(args) -> int`. Errors of the VpatchError family are printed on one line, exit status 2.
Ctrl-C exits 130; for the commands that build namespaces and processes and remove them on the
way out (UNWIND_ON_SIGTERM), SIGTERM unwinds the same way, so `kill PID` leaves nothing behind.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from gateway import __version__
from gateway.commands import raise_interrupt
from gateway.errors import VpatchError

# Subcommand modules, in the order `vpatch --help` lists them.
COMMANDS = (
    "run", "replay", "rules", "scan", "hosts", "report", "policy", "health", "lab", "bench",
    "ui", "install-network",
)  # fmt: skip
# Commands whose `finally` blocks tear down what they built (`run`, `scan` and `hosts monitor`
# install their own handlers; `ui` is stopped by SIGTERM as a server should be).
UNWIND_ON_SIGTERM = frozenset({"lab", "bench"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpatch",
        description="Virtual-patching gateway: inline inspection that blocks exploits of known "
        "vulnerabilities in front of servers that cannot be patched.",
    )
    parser.add_argument("--version", action="version", version=f"vpatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gateway.commands.{name.replace('-', '_')}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in UNWIND_ON_SIGTERM:
        signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return int(args.func(args))
    except VpatchError as err:
        print(f"vpatch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
