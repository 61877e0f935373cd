"""`vpatch scan` against the namespace lab's real services, from the lab's client namespace,
scanning only the lab server's 198.18.x address: nginx (without WebDAV on :80, with WebDAV on a
test nginx :8081), Samba with SMB1 (the lab's smbd; and a test smbd on :4445 restarted with
`server min protocol = SMB2`), BIND with version.bind; recommendations from the test rules in
tests/data/lifecycle/, applied to a state file with history."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lab import LabSpec, netns_popen
from gateway.lab.netns import stop_pids
from gateway.lab.services import binary, listening
from gateway.lifecycle.state import LifecycleStore

pytestmark = pytest.mark.netns

RULES = Path(__file__).resolve().parents[1] / "data" / "lifecycle"
DAV_PORT = 8081
SMB_PORT = 4445
START_TIMEOUT_S = 15.0


def scan(lab: LabSpec, state: Path, ports: str, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.client_ns,
            sys.executable,
            "-m",
            "gateway.cli",
            "scan",
            lab.server_addr,
            "--json",
            "--rules",
            str(RULES),
            "--state",
            str(state),
            "--ports",
            ports,
            "--timeout",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)["hosts"][0]
    return report


def finding(report: dict[str, Any], port: int, transport: str = "tcp") -> dict[str, Any]:
    found = [f for f in report["findings"] if f["port"] == port and f["transport"] == transport]
    assert found, f"nothing identified on {port}/{transport}: {report}"
    return found[0]


def recs(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["rule_id"]: r for r in report["recommendations"]}


def wait_listening(lab: LabSpec, port: int, pid: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while port not in listening(lab.server_ns)[0]:
        assert time.monotonic() < deadline, f"nothing listens on {port} in {lab.server_ns}"
        assert Path(f"/proc/{pid}").exists(), f"process {pid} for port {port} died"
        time.sleep(0.05)


@pytest.fixture
def dav_nginx(lab: LabSpec, tmp_path: Path) -> Iterator[int]:
    base = tmp_path / "nginx"
    (base / "html").mkdir(parents=True)
    (base / "html" / "index.html").write_text("dav\n")
    conf = base / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
pid {base}/nginx.pid;
error_log {base}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {base};
    server {{
        listen {lab.server_addr}:{DAV_PORT};
        root {base}/html;
        dav_methods PUT DELETE MKCOL COPY MOVE;
        create_full_put_path off;
    }}
}}
""")
    proc = netns_popen(
        lab.server_ns,
        [binary("nginx"), "-c", str(conf), "-p", str(base), "-e", str(base / "error.log")],
    )
    try:
        wait_listening(lab, DAV_PORT, proc.pid)
        yield DAV_PORT
    finally:
        stop_pids([proc.pid])
        proc.wait(5)


