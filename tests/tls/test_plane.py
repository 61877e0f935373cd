"""The HTTPS plane's choice of the ports a service is redirected to (no processes started)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import FailPolicy, GatewayConfig, TlsProxyConfig
from gateway.tls.plane import TlsPlane
from gateway.tls.service import TlsService

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
    for slot, up in zip(plane.slots[0], listening, strict=True):
        slot.proc = _Proc(up)
        slot.stats.set("bound", int(up))
    return plane


@pytest.mark.parametrize("policy", list(FailPolicy))
def test_a_service_is_redirected_to_its_listening_proxies_only(policy: FailPolicy) -> None:
    assert _plane(policy, True, True)._wanted(0) == [20000, 20001]
    assert _plane(policy, False, True)._wanted(0) == [20001]  # the other carries it


def test_with_no_proxy_fail_open_bypasses_and_fail_closed_refuses() -> None:
    assert _plane(FailPolicy.OPEN, False, False)._wanted(0) == []
    assert _plane(FailPolicy.CLOSED, False, False)._wanted(0) == [20000, 20001]


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
        plane._record_death(plane.slots[0][0], 0.0)
    assert f"new connections {said} until it is back" in caplog.text


def test_status_shows_each_proxy_port_with_its_counters() -> None:
    plane = _plane(FailPolicy.OPEN, True, True)
    plane._redirected = [(20001,)]
    plane.slots[0][0].stats.add("requests", 3)
    plane.slots[0][1].stats.add("requests", 2)
    (service,) = plane.status()
    assert [(p["port"], p["redirected"]) for p in service["proxies"]] == [
        (20000, False),
        (20001, True),
    ]
    assert [p["counters"]["requests"] for p in service["proxies"]] == [3, 2]
    assert service["counters"]["requests"] == 5
