"""`vpatch ui [--listen 127.0.0.1:8443] [--config FILE]`: serve the admin web UI with waitress.

Also `--set-password USER` (prompts, or reads a line from stdin when not a terminal) and
`--create-token USER` (prints a new API token once). On the first start with no account the
user `admin` is created with a random password that is printed once; there is no default
password. The policy database, event store and control socket come from the gateway
configuration (`policy.database`, `events.sqlite`, `control.socket`).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy.store import Store

DEFAULT_LISTEN = "127.0.0.1:8443"
UI_THREADS = 8


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the admin web UI (waitress)",
        description="Serve the admin web UI; manage UI accounts and API tokens.",
    )
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    p.add_argument(
        "--set-password",
        metavar="USER",
        help="set USER's password (creates an admin USER if absent)",
    )
    p.add_argument("--create-token", metavar="USER", help="print a new API token for USER")
    p.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="session cookies without the Secure flag (plain-HTTP lab use ONLY)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.policy.accounts import Accounts
    from webui.auth import ensure_admin

    config = load_config(args.config)
    store = Store(config.policy.database)
    try:
        if args.set_password:
            if sys.stdin.isatty():
                pw = getpass.getpass(f"new password for {args.set_password}: ")
            else:
                pw = sys.stdin.readline().rstrip("\n")
            accounts = Accounts(store)
            if accounts.get_user(args.set_password) is None:
                accounts.create_user(args.set_password, pw, "admin", "cli")
            else:
                accounts.set_password(args.set_password, pw, "cli")
            print(f"vpatch ui: password of {args.set_password!r} set")
            return 0
        if args.create_token:
            print(Accounts(store).create_token(args.create_token, "cli", "cli"))
            return 0
        password = ensure_admin(store)
    finally:
        store.close()
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen {args.listen!r}: expected HOST:PORT")
    from webui import create_app
    from webui.serve import build_server

    events_db = str(config.events.sqlite) if config.events.sqlite else "/nonexistent/events.db"
    app = create_app({
        "POLICY_DB": str(config.policy.database),
        "EVENTS_DB": events_db,
        "CONTROL_SOCKET": str(config.control.socket),
        "RULE_PATHS": [str(p) for p in config.rules],
        "SESSION_COOKIE_SECURE": not args.insecure_cookies,
        "SESSION_IDLE": config.ui.session_idle,
        "SESSION_LIFETIME": config.ui.session_lifetime,
        "TRUSTED_PROXIES": config.ui.trusted_proxies,
    })  # fmt: skip
    if password is not None:
        print(f"vpatch ui: created user 'admin' with password: {password}", flush=True)
        print("vpatch ui: this password is shown only once; change it with "
              "`vpatch ui --set-password admin`", flush=True)  # fmt: skip
    if args.insecure_cookies:
        print("vpatch ui: WARNING: --insecure-cookies: session cookies sent over plain HTTP. "
              "Lab use only!", file=sys.stderr, flush=True)  # fmt: skip
    print(
        f"vpatch ui: serving on http://{host}:{port}/ (put TLS in front, or use a lab)", flush=True
    )
    build_server(app, host, int(port), config.ui, UI_THREADS).run()
    return 0
