"""Hostile input over the whole app (issue 15, finding 9): no request may end in a server error.

The routes come from `app.url_map` and the parameters from the app itself: a first pass calls
every route with harmless values through a request class whose `args`/`form` record the names
the views read; then each (route, parameter) gets every hostile value (non-ASCII digits, huge
and negative integers, NUL, lone surrogates sent as invalid UTF-8, very long strings, floats).
Every path id gets 2**63 and 2**70. Every JSON body of the API gets a lone surrogate in each
string field. The answer must be < 500, and a 400 must name the field that was refused (JSON
for the API, an HTML page for the UI). Plus the specific inputs the issue found."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.routing import IntegerConverter, Rule

from tests.webui.conftest import Auth, api_token
from webui.api import ENDPOINTS

READ: set[str] = set()  # parameter names the views looked up (first pass)


class RecordingArgs(ImmutableMultiDict[str, str]):
    """request.args / request.form that remember which names a view asked for."""

    def get(self, key: str, default: Any = None, type: Any = None) -> Any:
        READ.add(key)
        return super().get(key, default, type)

    def __getitem__(self, key: str) -> str:
        READ.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        READ.add(str(key))
        return super().__contains__(key)

    def getlist(self, key: str, type: Any = None) -> list[Any]:
        READ.add(key)
        return super().getlist(key, type)

    def to_dict(self, flat: bool = True) -> dict[str, Any]:  # every key counts as read
        READ.update(self.keys())
        return super().to_dict(flat)


HOSTILE = [
    "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
    "\u0663",  # Arabic-Indic three: int() accepts it
    "\uff11",  # fullwidth one
    str(2**63),
    str(2**70),
    "9" * 400,
    "-1",
    str(-(2**63) - 1),
    "0",
    "1e309",
    "nan",
    "0x10",
    " 7 ",
    "\x00",
    "%ED%A0%80",  # a lone surrogate's UTF-8 bytes (invalid UTF-8), sent raw in the query
    "a" * 20000,
    "host:\u00b2",
    "../../etc/passwd",
]
SKIP_POST = {
    "/auth/login",  # throttling and its delays (another finding's area)
    "/auth/logout",
    "/hosts/<int:host_id>/scan",  # would probe a host's address
    "/alerts/<int:channel_id>/test",  # would send to a configured receiver
}
BIG_IDS = (2**63, 2**70)


@pytest.fixture(autouse=True)
def _server_errors_as_responses(app: Flask) -> None:
    """A view's exception becomes the 500 a user would get (collected, not raised)."""
    app.config["PROPAGATE_EXCEPTIONS"] = False


@pytest.fixture
def recording(app: Flask) -> Iterator[Flask]:
    base = app.request_class
    app.request_class = type(  # type: ignore[assignment]
        "RecordingRequest", (base,), {"parameter_storage_class": RecordingArgs}
    )
    yield app
    app.request_class = base


def _harmless(rule: Rule) -> dict[str, Any]:
    return {n: (1 if isinstance(c, IntegerConverter) else "csv")
            for n, c in rule._converters.items()}  # fmt: skip


def _path(rule: Rule, values: dict[str, Any]) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)


def _routes(app: Flask, method: str) -> list[Rule]:
    return [r for r in app.url_map.iter_rules()
            if method in (r.methods or ()) and not r.rule.startswith("/static")]  # fmt: skip


def _call(client: FlaskClient, method: str, url: str, headers: dict[str, str],
          query: str = "", form: dict[str, str] | None = None) -> Any:  # fmt: skip
    full = url + ("?" + query if query else "")
    if method == "GET":
        return client.get(full, headers=headers)
    return client.open(full, method=method, headers=headers, data=form or {})


def _check(resp: Any, where: str, field: str, problems: list[str]) -> None:
    """Note in `problems` a server error, or a 400 that does not name `field` ("" : any 400)."""
    text = resp.get_data(as_text=True)
    if resp.status_code >= 500:
        problems.append(f"{where}: {resp.status_code} {text[:200]!r}")
    elif resp.status_code == 400 and field not in text:
        problems.append(f"{where}: 400 without naming {field!r}: {text[-300:]!r}")


def _quote(value: str) -> str:
    from urllib.parse import quote

    return value if value.startswith("%") else quote(value, safe="")


def _login(auth: Auth, app: Flask) -> tuple[dict[str, str], dict[str, str]]:
    """(headers for the HTML UI, headers for the API): a session as admin, an admin token."""
    auth.login()
    return {"X-CSRF-Token": auth.token()}, api_token(app, "admin")


