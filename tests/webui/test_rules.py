"""webui/rules.py through Flask's test client: a rule's mode set per scope is stored, audited and
followed by a reload (whose failure is said), the filters, ports or "any" on the page and in
the API; and `parse_scope` on its own."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from tests.webui.conftest import Auth, api_token, store_of
from webui.inputs import InputError
from webui.rules import parse_scope


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
        assert [(a.rule_id, a.scope, a.mode) for a in Assignments(s).list_assignments()] == [
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


def test_rules_page_lists_the_events_the_gateway_raises_itself(
    client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    page = client.get("/rules/").get_data(as_text=True)
    builtin = page[page.index('id="builtin"') :]
    assert 'id="builtin-9300018"' in builtin and "limits.field (per server: hosts:)" in builtin
    assert 'id="builtin-9300030"' in builtin and "client_min" in builtin
    assert 'id="rule-9300018"' not in page  # not a rule: no mode to set


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


@pytest.mark.parametrize(
    ("value", "scope"),
    [("global", ("global", None)), ("host:7", ("host", 7)), ("group:12", ("group", 12))],
)
def test_parse_scope(value: str, scope: tuple[str, int | None]) -> None:
    assert parse_scope(value) == scope


@pytest.mark.parametrize("value", ["", "Global", "host", "host:", "host:x", "group:-1", "zone:1"])
def test_parse_scope_names_a_bad_value(value: str) -> None:
    with pytest.raises(InputError, match=re.escape(f"scope {value!r}: expected global")):
        parse_scope(value)


def test_host_scope_and_inherit(client: FlaskClient, auth: Auth, app: Flask) -> None:
    with store_of(app) as s:
        host = Hosts(s).save_host("198.18.0.20", "test")
    auth.login()
    form = {"mode": "off", "scope": f"host:{host.id}", "csrf_token": auth.token()}
    assert client.post("/rules/9000100/mode", data=form).status_code == 302
    with store_of(app) as s:
        assert [(a.scope, a.scope_id, a.mode) for a in Assignments(s).list_assignments()] == [
            ("host", host.id, "off")
        ]
    page = client.get("/rules/?q=9000100").get_data(as_text=True)
    assert 'id="rule-9000100"' in page and "198.18.0.20" in page
    form["mode"] = "inherit"  # removes the host's own mode
    assert client.post("/rules/9000100/mode", data=form).status_code == 302
    with store_of(app) as s:
        assert Assignments(s).list_assignments() == []
    form["scope"] = "zone:1"
    resp = client.post("/rules/9000100/mode", data=form)
    assert resp.status_code == 400 and "zone:1" in resp.get_data(as_text=True)
