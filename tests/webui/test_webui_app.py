"""webui/__init__.py, `create_app`: the session secret is generated 0600 once and kept, the
session cookie's flags. Each blueprint's routes are tested in the file named after its module
(test_security.py, test_auth.py, test_rules.py, test_events.py, test_hosts.py, test_audit.py,
test_api.py, ...)."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from tests.webui.conftest import Auth


def test_session_cookie_flags(app: Flask, auth: Auth) -> None:
    app.config["SESSION_COOKIE_SECURE"] = True
    resp = auth.login()
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("vpatch_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie


def test_secret_key_generated_0600_and_stable(tmp_path: Any) -> None:

    from webui import create_app

    cfg = {"POLICY_DB": str(tmp_path / "p.db")}
    a = create_app(cfg)
    b = create_app(cfg)
    assert a.config["SECRET_KEY"] == b.config["SECRET_KEY"] and len(a.config["SECRET_KEY"]) == 32
    assert os.stat(tmp_path / "ui-secret.key").st_mode & 0o777 == 0o600
