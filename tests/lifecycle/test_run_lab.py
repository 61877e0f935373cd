"""The host lifecycle enforced by `vpatch run` itself, in the lab against real services: the
gateway renders the host modes from the policy store (filter FORWARD order PREFIX-FW, then
PREFIX-HM-FORWARD), `vpatch hosts ...` writes the store and calls `reload`, the lifecycle
monitor runs inside the gateway (learning, lockdown events), and application control refuses
SMB1 negotiation (real Samba, smbclient forced to NT1) and TLS below 1.2 (a Python ssl
server) while SMB2+/TLS 1.2 pass."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.control.server import control_request
from gateway.firewall.apply import probe_backend, run_cmd
from gateway.firewall.refresh import forward_jumps
from gateway.lab import LabSpec, netns_exec, netns_popen
from gateway.lab.netns import stop_pids
from gateway.lab.services import listening
from gateway.testing.inline import package_env, running_gateway

from .test_modes_lab import connects, dns_ok, http_ok, listeners, smb_ok

pytestmark = pytest.mark.netns
REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
TLS_PORT = 8443  # a modern server: TLS 1.0 to 1.3
OLD_TLS_PORT = 993  # an old server: TLS 1.0 at most (both are watched app-control TLS ports)
__all__ = ["listeners"]  # the fixture, imported for the tests below

TLS_SERVER = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[5])
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept()
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.sendall(b"hello " + t.version().encode())
        t.close()
    except OSError:
        c.close()
"""
TLS_CLIENT = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = getattr(ssl.TLSVersion, sys.argv[3])
ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[4])
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as raw:
        with ctx.wrap_socket(raw) as t:
            print(t.recv(64).decode())
except (OSError, ssl.SSLError) as e:
    print("failed", type(e).__name__, e)
"""


@dataclass(frozen=True)
class Gateway:
    config: Path
    socket: Path
    eve: Path
    log: Path


def _env() -> dict[str, str]:
    return package_env()


@pytest.fixture(scope="module")
def gateway(lab: LabSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`vpatch run` in the lab's gateway namespace with the bundled rules and its own store
    (gateway.testing.inline.running_gateway)."""
    tmp = tmp_path_factory.mktemp("runlab")
    cfg = {
        "protected_hosts": [lab.server_addr],
        "queues": {"first": 0, "count": 1},
        "events": {"sqlite": None, "jsonl": str(tmp / "eve.json")},
        "control": {"socket": str(tmp / "control.sock")},
        "policy": {"database": str(tmp / "vpatch.db")},
    }
    with running_gateway(lab, tmp, cfg) as gw:
        yield Gateway(gw.config, gw.control, tmp / "eve.json", gw.log)


def hosts(gw: Gateway, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "hosts", "-c", str(gw.config), *args],
        capture_output=True, text=True, timeout=60, check=False, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "gateway reloaded" in proc.stdout or args[0] in ("learned", "history"), proc.stdout
    return proc.stdout


