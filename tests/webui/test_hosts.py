"""webui/hosts.py through Flask's test client: hosts and groups, and the per-group rule modes
shown on the hosts page. (The host lifecycle pages are in test_lifecycle.py.)"""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tests.webui.conftest import Auth


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
