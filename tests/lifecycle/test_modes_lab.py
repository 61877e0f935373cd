"""Setup protection and lockdown enforced by the kernel in the lab's gateway namespace, against
the lab server's real services: `vpatch hosts ... --apply` installs the rules, `vpatch hosts
monitor` (NFLOG, in the gateway namespace) learns tuples and logs lockdown events."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab import LabSpec, netns_exec, netns_popen
from gateway.lab.netns import stop_pids
from gateway.lab.services import listening

pytestmark = pytest.mark.netns

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hello\\n"); c.close()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        c.recv(16)
    print("open")
except OSError as e:
    print("failed", e)
"""
BLOCK_TIMEOUT = "1.5"


def vpatch_hosts(lab: LabSpec, state: Path, *args: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "hosts",
            "--state",
            str(state),
            "--netns",
            lab.gw_ns,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def connects(lab: LabSpec, port: int) -> bool:
    out = netns_exec(
        lab.client_ns,
        [sys.executable, "-c", CONNECT, lab.server_addr, str(port), BLOCK_TIMEOUT],
        timeout=30,
    ).stdout
    return out.startswith("open")


def http_ok(lab: LabSpec) -> bool:
    p = netns_exec(
        lab.client_ns,
        ["curl", "-s", "-m", BLOCK_TIMEOUT, "-o", "/dev/null", f"http://{lab.server_addr}/"],
        check=False,
    )
    return p.returncode == 0


def smb_ok(lab: LabSpec) -> bool:
    p = netns_exec(
        lab.client_ns,
        ["smbclient", "-N", "-L", f"//{lab.server_addr}", "-m", "SMB3", "-t", "2"],
        check=False,
        timeout=30,
    )
    return p.returncode == 0 and "public" in p.stdout


def dns_ok(lab: LabSpec) -> bool:
    p = netns_exec(
        lab.client_ns,
        ["dig", "+short", "+time=1", "+tries=1", f"@{lab.server_addr}", "server.lab.test", "A"],
        check=False,
    )
    return p.stdout.strip() == lab.server_addr


def outbound_open(lab: LabSpec, port: int) -> bool:
    """Whether a connection from the server reaches the client's listener on `port` (a
    refusal by the gateway, a reset or a drop, is False)."""
    out = netns_exec(
        lab.server_ns,
        [sys.executable, "-c", CONNECT, lab.client_addr, str(port), BLOCK_TIMEOUT],
        timeout=30,
    ).stdout
    return out.startswith("open")


@pytest.fixture
def client_listeners(lab: LabSpec) -> Iterator[None]:
    """TCP listeners on the client's ports 9 and 10 (outbound connections of the host)."""
    procs = [
        netns_popen(lab.client_ns, [sys.executable, "-c", LISTENER, lab.client_addr, str(port)])
        for port in (9, 10)
    ]
    try:
        deadline = time.monotonic() + 10
        while not {9, 10} <= listening(lab.client_ns)[0]:
            assert time.monotonic() < deadline, "client listeners did not start"
            time.sleep(0.05)
        yield
    finally:
        stop_pids([p.pid for p in procs])


@pytest.fixture
def listeners(lab: LabSpec) -> Iterator[None]:
    """TCP listeners on 3389 (the RDP exception) and 8082 (a port never learned)."""
    procs = [
        netns_popen(lab.server_ns, [sys.executable, "-c", LISTENER, lab.server_addr, str(port)])
        for port in (3389, 8082)
    ]
    try:
        deadline = time.monotonic() + 10
        while not {3389, 8082} <= listening(lab.server_ns)[0]:
            assert time.monotonic() < deadline, "test listeners did not start"
            time.sleep(0.05)
        yield
    finally:
        stop_pids([p.pid for p in procs])
        for p in procs:
            p.wait(5)


@pytest.fixture
def state(lab: LabSpec, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "lifecycle.json"
    try:
        yield path
    finally:
        vpatch_hosts(lab, path, "unapply")


def test_setup_protection_until_release(
    lab: LabSpec, state: Path, listeners: None, client_listeners: None
) -> None:
    host = lab.server_addr
    assert http_ok(lab) and connects(lab, 3389)  # before: open
    assert outbound_open(lab, 9) and outbound_open(lab, 10)
    vpatch_hosts(
        lab,
        state,
        "set",
        host,
        "--mode",
        "setup",
        "--exception",
        f"{lab.client_addr}/32:tcp/3389",
        "--apply",
    )
    assert not http_ok(lab), "inbound HTTP must be refused in setup mode"
    assert not smb_ok(lab), "inbound SMB must be refused in setup mode"
    assert not connects(lab, 8082)
    assert connects(lab, 3389), "RDP port from the exception subnet must pass"
    # outbound from the host: only to update sources (the client listens on 9 and 10; a
    # refusal is the gateway's reset, or a timeout)
    assert not outbound_open(lab, 9)
    vpatch_hosts(lab, state, "set", host, "--update-source", f"{lab.client_addr}:tcp/9", "--apply")
    assert outbound_open(lab, 9)
    assert not outbound_open(lab, 10)
    assert not http_ok(lab)  # still in setup mode
    vpatch_hosts(lab, state, "release", host, "--apply")
    assert http_ok(lab) and smb_ok(lab) and connects(lab, 8082) and connects(lab, 3389)
    hist = json.loads(vpatch_hosts(lab, state, "history", host, "--json"))
    assert [h["action"] for h in hist] == ["mode", "release"]
    assert [h["target"] for h in hist] == ["setup", "normal"]


def test_lockdown_blocks_unlearned_and_logs(
    lab: LabSpec, state: Path, tmp_path: Path, listeners: None
) -> None:
    host = lab.server_addr
    eve = tmp_path / "eve.json"
    monitor = netns_popen(
        lab.gw_ns,
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "hosts",
            "--state",
            str(state),
            "monitor",
            "--eve",
            str(eve),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)  # NFLOG bound before the learning traffic
        vpatch_hosts(lab, state, "set", host, "--mode", "learning", "--apply")
        assert http_ok(lab) and dns_ok(lab) and connects(lab, 3389)  # learning allows all
        deadline = time.monotonic() + 20
        learned: list[str] = []
        while time.monotonic() < deadline:
            # the monitor may bind its NFLOG group or read the new mode after the first
            # traffic (a loaded machine): traffic goes on until it is learned, as a host's does
            assert http_ok(lab) and dns_ok(lab) and connects(lab, 3389)
            learned = vpatch_hosts(lab, state, "learned", host).split("\n")
            if {
                f"{lab.client_addr} -> {host}:80/tcp",
                f"{lab.client_addr} -> {host}:53/udp",
                f"{lab.client_addr} -> {host}:3389/tcp",
            } <= set(learned):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"tuples not learned: {learned}")
        vpatch_hosts(lab, state, "set", host, "--mode", "lockdown", "--apply")
        assert http_ok(lab) and dns_ok(lab) and connects(lab, 3389)  # learned: allowed
        assert not connects(lab, 8082), "a new port must be blocked in lockdown"
        signature = f"lockdown: new port {lab.client_addr} -> {host}:8082/tcp not learned"
        deadline = time.monotonic() + 10
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline and not events:
            if eve.exists():
                events = [json.loads(x) for x in eve.read_text().splitlines()]
            time.sleep(0.1)
        assert events, "no lockdown event written"
        ev = events[0]
        assert ev["event_type"] == "drop" and ev["dest_port"] == 8082
        assert ev["drop"] == {"reason": "lockdown"}
        alert = ev["alert"]
        assert isinstance(alert, dict)
        assert alert["signature"] == signature and alert["action"] == "blocked"
        # the one-step "allow this"
        vpatch_hosts(lab, state, "allow", host, f"{lab.client_addr} -> {host}:8082/tcp", "--apply")
        assert connects(lab, 8082)
    finally:
        stop_pids([monitor.pid])
        out = monitor.communicate(timeout=10)[0].decode()
    assert "allow with: vpatch hosts allow" in out
