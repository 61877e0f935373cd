"""webui/firewall.py: rules added through the real form are validated (the error names the
field), stored in order, moved, toggled, deleted and audited; viewers change nothing; the
JSON API does the same; and end to end: a deny added in the UI reaches a real `vpatch run` in
the namespace lab through `reload` and blocks a real connection from the client namespace
(a connection already open keeps working), deleting it opens the port again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.control.server import control_request
from gateway.firewall.policy import list_rules
from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.testing.inline import REPO, running_gateway
from tests.firewall.test_policy import connect
from tests.webui.conftest import ADMIN_PW, VIEWER_PW

KEEPALIVE_CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    for line in sys.stdin:
        try:
            s.sendall(b"HEAD / HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")
            head = b""
            while b"\\r\\n\\r\\n" not in head:
                d = s.recv(4096)
                if not d:
                    raise OSError("EOF")
                head += d
            print(head.split(b"\\r\\n")[0].decode(), s.getsockname()[1], flush=True)
        except OSError as err:
            print("ERROR", err, flush=True)
    """
)


def rules_of(app: Any) -> list[Any]:
    with Store(Path(app.config["POLICY_DB"])) as store:
        return list_rules(store)


def post(client: Any, auth: Any, url: str, **form: str) -> Any:
    return client.post(url, data={"csrf_token": auth.token(), **form})


def test_add_move_toggle_delete(app: Any, client: Any, auth: Any) -> None:
    auth.login()
    with Store(Path(app.config["POLICY_DB"])) as store:
        host = Hosts(store).save_host("198.18.0.20", "test")
    r = post(client, auth, "/firewall/", scope=f"host:{host.id}", direction="in",
             address="198.18.0.0/24", protocol="tcp", port_from="445", action="deny",
             comment="<b>no smb</b>")  # fmt: skip
    assert r.status_code == 302
    post(client, auth, "/firewall/", scope="global", direction="both", protocol="any", action="log")
    a, b = rules_of(app)
    assert (a.action, a.port_from, a.address, b.action) == ("deny", 445, "198.18.0.0/24", "log")
    page = client.get("/firewall/").get_data(as_text=True)
    assert "host 198.18.0.20" in page and "&lt;b&gt;no smb&lt;/b&gt;" in page
    assert "gateway NOT reloaded" in page  # no gateway in this test: said plainly
    post(client, auth, f"/firewall/{b.id}/move", to="up")
    assert [r.id for r in rules_of(app)] == [b.id, a.id]
    post(client, auth, f"/firewall/{a.id}/toggle")
    assert not rules_of(app)[1].enabled
    post(client, auth, f"/firewall/{b.id}/delete")
    assert [r.id for r in rules_of(app)] == [a.id]
    audit = client.get("/audit/").get_data(as_text=True)
    for action in ("firewall.add", "firewall.move", "firewall.update", "firewall.delete"):
        assert action in audit


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"address": "198.18.0.999", "action": "deny"}, "address"),
        ({"protocol": "any", "port_from": "80", "action": "deny"}, "protocol"),
        ({"protocol": "tcp", "port_from": "70000", "action": "deny"}, "port_from"),
        ({"mac": "zz:zz", "action": "deny"}, "mac"),
        ({"action": "explode"}, "action"),
        ({"scope": "host:4242", "action": "deny"}, "scope_id"),
    ],
)
def test_invalid_rule_refused(app: Any, client: Any, auth: Any, form: dict[str, str],
                              field: str) -> None:  # fmt: skip
    auth.login()
    resp = post(client, auth, "/firewall/", **form)
    assert resp.status_code == 400
    assert f"firewall rule not saved: {field}: " in resp.get_data(as_text=True)
    assert rules_of(app) == []


def test_viewer_and_csrf(app: Any, client: Any, auth: Any) -> None:
    auth.login()
    assert client.post("/firewall/", data={"action": "deny"}).status_code == 400  # no CSRF
    client.post("/auth/logout", data={"csrf_token": auth.token()})
    auth.login("viewer", VIEWER_PW)
    assert client.get("/firewall/").status_code == 200
    assert post(client, auth, "/firewall/", action="deny").status_code == 403
    assert rules_of(app) == []


