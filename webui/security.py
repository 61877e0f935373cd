"""Authentication, roles, CSRF and response hardening shared by every blueprint.

- `g.user` is the logged-in User (HTML blueprints) or the token's User (API); the session
  cookie holds a random id of a server-side session (gateway/policy/sessions.py) and the user's
  id, and a session that ended (logout, password or role change, deleted user, idle or
  lifetime over: config `ui.session_idle`, `ui.session_lifetime`) is cleared;
- `login_required` refuses anonymous requests (HTML: redirect to the login page; JSON: 401);
- `admin_required` refuses viewers (403): viewers can read everything and change nothing;
- a disabled account has no session; one whose password was reset by an admin reaches only the
  password page (`auth.password`) and logout until it has set a new password
  (`_force_password_change`: other pages redirect there, other requests get 403);
- CSRF: a random per-session token, compared in constant time on every POST/PUT/PATCH/DELETE
  outside /api/v1 (form field `csrf_token` or header `X-CSRF-Token`); /api/v1 authenticates
  by bearer token only, so a browser's cookies cannot act there;
- security headers on every response (see webui/__init__.py).
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import (
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup, escape

from gateway.policy.accounts import Accounts
from gateway.policy.sessions import Sessions
from webui.db import get_store

F = TypeVar("F", bound=Callable[..., Any])

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# what a user who must change their password can reach
PASSWORD_CHANGE_OPEN = frozenset({"auth.password", "auth.logout", "static"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


def _check_csrf() -> None:
    if request.method not in UNSAFE_METHODS or request.path.startswith("/api/v1/"):
        return
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    want = session.get("csrf") or ""
    if not want or not hmac.compare_digest(str(sent), str(want)):
        abort(400, description="missing or invalid CSRF token; reload the page and try again")


def ui_sessions() -> Sessions:
    cfg = current_app.config
    return Sessions(get_store(), float(cfg["SESSION_IDLE"]), float(cfg["SESSION_LIFETIME"]))


def _load_user() -> None:
    g.user = None
    if request.path.startswith("/api/v1/"):
        return  # the API blueprint authenticates by bearer token
    sid, uid = session.get("sid"), session.get("uid")
    if not sid:
        return
    live = ui_sessions().user_id(str(sid), time.time())
    if live is not None and live == uid:
        g.user = Accounts(get_store()).user_by_id(live)
    if g.user is None or g.user.disabled:
        g.user = None
        session.clear()


def _force_password_change() -> Any:
    user = g.get("user")
    if user is None or not user.must_change_password or request.endpoint in PASSWORD_CHANGE_OPEN:
        return None
    if request.method == "GET" and not wants_json():
        return redirect(url_for("auth.password"))
    abort(403, description="set a new password first (/auth/password)")


def _headers(response: Any) -> Any:
    h = response.headers
    h["Content-Security-Policy"] = CSP
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Frame-Options"] = "DENY"
    h["Referrer-Policy"] = "no-referrer"
    h.setdefault("Cache-Control", "no-store")
    return response


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.get("user") is None:
            if wants_json() or request.method != "GET":
                return jsonify(error="authentication required"), 401
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)

    return cast(F, wrapped)


def admin_required(view: F) -> F:
    @functools.wraps(view)
    @login_required
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.user.role != "admin":
            abort(403, description=f"user {g.user.username!r} is a viewer: read-only")
        return view(*args, **kwargs)

    return cast(F, wrapped)


def bytes_escape(value: object) -> Markup:
    """HTML-escaped text with non-printable characters shown as \\xNN (raw bytes made visible)."""
    if value is None:
        return Markup("")
    if isinstance(value, bytes):
        text = "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in value)
    else:
        text = "".join(
            c
            if c.isprintable() and ord(c) < 0x7F or (c.isprintable() and ord(c) > 0x9F)
            else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
            for c in str(value)
        )
    return escape(text)


def csv_safe(value: object) -> str:
    """A CSV cell that a spreadsheet will not evaluate as a formula (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    if text.startswith(CSV_FORMULA_START):
        return "'" + text
    return text


def init_app(app: Flask) -> None:
    app.before_request(_load_user)
    app.before_request(_force_password_change)
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["bx"] = bytes_escape

    @app.errorhandler(400)
    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(429)
    def _error(err: Any) -> Any:
        if wants_json():
            return jsonify(error=err.description), err.code
        return render_template("error.html", error=err), err.code
