"""Update sources by name, with the lab's real BIND (tests need root: netns).

A routed lab (the gateway has an address on each side, so `vpatch run` can ask DNS itself)
whose BIND (on the server) serves `updates.lab.test` with a 2 s TTL. The server is put in
setup mode with the update source `updates.lab.test:tcp/8080`; the gateway resolves it and
the server may reach the answer's address on 8080, nothing else. Then the zone is rewritten
with a new serial and BIND reloaded (SIGHUP by PID): the gateway's names ipset follows, the
new address passes and the old one is refused once its answer expired. The server may also
reach the gateway's other configured resolver on port 53 (the DNS setup hosts need)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lab import LabSpec, netns_exec, netns_popen
from gateway.lab.netns import stop_pids
from gateway.lab.services import listening, pid_file, read_pid, zone_text
from gateway.testing.inline import package_env, running_gateway

from .test_modes_lab import LISTENER

pytestmark = pytest.mark.netns

NAME = "updates.lab.test"
TTL = 2
FOLLOW_DEADLINE_S = 20.0  # a liveness bound (TTL 2 s + grace 2 s + one query), not a figure
OLD, NEW = "198.18.1.10", "198.18.1.11"  # the client namespace's two addresses
UPDATE_PORT = 8080
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as c:
        c.recv(16)
    print("open")
except OSError as e:
    print("failed", e)
"""


def set_record(lab: LabSpec, address: str, serial: int) -> None:
    """Rewrite the zone with `updates` -> address (TTL 2 s) and reload BIND by PID."""
    zone = lab.state_dir / "named" / "lab.test.zone"
    text = zone_text(lab).replace("( 1 3600", f"( {serial} 3600")
    zone.write_text(text + f"updates {TTL} IN A {address}\n")
    pid = read_pid(pid_file(lab, "named"))
    assert pid is not None, "named is not running"
    deadline = time.monotonic() + 10
    while dig(lab) != address:
        os.kill(pid, signal.SIGHUP)  # named: reload the configuration and changed zones
        assert time.monotonic() < deadline, f"BIND did not load serial {serial}"
        time.sleep(0.3)


def dig(lab: LabSpec) -> str:
    return netns_exec(
        lab.server_ns,
        ["dig", "+short", "+time=1", "+tries=1", f"@{lab.server_addr}", NAME, "A"],
        check=False,
    ).stdout.strip()


def reaches(lab: LabSpec, address: str, port: int) -> bool:
    out = netns_exec(
        lab.server_ns, [sys.executable, "-c", CONNECT, address, str(port)], timeout=30
    ).stdout
    return out.startswith("open")


def names_set(lab: LabSpec) -> str:
    return netns_exec(lab.gw_ns, ["ipset", "list", "vpatch-hm-names4"]).stdout


def wait_for(what: str, check: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < FOLLOW_DEADLINE_S, what
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def routed(make_lab: Callable[..., Any]) -> Iterator[LabSpec]:
    lab: LabSpec = make_lab("n", routed=True)
    netns_exec(lab.client_ns, ["ip", "addr", "add", f"{NEW}/24", "dev", "eth0"])
    listeners = [
        netns_popen(lab.client_ns, [sys.executable, "-c", LISTENER, addr, str(port)])
        for addr, port in ((OLD, UPDATE_PORT), (NEW, UPDATE_PORT), (OLD, 53), (OLD, 54))
    ]
    try:
        deadline = time.monotonic() + 10
        while not {UPDATE_PORT, 53, 54} <= listening(lab.client_ns)[0]:
            assert time.monotonic() < deadline, "test listeners did not start"
            time.sleep(0.05)
        yield lab
    finally:
        stop_pids([p.pid for p in listeners])
        for p in listeners:
            p.wait(5)


def test_named_update_source_follows_a_changed_dns_answer(routed: LabSpec, tmp_path: Path) -> None:
    lab = routed
    set_record(lab, OLD, 2)
    cfg = {
        "protected_hosts": [lab.server_addr],
        "queues": {"first": 0, "count": 1},
        "events": {"sqlite": None, "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "policy": {"database": str(tmp_path / "vpatch.db")},
        # BIND on the server answers; the second server is only there for the DNS rule
        "resolver": {"servers": [lab.server_addr, OLD], "min_ttl": 1, "max_ttl": 60},
    }
    with running_gateway(lab, tmp_path, cfg) as gw:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "hosts", "-c", str(gw.config), "set",
             lab.server_addr, "--mode", "setup", "--update-source", f"{NAME}:tcp/{UPDATE_PORT}"],
            capture_output=True, text=True, timeout=60, check=False, env=package_env(),
        )  # fmt: skip
        assert proc.returncode == 0 and "gateway reloaded" in proc.stdout, proc.stderr
        took = wait_for("the answer's address is allowed", lambda: reaches(lab, OLD, UPDATE_PORT))
        print(f"\nfirst answer allowed after {took:.2f}s")
        assert f"{lab.server_addr},tcp:{UPDATE_PORT},{OLD} timeout" in names_set(lab)
        assert not reaches(lab, NEW, UPDATE_PORT), "an address no answer gave is refused"
        assert not reaches(lab, OLD, 54), "another port of the update source is refused"
        assert reaches(lab, OLD, 53), "the host's DNS to the gateway's resolver passes"

        set_record(lab, NEW, 3)
        took = wait_for("the new address is allowed", lambda: reaches(lab, NEW, UPDATE_PORT))
        print(f"new answer allowed after {took:.2f}s")
        took = wait_for(
            "the old address is refused once its answer expired",
            lambda: not reaches(lab, OLD, UPDATE_PORT),
        )
        print(f"old answer refused after another {took:.2f}s")
        members = names_set(lab)
        assert NEW in members and f",{OLD} " not in members, members
        status = gw.status()["update_source_names"]
        assert status["answers"] >= 2 and NAME in status["names"], status
