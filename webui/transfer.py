"""Policy export and import (gateway/transfer.py; docs/webui.md "Export and import"):
the whole policy as one JSON document or one CSV file per section, and an import form (admins)
taking a JSON document or CSV files. An import is validated whole first; a bad row is a 400
naming its section, row and field, and nothing is written; a good one is applied in one
transaction, audited, and the running gateway is told to reload. JSON API:
GET /api/v1/policy/export, POST /api/v1/policy/import (body: the document; ?replace=1)."""

from __future__ import annotations

import json
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from gateway.transfer import (
    SECTIONS,
    ImportResult,
    TransferError,
    export_policy,
    import_policy,
    merge_csv,
    to_csv,
)
from webui.api import endpoint
from webui.db import get_store
from webui.inputs import InputError
from webui.security import admin_required, login_required
from webui.services import reload_gateway

bp = Blueprint("transfer", __name__, url_prefix="/policy")


@bp.route("/")
@login_required
def index() -> Any:
    return render_template("transfer/index.html", sections=tuple(SECTIONS))


@bp.route("/export.json")
@login_required
def export_json() -> Any:
    return Response(
        json.dumps(export_policy(get_store()), indent=1),
        mimetype="application/json",
        headers={"Content-Disposition": "attachment; filename=vpatch-policy.json"},
    )


@bp.route("/export/<section>.csv")
@login_required
def export_csv(section: str) -> Any:
    if section not in SECTIONS:
        abort(404, description=f"section {section!r}: one of {', '.join(SECTIONS)}")
    return Response(
        to_csv(export_policy(get_store()), section),
        mimetype="text/csv",
        headers={"Content-Disposition": f"attachment; filename={section}.csv"},
    )


def _uploaded() -> dict[str, Any]:
    files = [f for f in request.files.getlist("files") if f.filename]
    if not files:
        raise InputError("choose a JSON document or CSV files to import")
    texts = []
    for f in files:
        try:
            texts.append((str(f.filename), f.read().decode("utf-8-sig")))
        except UnicodeDecodeError as err:
            raise InputError(f"{f.filename}: not UTF-8 text") from err
    if len(texts) == 1 and texts[0][1].lstrip().startswith("{"):
        try:
            doc = json.loads(texts[0][1])
        except json.JSONDecodeError as err:
            raise InputError(f"{texts[0][0]}: not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise InputError(f"{texts[0][0]}: not a JSON object")
        return doc
    return merge_csv(texts)


def _summary(result: ImportResult) -> str:
    return ", ".join(f"{result.written[s]} {s}" for s in SECTIONS) + " written"


@bp.route("/import", methods=["POST"])
@admin_required
def import_form() -> Any:
    store = get_store()
    try:
        result = import_policy(
            store, _uploaded(), g.user.username, bool(request.form.get("replace"))
        )
    except (InputError, TransferError) as err:
        abort(400, description=f"nothing imported: {err}")
    rl = reload_gateway(store, g.user.username)
    flash(f"policy imported: {_summary(result)}; "
          + (f"gateway reloaded in {rl['seconds']:.2f} s" if rl["ok"]
             else f"gateway NOT reloaded: {rl['error']}"))  # fmt: skip
    return redirect(url_for("transfer.index"))


@endpoint("/policy/export", "GET", "The policy (groups, hosts, assignments, firewall rules, "
          "exceptions) as one JSON document")  # fmt: skip
def api_export() -> Any:
    return jsonify(export_policy(get_store()))


@endpoint("/policy/import", "POST", "Import a policy document (validated whole, applied in one "
          "transaction; replace=1 empties the sections first); reload", write=True,
          params=("replace",), body={"type": "object"})  # fmt: skip
def api_import() -> Any:
    doc = request.get_json(silent=True)
    if not isinstance(doc, dict):
        raise InputError("request body must be a JSON object (an exported policy document)")
    try:
        result = import_policy(get_store(), doc, g.user.username,
                               request.args.get("replace", "") in ("1", "true"))  # fmt: skip
    except TransferError as err:
        return jsonify(error=str(err), section=err.section, row=err.row, field=err.field), 400
    rl = reload_gateway(get_store(), g.user.username)
    body = {
        "written": result.written,
        "unchanged": result.unchanged,
        "replaced": result.replaced,
        "reload": rl,
    }
    return jsonify(body), 201  # POST operations answer 201 (webui/api.py openapi_document)
