"""Protected hosts are policy: added or removed in the UI, the API or the CLI, the running
gateway starts or stops queueing them at the reload those trigger (no restart, no rule reload).

A real `vpatch run` in the lab's gateway namespace starts with no protected host at all; the
admin UI (Flask test client on the same policy store and control socket) adds the lab server,
after which the test exploit to it is reset and the hosts page says it is inspected; then
`vpatch hosts remove` takes it away and the exploit passes again, without being queued; then
the API adds the server's /24 and deletes it again, with the same effects.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.testing.inline import REPO, in_ns, package_env, running_gateway
from webui import create_app

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

MARKER = "VPATCH-TEST-EXPLOIT-7f3a"
PASSWORD = "admin-password-live-1"


def _exploit(lab: Any) -> int:
    """curl's exit status for the test exploit to the lab server (0: answered, 56: reset)."""
    argv = ["curl", "-s", "-m", "3", "-o", "/dev/null", "-H", f"X-Test: {MARKER}",
            f"http://{lab.server_addr}/"]  # fmt: skip
    return in_ns(lab.client_ns, argv, timeout=10).returncode


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert m, page
    return m.group(1)


def test_hosts_added_and_removed_live(lab: Any, tmp_path: Path) -> None:
    db, sock = tmp_path / "vpatch.db", tmp_path / "control.sock"
    with Store(db) as store:
        Accounts(store).create_user("admin", PASSWORD, "admin", "test")
        api_token = Accounts(store).create_token("admin", "live-hosts test", "test")
    cfg: dict[str, Any] = {
        "protected_hosts": [],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml")],
        "queues": {"first": 0, "count": 1},
        "policy": {"database": str(db)},
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(sock)},
    }
    app = create_app({
        "TESTING": True, "POLICY_DB": str(db), "EVENTS_DB": str(tmp_path / "events.db"),
        "CONTROL_SOCKET": str(sock), "RULE_PATHS": [str(REPO / "rules")],
        "SESSION_COOKIE_SECURE": False, "RELOAD_TIMEOUT": 10.0,
    })  # fmt: skip
    client = app.test_client()
    with running_gateway(lab, tmp_path, cfg) as gw:
        assert _exploit(lab) == 0 and gw.queued() == 0  # nothing protected yet
        assert gw.status()["protected_hosts"] == []
        token = _csrf(client.get("/auth/login").get_data(as_text=True))
        login = {"username": "admin", "password": PASSWORD, "csrf_token": token}
        assert client.post("/auth/login", data=login).status_code == 302
        token = _csrf(client.get("/hosts/").get_data(as_text=True))
        reply = client.post("/hosts/", data={"address": lab.server_addr, "csrf_token": token})
        assert reply.status_code == 302  # the reload has refilled the sets when this returns
        assert gw.status()["protected_hosts"] == [f"{lab.server_addr}/32"]
        assert _exploit(lab) == 56  # reset by the gateway, at once
        deadline = time.monotonic() + 5
        while not gw.events() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [e["alert"]["signature_id"] for e in gw.events()] == [9000100]
        page = client.get("/hosts/").get_data(as_text=True)
        assert 'class="inspected-yes">yes<' in page, page
        removed = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "hosts", "--state", str(db), "--socket",
             str(sock), "remove", lab.server_addr],
            capture_output=True, text=True, env=package_env(), timeout=60, check=False,
        )  # fmt: skip
        assert removed.returncode == 0, removed.stderr
        assert "protected hosts none" in removed.stdout, removed.stdout
        queued = gw.queued()
        assert _exploit(lab) == 0 and gw.queued() == queued  # passes, no longer queued
        assert len(gw.events()) == 1
        # the API: a network (CIDR) added, then deleted
        api = {"Authorization": f"Bearer {api_token}"}
        net = lab.server_addr.rsplit(".", 1)[0] + ".0/24"
        made = client.post("/api/v1/hosts", json={"address": net}, headers=api)
        assert made.status_code == 201 and made.get_json()["reload"]["ok"], made.get_json()
        assert gw.status()["protected_hosts"] == [net]
        assert _exploit(lab) == 56
        gone = client.delete(f"/api/v1/hosts/{made.get_json()['id']}", headers=api)
        assert gone.status_code == 200 and gone.get_json()["reload"]["ok"]
        assert gw.status()["protected_hosts"] == [] and _exploit(lab) == 0
