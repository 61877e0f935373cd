"""The UI and the API show the HTTPS plane's services from the gateway's `status` (read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from gateway.control.server import ControlServer
from tests.webui.conftest import Auth, api_token

SERVICE = {
    "service": "198.18.0.20:443", "host": "198.18.0.20", "port": 443, "mode": "https-proxy",
    "certificate": {"subject": "CN=vpatch-lab 198.18.0.20", "issuer": "CN=vpatch-lab",
                    "not_before": "2026-12-06T00:00:00+00:00",
                    "not_after": "2036-12-04T00:00:00+00:00"},
    "tls": {"client_min": "TLS1_2", "server_min": "TLS1", "server_ciphers": "AES256-SHA"},
    "blocked": "page", "depth": 1048576, "forwarded": False, "inspecting": False,
    "bypassed": True, "proxies": [],
    "counters": {"requests": 7, "blocked": 3, "events": 4, "tls_refused": 1, "header_limits": 0,
                 "errors": 0},
}  # fmt: skip


def _gateway(app: Flask) -> ControlServer:
    status: dict[str, Any] = {"fail_policy": "open", "queues": {}, "tls_proxy": [SERVICE]}
    server = ControlServer(Path(app.config["CONTROL_SOCKET"]), {"status": lambda _r: status})
    server.start()
    return server


def test_api_lists_the_proxied_services(app: Flask, client: FlaskClient) -> None:
    server = _gateway(app)
    try:
        headers = api_token(app, "viewer")
        services = client.get("/api/v1/https", headers=headers).get_json()
        assert services == [SERVICE]
        assert client.get("/api/v1/status", headers=headers).get_json()["tls_proxy"] == [SERVICE]
    finally:
        server.stop()


def test_dashboard_shows_mode_certificate_and_tls_settings(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    server = _gateway(app)
    try:
        auth.login()
        page = client.get("/").get_data(as_text=True)
    finally:
        server.stop()
    assert "HTTPS proxied services" in page
    for text in ("198.18.0.20:443", "https-proxy", "CN=vpatch-lab 198.18.0.20",
                 "2036-12-04T00:00:00+00:00", "TLS1_2", "AES256-SHA",
                 "passes uninspected (fail-open)", "7 / 3 / 4 / 1"):  # fmt: skip
        assert text in page, text