def events(gw: Gateway, signature: str, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        if gw.eve.exists():
            for line in gw.eve.read_text().splitlines():
                ev = json.loads(line)
                alert = ev.get("alert", {})
                if isinstance(alert, dict) and alert.get("signature") == signature:
                    found.append(ev)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def normal_after(lab: LabSpec, gateway: Gateway) -> Iterator[None]:
    try:
        yield
    finally:
        hosts(gateway, "set", lab.server_addr, "--mode", "normal", "--clear-exceptions")
        hosts(gateway, "app-control", lab.server_addr, "--clear")


def test_forward_order_firewall_then_host_modes(lab: LabSpec, gateway: Gateway) -> None:
    backend = probe_backend(netns=lab.gw_ns)
    for version in (4, 6):
        jumps = forward_jumps(backend, version, lab.gw_ns)
        assert jumps[:2] == ["VPATCH-FW", "VPATCH-HM-FORWARD"], (version, jumps)
    # a reload that finds the host-mode jump gone puts it back right after the firewall chain
    run_cmd(["iptables", "-D", "FORWARD", "-j", "VPATCH-HM-FORWARD"], lab.gw_ns)
    run_cmd(["iptables", "-I", "FORWARD", "1", "-j", "ACCEPT"], lab.gw_ns)
    try:
        control_request(gateway.socket, "reload", timeout=30)
        assert forward_jumps(backend, 4, lab.gw_ns)[:3] == [
            "ACCEPT", "VPATCH-FW", "VPATCH-HM-FORWARD"
        ]  # fmt: skip
    finally:
        run_cmd(["iptables", "-D", "FORWARD", "-j", "ACCEPT"], lab.gw_ns)


def test_setup_protection_by_run(
    lab: LabSpec, gateway: Gateway, listeners: None, normal_after: None
) -> None:
    host = lab.server_addr
    assert http_ok(lab) and connects(lab, 3389)
    hosts(gateway, "set", host, "--mode", "setup", "--exception", f"{lab.client_addr}/32:tcp/3389")
    assert not http_ok(lab), "inbound HTTP must be refused in setup mode"
    assert not smb_ok(lab), "inbound SMB must be refused in setup mode"
    assert connects(lab, 3389), "RDP port from the exception subnet must pass"
    hosts(gateway, "release", host)
    assert http_ok(lab) and smb_ok(lab) and connects(lab, 8082)


def test_lockdown_by_run(
    lab: LabSpec, gateway: Gateway, listeners: None, normal_after: None
) -> None:
    host = lab.server_addr
    hosts(gateway, "set", host, "--mode", "learning")
    assert http_ok(lab) and dns_ok(lab) and connects(lab, 3389)
    want = {
        f"{lab.client_addr} -> {host}:80/tcp",
        f"{lab.client_addr} -> {host}:53/udp",
        f"{lab.client_addr} -> {host}:3389/tcp",
    }
    deadline = time.monotonic() + 10
    learned: set[str] = set()
    while not want <= learned:
        assert time.monotonic() < deadline, f"not learned by the gateway's monitor: {learned}"
        time.sleep(0.2)
        learned = set(hosts(gateway, "learned", host).split("\n"))
    hosts(gateway, "set", host, "--mode", "lockdown")
    assert http_ok(lab) and dns_ok(lab) and connects(lab, 3389)
    assert not connects(lab, 8082), "a new port must be blocked in lockdown"
    signature = f"lockdown: new port {lab.client_addr} -> {host}:8082/tcp not learned"
    found = events(gateway, signature)
    assert found and found[0]["alert"]["action"] == "blocked"  # type: ignore[index]
    hosts(gateway, "allow", host, f"{lab.client_addr} -> {host}:8082/tcp")
    assert connects(lab, 8082)


NEW_CLIENT = "198.18.0.33"  # a second address of the client namespace: a client never learned
CONNECT_FROM = """
import socket, sys
try:
    with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=1.5,
                                  source_address=(sys.argv[1], 0)) as c:
        c.recv(16)
    print("open")
except OSError as e:
    print("failed", e)
"""


def connects_from(lab: LabSpec, src: str, port: int) -> bool:
    out = netns_exec(
        lab.client_ns, [sys.executable, "-c", CONNECT_FROM, src, lab.server_addr, str(port)],
        timeout=30,
    ).stdout  # fmt: skip
    return out.startswith("open")


@pytest.fixture
def new_client(lab: LabSpec) -> Iterator[str]:
    netns_exec(lab.client_ns, ["ip", "addr", "add", f"{NEW_CLIENT}/24", "dev", "eth0"])
    try:
        yield NEW_CLIENT
    finally:
        netns_exec(lab.client_ns, ["ip", "addr", "del", f"{NEW_CLIENT}/24", "dev", "eth0"])


def test_lockdown_entries_for_any_client_and_a_network(
    lab: LabSpec, gateway: Gateway, listeners: None, new_client: str, normal_after: None
) -> None:
    """`any -> server:3389/tcp` lets a client never seen in while other ports stay refused;
    a network entry covers its clients only; entries are deleted one by one."""
    host = lab.server_addr
    hosts(gateway, "set", host, "--mode", "learning")  # a learning period starts empty
    hosts(gateway, "set", host, "--mode", "lockdown")
    assert not connects_from(lab, new_client, 3389)
    hosts(gateway, "allow", host, f"any -> {host}:3389/tcp")
    assert connects_from(lab, new_client, 3389), "any client may reach 3389"
    assert connects_from(lab, lab.client_addr, 3389)
    assert not connects_from(lab, new_client, 8082), "other ports stay refused"
    assert not connects_from(lab, lab.client_addr, 8082)
    hosts(gateway, "allow", host, f"198.18.0.32/28 -> {host}:8082/tcp")  # not .10
    assert connects_from(lab, new_client, 8082), "the network's client may reach 8082"
    assert not connects_from(lab, lab.client_addr, 8082), "a client outside it may not"
    hosts(gateway, "disallow", host, f"any -> {host}:3389/tcp")
    assert not connects_from(lab, new_client, 3389), "a deleted entry lets nothing in"
    assert connects_from(lab, new_client, 8082), "the other entry stays"
    assert hosts(gateway, "learned", host).split() == (f"198.18.0.32/28 -> {host}:8082/tcp".split())


def smbclient(lab: LabSpec, *opts: str) -> subprocess.CompletedProcess[str]:
    return netns_exec(
        lab.client_ns,
        ["smbclient", "-N", "-L", f"//{lab.server_addr}", "-t", "3", *opts],
        check=False,
        timeout=30,
    )


NT1 = ("-m", "NT1", "--option=client min protocol=NT1", "--option=client max protocol=NT1")


def test_app_control_refuses_smb1_keeps_smb2(
    lab: LabSpec, gateway: Gateway, normal_after: None
) -> None:
    assert "public" in smbclient(lab, *NT1).stdout, "SMB1 must work before the policy"
    hosts(gateway, "app-control", lab.server_addr, "--add", "refuse-smb1")
    refused = smbclient(lab, *NT1)
    assert refused.returncode != 0 and "public" not in refused.stdout
    assert "NT_STATUS_CONNECTION_RESET" in refused.stdout + refused.stderr
    assert events(gateway, "app-control: SMB1 negotiation refused")
    ok = smbclient(lab, "-m", "SMB3")
    assert ok.returncode == 0 and "public" in ok.stdout, ok.stdout + ok.stderr


@pytest.fixture
def tls_server(lab: LabSpec, tmp_path: Path) -> Iterator[None]:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=server.lab.test", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    procs = [
        netns_popen(
            lab.server_ns,
            [
                sys.executable,
                "-c",
                TLS_SERVER,
                lab.server_addr,
                str(port),
                str(cert),
                str(key),
                top,
            ],
        )
        for port, top in ((TLS_PORT, "TLSv1_3"), (OLD_TLS_PORT, "TLSv1"))
    ]
    try:
        deadline = time.monotonic() + 10
        while not {TLS_PORT, OLD_TLS_PORT} <= set(listening(lab.server_ns)[0]):
            assert time.monotonic() < deadline, "TLS servers did not start"
            time.sleep(0.05)
        yield
    finally:
        stop_pids([p.pid for p in procs])
        for p in procs:
            p.wait(5)


