"""webui/rules.py through Flask's test client: a rule's mode set per scope is stored, audited and
followed by a reload (whose failure is said), the filters, ports or "any" on the page and in
the API; and `parse_scope` on its own."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from tests.webui.conftest import Auth, api_token, store_of


def test_rule_mode_change_is_stored_audited_and_reload_reported(
    client: FlaskClient, auth: Auth, app: Flask
) -> None:
    auth.login()
    resp = client.post(
        "/rules/9000100/mode",
        data={"mode": "detect", "scope": "global", "csrf_token": auth.token()},
    )
    assert resp.status_code == 302
    with store_of(app) as s:
        assert [(a.rule_id, a.scope, a.mode) for a in s.list_assignments()] == [
            (9000100, "global", "detect")
        ]
        actions = [e.action for e in s.list_audit()]
        assert "assignment.set" in actions and "gateway.reload" in actions
        entry = next(e for e in s.list_audit() if e.action == "assignment.set")
        assert entry.actor == "admin" and entry.detail == {"before": None, "after": "detect"}
    page = client.get("/rules/").get_data(as_text=True)
    assert "gateway NOT reloaded" in page  # no gateway runs in this test: said, not hidden
    assert (
        client.post("/rules/1/mode", data={"mode": "off", "csrf_token": auth.token()}).status_code
        == 400
    )


def test_rules_filters(client: FlaskClient, auth: Auth) -> None:
    auth.login()
    page = client.get("/rules/?cve=CVE-2017-0144").get_data(as_text=True)
    assert 'id="rule-9001001"' in page and 'id="rule-9000100"' not in page
    page = client.get("/rules/?protocol=udp").get_data(as_text=True)
    assert 'id="rule-9000100"' not in page
    page = client.get("/rules/?cve=CVE-0000-0001").get_data(as_text=True)
    assert 'id="rule-9000100"' in page and "1 flows" in page  # the would_block event


def test_rules_page_and_api_show_ports_or_any(app: Flask, client: FlaskClient, auth: Auth) -> None:
    from gateway.policy.appcontrol import APP_CONTROL_RULES  # holds a `ports: any` rule

    app.config["RULE_PATHS"] = [*app.config["RULE_PATHS"], str(APP_CONTROL_RULES)]
    auth.login()
    page = client.get("/rules/").get_data(as_text=True)
    rows = dict(re.findall(r'<tr id="rule-(\d+)">(.*?)</tr>', page, re.DOTALL))
    assert "<td>tcp/any</td>" in rows["9200031"]  # app control: HTTP on any port
    assert re.search(r"<td>tcp/\d+(,\d+)*</td>", rows["9001001"]), rows["9001001"]
    api = {
        r["id"]: r for r in client.get("/api/v1/rules", headers=api_token(app, "admin")).get_json()
    }
    assert (api[9200031]["ports"], api[9200031]["ports_text"]) == ("any", "any")
    assert api[9001001]["ports_text"] == ",".join(map(str, api[9001001]["ports"]))
