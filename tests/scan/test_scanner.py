"""gateway/scan/scanner.py: the port list syntax, address-only targets, and `scan_host` against
real servers on 127.0.0.1 (an SSH banner, an HTTP server, a listener that never speaks, a closed
TCP port, a closed UDP port): open ports, findings, unidentified ports, progress that ends at its
total, and the JSON form of the result. The probes themselves are in test_probes.py; scans
through the job runner in test_jobs.py; against the lab's services in test_scan_lab.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from gateway.scan.scanner import (
    MAX_PORTS,
    ScanError,
    check_host,
    parse_ports,
    result_to_dict,
    scan_host,
)

TIMEOUT = 0.2


def test_parse_ports() -> None:
    assert parse_ports("80, 443,1000-1002,u53,u1434") == ((80, 443, 1000, 1001, 1002), (53, 1434))
    with pytest.raises(ScanError, match="'x80'"):
        parse_ports("x80")
    with pytest.raises(ScanError, match="outside"):
        parse_ports("70000")
    with pytest.raises(ScanError, match="at most"):
        parse_ports("1-5000")


def test_parse_ports_forms() -> None:
    # duplicates merge, empty items are skipped, "t:" / "u" prefixes, UDP ranges, any case
    assert parse_ports("445,445,,t:139, U1000-1001 ,") == ((139, 445), (1000, 1001))
    assert parse_ports("") == ((), ())
    assert parse_ports(f"1-{MAX_PORTS}") == (tuple(range(1, MAX_PORTS + 1)), ())
    with pytest.raises(ScanError, match="at most"):
        parse_ports(f"1-{MAX_PORTS},u53")  # TCP and UDP count together


@pytest.mark.parametrize("text", ["0", "10-5", "80-", "-80", "u", "1.5", "80;81"])
def test_parse_ports_refuses_and_names_the_item_and_source(text: str) -> None:
    with pytest.raises(ScanError, match=r"^ports of host 7: '"):
        parse_ports(text, source="ports of host 7")


def test_check_host_takes_address_literals_only() -> None:
    assert check_host("198.18.0.20") == "198.18.0.20"
    assert check_host("2001:DB8:0::1") == "2001:db8::1"  # normalised
    for name in ("localhost", "example.com", "198.18.0.256", "198.18.0.0/24", ""):
        with pytest.raises(ScanError, match="is not an IP address"):
            check_host(name)
    with pytest.raises(ScanError, match="'server.example'"):
        scan_host("server.example", tcp_ports=(80,), udp_ports=())  # before any socket


def _serve_banner(listener: socket.socket, banner: bytes, stop: threading.Event) -> None:
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn, contextlib.suppress(OSError):
            conn.sendall(banner)


@pytest.fixture
def servers(http_port: int) -> Iterator[dict[str, int]]:
    """Ports on 127.0.0.1: ssh (banner), http (nginx, conftest.py), silent (accepts, never
    speaks), closed (TCP, nothing listens), udp_closed."""
    ssh = socket.create_server(("127.0.0.1", 0))
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    closed = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    ports = {
        "http": http_port,
        "ssh": ssh.getsockname()[1],
        "silent": silent.getsockname()[1],
        "closed": closed.getsockname()[1],
        "udp_closed": udp.getsockname()[1],
    }
    closed.close()
    udp.close()
    stop = threading.Event()
    banner = threading.Thread(target=_serve_banner, args=(ssh, b"SSH-2.0-OpenSSH_4.3\r\n", stop))
    banner.start()
    try:
        yield ports
    finally:
        stop.set()
        silent.close()
        banner.join(5)
        ssh.close()


def test_scan_host_on_loopback(servers: dict[str, int]) -> None:
    calls: list[tuple[int, int, str]] = []
    tcp = [servers["closed"], servers["ssh"], servers["http"], servers["silent"], servers["ssh"]]
    result = scan_host(
        "127.0.0.1",
        tcp_ports=tcp,
        udp_ports=[servers["udp_closed"]],
        timeout=TIMEOUT,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    assert result.host == "127.0.0.1" and result.started <= result.finished
    assert result.open_tcp == tuple(sorted((servers["ssh"], servers["http"], servers["silent"])))
    found = {(f.port, f.transport, f.service, f.product, f.version) for f in result.findings}
    assert found == {
        (servers["ssh"], "tcp", "ssh", "openssh", "4.3"),
        (servers["http"], "tcp", "http", "nginx", "1.22.1"),
    }
    assert result.unidentified == (servers["silent"],)
    assert result.products() == {"openssh", "nginx"}
    # progress: never past its total, never backwards, and it ends exactly at the total
    totals = {total for _, total, _ in calls}
    assert len(totals) == 1
    (total,) = totals
    dones = [done for done, _, _ in calls]
    assert dones == sorted(dones) and dones[-1] == total and all(d <= total for d in dones)
    assert calls[0][2] == "127.0.0.1: 3 open TCP ports"
    assert calls[-1][2] == f"127.0.0.1:{servers['udp_closed']}/udp -"


def test_result_to_dict_is_json_with_the_evidence(servers: dict[str, int]) -> None:
    result = scan_host(
        "127.0.0.1", tcp_ports=[servers["ssh"], servers["http"]], udp_ports=(), timeout=TIMEOUT
    )
    doc = json.loads(json.dumps(result_to_dict(result)))
    assert doc["host"] == "127.0.0.1" and doc["unidentified_tcp"] == []
    assert doc["open_tcp"] == sorted([servers["ssh"], servers["http"]])
    by_service = {f["service"]: f for f in doc["findings"]}
    ssh = by_service["ssh"]
    assert ssh["evidence"] == [{"probe": "SSH identification", "saw": "SSH-2.0-OpenSSH_4.3"}]
    web = by_service["http"]
    assert web["product"] == "nginx" and web["features"] == {"webdav": False}
    # the feature's own evidence follows the finding's
    assert [e["probe"] for e in web["evidence"]] == ["HTTP GET /", "HTTP OPTIONS/PROPFIND/MKCOL"]
