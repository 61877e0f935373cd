"""webui/audit.py through Flask's test client: changes are listed, escaped, newest first, in
pages of audit.PAGE."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.webui.conftest import Auth


def test_audit_page_lists_changes(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    client.post("/hosts/groups", data={"name": "<b>grp</b>", "csrf_token": auth.token()})
    page = client.get("/audit/").get_data(as_text=True)
    assert "group.create" in page and "&lt;b&gt;grp&lt;/b&gt;" in page
