"""An exception from an event (issue 15, finding 5), through Flask's test client: the form only
leads to a page that shows the exact scope (host, rule, port, the normalised path) and nothing is
saved until that page is sent back; the attacker's request target is literal (an exploit sent
to `/*` gives an exception for the path `/*`, never for the whole host), normalised the way the
engine compares it, with its query dropped; a prefix exists only when the admin chooses one.
Each stored exception is compiled as the gateway compiles it and asked what it covers."""

from __future__ import annotations

import html
import sqlite3
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from gateway.match.explain import MAX_TARGET
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.exceptions import PolicyException, PolicyExceptions
from tests.webui.conftest import Auth, api_token, make_event, store_of, write_events
from tests.webui.exception_review import add_exception, hidden_fields, review, save_reviewed

SERVER, RULE = "198.18.0.20", 9000100


def event_with_target(app: Flask, target: bytes) -> int:
    """A new blocked event whose request target (EVE http.url) is `target`, as the gateway
    records it (escaped); its id."""
    write_events(Path(app.config["EVENTS_DB"]), [(make_event(flow_id=4242, http_url=target), {})])
    conn = sqlite3.connect(app.config["EVENTS_DB"])
    (event_id,) = conn.execute("SELECT MAX(id) FROM events").fetchone()
    conn.close()
    return int(event_id)


def stored(app: Flask) -> list[PolicyException]:
    with store_of(app) as s:
        return PolicyExceptions(s).list_exceptions()


def covers(exc: PolicyException, uri: str) -> bool:
    """Whether the gateway's compiled form of `exc` covers a firing of RULE on SERVER:80 whose
    normalised request URI is `uri`."""
    return CompiledPolicy(exceptions=[exc]).exception(SERVER, RULE, 80, uri, 0.0) is not None


def test_an_exploit_sent_to_star_is_excepted_for_that_path_only(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    ev = event_with_target(app, b"/*")
    page = review(client, auth.token(), ev, scope="uri")
    text = html.unescape(page.get_data(as_text=True))
    assert page.status_code == 200 and stored(app) == []  # shown, not saved
    assert "exactly /*" in text.replace('<code class="uri">', "").replace("</code>", "")
    assert SERVER in text and str(RULE) in text and "any port" in text
    assert save_reviewed(client, ev, page.get_data(as_text=True), reason="fp").status_code == 302
    (exc,) = stored(app)
    assert covers(exc, "/*")
    assert not covers(exc, "/") and not covers(exc, "/index.html") and not covers(exc, "/x/*")


def test_the_path_is_normalised_as_the_engine_compares_it(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    target = b"/Scripts/..%255c../WINNT/./system32/CMD.EXE?/c+dir"
    ev = event_with_target(app, target)
    page = review(client, auth.token(), ev, scope="uri")
    assert "/winnt/system32/cmd.exe" in page.get_data(as_text=True)
    assert "?/c+dir" not in html.unescape(page.get_data(as_text=True))
    assert save_reviewed(client, ev, page.get_data(as_text=True), reason="fp").status_code == 302
    (exc,) = stored(app)
    assert covers(exc, "/winnt/system32/cmd.exe?/c+dir") and covers(exc, "/winnt/system32/cmd.exe")
    assert not covers(exc, "/winnt/system32/cmd.exe.bak")


def test_control_bytes_survive_the_review_page(app: Flask, client: FlaskClient, auth: Auth) -> None:
    auth.login()
    ev = event_with_target(app, b"/a\x00b\\c\xe9")
    assert add_exception(client, auth.token(), ev, "fp", scope="uri").status_code == 302
    (exc,) = stored(app)
    assert covers(exc, "/a\x00b/c\xe9")  # backslash as slash, like the engine


def test_nothing_is_saved_without_the_review_or_for_another_scope(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    ev = event_with_target(app, b"/app/page.asp")
    page = review(client, auth.token(), ev, scope="uri", reason="fp").get_data(as_text=True)
    # the old one-click form (no confirmation) shows the page again and saves nothing
    assert review(client, auth.token(), ev, scope="uri", reason="fp").status_code == 200
    # a confirmation for the exact path does not save a prefix
    fields = hidden_fields(page) | {"match": "prefix", "reason": "fp"}
    again = client.post(f"/events/{ev}/exception", data=fields)
    assert again.status_code == 200 and "every URI starting with" in again.get_data(as_text=True)
    assert stored(app) == []


def test_a_prefix_only_when_the_admin_chooses_it(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    ev = event_with_target(app, b"/app/page.asp")
    resp = add_exception(client, auth.token(), ev, "fp", scope="uri", uri="/app/", match="prefix")
    assert resp.status_code == 302
    (exc,) = stored(app)
    assert covers(exc, "/app/other.asp") and not covers(exc, "/application")


def test_a_target_the_gateway_kept_in_part_is_refused(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    auth.login()
    ev = event_with_target(app, b"/" + b"a" * MAX_TARGET)
    resp = review(client, auth.token(), ev, scope="uri")
    assert resp.status_code == 400 and "type the URI" in resp.get_data(as_text=True)


def test_the_api_takes_the_same_literal_normalised_scope(app: Flask, client: FlaskClient) -> None:
    ev = event_with_target(app, b"/*?q=1")
    h = api_token(app, "admin")
    resp = client.post(f"/api/v1/events/{ev}/exception", headers=h,
                       json={"scope": "uri", "reason": "fp"})  # fmt: skip
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["scope"]["uri"] == {"path": "/*", "prefix": False}
    (exc,) = stored(app)
    assert covers(exc, "/*") and not covers(exc, "/other")
    listed = client.get("/api/v1/exceptions", headers=h).get_json()
    assert listed[0]["uri_scope"] == {"path": "/*", "prefix": False}