def tls(lab: LabSpec, lowest: str, highest: str | None = None, port: int = TLS_PORT) -> str:
    """A TLS client offering `lowest`..`highest` (default: only `lowest`): the server's greeting
    with the negotiated version, or `failed ...`."""
    return netns_exec(
        lab.client_ns,
        [sys.executable, "-c", TLS_CLIENT, lab.server_addr, str(port), lowest, highest or lowest],
        check=False,
        timeout=30,
    ).stdout.strip()


def test_app_control_tls_floor(
    lab: LabSpec, gateway: Gateway, tls_server: None, normal_after: None
) -> None:
    assert tls(lab, "TLSv1") == "hello TLSv1", "TLS 1.0 must work before the policy"
    downgraded = tls(lab, "TLSv1", "TLSv1_3", OLD_TLS_PORT)
    assert downgraded == "hello TLSv1", "the old server must negotiate 1.0 before the policy"
    hosts(gateway, "app-control", lab.server_addr, "--add", "min-tls 1.2")
    out = tls(lab, "TLSv1")
    assert out.startswith("failed"), out
    assert events(gateway, "app-control: TLS below 1.2 refused")
    assert tls(lab, "TLSv1_2") == "hello TLSv1.2"
    # a client offering 1.0..1.3 to a server that only speaks 1.0: refused at the ServerHello
    out = tls(lab, "TLSv1", "TLSv1_3", OLD_TLS_PORT)
    assert out.startswith("failed"), out
    assert events(gateway, "app-control: TLS below 1.2 chosen by the server refused")
    assert tls(lab, "TLSv1", "TLSv1_3") == "hello TLSv1.3"
    # a 1.3 floor: only supported_versions tells a 1.3 hello from a 1.2 one
    hosts(gateway, "app-control", lab.server_addr, "--clear")
    hosts(gateway, "app-control", lab.server_addr, "--add", "min-tls 1.3")
    out = tls(lab, "TLSv1_2")
    assert out.startswith("failed"), out
    assert events(gateway, "app-control: TLS below 1.3 refused")
    assert tls(lab, "TLSv1_3") == "hello TLSv1.3"


