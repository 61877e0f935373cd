"""The HTTPS plane routed, over IPv6, and with two proxy processes for one service.

Real nginx (TLS 1.0 only, on [::]:443 too), real TLS clients, the real gateway (fail_policy
open, the Shellshock rule only: the proxies load fast). Two labs for the module, each with
nginx only and one gateway:
- routed (LabSpec(routed=True)): the lab's own gateway configuration, nginx's IPv4 and IPv6
  addresses proxied (one service each, one process each);
- bridge: br0 carries 198.18.0.2/24 and 2001:2::2/64 (the proxy's addresses, docs/https.md);
  the lab's configuration with the IPv4 service on two proxy processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BUNDLED_RULES
from gateway.lab import LabSpec, lab_down, lab_up
from gateway.lab.services import gateway_config, start_services
from gateway.match.rules import load_rules
from gateway.testing.tls_lab import LabGateway, curl, send
from tests.conftest import lab_name

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

SHELLSHOCK_RULES = BUNDLED_RULES / "cve-2014-6271-shellshock.yaml"
SHELLSHOCK_SID = 9010010
V4, V6 = 0, 1  # the lab's services: nginx's IPv4 address, then its IPv6 one


def _request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def _shellshock() -> bytes:
    (rule,) = load_rules([SHELLSHOCK_RULES]).rules
    return next(s.to_server for s in rule.samples if s.kind == "attack" and s.to_server)


def _lab(suffix: str, routed: bool) -> Iterator[LabSpec]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    spec = LabSpec(name=lab_name(suffix), routed=routed)
    lab_down(spec.name)
    try:
        lab_up(spec, services=False, gateway=False)
        start_services(spec, ("nginx",))
        yield spec
    finally:
        lab_down(spec.name)


def _gateway(spec: LabSpec, state: Path, processes: int) -> Iterator[LabGateway]:
    proxied: Any = gateway_config(spec)["tls_proxy"]
    services: list[dict[str, Any]] = proxied["services"]
    assert [s["host"] for s in services] == [spec.server_addr, spec.server_addr6]
    services[V4]["processes"] = processes
    # a killed proxy is restarted 3 s after its death, so the tests see the state in between
    # (with one rule a proxy is back within about a second)
    gw = LabGateway(
        spec, state, rules=[str(SHELLSHOCK_RULES)], tls_proxy={"services": services},
        workers={"standby": False, "restart_delay": 3.0},
    )  # fmt: skip
    try:
        gw.wait(True, index=V4)
        gw.wait(True, index=V6)
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def routed() -> Iterator[LabSpec]:
    yield from _lab("rt", routed=True)


@pytest.fixture(scope="module")
def routed_gw(routed: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabGateway]:
    yield from _gateway(routed, tmp_path_factory.mktemp("gw-routed"), 1)


@pytest.fixture(scope="module")
def bridge() -> Iterator[LabSpec]:
    yield from _lab("b6", routed=False)


@pytest.fixture(scope="module")
def bridge_gw(bridge: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabGateway]:
    yield from _gateway(bridge, tmp_path_factory.mktemp("gw-bridge"), 2)


def _access_log(spec: LabSpec) -> str:
    return (spec.state_dir / "nginx" / "access.log").read_text()


def _seen_from(spec: LabSpec) -> set[str]:
    """The client addresses in nginx's access log."""
    return {line.split(" ", 1)[0] for line in _access_log(spec).splitlines()}


def _blocked(gw: LabGateway, client: str) -> list[dict[str, Any]]:
    return [
        e for e in gw.events()
        if e["alert"]["signature_id"] == SHELLSHOCK_SID and e["src_ip"] == client
    ]  # fmt: skip


