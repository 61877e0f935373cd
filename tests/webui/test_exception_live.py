"""A URI-scoped exception end to end: the marker request is reset by a real `vpatch run` in the
namespace lab, its event (with the why: field, condition, excerpt, http.url) lands in the
gateway's event store, the UI's exception route (scope uri, reviewed, then saved) stores the
exception and reloads the gateway; afterwards the marker on that URI passes while on another URI
it is still reset. The control `status` reports bytes inspected, the kernel's queue counters and
the rules loaded, and the dashboard's health endpoint shows the same figures.

The gateway runs through gateway.testing.inline.running_gateway (stopped by PID, our kernel
rules removed afterwards, also on failure); the lab's namespaces belong to the session-wide
`lab` fixture."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.control.server import control_request
from gateway.policy.accounts import Accounts
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.store import Store
from gateway.testing.inline import REPO, running_gateway
from tests.webui.exception_review import add_exception

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

MARKER_PATH = "/VPATCH-TEST-EXPLOIT-7f3a"
CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    path = sys.argv[2].encode()
    s.sendall(b"GET " + path + b" HTTP/1.1\\r\\nHost: lab\\r\\nConnection: close\\r\\n\\r\\n")
    try:
        data = s.recv(4096)
        print("EOF" if not data else "DATA " + data.split(b"\\r\\n")[0].decode())
    except ConnectionResetError:
        print("RESET")
    except OSError as err:
        print("ERROR", err)
    """
)


def get(lab: Any, path: str) -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", CLIENT, lab.server_addr, path],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    return r.stdout.strip() or r.stderr.strip()


def wait_events(db: Path, count: int) -> list[tuple[int, dict[str, Any]]]:
    deadline = time.monotonic() + 10
    rows: list[tuple[int, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        if db.exists():
            conn = sqlite3.connect(str(db), timeout=5)
            try:
                rows = [
                    (r[0], json.loads(r[1]))
                    for r in conn.execute("SELECT id, eve FROM events ORDER BY id")
                ]
            except sqlite3.OperationalError:
                rows = []
            finally:
                conn.close()
            if len(rows) >= count:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"{count} events expected in {db}, found {len(rows)}")


def test_uri_exception_from_the_ui_reaches_running_gateway(
    lab: Any, tmp_path: Path, auth: Any, client: Any, app: Any
) -> None:
    policy_db = tmp_path / "vpatch.db"
    events_db = tmp_path / "gw-events.db"
    sock = tmp_path / "gw-control.sock"
    cfg = {
        "protected_hosts": [lab.server_addr],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml")],
        "queues": {"first": 0, "count": 2},
        "events": {"sqlite": str(events_db), "jsonl": None},
        "control": {"socket": str(sock)},
        "policy": {"database": str(policy_db)},
    }
    app.config.update(CONTROL_SOCKET=str(sock), RULE_PATHS=cfg["rules"], POLICY_DB=str(policy_db),
                      EVENTS_DB=str(events_db), RELOAD_TIMEOUT=5.0)  # fmt: skip
    with running_gateway(lab, tmp_path, cfg) as gw:
        assert get(lab, MARKER_PATH) == "RESET"
        ((event_id, eve),) = wait_events(events_db, 1)
        why = eve["vpatch"]
        assert why["field"] == "raw" and why["condition"] == 'content "VPATCH-TEST-EXPLOIT-7f3a"'
        assert "VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1" in why["excerpt"]
        assert eve["http"]["url"] == MARKER_PATH

        with Store(policy_db) as store:
            accounts = Accounts(store)
            if accounts.get_user("admin") is None:
                accounts.create_user("admin", "admin-password-1", "admin", "test")
        assert auth.login().status_code == 302
        detail = client.get(f"/events/{event_id}").get_data(as_text=True)
        assert "Matched condition" in detail and "VPATCH-TEST-EXPLOIT-7f3a" in detail
        resp = add_exception(client, auth.token(), event_id,
                             "lab: marker URI is a known false positive", scope="uri")  # fmt: skip
        assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
        with Store(policy_db) as store:
            (exc,) = PolicyExceptions(store).list_exceptions()
        # stored as the engine compares it: normalised (lower case), exact
        assert (exc.uri, exc.port, exc.rule_id) == (MARKER_PATH.lower(), None, 9000100)
        policy = control_request(sock, "policy")
        assert set(policy["queues"].values()) == {policy["version"]}  # every worker has it

        assert get(lab, MARKER_PATH) == "DATA HTTP/1.1 404 Not Found", gw.log.read_text()[-2000:]
        assert get(lab, MARKER_PATH.lower() + "?x=1") == "DATA HTTP/1.1 404 Not Found"
        assert get(lab, "/other/" + MARKER_PATH) == "RESET"
        assert get(lab, "/?q=" + MARKER_PATH[1:]) == "RESET"

        status = control_request(sock, "status")
        # the rule file's rule plus the built-in app-control rules (gateway/policy/appcontrol.py)
        assert status["rules_loaded"] >= 1 and status["kernel_counters"] is True
        assert status["bytes"] > 0 and status["packets"] > 0
        for q in status["queues"].values():
            assert q["queue_dropped"] == 0 and q["user_dropped"] == 0 and q["queue_drops"] == 0
            assert q["id_sequence"] >= q["packets"] and q["rules"] == status["rules_loaded"]
        assert sum(q["id_sequence"] for q in status["queues"].values()) >= status["packets"]
        health = client.get("/dashboard/data").get_json()["health"]
        assert health["reachable"] and health["rules_loaded"] == status["rules_loaded"]
        assert health["bytes"] >= status["bytes"] and health["queue_drops"] == 0
        # the alert dispatcher's counters (no channel configured: nothing sent, nothing waiting)
        assert health["alerts"] == status["alerts"]
        assert status["alerts"] == {"sent": 0, "suppressed": 0, "failures": 0, "queued": 0,
                                    "failing": 0, "dropped": 0, "channels": 0,
                                    "durable": True}  # fmt: skip
        print(
            "\nstatus totals:",
            {k: status[k] for k in ("packets", "bytes", "queue_drops", "rules_loaded")},
        )
