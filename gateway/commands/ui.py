"""`vpatch ui [--listen 127.0.0.1:8443] [--config FILE]`: serve the admin web UI with waitress.

HTTPS by default (webui/tls.py, webui/serve.py): the certificate and key of `ui.tls_cert` and
`ui.tls_key`, or a self-signed pair made on the first start in the state directory (beside the
policy database: `ui-tls.crt`, `ui-tls.key` 0600), whose SHA-256 fingerprint is printed so an
admin can check what the browser shows. Every response carries HSTS. Plain HTTP only with
`--insecure-http`, and only on a loopback address (a lab, or a reverse proxy on this machine):
any other address is refused at start.

Account management, each doing one thing and exiting: `--set-password USER` (prompts, or reads
a line from stdin when not a terminal; an unknown USER is an error unless `--create-admin`
says to create it as an admin), `--create-token USER [--expires DAYS]` (prints a new API token
once), `--list-tokens` (every user's), `--revoke-token ID`. On the first start with no account
the user `admin` is created with a random password that is printed once; there is no default
password. `vpatch ui users ...` manages accounts (gateway/commands/ui_users.py). The policy
database, event store and control socket come from the gateway configuration
(`policy.database`, `events.sqlite`, `control.socket`).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
import time
from pathlib import Path
from typing import Any

from gateway.commands import ui_users
from gateway.config import load_config
from gateway.database import policy_target
from gateway.errors import ConfigError
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store, StoreError
from gateway.tls.service import service_settings

DEFAULT_LISTEN = "127.0.0.1:8443"
UI_THREADS = 8


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the admin web UI (waitress)",
        description="Serve the admin web UI; manage UI accounts and API tokens.",
    )
    _config_option(p, None)
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    p.add_argument("--set-password", metavar="USER", help="set USER's password, then exit")
    p.add_argument(
        "--create-admin",
        action="store_true",
        help="with --set-password: create USER as an admin when it does not exist",
    )
    p.add_argument("--create-token", metavar="USER", help="print a new API token for USER")
    p.add_argument(
        "--expires",
        metavar="DAYS",
        type=float,
        help="with --create-token: the token stops working after DAYS days",
    )
    p.add_argument("--list-tokens", action="store_true", help="list every user's API tokens")
    p.add_argument("--revoke-token", metavar="ID", type=int, help="revoke the API token ID")
    p.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="session cookies without the Secure flag (plain-HTTP lab use ONLY)",
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="plain HTTP instead of HTTPS, on a loopback address only (lab, local reverse "
        "proxy); implies --insecure-cookies",
    )
    p.set_defaults(func=run, users_command=None)
    ui_users.register(p.add_subparsers(dest="ui_command", metavar="users"),
                      lambda sp: _config_option(sp, argparse.SUPPRESS))  # fmt: skip


def _config_option(parser: argparse.ArgumentParser, default: Any) -> None:
    """-c on `vpatch ui` and again after `users ACTION` (SUPPRESS: keep the first one's)."""
    parser.add_argument("-c", "--config", type=Path, default=default,
                        help="gateway configuration (YAML)")  # fmt: skip


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"new password for {username}: ")
    return sys.stdin.readline().rstrip("\n")


def _set_password(accounts: Accounts, username: str, create_admin: bool) -> int:
    exists = accounts.get_user(username) is not None
    if not exists and not create_admin:
        raise StoreError(
            f"users.username {username!r}: no such user; add --create-admin to create it as "
            "an admin"
        )
    password = _read_password(username)
    if exists:
        accounts.set_password(username, password, "cli")
        print(f"vpatch ui: password of {username!r} set")
    else:
        accounts.create_user(username, password, "admin", "cli")
        print(f"vpatch ui: admin {username!r} created")
    return 0


def _when(ts: float | None, none: str = "-") -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts is not None else none


def _list_tokens(accounts: Accounts) -> int:
    now = time.time()
    print(f"{'id':>6}  {'user':16} {'name':20} {'created':20} {'last used':20} expires")
    for t in accounts.list_tokens():
        expired = " (expired)" if t.expires is not None and t.expires <= now else ""
        print(f"{t.id:>6}  {t.username:16} {t.name:20} {_when(t.created):20} "
              f"{_when(t.last_used):20} {_when(t.expires, 'never')}{expired}")  # fmt: skip
    return 0


