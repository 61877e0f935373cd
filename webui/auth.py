"""Login, logout, API tokens. Logins are throttled per real client, per account and per known
device (gateway/policy/throttle.py; the client comes from X-Forwarded-For only through the
configured trusted proxies, `ui.trusted_proxies`) and every failure is audited. A successful
login starts a server-side session (gateway/policy/sessions.py) and leaves a signed device
cookie naming the account's id, so the same browser can log in during an attack. After login
the browser goes to `next` only when it is a path on this site (`safe_next`). Admins see and
revoke every user's tokens, in the pages and in the API (GET /api/v1/tokens, DELETE
/api/v1/tokens/{id}); a viewer sees only their own. Every user changes their own password at
/auth/password (the current one required), where a password reset by an admin leads.
`ensure_admin` creates the first account (`vpatch ui` on a store without users)."""

from __future__ import annotations

import ipaddress
import secrets
import time
import urllib.parse
from dataclasses import asdict
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from gateway.policy.accounts import MAX_TOKEN_DAYS, Accounts, ApiToken, User, new_password
from gateway.policy.store import Store, StoreError
from gateway.policy.throttle import LoginAttempt, LoginThrottle
from webui.api import ARR, endpoint
from webui.db import get_store
from webui.security import admin_required, csrf_token, login_required, ui_sessions

bp = Blueprint("auth", __name__, url_prefix="/auth")
MAX_NEXT_LEN = 2000  # a longer `next` is not one of our pages
DEVICE_COOKIE = "vpatch_device"
DEVICE_DAYS = 90
MAX_FORWARDED_HOPS = 32


def ensure_admin(store: Store) -> str | None:
    """Create `admin` with a random password when there is no account (the first start of
    `vpatch ui`: there is no default password); return that password, None otherwise."""
    accounts = Accounts(store)
    if accounts.user_count():
        return None
    password = new_password()
    accounts.create_user("admin", password, "admin", "vpatch-ui")
    return password


def safe_next(target: str) -> str | None:
    """`target` when it is a path on this site, else None. Refused: anything but printable
    ASCII without spaces and backslashes (browsers drop tabs and newlines, read `\\` as `/`
    and normalise some non-ASCII look-alikes; our own paths are %-encoded), anything
    that parses with a scheme or a host, a path not starting with exactly one `/`, and one
    whose %-decoded form would (`/%2F/evil`)."""
    if len(target) > MAX_NEXT_LEN or any(not 0x20 < ord(c) < 0x7F or c == "\\" for c in target):
        return None
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    decoded = urllib.parse.unquote(parts.path)
    if decoded.startswith(("//", "/\\")) or target.startswith("//"):
        return None
    return target


def client_address() -> str:
    """The real client: the connecting peer, or when that is a trusted proxy the right-most
    X-Forwarded-For address that is not one (a proxy appends the peer it saw; what a client
    wrote to the left of that is not believed)."""
    peer = request.remote_addr or "unknown"
    proxies = current_app.config["TRUSTED_PROXIES"]
    try:
        hop = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    forwarded = ",".join(request.headers.getlist("X-Forwarded-For")).split(",")
    for text in reversed(forwarded[-MAX_FORWARDED_HOPS:]):
        if not any(hop in net for net in proxies):
            return str(hop)
        try:
            hop = ipaddress.ip_address(text.strip())
        except ValueError:
            return str(hop)  # the last trusted proxy wrote no address: it is the client
    return str(hop)


def _devices() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="vpatch-device")


def _device_of(user: User | None) -> str:
    """The device id of this browser's device cookie when it belongs to `user`, else ""."""
    raw = request.cookies.get(DEVICE_COOKIE, "")
    if user is None or not raw:
        return ""
    try:
        user_id, created, device = _devices().loads(raw, max_age=DEVICE_DAYS * 86400)
    except (BadData, TypeError, ValueError):
        return ""
    # the creation time too: SQLite may give a user deleted and created again the same id
    return str(device) if [user_id, created] == [user.id, user.created] else ""


