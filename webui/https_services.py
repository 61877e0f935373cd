"""HTTPS services page and API: each proxied web service's mode, certificate and TLS settings,
edited live (docs/https.md "Services in the UI and API").

The page lists the services of the configuration file (read-only: `tls_proxy.services`, given
by `vpatch ui` as TLS_CONFIG_SERVICES) and those of the policy store (gateway/tls/stored.py,
editable by admins; viewers only see), each with its certificate's subject and expiry (a
warning when expired or within CERT_WARN_DAYS), its TLS settings and the running gateway's
live counters (its `status`). Saving checks every value with the configuration's own code
(the error names the field and nothing is stored), stores the service (audited) and asks the
gateway to `reload`, which reconfigures its HTTPS plane without a restart (gateway/tls/
plane.py). Mode `packet` removes a stored service: its flows go back to the packet plane.
The certificate and key are paths on the gateway, or PEM files uploaded with the form (kept
0600 in the state directory: webui/tls_uploads.py).

JSON API (bearer tokens, webui/api.py's table): GET /api/v1/https/services, PUT
/api/v1/https/services (create or update by host and port), PUT /api/v1/https/services/{id},
DELETE /api/v1/https/services/{id}; errors are {"error", "field"} with status 400 (404 for an
unknown id).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

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
    url_for,
)

from gateway.tls.service import (
    KEYS,
    BlockAnswer,
    CertInfo,
    ServiceFieldError,
    TlsConfigError,
    TlsService,
    TlsVersion,
    check_keypair,
    from_text,
    service_settings,
)
from gateway.tls.stored import StoredService, delete_service, list_stored, save_service
from webui.api import endpoint
from webui.db import get_store
from webui.security import admin_required, login_required
from webui.services import gateway_status, reload_gateway
from webui.tls_uploads import discard, prune, save_uploads

bp = Blueprint("https", __name__, url_prefix="/https")

CERT_WARN_DAYS: Final = 30
MODES: Final = ("https-proxy", "packet")  # packet: not proxied (the default of every flow)
# the form's initial values: the configuration's defaults, no address and no files
DEFAULTS: Final = service_settings(TlsService("0.0.0.0")) | {"host": "", "cert": "", "key": ""}
FORM_KEYS: Final = tuple(k for k in DEFAULTS if k in KEYS)


def certificate_view(cert: object, key: object, now: datetime | None = None) -> dict[str, Any]:
    """What the page shows of a service's certificate: subject, validity, days left and a
    warning (expired, not yet valid, or expiring within CERT_WARN_DAYS), or the error."""
    try:
        info: CertInfo = check_keypair(Path(str(cert)), Path(str(key)))
    except TlsConfigError as err:
        return {"error": str(err)}
    now = now or datetime.now(UTC)
    days = (info.not_after - now).days
    warning = ""
    if info.expired(now):
        warning = (f"certificate not valid now: valid from {info.not_before.isoformat()} "
                   f"to {info.not_after.isoformat()}")  # fmt: skip
    elif days < CERT_WARN_DAYS:
        warning = f"certificate expires in {days} days ({info.not_after.isoformat()})"
    return {**info.as_dict(), "days_left": days, "warning": warning}


def _name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def services_view() -> list[dict[str, Any]]:
    """Every service, configuration file first: source, id, settings, certificate, live."""
    live = {s.get("service"): s for s in gateway_status().get("tls_proxy") or []}
    out: list[dict[str, Any]] = []
    for settings in current_app.config.get("TLS_CONFIG_SERVICES") or []:
        out.append(_view(settings, "config", live))
    for row in list_stored(get_store()):
        out.append(_view(row.settings, "policy", live, row))
    return out


def _view(
    settings: dict[str, Any], source: str, live: dict[Any, Any], row: StoredService | None = None
) -> dict[str, Any]:
    name = _name(settings["host"], settings["port"])
    view = {"service": name, "source": source, "id": row.id if row else None,
            "mode": "https-proxy", "settings": settings, "live": live.get(name),
            "certificate": certificate_view(settings["cert"], settings["key"])}  # fmt: skip
    if row is not None:
        view |= {"updated_by": row.updated_by, "updated_at": row.updated_at}
    return view


def _prune() -> None:
    """Uploaded certificate and key files no stored service names any more go."""
    rows = list_stored(get_store())
    prune({str(r.settings.get(k)) for r in rows for k in ("cert", "key")})


def _reserved() -> set[tuple[str, int]]:
    config = current_app.config.get("TLS_CONFIG_SERVICES") or []
    return {(s["host"], int(s["port"])) for s in config}


def _find(host: object, port: object) -> StoredService | None:
    """The stored service at (host, port), the host normalised as the store keeps it."""
    try:
        address = str(ipaddress.ip_address(str(host)))
    except ValueError:
        return None
    rows = list_stored(get_store())
    return next((s for s in rows if (s.host, s.port) == (address, port)), None)


def apply_service(
    values: Mapping[str, object], actor: str, service_id: int | None = None
) -> dict[str, Any]:
    """Store (mode https-proxy, the default) or remove (mode packet) one service and reload
    the gateway; the result for the page and the API. ServiceFieldError names the field."""
    settings = {k: v for k, v in values.items() if k not in ("mode", "id")}
    mode = values.get("mode", "https-proxy")
    if mode not in MODES:
        raise ServiceFieldError("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    store = get_store()
    existing = None
    if service_id is None:
        existing = _find(settings.get("host"), settings.get("port", 443))
    if mode == "packet":
        target = service_id if service_id is not None else existing.id if existing else None
        if target is None:
            return {"mode": "packet", "service": None, "removed": None,
                    "reload": None}  # fmt: skip
        gone = delete_service(store, target, actor)
        _prune()
        return {"mode": "packet", "removed": gone.name, "service": None,
                "reload": reload_gateway(store, actor)}  # fmt: skip
    if existing is not None:
        service_id = existing.id
    row, info = save_service(store, settings, actor, service_id, _reserved())
    _prune()
    cert = certificate_view(row.settings["cert"], row.settings["key"])
    return {"mode": "https-proxy", "service": asdict(row) | {"name": row.name},
            "certificate": cert, "warnings": [cert["warning"]] if cert.get("warning") else [],
            "not_after": info.not_after.isoformat(),
            "reload": reload_gateway(store, actor)}  # fmt: skip


# -- the page ---------------------------------------------------------------------------------


def _form_values() -> dict[str, object]:
    values: dict[str, object] = {k: from_text(k, request.form.get(k, "")[:4096])
                                 for k in FORM_KEYS if request.form.get(k, "").strip() != ""
                                 or k in ("forwarded", "block_page")}  # fmt: skip
    values["mode"] = request.form.get("mode", "https-proxy")
    return values


def _page(form: Mapping[str, object] | None = None, error: ServiceFieldError | None = None,
          edit: int | None = None) -> Any:  # fmt: skip
    services = services_view()
    if form is None:
        stored = next((s for s in services if s["id"] == edit and edit is not None), None)
        form = {**DEFAULTS, **(stored["settings"] if stored else {})}
    status = 400 if error is not None else 200
    return render_template(
        "https/index.html", services=services, form=form, error=error, edit=edit,
        versions=[v.value for v in TlsVersion], answers=[a.value for a in BlockAnswer],
        modes=MODES, warn_days=CERT_WARN_DAYS,
    ), status  # fmt: skip


@bp.route("/")
@login_required
def index() -> Any:
    edit = request.args.get("edit", "")
    return _page(edit=int(edit) if edit.isdecimal() and len(edit) < 12 else None)


@bp.route("/", methods=["POST"])
@admin_required
def save() -> Any:
    values = _form_values()
    raw_id = request.form.get("service_id", "")
    service_id = int(raw_id) if raw_id.isdecimal() and len(raw_id) < 12 else None
    try:
        uploaded = save_uploads(request.files)  # they replace the paths typed in
    except ServiceFieldError as err:
        return _page({**DEFAULTS, **values}, err, service_id)
    try:
        result = apply_service({**values, **uploaded}, g.user.username, service_id)
    except ServiceFieldError as err:
        discard(uploaded.values())  # nothing of a refused change is kept
        return _page({**DEFAULTS, **values}, err, service_id)
    _flash(result)
    return redirect(url_for("https.index"))


def _flash(result: dict[str, Any]) -> None:
    if result["mode"] == "packet":
        what = (
            f"{result['removed']} back on the packet plane"
            if result["removed"]
            else ("nothing stored: the service stays on the packet plane")
        )
    else:
        what = f"HTTPS service {result['service']['name']} saved"
    for warning in result.get("warnings") or []:
        flash(f"Warning: {warning}")
    rl = result.get("reload")
    if rl is None:
        flash(what)
    elif rl["ok"]:
        flash(f"{what}; gateway reloaded in {rl['seconds']:.2f} s")
        plane = (rl.get("result") or {}).get("tls_proxy") or {}
        if plane.get("error"):
            flash(f"The gateway's HTTPS plane did not change: {plane['error']}")
        for problem in plane.get("problems") or []:
            flash(f"The gateway does not proxy {problem['service']}: {problem['error']}")
    else:
        flash(f"{what}; gateway NOT reloaded: {rl['error']}")


@bp.route("/<int:service_id>/delete", methods=["POST"])
@admin_required
def delete(service_id: int) -> Any:
    try:
        result = apply_service({"mode": "packet"}, g.user.username, service_id)
    except ServiceFieldError as err:
        abort(404, description=str(err))
    _flash(result)
    return redirect(url_for("https.index"))


# -- JSON API (registered on the api blueprint through its endpoint table) --------------------

SERVICE_BODY: Final = {
    "type": "object",
    "required": ["host", "cert", "key"],
    "properties": {
        "mode": {"type": "string", "enum": list(MODES),
                 "description": "packet: remove the stored service (not proxied)"},
        "host": {"type": "string"}, "port": {"type": "integer"},
        "cert": {"type": "string", "description": "absolute path on the gateway (PEM)"},
        "key": {"type": "string", "description": "absolute path on the gateway (PEM)"},
        "client_min": {"type": "string", "enum": [v.value for v in TlsVersion]},
        "server_min": {"type": "string", "enum": [v.value for v in TlsVersion]},
        "server_ciphers": {"type": "string"},
        "blocked": {"type": "string", "enum": [a.value for a in BlockAnswer]},
        "block_page": {"type": "string", "nullable": True},
        "depth": {"type": "integer"}, "max_header_bytes": {"type": "integer"},
        "max_headers": {"type": "integer"}, "forwarded": {"type": "boolean"},
        "processes": {"type": "integer"},
    },
}  # fmt: skip


def _api(fn: Any) -> Any:
    try:
        return fn()
    except ServiceFieldError as err:
        return jsonify(error=str(err), field=err.field), 404 if err.field == "id" else 400


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ServiceFieldError("", "the body must be a JSON object")
    return data


@endpoint("/https/services", "GET", "HTTPS services (configuration file and stored): mode, "
          "certificate, TLS settings, live counters", result={"type": "array"})  # fmt: skip
def api_https_services() -> Any:
    return jsonify(services_view())


@endpoint("/https/services", "PUT", "Create or update an HTTPS service by host and port (mode "
          "packet removes it), then reload the gateway", write=True, body=SERVICE_BODY)  # fmt: skip
def api_https_put() -> Any:
    return _api(lambda: jsonify(apply_service(_json_body(), g.user.username)))


@endpoint("/https/services/{service_id}", "PUT", "Change a stored HTTPS service, then reload "
          "the gateway", write=True, body=SERVICE_BODY)  # fmt: skip
def api_https_update(service_id: int) -> Any:
    return _api(lambda: jsonify(apply_service(_json_body(), g.user.username, service_id)))


@endpoint("/https/services/{service_id}", "DELETE", "Remove a stored HTTPS service (back to "
          "the packet plane), then reload the gateway", write=True)  # fmt: skip
def api_https_delete(service_id: int) -> Any:
    return _api(lambda: jsonify(apply_service({"mode": "packet"}, g.user.username, service_id)))
