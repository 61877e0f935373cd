"""gateway/lab/netns.py's process helpers on processes this test starts itself (no namespace
needed): pid_alive (running, zombie, gone), pid_cmdline, stop_pids (SIGTERM, then SIGKILL for
a process that ignores it; never this process, never PID 1), run's errors naming the command,
and the argv that enters a namespace. Namespaces themselves: tests/lab/test_lab.py (root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gateway.errors import LabError
from gateway.lab.netns import netns_argv, pid_alive, pid_cmdline, run, stop_pids

IGNORE_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('ready', flush=True)
time.sleep(60)
"""


def test_pid_alive_running_zombie_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    try:
        assert pid_alive(proc.pid) and pid_alive(os.getpid())
        assert proc.stdin is not None
        proc.stdin.close()  # it exits; not reaped yet, it is a zombie
        deadline = time.monotonic() + 10
        while pid_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(proc.pid)
        assert os.path.exists(f"/proc/{proc.pid}")  # the zombie is still listed
    finally:
        proc.wait()
    assert not pid_alive(proc.pid) and pid_cmdline(proc.pid) == []


def test_pid_cmdline() -> None:
    code = "print('ready', flush=True); import time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, "arg with space"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert pid_cmdline(proc.pid) == [sys.executable, "-c", code, "arg with space"]
    finally:
        proc.kill()
        proc.wait()


def test_stop_pids_terms_then_kills() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        started = time.monotonic()
        assert stop_pids([polite.pid, stubborn.pid, polite.pid], grace=0.5) == []
        assert time.monotonic() - started < 5
        assert polite.wait(5) == -15 and stubborn.wait(5) == -9  # SIGTERM, then SIGKILL
    finally:
        for p in (polite, stubborn):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_stop_pids_never_signals_itself_or_init() -> None:
    assert stop_pids([os.getpid(), 1, 0, -1], grace=0.1) == []
    assert pid_alive(os.getpid())


def test_run_errors_name_the_command() -> None:
    assert run([sys.executable, "-c", "print('hi')"]).stdout == "hi\n"
    with pytest.raises(LabError, match=r"command failed \(exit 3\): .*'boom'"):
        run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])
    assert run([sys.executable, "-c", "raise SystemExit(3)"], check=False).returncode == 3
    with pytest.raises(LabError, match="command not found: 'vpatch-no-such-program'"):
        run(["vpatch-no-such-program"], check=False)  # missing: an error even unchecked
    with pytest.raises(LabError, match=r"command timed out after 0s: .*sleep"):
        run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)


def test_netns_argv() -> None:
    assert netns_argv("vpt1-gw", ["iptables", "-S"]) == [
        "ip",
        "netns",
        "exec",
        "vpt1-gw",
        "iptables",
        "-S",
    ]
