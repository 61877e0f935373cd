"""`vpatch lab serve` (gateway/lab/serve.py), the Vagrant server VM's services, run here inside a
namespace the test makes (standing in for the VM): nginx, smbd (SMB1) and named start with the
namespace lab's configurations in the namespace's own network stack, answer, and are all gone
after SIGTERM; a service that dies makes serve() fail naming it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.lab.serve as serve_module
from gateway.errors import LabError
from gateway.lab.netns import netns_add, netns_delete, netns_pids, pid_alive, stop_pids
from gateway.lab.serve import serve, serve_spec
from gateway.lab.topology import STATE_ROOT

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0


@pytest.fixture
def serve_ns() -> Iterator[str]:
    """A namespace with only loopback up (the services listen on every address)."""
    name = f"vptserve{os.getpid()}"
    netns_add(name)
    try:
        yield name
    finally:
        stop_pids(netns_pids(name))  # whatever a failed test left (services run in new sessions)
        netns_delete(name)


@pytest.fixture
def served_dir() -> Iterator[Path]:
    """A state dir nginx's workers (user nobody) can reach, unlike pytest's 0700 tmp_path."""
    path = STATE_ROOT / f"vptserve{os.getpid()}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.mark.netns
def test_serve_runs_the_lab_services_until_sigterm(serve_ns: str, served_dir: Path) -> None:
    state = served_dir
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    argv = ["ip", "netns", "exec", serve_ns, sys.executable, "-m", "gateway.cli", "lab", "serve",
            "--state-dir", str(state)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving: nginx pid N, smbd pid N, named pid N; ..."
        assert line.startswith("serving: "), line + (proc.stdout.read() if proc.poll() else "")
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", line)]
        assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)
        page = in_ns(serve_ns, "curl", "-sS", "--max-time", "10", "http://127.0.0.1/")
        assert "vpatch lab server" in page.stdout, page.stderr
        dig = in_ns(serve_ns, "dig", "@127.0.0.1", "server.lab.test", "A", "+short")
        assert dig.stdout.strip() == "198.18.0.20", dig.stdout + dig.stderr
        smb = in_ns(serve_ns, "smbclient", "-N", "//127.0.0.1/public", "-m", "NT1",
                    "--option=client min protocol=NT1", "-c", "get readme.txt -")  # fmt: skip
        assert "Hello from the vpatch lab vm server." in smb.stdout, smb.stdout + smb.stderr
        # the configurations are the namespace lab's, under the state dir only
        assert (state / "nginx" / "nginx.conf").is_file()
        assert (state / "named" / "lab.test.zone").is_file()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 130  # the CLI's unwind status
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(pid_alive(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            proc.terminate()  # `vpatch lab serve` stops its services on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_serve_fails_naming_a_service_that_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # start_services is replaced by a stand-in "nginx" (sleep) that the test kills: the watch
    # loop must notice, raise naming it, and stop what is left
    sleeper = subprocess.Popen(["sleep", "60"])
    monkeypatch.setattr(serve_module, "start_services", lambda spec, here: {"nginx": sleeper.pid})
    killer = threading.Timer(0.5, sleeper.kill)
    killer.start()
    try:
        with pytest.raises(LabError, match=r"nginx \(pid \d+\) died"):
            serve(serve_spec(tmp_path / "served"), threading.Event())
    finally:
        killer.cancel()
        sleeper.kill()
        sleeper.wait()