def _remember_device(response: Response, user: User, device: str) -> None:
    value = _devices().dumps([user.id, user.created, device or secrets.token_urlsafe(16)])
    response.set_cookie(
        DEVICE_COOKIE, value, max_age=DEVICE_DAYS * 86400, path="/auth/", httponly=True,
        samesite="Strict", secure=bool(current_app.config["SESSION_COOKIE_SECURE"]),
    )  # fmt: skip


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        csrf_token()
        return render_template("auth/login.html")
    username = request.form.get("username", "")[:128]
    password = request.form.get("password", "")[:1024]
    accounts = Accounts(get_store())
    account = accounts.get_user(username)
    attempt = LoginAttempt(username, client_address(), _device_of(account))
    throttle = LoginThrottle(get_store())
    wait = throttle.wait(attempt, time.time())
    if wait > 0:
        abort(429, description=f"too many failed logins; try again in {wait:.0f} s")
    user = accounts.authenticate(username, password)
    throttle.record(attempt, user is not None, account is not None, time.time())
    if user is None:
        flash("wrong user name or password")
        return render_template("auth/login.html"), 401
    session.clear()
    session.permanent = True
    session["uid"] = user.id
    session["sid"] = ui_sessions().begin(user.id, time.time())
    csrf_token()
    target = safe_next(request.args.get("next", "")) or url_for("dashboard.index")
    response = redirect(url_for("auth.password") if user.must_change_password else target)
    _remember_device(response, user, attempt.device)
    return response


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    if session.get("sid"):
        ui_sessions().end(str(session["sid"]))
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password() -> Any:
    """The user's own password; the only page open while a reset one must be changed."""
    if request.method == "GET":
        return render_template("auth/password.html")
    new = request.form.get("new", "")[:1024]
    if new != request.form.get("confirm", "")[:1024]:
        flash("the two new passwords differ")
        return render_template("auth/password.html"), 400
    try:
        Accounts(get_store()).change_own_password(
            g.user.username, request.form.get("current", "")[:1024], new
        )
    except StoreError as err:
        flash(str(err))
        return render_template("auth/password.html"), 400
    # the change ended every session of the user, this one too: this browser gets a new one
    session["sid"] = ui_sessions().begin(g.user.id, time.time())
    flash("password changed")
    return redirect(url_for("dashboard.index"))


def _when(ts: float | None, none: str = "") -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts is not None else none


def _expiry_days(text: str) -> float | None:
    """The form's `expires` field: days (None when empty); 400 naming the field otherwise."""
    if not text.strip():
        return None
    try:
        days = float(text)
    except ValueError:
        abort(400, description=f"expires {text[:40]!r}: a number of days, or empty for none")
    if not 0 < days <= MAX_TOKEN_DAYS:
        abort(400, description=f"expires {days:g}: 0 < days <= {MAX_TOKEN_DAYS}, or empty")
    return days


def visible_tokens(accounts: Accounts) -> list[ApiToken]:
    """Every user's tokens for an admin, a viewer's own otherwise."""
    return accounts.list_tokens(None if g.user.role == "admin" else g.user.username)


@bp.route("/tokens", methods=["GET", "POST"])
@login_required
def tokens() -> Any:
    accounts = Accounts(get_store())
    new_token = None
    if request.method == "POST":
        if g.user.role != "admin":
            abort(403, description="viewers cannot create API tokens")
        new_token = accounts.create_token(
            g.user.username, request.form.get("name", "")[:128], g.user.username,
            _expiry_days(request.form.get("expires", "")[:40]),
        )  # fmt: skip
    now = time.time()
    rows = [
        {"token": t, "created": _when(t.created), "last_used": _when(t.last_used),
         "expires": _when(t.expires, "never"),
         "expired": t.expires is not None and t.expires <= now}
        for t in visible_tokens(accounts)
    ]  # fmt: skip
    return render_template("auth/tokens.html", tokens=rows, new_token=new_token)


@bp.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@admin_required
def revoke(token_id: int) -> Any:
    accounts = Accounts(get_store())
    if accounts.get_token(token_id) is None:
        abort(404, description=f"token {token_id}: no such token")
    accounts.revoke_token(token_id, g.user.username)
    return redirect(url_for("auth.tokens"))


# -- the API's view of tokens (registered on api.bp, like alerts and firewall) -----------------


@endpoint("/tokens", "GET", "API tokens: every user's for an admin, one's own for a viewer",
          result=ARR)  # fmt: skip
def api_tokens() -> Any:
    return jsonify([asdict(t) for t in visible_tokens(Accounts(get_store()))])


@endpoint("/tokens/{token_id}", "DELETE", "Revoke any user's API token (admins)", write=True)
def api_revoke_token(token_id: int) -> Any:
    accounts = Accounts(get_store())
    if accounts.get_token(token_id) is None:
        return jsonify(error=f"token {token_id}: not found"), 404
    accounts.revoke_token(token_id, g.user.username)
    return jsonify(ok=True)
