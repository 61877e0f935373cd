"""The systemd notify protocol around a real `vpatch run` (issue 14.2): a Unix datagram socket
made here stands in for systemd's $NOTIFY_SOCKET. READY=1 arrives once the worker is bound and
the rules applied; WATCHDOG=1 keeps arriving while the worker turns; a SIGSTOPped worker (alive
as a process, but doing nothing) stops the keep-alives, which resume after SIGCONT; SIGTERM
sends STOPPING=1. Plus gateway/sdnotify.py on its own (address forms, WATCHDOG_PID)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.control.server import control_request
from gateway.intake.workers import WORKER_STALL_S
from gateway.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[1]
TEST_RULE = REPO / "rules" / "vpatch-test-split.yaml"
WATCHDOG_USEC = 1_500_000  # keep-alives every 0.5 s


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float, until: str | None = None) -> list[str]:
    """Every message that arrives within timeout seconds (each a list of lines joined), or
    those up to and including the first containing `until`."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until is not None and until in got[-1]:
            break
    return got


def wait_for(sock: socket.socket, needle: str, timeout: float) -> list[str]:
    """Messages up to and including the first containing needle (AssertionError if none)."""
    got = receive(sock, timeout, until=needle)
    if not got or needle not in got[-1]:
        raise AssertionError(f"no {needle!r} within {timeout}s; got {got}")
    return got


def test_notifier_sends_datagrams_and_respects_watchdog_pid(
    tmp_path: Path, listener: socket.socket
) -> None:
    path = str(tmp_path / "notify.sock")
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.watchdog_interval == 3.0
    assert n.ready("up") and receive(listener, 1) == ["READY=1\nSTATUS=up"]
    assert n.feed(True, 100.0) and not n.feed(True, 100.5)  # a third of the period apart
    assert not n.feed(False, 200.0)  # unhealthy: never fed
    assert n.feed(True, 101.0)
    assert receive(listener, 0.5) == ["WATCHDOG=1", "WATCHDOG=1"]
    other = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})  # fmt: skip
    assert other.watchdog_interval is None  # the watchdog is another process's
    assert Notifier.from_env({"NOTIFY_SOCKET": "@vpatch-test"}).address == "\0vpatch-test"
    silent = Notifier.from_env({})
    assert not silent.ready("x") and not silent.feed(True, 0.0)
    gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    assert not gone.ready("x")  # logged, never raised


@pytest.mark.netns
def test_ready_watchdog_stops_for_a_stopped_worker(
    ns: str, tmp_path: Path, listener: socket.socket
) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"protected_hosts: [198.18.0.20]\nrules: [{TEST_RULE}]\nqueues: {{first: 7, count: 1}}\n"
        f"events: {{sqlite: null, jsonl: null}}\ncontrol: {{socket: {tmp_path / 'c.sock'}}}\n"
        f"policy: {{database: {tmp_path / 'vpatch.db'}}}\nworkers: {{standby: false}}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC=str(WATCHDOG_USEC))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    worker = None
    try:
        first = wait_for(listener, "READY=1", 60)
        assert not any("WATCHDOG" in m for m in first)  # nothing fed before ready
        status = control_request(tmp_path / "c.sock", "status")
        assert status["queues"]["7"]["bound"] == 1 and status["stalled_queues"] == []
        assert sum(m == "WATCHDOG=1" for m in receive(listener, 2.5)) >= 3

        worker = int(status["queues"]["7"]["pid"])
        os.kill(worker, signal.SIGSTOP)
        # fed on until the worker has not turned for WORKER_STALL_S, then never while stopped
        time.sleep(WORKER_STALL_S + 1.0)
        receive(listener, 0.1)  # what was sent before the stall was noticed
        assert receive(listener, 3.0) == [], log.read_text()
        assert control_request(tmp_path / "c.sock", "status")["stalled_queues"] == [7]

        os.kill(worker, signal.SIGCONT)
        wait_for(listener, "WATCHDOG=1", 10)
        assert control_request(tmp_path / "c.sock", "status")["stalled_queues"] == []
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()
    assert any("STOPPING=1" in m for m in receive(listener, 1.0))
