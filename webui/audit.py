"""The audit trail: who changed what, when, with the values before and after."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from webui.db import get_store
from webui.inputs import MAX_SQL_INT, int_arg
from webui.security import login_required

bp = Blueprint("audit", __name__, url_prefix="/audit")
PAGE = 100


@bp.route("/")
@login_required
def index() -> Any:
    page = int_arg("page", 1, 1, MAX_SQL_INT // PAGE)
    store = get_store()
    return render_template(
        "audit/index.html", entries=store.list_audit(PAGE, (page - 1) * PAGE), page=page,
        total=store.audit_count(), per_page=PAGE,
    )  # fmt: skip
