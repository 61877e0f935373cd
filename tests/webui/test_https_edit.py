"""The HTTPS page and API edit the proxied services (webui/https_services.py): admins save and
remove, viewers only see; a wrong value is an error naming the field (the key file for a key
of another certificate) and nothing is stored; every change is audited and followed by the
gateway's `reload`; the configuration file's services are shown read-only and cannot be
stored over."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.control.server import ControlServer
from gateway.lab.tlscert import write_server_cert
from gateway.tls.service import TlsService, service_settings
from gateway.tls.stored import list_stored
from tests.webui.conftest import Auth, api_token, store_of


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    write_server_cert(d, "198.18.0.20")
    write_server_cert(d, "198.18.0.21", name="other")
    write_server_cert(d, "198.18.0.20", days=10, name="soon")
    return d


def form(auth: Auth, certs: Path, **kw: str) -> dict[str, str]:
    return {"csrf_token": auth.token_from("/https/"), "mode": "https-proxy",
            "host": "198.18.0.20", "port": "443", "cert": str(certs / "server.pem"),
            "key": str(certs / "server.key"), "client_min": "TLS1_2", "server_min": "TLS1",
            "blocked": "page", "depth": "1048576", "max_header_bytes": "65536",
            "max_headers": "100", "processes": "1", **kw}  # fmt: skip


def stored(app: Flask) -> list[Any]:
    with store_of(app) as s:
        return list_stored(s)


def test_a_key_of_another_certificate_is_a_form_error_naming_the_file(
    app: Flask, client: FlaskClient, auth: Auth, certs: Path
) -> None:
    auth.login()
    r = client.post("/https/", data=form(auth, certs, key=str(certs / "other.key")))
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and 'data-field="key"' in page
    assert f"{certs / 'other.key'}: this key does not belong to the certificate" in page
    assert stored(app) == []
    r = client.post("/https/", data=form(auth, certs, depth="deep"))
    assert r.status_code == 400 and "depth: expected an integer in 0..67108864, got" in r.get_data(
        as_text=True
    )


def test_admin_saves_changes_and_removes_a_service_with_the_gateway_reloaded(
    app: Flask, client: FlaskClient, auth: Auth, certs: Path
) -> None:
    reloads: list[int] = []
    gateway = ControlServer(Path(app.config["CONTROL_SOCKET"]), {
        "reload": lambda _r: reloads.append(1) or {"version": len(reloads) + 1},
        "status": lambda _r: {"tls_proxy": []},
    })  # fmt: skip
    gateway.start()
    try:
        auth.login()
        r = client.post(
            "/https/",
            data=form(
                auth,
                certs,
                cert=str(certs / "soon.pem"),
                key=str(certs / "soon.key"),
                forwarded="on",
            ),
        )
        assert r.status_code == 302 and reloads == [1]
        page = client.get("/https/").get_data(as_text=True)
        assert "HTTPS service 198.18.0.20:443 saved; gateway reloaded" in page
        assert "Warning: certificate expires in 9 days" in page  # within 30 days
        assert "CN=vpatch-lab 198.18.0.20" in page and "X-Forwarded-For" in page
        (row,) = stored(app)
        assert row.settings["forwarded"] is True and row.updated_by == "admin"
        client.post("/https/", data=form(auth, certs, service_id=str(row.id), mode="https-proxy",
                                         client_min="TLS1_3"))  # fmt: skip
        (row,) = stored(app)
        assert row.settings["client_min"] == "TLS1_3" and row.settings["forwarded"] is False
        csrf = auth.token_from("/https/")
        r = client.post(f"/https/{row.id}/delete", data={"csrf_token": csrf})
        assert r.status_code == 302 and stored(app) == [] and reloads == [1, 1, 1]
        assert "198.18.0.20:443 back on the packet plane" in client.get("/https/").get_data(
            as_text=True
        )
    finally:
        gateway.stop()
    with store_of(app) as s:
        actions = [e.action for e in s.list_audit(10)]
    assert actions.count("tls_service.save") == 2 and "tls_service.delete" in actions


def test_a_viewer_sees_and_cannot_change(
    app: Flask, client: FlaskClient, auth: Auth, certs: Path
) -> None:
    auth.login("viewer", "viewer-password-1")
    page = client.get("/https/").get_data(as_text=True)
    assert "No HTTPS service is proxied" in page and 'id="https-save"' not in page
    assert client.post("/https/", data=form(auth, certs)).status_code == 403
    headers = api_token(app, "viewer")
    assert client.put("/api/v1/https/services", json={}, headers=headers).status_code == 403
    assert stored(app) == []


def test_the_api_edits_services_and_names_the_field_of_an_error(
    app: Flask, client: FlaskClient, certs: Path
) -> None:
    headers = api_token(app, "admin")
    body = {"host": "198.18.0.20", "cert": str(certs / "server.pem"),
            "key": str(certs / "other.key")}  # fmt: skip
    r = client.put("/api/v1/https/services", json=body, headers=headers)
    assert r.status_code == 400 and r.get_json()["field"] == "key"
    assert "other.key: this key does not belong" in r.get_json()["error"]
    r = client.put("/api/v1/https/services", json={**body, "key": str(certs / "server.key"),
                                                   "processes": "2"}, headers=headers)  # fmt: skip
    assert r.status_code == 400 and r.get_json()["field"] == "processes"
    body["key"] = str(certs / "server.key")
    r = client.put("/api/v1/https/services", json=body, headers=headers)
    assert r.status_code == 200, r.get_json()
    created = r.get_json()
    assert created["service"]["name"] == "198.18.0.20:443"
    assert created["reload"]["ok"] is False  # no gateway runs here: said, not hidden
    # the same host and port again: an update of that service, not a second one
    r = client.put("/api/v1/https/services", json={**body, "server_min": "SSL3"}, headers=headers)
    assert r.status_code == 200 and r.get_json()["service"]["id"] == created["service"]["id"]
    (listed,) = client.get("/api/v1/https/services", headers=headers).get_json()
    assert listed["source"] == "policy" and listed["settings"]["server_min"] == "SSL3"
    assert listed["certificate"]["subject"] == "CN=vpatch-lab 198.18.0.20"
    assert listed["certificate"]["warning"] == "" and listed["mode"] == "https-proxy"
    r = client.put("/api/v1/https/services", json={**body, "mode": "packet"}, headers=headers)
    assert r.get_json()["removed"] == "198.18.0.20:443" and stored(app) == []
    r = client.delete(f"/api/v1/https/services/{created['service']['id']}", headers=headers)
    assert r.status_code == 404 and r.get_json()["field"] == "id"


def test_configuration_file_services_are_read_only(
    app: Flask, client: FlaskClient, auth: Auth, certs: Path
) -> None:
    mine = TlsService("198.18.0.20", cert=certs / "server.pem", key=certs / "server.key")
    app.config["TLS_CONFIG_SERVICES"] = [service_settings(mine)]
    auth.login()
    page = client.get("/https/").get_data(as_text=True)
    assert "the configuration file (read-only)" in page and "/delete" not in page
    r = client.post("/https/", data=form(auth, certs))
    assert r.status_code == 400 and "proxied by the configuration file" in r.get_data(as_text=True)
    assert stored(app) == []


def test_uploaded_pem_files_are_kept_0600_and_go_with_their_service(
    app: Flask, client: FlaskClient, auth: Auth, certs: Path
) -> None:
    uploads = Path(app.config["POLICY_DB"]).parent / "tls-uploads"
    auth.login()

    def upload(key: str) -> Any:
        data: dict[str, Any] = form(auth, certs, cert="", key="")
        data["cert_file"] = (io.BytesIO((certs / "server.pem").read_bytes()), "iis6.pem")
        data["key_file"] = (io.BytesIO((certs / key).read_bytes()), "iis6.key")
        return client.post("/https/", data=data, content_type="multipart/form-data")

    r = upload("other.key")  # refused: the uploaded files are not kept
    assert r.status_code == 400 and "key: " in r.get_data(as_text=True)
    assert stored(app) == [] and list(uploads.iterdir()) == []
    assert upload("server.key").status_code == 302
    (row,) = stored(app)
    cert, key = Path(row.settings["cert"]), Path(row.settings["key"])
    assert cert.parent == uploads and key.parent == uploads
    assert key.stat().st_mode & 0o777 == 0o600 and cert.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes() == (certs / "server.key").read_bytes()
    assert upload("server.key").status_code == 302  # a new upload: new files, old ones gone
    (row,) = stored(app)
    assert sorted(uploads.iterdir()) == sorted(
        [Path(row.settings["cert"]), Path(row.settings["key"])]
    )
    assert not key.exists()
    client.post(f"/https/{row.id}/delete", data={"csrf_token": auth.token_from("/https/")})
    assert list(uploads.iterdir()) == []