def _attack_is_blocked(spec: LabSpec, gw: LabGateway, host: str, client: str) -> None:
    """Shellshock to `host` from the client: the block page, an event from `client`, nothing
    at nginx (the server is contacted only for a request that passed)."""
    before = _access_log(spec)
    assert send(spec, [_shellshock()], host=host) == [403]
    events = _blocked(gw, client)
    assert events and events[-1]["alert"]["action"] == "blocked", gw.events()[-3:]
    assert events[-1]["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert _access_log(spec) == before


def test_routed_both_families_reach_the_tls10_server_through_the_proxy(
    routed: LabSpec, routed_gw: LabGateway
) -> None:
    for index, url in ((V4, routed.server_addr), (V6, f"[{routed.server_addr6}]")):
        assert curl(routed, "-g", "--tlsv1.3", f"https://{url}/").stdout == "200"
        assert routed_gw.service(index)["counters"]["requests"] >= 1
    # the server saw the proxy's address on the server side, not the client's
    gw4, gw6 = routed.server_gw_ip.split("/")[0], routed.server_gw_ip6.split("/")[0]
    assert _seen_from(routed) == {gw4, gw6}


def test_routed_attacks_are_blocked_over_both_families(
    routed: LabSpec, routed_gw: LabGateway
) -> None:
    _attack_is_blocked(routed, routed_gw, routed.server_addr, routed.client_addr)
    _attack_is_blocked(routed, routed_gw, routed.server_addr6, routed.client_addr6)


def test_routed_ipv6_proxy_death_fails_open_and_it_comes_back(
    routed: LabSpec, routed_gw: LabGateway
) -> None:
    (proxy,) = routed_gw.service(V6)["proxies"]
    os.kill(proxy["pid"], 9)
    routed_gw.wait(False, 10, bypassed=True, index=V6)
    # the legacy server's own TLS 1.0 now reaches it straight, uninspected
    plain = _request(routed.server_addr6)
    assert send(routed, [plain], ("TLSv1", "TLSv1"), host=routed.server_addr6) == [200]
    assert routed.client_addr6 in _seen_from(routed)
    up = routed_gw.wait(True, index=V6)
    assert up["proxies"][0]["restarts"] == 1 and up["bypassed"] is False
    assert routed_gw.service(V4)["inspecting"] is True  # the other service was not touched
    assert send(routed, [_shellshock()], host=routed.server_addr6) == [403]


def test_bridge_ipv6_service_goes_through_the_proxy_and_blocks_attacks(
    bridge: LabSpec, bridge_gw: LabGateway
) -> None:
    url = f"https://[{bridge.server_addr6}]/"
    assert curl(bridge, "-g", "-6", "--tlsv1.3", url).stdout == "200"
    assert _seen_from(bridge) == {bridge.bridge_ip6.split("/")[0]}  # the proxy's bridge address
    assert bridge_gw.service(V6)["counters"]["requests"] >= 1
    _attack_is_blocked(bridge, bridge_gw, bridge.server_addr6, bridge.client_addr6)


def _requests(gw: LabGateway) -> list[int]:
    return [p["counters"]["requests"] for p in gw.service(V4)["proxies"]]


def test_two_proxy_processes_share_the_connections_and_cover_for_each_other(
    bridge: LabSpec, bridge_gw: LabGateway
) -> None:
    plain = _request(bridge.server_addr)
    proxies = bridge_gw.service(V4)["proxies"]
    assert [(p["listening"], p["redirected"]) for p in proxies] == [(True, True)] * 2
    before = _requests(bridge_gw)
    assert send(bridge, [plain] * 4) == [200] * 4  # four connections
    spread = _requests(bridge_gw)
    # new connections take the ports in turn (statistic --mode nth)
    assert [now - then for now, then in zip(spread, before, strict=True)] == [2, 2]
    os.kill(proxies[0]["pid"], 9)
    deadline = time.monotonic() + 10
    while True:  # the supervisor takes the dead process's port out of the redirect
        dead = bridge_gw.service(V4)["proxies"][0]
        if not dead["redirected"] or dead["pid"] != proxies[0]["pid"]:
            break
        assert time.monotonic() < deadline, dead
        time.sleep(0.1)
    assert send(bridge, [plain] * 4) == [200] * 4  # the other process carries them
    assert _requests(bridge_gw)[1] > spread[1]
    deadline = time.monotonic() + 120
    while True:  # restarted, listening and redirected to again
        back = bridge_gw.service(V4)["proxies"][0]
        if back["restarts"] == 1 and back["listening"] and back["redirected"]:
            break
        assert time.monotonic() < deadline, back
        time.sleep(0.2)
    assert back["pid"] != proxies[0]["pid"]
    assert send(bridge, [plain] * 2) == [200] * 2
