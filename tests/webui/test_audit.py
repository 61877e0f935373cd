"""webui/audit.py through Flask's test client: changes are listed, escaped, newest first, in
pages of audit.PAGE."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.hosts import Hosts
from tests.webui.conftest import Auth, store_of
from webui.audit import PAGE


def test_audit_page_lists_changes(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    client.post("/hosts/groups", data={"name": "<b>grp</b>", "csrf_token": auth.token()})
    page = client.get("/audit/").get_data(as_text=True)
    assert "group.create" in page and "&lt;b&gt;grp&lt;/b&gt;" in page


def test_audit_pages_newest_first(client: FlaskClient, auth: Auth, app: Flask) -> None:
    with store_of(app) as s:
        before = s.audit_count()
        for i in range(PAGE + 1):
            Hosts(s).create_group(f"g{i:03d}", "", "test")
    total = before + PAGE + 1
    auth.login()
    first = client.get("/audit/").get_data(as_text=True)
    assert f"Audit trail ({total})" in first
    assert first.count('<td class="ts">') == PAGE
    assert first.index("g100") < first.index("g099")  # newest first
    assert "older" in first and "newer" not in first
    second = client.get("/audit/?page=2").get_data(as_text=True)
    assert second.count('<td class="ts">') == total - PAGE
    assert "g000" in second and "g100" not in second and "newer" in second
    assert client.get("/audit/?page=0").get_data(as_text=True).count('<td class="ts">') == PAGE
