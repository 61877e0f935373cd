"""The HTTPS plane's kernel redirect text (pure rendering)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, TlsProxyConfig
from gateway.tls.redirect import plane_ports, plane_text, redirect_text, service_chain_text
from gateway.tls.service import TlsService


def _config(*services: TlsService) -> GatewayConfig:
    return GatewayConfig(tls_proxy=TlsProxyConfig(services=services, listen_port=20000))


V4 = TlsService("198.18.0.20", cert=Path("c"), key=Path("k"), processes=3)
V6 = TlsService("2001:2::20", port=8443, cert=Path("c"), key=Path("k"))


def test_ports_are_numbered_per_service_and_process() -> None:
    assert plane_ports(_config(V4, V6)) == [[20000, 20001, 20002], [20003]]


def test_ipv4_redirect_spreads_connections_over_the_processes() -> None:
    text = redirect_text(_config(V4, V6), 4)
    assert text.splitlines() == [
        "*nat",
        ":VPATCH-TLS - [0:0]",
        ":VPATCH-TLS0 - [0:0]",
        "-A PREROUTING -j VPATCH-TLS",
        "-A VPATCH-TLS -j VPATCH-TLS0",
        "-A VPATCH-TLS0 -d 198.18.0.20 -p tcp -m tcp --dport 443 -m statistic --mode nth "
        "--every 3 --packet 0 -j REDIRECT --to-ports 20000",
        "-A VPATCH-TLS0 -d 198.18.0.20 -p tcp -m tcp --dport 443 -m statistic --mode nth "
        "--every 2 --packet 0 -j REDIRECT --to-ports 20001",
        "-A VPATCH-TLS0 -d 198.18.0.20 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 20002",
        "COMMIT",
    ]


def test_ipv6_services_go_to_ip6tables_with_their_own_chain() -> None:
    text = redirect_text(_config(V4, V6), 6)
    assert ":VPATCH-TLS1 - [0:0]" in text and "VPATCH-TLS0" not in text
    rule = "-A VPATCH-TLS1 -d 2001:2::20 -p tcp -m tcp --dport 8443 -j REDIRECT --to-ports 20003"
    assert rule in text


@pytest.mark.parametrize("family", [4, 6])
def test_nothing_when_no_service_of_the_family(family: int) -> None:
    assert redirect_text(_config(), family) == ""


def test_a_service_chain_refill_with_no_port_empties_it() -> None:
    assert service_chain_text("VPATCH", 0, V4, []) == "*nat\n-F VPATCH-TLS0\nCOMMIT\n"
    assert "--to-ports 20001" in service_chain_text("VPATCH", 0, V4, [20001])


def test_the_plane_text_replaces_the_whole_redirect_and_empties_chains_of_services_gone() -> None:
    text = plane_text("VPATCH", 4, [(2, V4, [20005]), (0, V6, [20000])], hook=False, flush=[1])
    assert text.splitlines() == [
        "*nat",
        ":VPATCH-TLS - [0:0]",  # declared: emptied under --noflush, then refilled
        ":VPATCH-TLS2 - [0:0]",
        ":VPATCH-TLS1 - [0:0]",  # a removed service's chain: emptied, no jump to it
        "-A VPATCH-TLS -j VPATCH-TLS2",
        "-A VPATCH-TLS2 -d 198.18.0.20 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 20005",
        "COMMIT",
    ]
    first = plane_text("VPATCH", 6, [(0, V6, [])], hook=True)
    assert "-A PREROUTING -j VPATCH-TLS" in first and "REDIRECT" not in first