def smb_conf(base: Path, min_protocol: str) -> Path:
    dirs = {
        k: base / k
        for k in ("private", "lock", "state", "cache", "pid", "ncalrpc", "binddns", "log", "share")
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    conf = base / "smb.conf"
    conf.write_text(f"""[global]
    server role = standalone server
    workgroup = SCANTEST
    netbios name = SCANTEST
    server min protocol = {min_protocol}
    smb ports = {SMB_PORT}
    disable netbios = yes
    map to guest = Bad User
    load printers = no
    printcap name = /dev/null
    disable spoolss = yes
    private dir = {dirs["private"]}
    lock directory = {dirs["lock"]}
    state directory = {dirs["state"]}
    cache directory = {dirs["cache"]}
    pid directory = {dirs["pid"]}
    ncalrpc dir = {dirs["ncalrpc"]}
    binddns dir = {dirs["binddns"]}
    passdb backend = tdbsam:{dirs["private"]}/passdb.tdb
    log file = {dirs["log"]}/log.%m
[share]
    path = {dirs["share"]}
    guest ok = yes
    read only = yes
""")
    return conf


class Smbd:
    """A test smbd in the lab's server namespace that can be restarted with another config."""

    def __init__(self, lab: LabSpec, base: Path) -> None:
        self.lab, self.base = lab, base
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, min_protocol: str) -> None:
        self.stop()
        conf = smb_conf(self.base, min_protocol)
        self.proc = netns_popen(
            self.lab.server_ns,
            [
                binary("smbd"),
                "--foreground",
                "--no-process-group",
                "--debug-stdout",
                "-s",
                str(conf),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.lab, SMB_PORT, self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pids([self.proc.pid])
            self.proc.wait(5)
            self.proc = None
            deadline = time.monotonic() + START_TIMEOUT_S
            while SMB_PORT in listening(self.lab.server_ns)[0]:  # its children leave too
                assert time.monotonic() < deadline, "old smbd still listening"
                time.sleep(0.05)


@pytest.fixture
def smbd(lab: LabSpec, tmp_path: Path) -> Iterator[Smbd]:
    s = Smbd(lab, tmp_path / "samba")
    try:
        yield s
    finally:
        s.stop()


def test_scan_finds_lab_services_and_recommends(lab: LabSpec, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    report = scan(lab, state, "80,445,u53", "--apply")
    http = finding(report, 80)
    assert http["product"] == "nginx" and http["version"].startswith("1.")
    assert http["features"] == {"webdav": False}
    smb = finding(report, 445)
    assert smb["product"] == "samba" and smb["version"].startswith("4.")
    assert smb["features"]["smb1"] is True and smb["features"]["smb2"] is True
    assert any("NT LM 0.12" in e["saw"] for e in smb["evidence"])
    assert any("Samba" in e["saw"] for e in smb["evidence"])
    dns = finding(report, 53, "udp")
    assert dns["product"] == "bind" and dns["version"].startswith("9.")
    r = recs(report)
    assert r[9105001]["action"] == "assign"  # SMB1
    assert r[9105004]["action"] == "assign"  # BIND 9.18
    assert 9105002 not in r and 9105005 not in r  # no WebDAV on :80, no IIS
    assert report["applied"]
    assigned = LifecycleStore(state).host(lab.server_addr).assigned
    assert 9105001 in assigned and 9105004 in assigned


def test_scan_sees_webdav(lab: LabSpec, tmp_path: Path, dav_nginx: int) -> None:
    report = scan(lab, tmp_path / "state.json", f"80,{dav_nginx}")
    assert finding(report, 80)["features"]["webdav"] is False
    dav = finding(report, dav_nginx)
    assert dav["product"] == "nginx" and dav["features"]["webdav"] is True
    assert any("409" in e["saw"] for e in dav["evidence"])
    assert recs(report)[9105002]["action"] == "assign"


def test_smb1_off_recommends_removal_with_evidence(
    lab: LabSpec, tmp_path: Path, smbd: Smbd
) -> None:
    state = tmp_path / "state.json"
    store = LifecycleStore(state)
    store.update_host(lab.server_addr, auto_apply=True)  # per-host auto-apply
    smbd.start("NT1")
    first = scan(lab, state, str(SMB_PORT))
    assert finding(first, SMB_PORT)["features"]["smb1"] is True
    assert recs(first)[9105001]["action"] == "assign" and first["applied"]
    assert 9105001 in store.host(lab.server_addr).assigned

    smbd.start("SMB2")  # restart with SMB1 turned off
    second = scan(lab, state, str(SMB_PORT))
    smb = finding(second, SMB_PORT)
    assert smb["features"]["smb1"] is False and smb["features"]["smb2"] is True
    rec = recs(second)[9105001]
    assert rec["action"] == "unassign"
    assert any("smb1 absent" in e["saw"] for e in rec["evidence"]), rec
    assert 9105001 not in store.host(lab.server_addr).assigned
    hist = [h for h in store.history(lab.server_addr) if h.target == "9105001"]
    assert [h.action for h in hist] == ["assign", "unassign"]
    assert any("smb1 absent" in saw for _, saw in hist[-1].evidence)
