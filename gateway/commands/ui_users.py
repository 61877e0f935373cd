"""`vpatch ui users list|add|set-role|disable|enable|reset-password|remove`: the UI's accounts
from the command line, with the rules of gateway/policy/accounts.py (the last enabled admin
cannot be removed, disabled or demoted; disabling, a reset and a role change end the user's
sessions). `add` and `reset-password` print a temporary password once (random, or a line read
from stdin with `--password-stdin`) that the user must change at their next login. Every change
is audited with the actor `cli`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.policy.accounts import Accounts, new_password
from gateway.policy.store import ROLES

ACTOR = "cli"


def register(ui_sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `users` under `vpatch ui`; `common` adds the options every level accepts (-c)."""
    users = ui_sub.add_parser("users", help="list and manage UI accounts",
                              description="List and manage the admin UI's accounts.")  # fmt: skip
    sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every account: role, status, last login")
    common(listing)
    add = sub.add_parser("add", help="create an account with a temporary password")
    add.add_argument("user")
    add.add_argument("--role", choices=ROLES, default="viewer", help="default: viewer")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the temporary password from stdin, not a random one")  # fmt: skip
    common(add)
    role = sub.add_parser("set-role", help="make USER an admin or a viewer")
    role.add_argument("user")
    role.add_argument("role", choices=ROLES)
    common(role)
    for name, text in (("disable", "USER can no longer log in or use API tokens"),
                       ("enable", "USER can log in again"),
                       ("reset-password", "print a new temporary password for USER"),
                       ("remove", "delete USER and their tokens")):  # fmt: skip
        action = sub.add_parser(name, help=text)
        action.add_argument("user")
        common(action)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts is not None else "never"


def _status(disabled: bool, must_change: bool) -> str:
    if disabled:
        return "disabled"
    return "must change password" if must_change else "enabled"


def _list(accounts: Accounts) -> None:
    print(f"{'user':20} {'role':7} {'status':22} {'last login':21} created")
    for u in accounts.list_users():
        print(f"{u.username:20} {u.role:7} {_status(u.disabled, u.must_change_password):22} "
              f"{_when(u.last_login):21} {_when(u.created)}")  # fmt: skip


def run_users(args: argparse.Namespace, accounts: Accounts) -> int:
    """Run `vpatch ui users ACTION` (its exit status); StoreError on a refused change."""
    action, user = args.users_command, getattr(args, "user", "")
    if action == "list":
        _list(accounts)
    elif action == "add":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else new_password()
        accounts.create_user(user, password, args.role, ACTOR, must_change=True)
        print(f"vpatch ui: {args.role} {user!r} created; temporary password (change it at the "
              f"first login): {password}")  # fmt: skip
    elif action == "set-role":
        accounts.set_role(user, args.role, ACTOR)
        print(f"vpatch ui: {user!r} is now a {args.role}")
    elif action in ("disable", "enable"):
        accounts.set_disabled(user, action == "disable", ACTOR)
        print(f"vpatch ui: {user!r} {action}d")
    elif action == "reset-password":
        password = accounts.reset_password(user, ACTOR)
        print(f"vpatch ui: temporary password of {user!r} (change it at the next login): "
              f"{password}")  # fmt: skip
    else:  # remove
        accounts.delete_user(user, ACTOR)
        print(f"vpatch ui: {user!r} removed")
    return 0
