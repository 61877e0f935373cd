"""The namespace lab against the real kernel and real nginx, smbd and named."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.commands import lab as lab_cmd
from gateway.errors import LabError
from gateway.lab import LabSpec, lab_down, lab_status, lab_up, netns_exec
from gateway.lab.netns import netns_exists, netns_pids, pid_alive, pid_cmdline
from gateway.lab.services import SERVICES, pid_file, read_pid

pytestmark = pytest.mark.netns

CURL = ["curl", "-sS", "--max-time", "10"]
SMB_NT1 = ["--option=client min protocol=NT1", "--option=client max protocol=NT1"]


def lab_name(suffix: str) -> str:
    """Unique to this test session, like the conftest fixtures' names (vpt<pid><suffix>)."""
    return f"vpt{os.getpid()}{suffix}"


def client(spec: LabSpec, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return netns_exec(spec.client_ns, argv, check=False, timeout=30)


def lab_processes(spec: LabSpec) -> list[int]:
    """Live processes whose command line names the lab's state dir."""
    marker = str(spec.state_dir)
    found = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and pid_alive(pid) and any(marker in arg for arg in pid_cmdline(pid)):
            found.append(pid)
    return found


def assert_gone(spec: LabSpec, pids: list[int]) -> None:
    assert [ns for ns in spec.namespaces if netns_exists(ns)] == []
    assert not spec.state_dir.exists()
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert lab_processes(spec) == []


# --- the shared bridge-mode lab ---------------------------------------------------------------


def test_http_through_bridge(lab: LabSpec) -> None:
    page = client(lab, [*CURL, f"http://{lab.server_addr}/"])
    assert page.returncode == 0, page.stderr
    assert "vpatch lab server" in page.stdout
    script = f"curl -sS -m 10 -g 'http://[{lab.server_addr6}]/1k.bin' | wc -c"
    blob = netns_exec(lab.client_ns, ["sh", "-c", script])
    assert blob.stdout.strip() == "1024"


def test_smb1_and_smb3_share_listing(lab: LabSpec) -> None:
    nt1 = client(lab, ["smbclient", "-N", "-L", f"//{lab.server_addr}", *SMB_NT1])
    assert nt1.returncode == 0, nt1.stdout + nt1.stderr
    assert "public" in nt1.stdout
    smb3 = client(
        lab,
        [
            "smbclient",
            "-N",
            "-L",
            f"//{lab.server_addr}",
            "-m",
            "SMB3",
            "--option=client min protocol=SMB3",
        ],
    )
    assert smb3.returncode == 0, smb3.stdout + smb3.stderr
    assert "public" in smb3.stdout
    got = client(
        lab, ["smbclient", "-N", f"//{lab.server_addr}/public", *SMB_NT1, "-c", "get readme.txt -"]
    )
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"vpatch lab {lab.name} server" in got.stdout


def test_dns_authoritative_no_recursion(lab: LabSpec) -> None:
    a = client(lab, ["dig", "+short", "+time=3", f"@{lab.server_addr}", "server.lab.test", "A"])
    assert a.stdout.split() == [lab.server_addr]
    aaaa = client(
        lab, ["dig", "+short", "+time=3", f"@{lab.server_addr6}", "server.lab.test", "AAAA"]
    )
    assert aaaa.stdout.split() == [lab.server_addr6]
    refused = client(lab, ["dig", "+time=3", f"@{lab.server_addr}", "example.com", "A"])
    assert "status: REFUSED" in refused.stdout


def test_bridge_has_only_the_proxy_address_and_traverses_forward(lab: LabSpec) -> None:
    gw_addrs = netns_exec(lab.gw_ns, ["ip", "-o", "addr", "show"]).stdout
    # br0: the proxy's IPv4 and IPv6 addresses and the link-local one IPv6 neighbour
    # discovery needs (gateway/lab/topology.py bridge_address)
    assert [line.split()[1] for line in gw_addrs.splitlines()] == ["lo", "lo"] + ["br0"] * 3
    assert lab.bridge_ip.split("/")[0] in gw_addrs and lab.bridge_ip6 in gw_addrs
    rules = {"iptables": ("-s", lab.client_addr), "ip6tables": ("-s", lab.client_addr6)}
    for tool, match in rules.items():
        netns_exec(lab.gw_ns, [tool, "-I", "FORWARD", *match, "-p", "tcp", "--dport", "80"])
    try:
        assert client(lab, [*CURL, "-o", "/dev/null", f"http://{lab.server_addr}/"]).returncode == 0
        assert (
            client(
                lab, [*CURL, "-o", "/dev/null", "-g", f"http://[{lab.server_addr6}]/"]
            ).returncode
            == 0
        )
        for tool in rules:
            out = netns_exec(lab.gw_ns, [tool, "-x", "-n", "-v", "-L", "FORWARD", "1"]).stdout
            assert int(out.split()[0]) > 0, f"{tool}: bridged packets did not reach FORWARD"
    finally:
        for tool, match in rules.items():
            netns_exec(
                lab.gw_ns,
                [tool, "-D", "FORWARD", *match, "-p", "tcp", "--dport", "80"],
                check=False,
            )


def test_status_reports_running_services(lab: LabSpec) -> None:
    info = lab_status(lab.name)
    assert info["exists"] and info["mode"] == "bridge"
    assert {ns: data["exists"] for ns, data in info["namespaces"].items()} == dict.fromkeys(
        lab.namespaces, True
    )
    server_addrs = {a["addr"] for a in info["namespaces"][lab.server_ns]["addresses"]}
    assert server_addrs == {lab.server_ip, lab.server_ip6}
    assert {name: data["running"] for name, data in info["services"].items()} == dict.fromkeys(
        SERVICES, True
    )
    assert info["gateway"]["pid"] is None
    json.dumps(info)  # JSON-ready


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="vpatch")
    lab_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_cli_status(lab: LabSpec, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["lab", "status", "--name", lab.name, "--json"], capsys)
    assert code == 0 and json.loads(out)["name"] == lab.name
    code, out = run_cli(["lab", "status", "--name", lab.name], capsys)
    assert code == 0 and "smbd     running" in out
    code, out = run_cli(["lab", "status", "--name", lab_name("nosuch")], capsys)
    assert code == 1 and "does not exist" in out