def test_every_get_route_and_query_parameter(
    recording: Flask, client: FlaskClient, auth: Auth
) -> None:
    html_h, api_h = _login(auth, recording)
    routes = _routes(recording, "GET")
    assert len(routes) >= 25
    problems: list[str] = []
    read_somewhere = set()
    for rule in routes:
        headers = api_h if rule.rule.startswith("/api/") else html_h
        url = _path(rule, _harmless(rule))
        READ.clear()
        first = _call(client, "GET", url, headers)
        _check(first, f"GET {url}", "", problems)
        names = READ - {"csrf_token"}
        read_somewhere |= names
        for name in sorted(names):
            for value in HOSTILE:
                resp = _call(client, "GET", url, headers, f"{name}={_quote(value)}")
                # a route that answered the harmless call must name the field it refuses
                field = name if first.status_code < 400 else ""
                _check(resp, f"GET {url}?{name}={value[:40]!r}", field, problems)
    assert {"page", "per_page", "hours", "rule", "limit", "offset", "since"} <= read_somewhere
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_every_path_id_beyond_sqlite_integers(
    app: Flask, client: FlaskClient, auth: Auth, method: str
) -> None:
    html_h, api_h = _login(auth, app)
    problems: list[str] = []
    for rule in _routes(app, method):
        ints = [n for n, c in rule._converters.items() if isinstance(c, IntegerConverter)]
        if not ints or rule.rule in SKIP_POST:
            continue
        headers = api_h if rule.rule.startswith("/api/") else html_h
        for name in ints:
            for big in BIG_IDS:
                url = _path(rule, _harmless(rule) | {name: big})
                resp = _call(client, method, url, headers)
                _check(resp, f"{method} {url}", name, problems)
                if resp.status_code != 400:
                    problems.append(f"{method} {url}: {resp.status_code}, not 400")
    assert not problems, "\n".join(problems)


def test_every_form_field_of_the_html_ui(recording: Flask, client: FlaskClient, auth: Auth) -> None:
    html_h, _ = _login(auth, recording)
    problems: list[str] = []
    for rule in _routes(recording, "POST"):
        if rule.rule.startswith("/api/") or rule.rule in SKIP_POST:
            continue
        url = _path(rule, _harmless(rule))
        READ.clear()
        _check(_call(client, "POST", url, html_h, form={}), f"POST {url}", "", problems)
        for name in sorted(READ - {"csrf_token"}):
            for value in HOSTILE:
                if value.startswith("%"):
                    continue  # a form field is text already (werkzeug replaced bad UTF-8)
                resp = _call(client, "POST", url, html_h, form={name: value})
                _check(resp, f"POST {url} {name}={value[:40]!r}", "", problems)
    assert not problems, "\n".join(problems)


def _surrogate_bodies(schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, JSON text) with a lone surrogate in each string property of `schema`."""
    props = schema.get("properties", {})
    base = {k: ("x" if p.get("type") == "string" else 1) for k, p in props.items()
            if p.get("type") in ("string", "integer")}  # fmt: skip
    for key, prop in props.items():
        if prop.get("type", "string") == "string":
            yield key, json.dumps(base | {key: "a\ud800b"})
    yield "body", '{"\\udfff": 1}'  # in a key, too


def test_json_bodies_with_lone_surrogates(app: Flask, client: FlaskClient) -> None:
    h = api_token(app, "admin") | {"Content-Type": "application/json"}
    problems: list[str] = []
    tried = 0
    for ep in ENDPOINTS:
        if ep["body"] is None or ep["path"] in ("/alerts/{channel_id}/test",):
            continue
        url = "/api/v1" + re.sub(r"\{\w+\}", "1", ep["path"])
        for field, text in _surrogate_bodies(ep["body"]):
            resp = client.open(url, method=ep["method"], headers=h, data=text)
            tried += 1
            _check(resp, f"{ep['method']} {url} {field}", "", problems)
            if resp.status_code == 400 and not resp.is_json:
                problems.append(f"{ep['method']} {url} {field}: 400 not in JSON")
    assert tried >= 20
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/events/?rule=%C2%B2", "rule"),
        ("/api/v1/events?rule=%C2%B2", "rule"),
        (f"/events/?page={2**63}", "page"),
        (f"/api/v1/events?page={2**63}", "page"),
        (f"/audit/?page={2**63}", "page"),
        (f"/api/v1/audit?offset={2**63}", "offset"),
        (f"/events/{2**70}", "event_id"),
        (f"/api/v1/events/{2**70}", "event_id"),
        (f"/hosts/{2**70}", "host_id"),
        ("/dashboard/data?hours=%C2%B2", "hours"),
    ],
)  # fmt: skip
def test_issue_inputs_are_400_naming_the_field(
    app: Flask, client: FlaskClient, auth: Auth, url: str, field: str
) -> None:
    html_h, api_h = _login(auth, app)
    api = url.startswith("/api/")
    resp = client.get(url, headers=api_h if api else html_h)
    assert resp.status_code == 400, (url, resp.status_code)
    if api:
        assert field in resp.get_json()["error"]
    else:
        assert resp.mimetype == "text/html" and field in resp.get_data(as_text=True)


def test_a_non_json_eve_row_does_not_break_the_rules_page(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    import sqlite3

    conn = sqlite3.connect(app.config["EVENTS_DB"])  # a row no vpatch writer would make
    conn.execute(
        "INSERT INTO events (timestamp, event_type, signature_id, action, eve) "
        "VALUES ('2030-01-01T00:00:00+00:00', 'alert', 9000100, 'allowed', '{not json')"
    )
    conn.commit()
    conn.close()
    html_h, api_h = _login(auth, app)
    assert client.get("/rules/", headers=html_h).status_code == 200
    assert client.get("/api/v1/rules", headers=api_h).status_code == 200
    assert client.get("/events/", headers=html_h).status_code == 200