def test_api(app: Any, client: Any) -> None:
    with Store(Path(app.config["POLICY_DB"])) as store:
        token = Accounts(store).create_token("admin", "t", "test")
    h = {"Authorization": f"Bearer {token}"}
    resp = client.post("/api/v1/firewall", headers=h, json={
        "direction": "in", "protocol": "udp", "port_from": 53, "action": "deny"})  # fmt: skip
    assert resp.status_code == 201
    rid = resp.get_json()["rule"]["id"]
    assert resp.get_json()["reload"]["ok"] is False
    bad = client.put(f"/api/v1/firewall/{rid}", headers=h, json={"port_to": 10})
    assert bad.status_code == 400 and bad.get_json()["field"] == "port_to"
    assert (
        client.put(f"/api/v1/firewall/{rid}", headers=h, json={"enabled": False}).status_code == 200
    )
    assert client.get("/api/v1/firewall", headers=h).get_json()[0]["enabled"] is False
    assert client.put("/api/v1/firewall/999", headers=h, json={}).status_code == 404
    assert client.delete(f"/api/v1/firewall/{rid}", headers=h).status_code == 200
    assert client.get("/api/v1/firewall", headers=h).get_json() == []


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_ui_deny_reaches_running_gateway(lab: Any, tmp_path: Path, app: Any, client: Any,
                                         auth: Any) -> None:  # fmt: skip
    policy_db = tmp_path / "vpatch.db"  # the `app` fixture's database
    sock = tmp_path / "gw-control.sock"
    cfg = {
        "protected_hosts": [lab.server_addr],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml")],
        "queues": {"first": 0, "count": 1},
        "events": {"sqlite": str(tmp_path / "gw-events.db"), "jsonl": None},
        "control": {"socket": str(sock)},
        "policy": {"database": str(policy_db)},
    }
    app.config.update(CONTROL_SOCKET=str(sock), POLICY_DB=str(policy_db))
    keepalive: subprocess.Popen[str] | None = None
    with running_gateway(lab, tmp_path, cfg) as gw:
        try:
            assert connect(lab).startswith("OK HTTP/1.1")
            keepalive = subprocess.Popen(
                ["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", KEEPALIVE_CLIENT,
                 lab.server_addr],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip

            def keepalive_request() -> str:
                assert keepalive is not None and keepalive.stdin and keepalive.stdout
                keepalive.stdin.write("go\n")
                keepalive.stdin.flush()
                return keepalive.stdout.readline().strip()

            first = keepalive_request()
            assert first.startswith("HTTP/1.1 200"), first
            assert auth.login(password=ADMIN_PW).status_code == 302
            with Store(policy_db) as store:
                host = Hosts(store).save_host(lab.server_addr, "test")
            t0 = time.monotonic()
            resp = post(
                client,
                auth,
                "/firewall/",
                scope=f"host:{host.id}",
                direction="in",
                address=lab.client_addr,
                protocol="tcp",
                port_from="80",
                action="deny",
            )
            took = time.monotonic() - t0
            assert resp.status_code == 302
            assert "gateway reloaded in" in client.get("/firewall/").get_data(as_text=True)
            assert connect(lab) == "FAIL TimeoutError", gw.log.read_text()[-2000:]
            assert keepalive_request() == first  # the open connection is not cut
            reply = control_request(sock, "reload")
            assert reply["firewall_rules"] >= 2
            (rule,) = rules_of(app)
            post(client, auth, f"/firewall/{rule.id}/delete")
            assert connect(lab).startswith("OK HTTP/1.1")
            print(f"\nUI firewall POST -> kernel chain rewritten: {took:.2f} s")
        finally:
            if keepalive is not None:
                keepalive.kill()
                keepalive.wait(5)


def test_api_huge_numbers_refused_not_crashing(app: Any, client: Any) -> None:
    """Found by schemathesis: an id or position beyond SQLite's INTEGER was a 500."""
    with Store(Path(app.config["POLICY_DB"])) as store:
        token = Accounts(store).create_token("admin", "t", "test")
    h = {"Authorization": f"Bearer {token}"}
    for body, field in (
        ({"action": "deny", "position": 2**70}, "position"),
        ({"action": "deny", "scope": "host", "scope_id": 2**64}, "scope_id"),
        ({"action": "deny", "scope": "group", "scope_id": -1}, "scope_id"),
    ):
        resp = client.post("/api/v1/firewall", headers=h, json=body)
        assert resp.status_code == 400 and resp.get_json()["field"] == field, resp.get_json()
