"""vpatch admin web UI: a Flask application factory with one blueprint per feature.

`create_app(test_config=None)` builds the app; the gateway is reached only through the policy
store (gateway/policy/store.py), the event store (read-only) and the control socket. Guarantees:
- no default secret: the session key is generated once and kept in the state directory (0600,
  refused when another user owns it or others may read it);
- every state-changing request carries a CSRF token (forms: field `csrf_token`, fetch():
  header `X-CSRF-Token`); the JSON API under /api/v1 takes bearer tokens only, never cookies;
- session cookies are HttpOnly, SameSite=Strict and Secure (Secure can be turned off for a
  plain-HTTP lab, with a warning on every start);
- every response carries CSP `script-src 'self'` (no inline scripts), frame-ancestors 'none',
  X-Content-Type-Options nosniff and Referrer-Policy no-referrer;
- attacker-controlled event fields are escaped everywhere (Jinja autoescape, `bytes_escape`
  for non-printable characters, CSV formula neutralisation).
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask

from gateway.config import UiConfig
from gateway.statefiles import InsecureFileError, check_secret, create_file, make_dir, shared_gid
from webui import (
    alerts,
    api,
    audit,
    auth,
    dashboard,
    db,
    events,
    firewall,
    gateways,
    hosts,
    https_services,
    inputs,
    reports,
    rules,
    security,
    transfer,
    users,
)

log = logging.getLogger("vpatch.ui")

SECRET_FILE = "ui-secret.key"
SESSION_IDLE_S = UiConfig().session_idle  # the defaults of `ui.*` (gateway/config.py)
SESSION_LIFETIME_S = UiConfig().session_lifetime


def load_secret(state_dir: Path) -> bytes:
    """The session secret from state_dir (created 0600 with 32 random bytes when absent).
    An existing one is used only when it belongs to this process's user and nobody else may
    read it (InsecureFileError naming the file and its mode otherwise)."""
    make_dir(state_dir, shared_gid())  # shared with the gateway: it holds the policy database
    path = state_dir / SECRET_FILE
    data = secrets.token_bytes(32)
    if create_file(path, data=data):
        return data
    check_secret(path, "the UI session secret")
    data = path.read_bytes()
    if len(data) < 32:
        raise InsecureFileError(f"{path}: secret shorter than 32 bytes; delete it to regenerate")
    return data


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        POLICY_DB="/var/lib/vpatch/vpatch.db",
        EVENTS_DB="/var/lib/vpatch/events.db",
        CONTROL_SOCKET="/run/vpatch/control.sock",
        RULE_PATHS=None,  # None: the bundled rules/ directory
        STATE_DIR=None,  # None: the policy database's directory
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="vpatch_session",
        SESSION_IDLE=SESSION_IDLE_S,
        SESSION_LIFETIME=SESSION_LIFETIME_S,
        TRUSTED_PROXIES=(),  # networks (ipaddress) whose X-Forwarded-For is believed
        RELOAD_TIMEOUT=5.0,
        MAX_CONTENT_LENGTH=1 << 20,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=app.config["SESSION_LIFETIME"])
    state_dir = Path(app.config["STATE_DIR"] or Path(app.config["POLICY_DB"]).parent)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret(state_dir)
    if not app.config["SESSION_COOKIE_SECURE"]:
        log.warning(
            "SESSION COOKIES ARE NOT MARKED SECURE: the session travels over plain HTTP. "
            "Use this only in a lab; serve the UI over HTTPS in production."
        )

    db.init_app(app)
    security.init_app(app)
    inputs.init_app(app)

    # alerts, firewall, https_services, reports and transfer added their /api/v1 endpoints to
    # api.bp when imported (at the top), before api.bp is registered here
    for bp in (auth.bp, dashboard.bp, rules.bp, hosts.bp, events.bp, audit.bp, api.bp,
               firewall.bp, alerts.bp, reports.bp, transfer.bp, users.bp,
               gateways.bp, https_services.bp):  # fmt: skip
        app.register_blueprint(bp)
    app.add_url_rule("/", endpoint="index", view_func=dashboard.index)
    return app