# --- labs of their own ------------------------------------------------------------------------


def test_routed_mode_http(make_lab: Any) -> None:
    spec = make_lab("r", routed=True)
    page = client(spec, [*CURL, f"http://{spec.server_addr}/"])
    assert page.returncode == 0, page.stderr
    assert "routed mode" in page.stdout
    page6 = client(spec, [*CURL, "-g", f"http://[{spec.server_addr6}]/"])
    assert page6.returncode == 0, page6.stderr
    assert netns_exec(spec.gw_ns, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_up_refuses_existing_lab_and_leaves_it_alone(make_lab: Any) -> None:
    spec = make_lab("x", services=False)
    with pytest.raises(LabError, match="already exists"):
        lab_up(LabSpec(name=spec.name), services=False, gateway=False)
    assert all(netns_exists(ns) for ns in spec.namespaces)
    assert (spec.state_dir / "lab.json").exists()


def test_down_removes_everything() -> None:
    spec = LabSpec(name=lab_name("d"))
    try:
        lab_up(spec, services=True, gateway=False)
        pids = [read_pid(pid_file(spec, name)) for name in SERVICES]
        pids_in_ns = netns_pids(spec.server_ns)
        assert all(pid is not None and pid_alive(pid) for pid in pids)
        assert len(pids_in_ns) >= len(SERVICES)
    finally:
        lab_down(spec.name)
    assert_gone(spec, [p for p in pids if p is not None] + pids_in_ns)
    lab_down(spec.name)  # a second down is a no-op


def test_down_after_crash() -> None:
    spec = LabSpec(name=lab_name("c"))
    try:
        lab_up(spec, services=True, gateway=False)
        pids = netns_pids(spec.server_ns)
        for name in SERVICES:
            pid = read_pid(pid_file(spec, name))
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # children (smbd-notifyd, workers) live on
        shutil.rmtree(spec.state_dir)
        assert netns_pids(spec.server_ns), "expected orphaned children in the namespace"
    finally:
        lab_down(spec.name)
    assert_gone(spec, pids)


def test_failure_midway_tears_down() -> None:
    spec = LabSpec(name=lab_name("f"), server_ip="198.18.0.300/24")
    try:
        with pytest.raises(LabError) as info:
            lab_up(spec, services=True, gateway=False)
        message = str(info.value)
        assert "addresses" in message and "198.18.0.300/24" in message
        assert "removed" in message
        assert_gone(spec, [])
    finally:
        lab_down(spec.name)


def test_failure_at_gateway_step_kills_started_services() -> None:
    # The gateway step fails for real (`vpatch run` rejects a rules path that does not exist)
    # after nginx, smbd and named are running: all of them must be gone afterwards.
    spec = LabSpec(name=lab_name("g"), rules=("/nonexistent/vpatch-rules",))
    try:
        with pytest.raises(LabError) as info:
            lab_up(spec, services=True, gateway=True)
        assert "gateway" in str(info.value)
        assert_gone(spec, [])
    finally:
        lab_down(spec.name)


@pytest.mark.parametrize("routed", [False, True], ids=["bridge", "routed"])
def test_lab_with_gateway_blocks_test_exploit(make_lab: Any, routed: bool) -> None:
    spec = make_lab("w", gateway=True, routed=routed)
    info = lab_status(spec.name)
    assert info["gateway"]["running"], info["gateway"]
    # bridge: over IPv4; routed: over IPv6 (both families are protected in both modes)
    url = f"http://[{spec.server_addr6}]/" if routed else f"http://{spec.server_addr}/"
    ok = client(spec, [*CURL, "-g", url])
    assert ok.returncode == 0 and "vpatch lab server" in ok.stdout, ok.stderr
    # The bundled lab test rule (rules/vpatch-test-split.yaml) resets this request.
    bad = client(spec, [*CURL, "-g", "-H", "X-Test: VPATCH-TEST-EXPLOIT-7f3a", url])
    assert bad.returncode != 0 and "vpatch lab server" not in bad.stdout
    eve = Path(info["events"]["jsonl"])
    deadline = time.monotonic() + 10
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not events:
        lines = eve.read_text().splitlines() if eve.exists() else []
        events = [json.loads(line) for line in lines if "9000100" in line]
        time.sleep(0.05)
    assert events and events[0]["alert"]["action"] == "blocked"
    assert events[0]["dest_ip"] == (spec.server_addr6 if routed else spec.server_addr)


def test_offloads_off_option(make_lab: Any) -> None:
    spec = make_lab("o", services=False, offloads_off=True)
    for ns, iface in ((spec.gw_ns, "gw-client"), (spec.client_ns, "eth0")):
        features = netns_exec(ns, ["ethtool", "-k", iface]).stdout
        assert "tcp-segmentation-offload: off" in features
        assert "generic-receive-offload: off" in features


def test_service_start_failure_quotes_its_log(make_lab: Any) -> None:
    from gateway.lab.services import start_services

    spec = make_lab("s", services=False)
    start_services(spec, names=("nginx",))
    # A second nginx cannot bind port 80: it exits, and the error quotes its log.
    with pytest.raises(LabError, match=r"nginx exited during start-up.*Address already in use"):
        start_services(spec, names=("nginx",), timeout=10)


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_lab_up_starts_the_admin_ui_and_down_stops_it() -> None:
    """The README's lab command also serves the UI on loopback with a one-time admin password
    that really logs in; `down` stops it."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    spec = LabSpec(name=lab_name("u"))
    listen = f"127.0.0.1:{_free_loopback_port()}"
    lab_down(spec.name)
    try:
        password = lab_up(spec, services=False, gateway=True, ui_listen=listen)
        assert password and len(password) >= 16
        info = lab_status(spec.name)
        assert info["ui"]["running"], info["ui"]
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"http://{listen}/auth/login", timeout=10).read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token, page[:500]

        def login(pw: str) -> str:
            form = urllib.parse.urlencode(
                {"csrf_token": token.group(1), "username": "admin", "password": pw}
            ).encode()
            with opener.open(f"http://{listen}/auth/login", data=form, timeout=10) as resp:
                return str(resp.geturl())

        with pytest.raises(urllib.error.HTTPError):
            login(password + "x")  # wrong password: refused
        assert not login(password).endswith("/auth/login")  # right one: in
        ui_pid = read_pid(pid_file(spec, "ui"))
        assert ui_pid is not None and pid_alive(ui_pid)
    finally:
        lab_down(spec.name)
    assert not pid_alive(ui_pid)


def test_sigterm_during_bench_removes_its_lab(tmp_path: Path) -> None:
    """`kill PID` of a running `vpatch bench` unwinds like Ctrl-C: the lab, its nginx and the
    iperf3 server it started are gone, exit status 130 (before, SIGTERM left all of them)."""
    spec = LabSpec(name=lab_name("s"))
    argv = [sys.executable, "-m", "gateway.cli", "bench", "--only", "kernel", "--duration", "30",
            "--lab-name", spec.name, "--json-out", str(tmp_path / "b.json")]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "measuring" in line:
                break
        assert any("measuring" in line for line in lines), "".join(lines)
        time.sleep(1)  # iperf3 and wrk are running now
        pids = netns_pids(spec.server_ns) + netns_pids(spec.client_ns)
        assert pids, "expected the bench's servers in the lab"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        assert_gone(spec, pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        lab_down(spec.name)