def manage(args: argparse.Namespace, store: Store) -> int | None:
    """Run the account option given, if any (its exit status); None when there is none."""
    accounts = Accounts(store)
    if args.users_command:
        return ui_users.run_users(args, accounts)
    if args.create_admin and not args.set_password:
        raise ConfigError("--create-admin goes with --set-password USER")
    if args.expires is not None and not args.create_token:
        raise ConfigError("--expires goes with --create-token USER")
    if args.set_password:
        return _set_password(accounts, args.set_password, args.create_admin)
    if args.create_token:
        print(accounts.create_token(args.create_token, "cli", "cli", args.expires))
        return 0
    if args.list_tokens:
        return _list_tokens(accounts)
    if args.revoke_token is not None:
        token = accounts.get_token(args.revoke_token)
        if token is None:
            raise StoreError(f"api_tokens.id {args.revoke_token}: no such token")
        accounts.revoke_token(token.id, "cli")
        print(f"vpatch ui: token {token.id} ({token.username}, {token.name!r}) revoked")
        return 0
    return None


def run(args: argparse.Namespace) -> int:
    from webui.auth import ensure_admin

    config = load_config(args.config)
    store = Store(policy_target(config))
    try:
        status = manage(args, store)
        if status is not None:
            return status
        password = ensure_admin(store)
    finally:
        store.close()
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen {args.listen!r}: expected HOST:PORT")
    host = host.strip("[]")
    if args.insecure_http and not _loopback(host):
        raise ConfigError(
            f"--listen {args.listen!r} with --insecure-http: plain HTTP is served on a "
            "loopback address only (127.0.0.1, ::1, localhost); drop --insecure-http to "
            "serve HTTPS there"
        )
    insecure_cookies = args.insecure_cookies or args.insecure_http
    from webui import create_app
    from webui.serve import build_server
    from webui.tls import default_names, fingerprint, server_context, ui_certificate

    events_db = str(config.events.sqlite) if config.events.sqlite else "/nonexistent/events.db"
    if config.database.url:  # every gateway's events, in the shared store
        events_db = config.database.url
    app = create_app({
        "POLICY_DB": str(policy_target(config)),
        "STATE_DIR": str(config.policy.database.parent),  # the UI's secret, also with a URL
        "EVENTS_DB": events_db,
        "CONTROL_SOCKET": str(config.control.socket),
        "RULE_PATHS": [str(p) for p in config.rules],
        "RULE_PACK_DIR": str(config.rule_pack.dir),
        "SESSION_COOKIE_SECURE": not insecure_cookies,
        "SESSION_IDLE": config.ui.session_idle,
        "SESSION_LIFETIME": config.ui.session_lifetime,
        "TRUSTED_PROXIES": config.ui.trusted_proxies,
        # shown read-only on the HTTPS page (webui/https_services.py)
        "TLS_CONFIG_SERVICES": [service_settings(s) for s in config.tls_proxy.services],
    })  # fmt: skip
    if password is not None:
        print(f"vpatch ui: created user 'admin' with password: {password}", flush=True)
        print("vpatch ui: this password is shown only once; change it with "
              "`vpatch ui --set-password admin`", flush=True)  # fmt: skip
    if insecure_cookies:
        print("vpatch ui: WARNING: --insecure-cookies: session cookies sent over plain HTTP. "
              "Lab use only!", file=sys.stderr, flush=True)  # fmt: skip
    shown = f"[{host}]" if ":" in host else host
    if args.insecure_http:
        print(
            f"vpatch ui: serving plain HTTP on http://{shown}:{port}/ (loopback only)", flush=True
        )
        build_server(app, host, int(port), config.ui, UI_THREADS).run()
        return 0
    ui = config.ui
    if (ui.tls_cert is None) != (ui.tls_key is None):
        raise ConfigError("ui.tls_cert and ui.tls_key go together: give both, or neither")
    if ui.tls_cert is not None and ui.tls_key is not None:
        cert, key = ui.tls_cert, ui.tls_key
    else:
        cert, key, made = ui_certificate(config.policy.database.parent, default_names(host))
        if made:
            print(f"vpatch ui: made a self-signed certificate {cert} (key {key}, 0600)", flush=True)
    tls = server_context(cert, key)
    print(f"vpatch ui: certificate {cert}, SHA-256 {fingerprint(cert)}", flush=True)
    print(f"vpatch ui: serving on https://{shown}:{port}/", flush=True)
    build_server(app, host, int(port), ui, UI_THREADS, tls=tls).run()
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
