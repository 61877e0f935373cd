"""webui/api.py (/api/v1) through Flask's test client: bearer tokens only (cookies are not
enough), what an admin and a viewer may do, and the OpenAPI document against the routes
served. (schemathesis over the same document: test_openapi_conformance.py.)"""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from tests.webui.conftest import EVIL, Auth, api_token, store_of


def test_api_refuses_without_token_and_ignores_cookies(client: FlaskClient, auth: Auth) -> None:
    assert client.get("/api/v1/rules").status_code == 401
    assert (
        client.get("/api/v1/rules", headers={"Authorization": "Bearer vpt_nope"}).status_code == 401
    )
    auth.login()
    assert client.get("/api/v1/rules").status_code == 401  # a session cookie is not enough
    assert client.put("/api/v1/rules/9000100/mode", json={"mode": "off"}).status_code == 401


def test_api_admin_operations(client: FlaskClient, app: Flask) -> None:
    h = api_token(app, "admin")
    rules = client.get("/api/v1/rules?cve=CVE-0000-0001", headers=h).get_json()
    assert [r["id"] for r in rules] == [9000100] and rules[0]["would_block_flows"] == 1
    r = client.put("/api/v1/rules/9000100/mode", headers=h, json={"mode": "detect"})
    assert r.status_code == 200 and r.get_json()["assignment"]["mode"] == "detect"
    assert r.get_json()["reload"]["ok"] is False
    assert (
        client.put("/api/v1/rules/9000100/mode", headers=h, json={"mode": "bogus"}).status_code
        == 400
    )
    gr = client.post("/api/v1/groups", headers=h, json={"name": "web"}).get_json()
    host = client.post(
        "/api/v1/hosts", headers=h, json={"address": "198.18.0.20", "group_id": gr["id"]}
    )
    assert host.status_code == 201
    assert client.get("/api/v1/hosts", headers=h).get_json()[0]["address"] == "198.18.0.20"
    events = client.get("/api/v1/events?address=198.18.0.11", headers=h).get_json()
    assert events["total"] == 1
    ev_id = events["events"][0]["id"]
    detail = client.get(f"/api/v1/events/{ev_id}", headers=h).get_json()
    assert detail["why"]["field"] == "http.uri" and detail["event"]["signature"] == EVIL
    exc = client.post(
        f"/api/v1/events/{ev_id}/exception", headers=h, json={"reason": "ok", "scope": "port"}
    )
    assert exc.status_code == 201 and exc.get_json()["exception"]["port"] == 80
    assert len(client.get("/api/v1/exceptions", headers=h).get_json()) == 1
    assert (
        client.delete(
            f"/api/v1/exceptions/{exc.get_json()['exception']['id']}", headers=h
        ).status_code
        == 200
    )
    audit = client.get("/api/v1/audit", headers=h).get_json()
    assert {"assignment.set", "exception.add", "exception.delete", "host.save"} <= {
        a["action"] for a in audit
    }
    assert client.get("/api/v1/dashboard", headers=h).get_json()["total"] == 3
    assert client.get("/api/v1/status", headers=h).get_json()["reachable"] is False
    assert client.delete(f"/api/v1/hosts/{host.get_json()['id']}", headers=h).status_code == 200
    assert client.delete(f"/api/v1/groups/{gr['id']}", headers=h).status_code == 200
    assert client.post("/api/v1/reload", headers=h).get_json()["ok"] is False


def test_api_viewer_reads_only(client: FlaskClient, app: Flask) -> None:
    h = api_token(app, "viewer")
    assert client.get("/api/v1/rules", headers=h).status_code == 200
    assert (
        client.put("/api/v1/rules/9000100/mode", headers=h, json={"mode": "off"}).status_code == 403
    )
    assert client.post("/api/v1/groups", headers=h, json={"name": "x"}).status_code == 403
    assert client.post("/api/v1/reload", headers=h).status_code == 403


def test_openapi_document_matches_routes(client: FlaskClient, app: Flask) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), "/api/v1" + re.sub(r"\{(\w+)\}", r"<\1>", p))
                  for p, ops in doc["paths"].items() for m in ops}  # fmt: skip
    served = {(m, re.sub(r"<int:(\w+)>", r"<\1>", r.rule)) for r in app.url_map.iter_rules()
              if r.rule.startswith("/api/v1/") and r.endpoint != "api.openapi"
              for m in r.methods - {"HEAD", "OPTIONS"}}  # fmt: skip
    assert documented == served


def test_openapi_every_get_answers_without_server_error(client: FlaskClient, app: Flask) -> None:
    h = api_token(app, "admin")
    doc = client.get("/api/v1/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        for method in ops:
            url = "/api/v1" + re.sub(r"\{\w+\}", "1", path)
            resp = client.open(url, method=method.upper(), headers=h, json={})
            assert resp.status_code < 500, (method, url, resp.status_code)
            assert str(resp.status_code) in ops[method]["responses"] or resp.status_code == 200, (
                method,
                url,
                resp.status_code,
            )


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("POST", "/api/v1/hosts", "not json", "request body must be a JSON object"),
        ("POST", "/api/v1/hosts", [1, 2], "request body must be a JSON object"),
        ("POST", "/api/v1/hosts", {"address": "198.18.0.20", "group_id": "1"},
         "group_id '1': must be an integer"),
        ("POST", "/api/v1/hosts", {"address": "198.18.0.20", "group_id": True},
         "group_id True: must be an integer"),
        ("PUT", "/api/v1/rules/9000100/mode", {"mode": 1}, "mode: required string"),
        ("PUT", "/api/v1/rules/9000100/mode", {"mode": "off", "scope_id": 1.5},
         "scope_id 1.5: must be an integer"),
    ],
)  # fmt: skip
def test_api_input_errors_are_400_naming_the_value(
    client: FlaskClient, app: Flask, method: str, path: str, body: object, reason: str
) -> None:
    h = api_token(app, "admin")
    if isinstance(body, str):
        resp = client.open(path, method=method, headers=h, data=body)
    else:
        resp = client.open(path, method=method, headers=h, json=body)
    assert resp.status_code == 400 and resp.get_json() == {"error": reason}
    with store_of(app) as s:
        assert Hosts(s).list_hosts() == [] and Assignments(s).list_assignments() == []


def test_api_authorization_header_forms(client: FlaskClient, app: Flask) -> None:
    token = api_token(app, "viewer")["Authorization"].split(" ", 1)[1]
    for header in (f"bearer {token}", f"Bearer  {token} "):
        assert client.get("/api/v1/hosts", headers={"Authorization": header}).status_code == 200
    for header in (token, f"Basic {token}", "Bearer", "Bearer "):
        resp = client.get("/api/v1/hosts", headers={"Authorization": header})
        assert resp.status_code == 401 and resp.mimetype == "application/json"
        assert resp.get_json() == {"error": "bearer token required (Authorization: Bearer TOKEN)"}
    resp = client.get("/api/v1/hosts", headers={"Authorization": "Bearer vpt_unknown"})
    assert resp.status_code == 401 and resp.get_json() == {"error": "unknown or revoked token"}
