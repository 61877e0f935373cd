"""The HTTPS plane's choice of the ports a service is redirected to, what a proxy's death log
says and the per-port status (no process started, no redirect written)."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import FailPolicy, GatewayConfig, TlsProxyConfig
from gateway.tls.launch import PROXY_MODULE
from gateway.tls.plane import TlsPlane, _Proxied
from gateway.tls.service import TlsService
from gateway.tls.stored import ServiceSource, Wanted

SERVICE = TlsService("198.18.0.20", cert=Path("c"), key=Path("k"), processes=2)


class _Proc:
    """A proxy process as the plane sees it (alive or not)."""

    def __init__(self, alive: bool) -> None:
        self.alive, self.pid, self.exitcode = alive, 1, None

    def is_alive(self) -> bool:
        return self.alive


def _plane(policy: FailPolicy, *listening: bool) -> TlsPlane:
    tls = TlsProxyConfig(services=(SERVICE,), listen_port=20000)
    backend: Any = None  # not used before start()
    plane = TlsPlane(GatewayConfig(fail_policy=policy, tls_proxy=tls), backend)
    # as start() would make it, without starting processes or writing the redirect
    plane.proxied = [_Proxied(Wanted(SERVICE, ServiceSource.CONFIG), 0, [20000, 20001])]
    for slot, up in zip(plane.proxied[0].slots, listening, strict=True):
        slot.proc = _Proc(up)
        slot.stats.set("bound", int(up))
    return plane


def _wanted(plane: TlsPlane) -> list[int]:
    return plane._wanted(plane.proxied[0])


@pytest.mark.parametrize("policy", list(FailPolicy))
def test_a_service_is_redirected_to_its_listening_proxies_only(policy: FailPolicy) -> None:
    assert _wanted(_plane(policy, True, True)) == [20000, 20001]
    assert _wanted(_plane(policy, False, True)) == [20001]  # the other carries it


def test_with_no_proxy_fail_open_bypasses_and_fail_closed_refuses() -> None:
    assert _wanted(_plane(FailPolicy.OPEN, False, False)) == []
    assert _wanted(_plane(FailPolicy.CLOSED, False, False)) == [20000, 20001]


@pytest.mark.parametrize(
    ("policy", "other", "said"),
    [
        (FailPolicy.OPEN, True, "go to its other proxies"),
        (FailPolicy.OPEN, False, "pass uninspected"),
        (FailPolicy.CLOSED, False, "are refused"),
    ],
)
def test_a_proxy_death_is_logged_with_where_its_connections_go(
    policy: FailPolicy, other: bool, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    plane = _plane(policy, False, other)
    with caplog.at_level(logging.ERROR, logger="vpatch.tls"):
        plane._record_death(plane.proxied[0].slots[0], 0.0)
    assert f"new connections {said} until it is back" in caplog.text


def test_status_shows_each_proxy_port_with_its_counters() -> None:
    plane = _plane(FailPolicy.OPEN, True, True)
    plane.proxied[0].redirected = (20001,)
    plane.proxied[0].slots[0].stats.add("requests", 3)
    plane.proxied[0].slots[1].stats.add("requests", 2)
    (service,) = plane.status()
    assert [(p["port"], p["redirected"]) for p in service["proxies"]] == [
        (20000, False),
        (20001, True),
    ]
    assert [p["counters"]["requests"] for p in service["proxies"]] == [3, 2]
    assert service["counters"]["requests"] == 5


def test_a_pending_service_keeps_the_one_it_replaces_until_a_proxy_of_its_own_listens() -> None:
    plane = _plane(FailPolicy.CLOSED, True, True)
    old = plane.proxied[0]
    new = _Proxied(Wanted(SERVICE, ServiceSource.POLICY, 1), 0, [20002, 20003], True, old)
    assert plane._wanted(new) == [20000, 20001]  # the old proxies serve meanwhile
    new.slots[1].proc = _Proc(True)
    new.slots[1].stats.set("bound", 1)
    assert plane._wanted(new) == [20003]


def test_the_supervisor_never_imports_mitmproxy() -> None:
    """mitmproxy (about 58 MB imported) is loaded by the proxy processes only: the supervisor
    starts them through gateway/tls/launch.py, by module name."""
    probe = "import sys, gateway.supervisor; print('mitmproxy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == "False"
    assert importlib.import_module(PROXY_MODULE).process_entry is not None  # the name resolves
