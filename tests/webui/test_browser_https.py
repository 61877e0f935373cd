"""The HTTPS page's form in a real browser (headless Chromium through chromedriver, as
tests/webui/test_browser_ui.py, against `vpatch ui` with no gateway): a key file of another
certificate is refused with an error naming the field and the file, nothing is stored; the
right key saves the service, listed with its certificate's subject and expiry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.lab.tlscert import write_server_cert
from gateway.policy.store import Store
from gateway.tls.stored import list_stored
from tests.webui.test_browser import browser
from tests.webui.test_browser_ui import ADMIN_PW, Browser, ui

__all__ = ["browser", "ui"]  # the fixtures, imported for this test

pytestmark = pytest.mark.timeout(240)


def test_a_wrong_key_file_is_refused_in_the_form(ui: str, browser: Any, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    write_server_cert(certs, "198.18.0.20")
    write_server_cert(certs, "198.18.0.21", name="other")
    b = Browser(browser, ui)
    b.login("admin", ADMIN_PW)
    b.go("/https/")
    assert "No HTTPS service is proxied" in b.css("#https-services").text
    button = b.fill(b.css("#https-save"), host="198.18.0.20", cert=str(certs / "server.pem"),
                    key=str(certs / "other.key"))  # fmt: skip
    error = b.submit(button)
    assert f"key: {certs / 'other.key'}: this key does not belong to the certificate" in error
    assert b.css("#https-error").get_attribute("data-field") == "key"
    with Store(tmp_path / "vpatch.db") as store:
        assert list_stored(store) == []
    # the form kept what was typed: only the key needs correcting
    assert b.css("#https-save input[name=cert]").get_attribute("value") == str(certs / "server.pem")
    flash = b.submit(b.fill(b.css("#https-save"), key=str(certs / "server.key")))
    assert "HTTPS service 198.18.0.20:443 saved" in flash
    assert "gateway NOT reloaded" in flash  # no gateway here: said, not hidden
    row = b.css("#https-services").text
    assert "CN=vpatch-lab 198.18.0.20" in row and "TLS1_2 and up" in row
    b.shot("https-desktop")
    assert b.csp_violations() == []
