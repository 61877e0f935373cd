"""Login, logout, own API tokens. Logins are throttled per user and per source address
(exponential backoff, gateway/policy/accounts.py) and every failure is audited. `ensure_admin`
creates the first account (`vpatch ui` on a store without users)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for

from gateway.policy.accounts import Accounts, new_password
from gateway.policy.store import Store
from webui.db import get_store
from webui.security import admin_required, csrf_token, login_required

bp = Blueprint("auth", __name__, url_prefix="/auth")
MAX_NEXT_LEN = 2000  # a longer `next` is not one of our pages


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


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        csrf_token()
        return render_template("auth/login.html")
    username = request.form.get("username", "")[:128]
    password = request.form.get("password", "")[:1024]
    source = request.remote_addr or "unknown"
    accounts = Accounts(get_store())
    wait = accounts.login_wait(username, source)
    if wait > 0:
        abort(429, description=f"too many failed logins; try again in {wait:.0f} s")
    user = accounts.authenticate(username, password)
    accounts.record_login(username, source, user is not None)
    if user is None:
        flash("wrong user name or password")
        return render_template("auth/login.html"), 401
    session.clear()
    session.permanent = True
    session["user"] = user.username
    csrf_token()
    return redirect(safe_next(request.args.get("next", "")) or url_for("dashboard.index"))


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/tokens", methods=["GET", "POST"])
@login_required
def tokens() -> Any:
    accounts = Accounts(get_store())
    new_token = None
    if request.method == "POST":
        if g.user.role != "admin":
            abort(403, description="viewers cannot create API tokens")
        new_token = accounts.create_token(
            g.user.username, request.form.get("name", "")[:128], g.user.username
        )
    return render_template(
        "auth/tokens.html", tokens=accounts.list_tokens(g.user.username), new_token=new_token
    )


@bp.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@admin_required
def revoke(token_id: int) -> Any:
    accounts = Accounts(get_store())
    if token_id not in {t.id for t in accounts.list_tokens(g.user.username)}:
        abort(404, description=f"token {token_id}: not one of yours")
    accounts.revoke_token(token_id, g.user.username)
    return redirect(url_for("auth.tokens"))
