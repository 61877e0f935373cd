"""HTTPS services edited live (issue 11.7): the real gateway in the namespace lab, started with
no proxied service in its configuration, follows the services added, changed and removed
through the admin API (its `reload` reconfigures the HTTPS plane, no restart).

With nginx on 198.18.0.20:443 speaking TLS 1.0 only: before, a TLS 1.2 curl from the client
fails (the packet plane passes it straight to nginx); once the service is added through the
API it gets the page through the proxy; with `client_min: TLS1_3` a client limited to TLS 1.2
is refused and TLS 1.3 still works (requests sent during the change all get the page: the old
proxies serve until the new ones listen); once deleted, the TLS 1.2 curl fails again (back on the
packet plane). One lab and one gateway for the module.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.control.server import ControlError
from gateway.lab import LabSpec, lab_down, lab_up
from gateway.lab.netns import netns_exec
from gateway.lab.services import lab_cert
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.testing.tls_lab import READY_TIMEOUT, LabGateway
from tests.conftest import REPO_ROOT, lab_name
from webui import create_app

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tlslab() -> Iterator[LabSpec]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    spec = LabSpec(name=lab_name("tlsed"))
    lab_down(spec.name)
    try:
        lab_up(spec, services=True, gateway=False)
        yield spec
    finally:
        lab_down(spec.name)


@pytest.fixture(scope="module")
def gateway(tlslab: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabGateway]:
    gw = LabGateway(tlslab, tmp_path_factory.mktemp("gw"), tls_proxy={"services": []})
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert gw.proc.poll() is None, (gw.state / "gateway.log").read_text()[-3000:]
            try:
                assert gw.status()["tls_proxy"] == []
                break
            except (ControlError, OSError):
                assert time.monotonic() < deadline, (gw.state / "gateway.log").read_text()
                time.sleep(0.2)
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def api(gateway: LabGateway) -> tuple[FlaskClient, dict[str, str]]:
    """The admin API on the gateway's own policy store and control socket, with a token."""
    db = gateway.state / "vpatch.db"
    app = create_app({
        "TESTING": True, "POLICY_DB": str(db), "EVENTS_DB": str(gateway.state / "events.db"),
        "CONTROL_SOCKET": str(gateway.socket), "RULE_PATHS": [str(REPO_ROOT / "rules")],
        "STATE_DIR": str(gateway.state / "ui"), "RELOAD_TIMEOUT": 60.0,
    })  # fmt: skip
    with Store(db) as store:
        Accounts(store).create_user("admin", "admin-password-1", "admin", "test")
        token = Accounts(store).create_token("admin", "test", "test")
    return app.test_client(), {"Authorization": f"Bearer {token}"}


def curl(spec: LabSpec, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sk", "--max-time", "8", "-o", "/dev/null", "-w", "%{http_code}", *args]
    return netns_exec(spec.client_ns, [*argv, f"https://{spec.server_addr}/"], check=False)


def inspected(gw: LabGateway, before: Collection[int] = ()) -> dict[str, Any]:
    """The one proxied service once it is inspected by proxies other than `before` (pids)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        services = gw.status()["tls_proxy"]
        if services and services[0]["inspecting"] and not services[0]["pending"]:
            pids = {p["pid"] for p in services[0]["proxies"]}
            if not pids & set(before):
                service: dict[str, Any] = services[0]
                return service
        assert time.monotonic() < deadline, (gw.state / "gateway.log").read_text()[-3000:]
        time.sleep(0.2)


def gone(service: dict[str, Any]) -> None:
    """Wait until the service's proxy processes (as `status` listed them) have ended."""
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p['pid']}").exists() for p in service["proxies"]):
        assert time.monotonic() < deadline, service["proxies"]
        time.sleep(0.2)


def test_a_service_added_changed_and_removed_through_the_api_applies_live(
    tlslab: LabSpec, gateway: LabGateway, api: tuple[FlaskClient, dict[str, str]]
) -> None:
    client, headers = api
    gateway_pid = gateway.proc.pid
    assert curl(tlslab, "--tlsv1.2").returncode == 35  # nginx speaks TLS 1.0 only

    cert, key = lab_cert(tlslab)
    body = {"host": tlslab.server_addr, "cert": str(cert), "key": str(key), "server_min": "TLS1"}
    r = client.put("/api/v1/https/services", json=body, headers=headers)
    assert r.status_code == 200, r.get_json()
    added = r.get_json()
    assert added["reload"]["ok"], added
    assert added["reload"]["result"]["tls_proxy"]["started"] == [f"{tlslab.server_addr}:443"]
    first = inspected(gateway)
    assert first["source"] == "policy" and first["tls"]["client_min"] == "TLS1_2"
    assert curl(tlslab, "--tlsv1.2").stdout == "200"  # through the proxy, TLS 1.0 to nginx

    # the change: the old proxies serve until the new ones listen (make before break), so
    # requests sent all along the change get the page
    codes: list[str] = []
    done = threading.Event()

    def keep_asking() -> None:
        while not done.is_set():
            codes.append(curl(tlslab, "--tlsv1.2").stdout)  # 1.2 or 1.3: both settings serve it

    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        r = client.put(f"/api/v1/https/services/{added['service']['id']}",
                       json={**body, "client_min": "TLS1_3"}, headers=headers)  # fmt: skip
        assert r.get_json()["reload"]["result"]["tls_proxy"]["changed"] == [
            f"{tlslab.server_addr}:443"
        ]
        changed = inspected(gateway, {p["pid"] for p in first["proxies"]})
        gone(first)  # the old proxies end once no redirect points at them
    finally:
        done.set()
        asking.join()
    assert codes and set(codes) == {"200"}, codes
    assert changed["tls"]["client_min"] == "TLS1_3"
    assert curl(tlslab, "--tlsv1.2", "--tls-max", "1.2").stdout != "200"  # below the floor
    assert curl(tlslab, "--tlsv1.3").stdout == "200"

    r = client.delete(f"/api/v1/https/services/{added['service']['id']}", headers=headers)
    assert r.get_json()["reload"]["result"]["tls_proxy"]["stopped"] == [f"{tlslab.server_addr}:443"]
    assert gateway.status()["tls_proxy"] == []
    assert curl(tlslab, "--tlsv1.2").returncode == 35  # back on the packet plane: nginx's TLS
    assert gateway.proc.pid == gateway_pid and gateway.proc.poll() is None  # never restarted
    gone(changed)
