"""webui/hosts.py through Flask's test client: hosts and groups, and the per-group rule modes
shown on the hosts page. (The host lifecycle pages are in test_lifecycle.py.)"""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.hosts import Hosts
from tests.webui.conftest import Auth, store_of


def test_hosts_and_groups(client: FlaskClient, auth: Auth, app: Flask) -> None:
    auth.login()
    client.post("/hosts/groups", data={"name": "web", "csrf_token": auth.token()})
    client.post(
        "/hosts/",
        data={"address": "198.18.0.20", "name": "srv", "group_id": "1", "csrf_token": auth.token()},
    )
    assert (
        client.post("/hosts/", data={"address": "nope", "csrf_token": auth.token()}).status_code
        == 400
    )
    client.post(
        "/rules/9000100/mode", data={"mode": "off", "scope": "group:1", "csrf_token": auth.token()}
    )
    page = client.get("/hosts/").get_data(as_text=True)
    assert "198.18.0.20" in page and "rule 9000100 (group): off" in page


def test_delete_host_and_group_and_errors(client: FlaskClient, auth: Auth, app: Flask) -> None:
    with store_of(app) as s:
        group = Hosts(s).create_group("db", "", "test")
        host = Hosts(s).save_host("198.18.0.21", "test", group_id=group.id)
    auth.login()
    token = auth.token()
    assert client.post(f"/hosts/{host.id}/delete", data={"csrf_token": token}).status_code == 302
    assert (
        client.post(f"/hosts/groups/{group.id}/delete", data={"csrf_token": token}).status_code
        == 302
    )
    with store_of(app) as s:
        assert Hosts(s).list_hosts() == [] and Hosts(s).list_groups() == []
        actions = [e.action for e in s.list_audit() if e.action != "gateway.reload"]
    assert actions[:2] == ["group.delete", "host.delete"]  # newest first
    for path in (f"/hosts/{host.id}/delete", f"/hosts/groups/{group.id}/delete"):
        assert client.post(path, data={"csrf_token": token}).status_code == 404
    assert client.post("/hosts/groups", data={"name": "", "csrf_token": token}).status_code == 400
    assert "198.18.0.21" not in client.get("/hosts/").get_data(as_text=True)
