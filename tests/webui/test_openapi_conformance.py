"""The JSON API against its own OpenAPI document (/api/v1/openapi.json), with schemathesis:
a live app served by waitress on 127.0.0.1 (a fresh policy store, event store and rules), an
admin bearer token, every operation called with generated valid and invalid inputs, and no
response may be a server error (5xx); each response must also be documented and match its
schema. The alert "send test" operation is left out on purpose: it would send traffic to
whatever host a generated channel names (tests/webui/test_alerts.py covers it on loopback); so
is revoking a token (it could revoke the test's own)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from tests.webui.conftest import REPO, make_event, write_events
from webui import create_app

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402 (skipped, not failed, if missing)
from schemathesis.specs.openapi.checks import (  # noqa: E402 (after importorskip, as above)
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 8  # per operation; keeps the run around half a minute


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from waitress.server import create_server

    tmp = tmp_path_factory.mktemp("api")
    app = create_app({
        "POLICY_DB": str(tmp / "vpatch.db"), "EVENTS_DB": str(tmp / "events.db"),
        "CONTROL_SOCKET": str(tmp / "control.sock"), "RULE_PATHS": [str(REPO / "rules")],
        "SESSION_COOKIE_SECURE": False, "RELOAD_TIMEOUT": 0.5,
    })  # fmt: skip
    with Store(tmp / "vpatch.db") as store:
        accounts, hosts = Accounts(store), Hosts(store)
        accounts.create_user("admin", "admin-password-1", "admin", "test")
        token = accounts.create_token("admin", "schemathesis", "test")
        hosts.save_host("198.18.0.20", "test")
        hosts.create_group("web", "", "test")
    write_events(tmp / "events.db", [(make_event(flow_id=i), {}) for i in range(5)])
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    port = server.effective_port  # type: ignore[union-attr]

    def serve() -> None:
        with contextlib.suppress(OSError):  # the socket was closed by the teardown below
            server.run()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.close()
        thread.join(5)


@pytest.fixture(scope="module")
def api_schema(live_api: tuple[str, str]) -> Any:
    base, _token = live_api
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    schema.config.update(base_url=f"{base}/api/v1")
    # starting a scan would probe whatever address a generated host names (tests/webui/
    # test_lifecycle.py scans loopback, tests/webui/test_lifecycle_lab.py the lab server)
    # revoking a token could revoke the test's own, leaving every later operation a 401
    # (tests/webui/test_auth.py revokes tokens through the API)
    return (
        schema.exclude(method="POST", path="/alerts/{channel_id}/test")
        .exclude(method="POST", path="/hosts/{host_id}/scans")
        .exclude(method="DELETE", path="/tokens/{token_id}")
    )


def test_api_conforms(api_schema: Any, live_api: tuple[str, str]) -> None:
    """Every operation of the document, each with its own hypothesis run (the schemathesis
    pytest plugin's fixture loader does not work with this pytest, so operations are walked
    here)."""
    from hypothesis import given

    _base, token = live_api
    calls: dict[str, int] = {}
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            # run() is called at once, in the same iteration: label is the current one
            calls[label] = calls.get(label, 0) + 1  # noqa: B023
            assert response.status_code < 500, (label, response.status_code, response.text[:300])  # noqa: B023
            case.validate_response(
                response,
                checks=(not_a_server_error, status_code_conformance, response_schema_conformance),
            )

        try:
            run()
        except Exception as err:  # noqa: BLE001 - collect every operation's failure, then fail
            failures.append(f"{label}: {type(err).__name__}: {str(err)[:800]}")
    print(f"\nschemathesis: {len(calls)} operations, {sum(calls.values())} calls")
    assert len(calls) >= 25
    assert not failures, "\n\n".join(failures)


def test_document_lists_firewall_and_alerts(live_api: tuple[str, str]) -> None:
    import json
    import urllib.request

    base, _ = live_api
    with urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=5) as resp:
        doc = json.load(resp)
    for path in ("/firewall", "/firewall/{rule_id}", "/alerts", "/alerts/{channel_id}",
                 "/alerts/{channel_id}/test"):  # fmt: skip
        assert path in doc["paths"], path