ODD_HTTP_PORT = 5000  # no rule names it: only `ports: any` app control looks at it


@pytest.fixture
def odd_http_server(lab: LabSpec, tmp_path: Path) -> Iterator[None]:
    (tmp_path / "index.html").write_text("odd-port page\n")
    proc = netns_popen(
        lab.server_ns,
        [sys.executable, "-m", "http.server", str(ODD_HTTP_PORT), "--bind", lab.server_addr,
         "--directory", str(tmp_path)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while ODD_HTTP_PORT not in listening(lab.server_ns)[0]:
            assert time.monotonic() < deadline, "HTTP server on the odd port did not start"
            time.sleep(0.05)
        yield
    finally:
        stop_pids([proc.pid])
        proc.wait(5)


def fetch(lab: LabSpec, port: int) -> subprocess.CompletedProcess[str]:
    return netns_exec(
        lab.client_ns,
        ["curl", "-sS", "--max-time", "5", f"http://{lab.server_addr}:{port}/"],
        check=False,
        timeout=30,
    )


def non_http_answer(lab: LabSpec, port: int) -> str:
    """An SSH banner sent to `port`: what comes back (up to 300 bytes), or the error."""
    code = (
        "import socket, sys\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
        "s.sendall(b'SSH-2.0-OpenSSH_9.2\\r\\n\\r\\n')\n"
        "try:\n    print(s.recv(300).decode(errors='replace'))\n"
        "except OSError as e:\n    print('error', type(e).__name__)\n"
    )
    return netns_exec(
        lab.client_ns, [sys.executable, "-c", code, lab.server_addr, str(port)],
        check=False, timeout=30,
    ).stdout.strip()  # fmt: skip


def any_port_members(lab: LabSpec) -> list[str]:
    out = run_cmd(["ipset", "list", "vpatch-anyport4"], lab.gw_ns).stdout
    return out.split("Members:", 1)[1].split()


def test_app_control_http_on_any_port(
    lab: LabSpec, gateway: Gateway, odd_http_server: None, normal_after: None
) -> None:
    """HTTP is identified by content on a port no rule names: the kernel queues every TCP port
    of the host with the policy, and only of that host."""
    assert "odd-port page" in fetch(lab, ODD_HTTP_PORT).stdout
    assert any_port_members(lab) == []
    hosts(gateway, "app-control", lab.server_addr, "--add", "refuse-http-port-other-than 80")
    assert any_port_members(lab) == [lab.server_addr]
    refused = fetch(lab, ODD_HTTP_PORT)
    assert refused.returncode == 56 and "reset" in refused.stderr, refused  # curl: recv failure
    found = events(gateway, "app-control: HTTP on a port not allowed for this host")
    assert found and found[0]["dest_port"] == ODD_HTTP_PORT
    assert fetch(lab, 80).returncode == 0, "HTTP on the allowed port must pass"
    # not HTTP on the same port: not identified as HTTP, passed (http.server answers 400)
    assert "Error code: 400" in non_http_answer(lab, ODD_HTTP_PORT), "non-HTTP must pass"
    hosts(gateway, "app-control", lab.server_addr, "--clear")
    assert any_port_members(lab) == []
    assert "odd-port page" in fetch(lab, ODD_HTTP_PORT).stdout
