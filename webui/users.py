"""Accounts, for admins only: create an admin or viewer (with a temporary password, shown once,
to be changed at the first login), change a role, disable or enable, reset a password (a new
temporary one, shown once), remove; each user's last login and status. Every form carries the
CSRF token (webui/security.py); the rules (last enabled admin, sessions ended) are those of
gateway/policy/accounts.py, whose refusals come back as the page's message."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from gateway.policy.accounts import Accounts, User, new_password
from gateway.policy.store import ROLES, StoreError
from webui.db import get_store
from webui.security import admin_required
from webui.tables import Sort, page_of, sort_arg

bp = Blueprint("users", __name__, url_prefix="/users")
PER_PAGE = 50
COLUMNS = ("username", "role", "status", "last_login", "created")
CHANGES = ("disable", "enable", "role", "remove", "reset")
DONE = {"disable": "disabled, their sessions ended", "enable": "enabled", "role": "role changed",
        "remove": "removed"}  # fmt: skip


def _key(user: User, column: str) -> Any:
    if column == "status":
        return ("disabled" if user.disabled else "enabled", user.username)
    if column in ("last_login", "created"):
        return getattr(user, column) or 0.0
    return getattr(user, column)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts is not None else "never"


def _page(issued: dict[str, str] | None = None, status: int = 200) -> Any:
    sort: Sort = sort_arg(COLUMNS, "username")
    page = page_of(Accounts(get_store()).list_users(), sort, _key, PER_PAGE)
    return render_template(
        "users/index.html", page=page, sort=sort, roles=ROLES, when=_when, issued=issued
    ), status


def _user(user_id: int) -> User:
    user = Accounts(get_store()).user_by_id(user_id)
    if user is None:
        abort(404, description=f"user {user_id}: no such user")
    return user


@bp.route("/")
@admin_required
def index() -> Any:
    return _page()


@bp.route("/", methods=["POST"])
@admin_required
def create() -> Any:
    """A new account; its password (typed, or random when empty) is temporary."""
    username = request.form.get("username", "")[:200]
    password = request.form.get("password", "")[:1024] or new_password()
    try:
        user = Accounts(get_store()).create_user(
            username, password, request.form.get("role", "")[:16], g.user.username,
            must_change=True,
        )  # fmt: skip
    except StoreError as err:
        flash(str(err))
        return _page(status=400)
    flash(f"user {user.username} created ({user.role}); the password must be changed at the "
          "first login")  # fmt: skip
    return _page({"username": user.username, "password": password})


def _change(user_id: int, change: str) -> Any:
    """Apply `change` to the user and come back to the list with what happened."""
    user = _user(user_id)
    accounts, actor = Accounts(get_store()), g.user.username
    issued = None
    try:
        if change == "disable":
            accounts.set_disabled(user.username, True, actor)
        elif change == "enable":
            accounts.set_disabled(user.username, False, actor)
        elif change == "role":
            accounts.set_role(user.username, request.form.get("role", "")[:16], actor)
        elif change == "remove":
            accounts.delete_user(user.username, actor)
        else:  # reset
            issued = {"username": user.username, "password": accounts.reset_password(
                user.username, actor)}  # fmt: skip
    except StoreError as err:
        flash(str(err))
        return redirect(url_for("users.index"), 303)
    if issued is not None:
        flash(f"password of {user.username} reset; their sessions ended")
        return _page(issued)
    flash(f"user {user.username}: {DONE[change]}")
    return redirect(url_for("users.index"), 303)


@bp.route("/<int:user_id>/<change>", methods=["POST"])
@admin_required
def change(user_id: int, change: str) -> Any:
    """`change`: disable, enable, role (form field `role`), remove or reset."""
    if change not in CHANGES:
        abort(404, description=f"{change[:40]!r}: not a change of a user ({', '.join(CHANGES)})")
    return _change(user_id, change)
