"""Rules: search/filter by CVE, product, severity, protocol; mode per rule globally, per host
and per group (off / detect / prevent / inherit); each change is stored, audited and followed
by a `reload` of the running gateway. "Reload rule files" (admin) has the gateway load its rule
files again without a restart (`rules-reload`; a bad rule refuses the whole set)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)

from gateway.events.builtin import BUILTIN_EVENTS
from gateway.policy.hosts import Hosts
from gateway.policy.store import StoreError
from gateway.rulepack import RulePackError, RulePacks
from webui.db import get_store
from webui.inputs import InputError, parse_int
from webui.security import admin_required, login_required
from webui.services import reload_rules, rules_view, set_rule_mode

bp = Blueprint("rules", __name__, url_prefix="/rules")


@bp.route("/")
@login_required
def index() -> Any:
    store = get_store()
    filters = {
        k: request.args.get(k, "")[:128] for k in ("q", "cve", "product", "severity", "protocol")
    }
    pack_dir = current_app.config.get("RULE_PACK_DIR")
    try:
        pack = RulePacks(Path(pack_dir)).current() if pack_dir else None
    except RulePackError as err:
        flash(str(err))
        pack = None
    return render_template(
        "rules/index.html", rules=rules_view(filters), filters=filters, builtin=BUILTIN_EVENTS,
        hosts=Hosts(store).list_hosts(), groups=Hosts(store).list_groups(), pack=pack,
        pack_installed=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pack.installed_at))
        if pack else "",
    )  # fmt: skip


@bp.route("/reload", methods=["POST"])
@admin_required
def reload() -> Any:
    result = reload_rules(get_store(), g.user.username)
    if result["ok"]:
        r = result["result"]
        every = "every" if r["complete"] else "NOT every"
        flash(
            f"rule files reloaded: version {r['version']}, {r['rules']} rules, in use by "
            f"{every} worker after {r['seconds']:.2f} s"
        )
    else:
        flash(f"rule files NOT reloaded, the rules in force stay: {result['error']}")
    return redirect(url_for("rules.index"))


def parse_scope(value: str) -> tuple[str, int | None]:
    """'global', 'host:ID' or 'group:ID'."""
    if value == "global":
        return "global", None
    kind, _, ident = value.partition(":")
    if kind in ("host", "group") and ident.isascii() and ident.isdigit():
        return kind, parse_int(ident, "scope", 0)
    raise InputError(f"scope {value!r}: expected global, host:ID or group:ID")


@bp.route("/<int:rule_id>/mode", methods=["POST"])
@admin_required
def set_mode(rule_id: int) -> Any:
    mode = request.form.get("mode", "")
    try:
        scope, scope_id = parse_scope(request.form.get("scope", "global"))
        result = set_rule_mode(
            rule_id, scope, scope_id, None if mode == "inherit" else mode, g.user.username,
            request.form.get("reason", "")[:1000],
        )  # fmt: skip
    except (InputError, StoreError) as err:
        abort(400, description=str(err))
    rl = result["reload"]
    if rl["ok"]:
        flash(f"rule {rule_id}: {scope} mode {mode}; gateway reloaded in {rl['seconds']:.2f} s")
    else:
        flash(f"rule {rule_id}: {scope} mode {mode} saved; gateway NOT reloaded: {rl['error']}")
    return redirect(url_for("rules.index"))
