"""The lab's gateway keeper: restarts a killed or crashed `vpatch run`, never a stopped or
misconfigured one, and gives up on a loop."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.control.server import ControlError, control_request
from gateway.lab import keeper
from gateway.lab.core import lab_status
from gateway.lab.keeper import keep, should_restart
from gateway.lab.netns import netns_exec

# Dies by the signal or exit status given for run N (counted in a file), else exits 0.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    counter, plan = sys.argv[1], sys.argv[2].split(",")
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(n + 1))
    what = plan[n] if n < len(plan) else "0"
    if what.startswith("-"):
        os.kill(os.getpid(), int(what[1:]))
    sys.exit(int(what))
    """
)


def _run(tmp_path: Path, plan: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, list[str]]:
    monkeypatch.setattr(keeper, "RESTART_DELAY", 0.0)
    said: list[str] = []
    counter = tmp_path / "runs"
    code = keep([sys.executable, "-c", CHILD, str(counter), plan], said.append)
    return code, int(counter.read_text()), said


def test_which_endings_restart() -> None:
    assert should_restart(-signal.SIGKILL) and should_restart(-signal.SIGSEGV)
    assert should_restart(1)
    assert not any(should_restart(c) for c in (0, 2, -signal.SIGTERM, -signal.SIGINT))


def test_a_killed_gateway_comes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, runs, said = _run(tmp_path, f"-{int(signal.SIGKILL)},1,0", monkeypatch)
    assert (code, runs) == (0, 3)
    assert said == ["gateway killed by SIGKILL; restarting in 0s",
                    "gateway exit status 1; restarting in 0s"]  # fmt: skip


@pytest.mark.parametrize("ending", ["2", f"-{int(signal.SIGTERM)}"])
def test_a_stopped_or_misconfigured_gateway_stays_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    code, runs, said = _run(tmp_path, ending, monkeypatch)
    assert runs == 1 and said == [] and code in (2, 128 + signal.SIGTERM)


def test_gives_up_on_a_crash_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, runs, said = _run(tmp_path, ",".join(["1"] * 20), monkeypatch)
    assert code == 1 and runs == keeper.MAX_RESTARTS + 1
    assert said[-1].endswith("giving up")


@pytest.mark.netns
def test_the_lab_restarts_a_killed_gateway(make_lab: Any) -> None:

    spec = make_lab("k", gateway=True)
    info = lab_status(spec.name)
    keeper_pid = info["gateway"]["pid"]
    sock = Path(info["gateway"]["control_socket"])
    children = Path(f"/proc/{keeper_pid}/task/{keeper_pid}/children").read_text().split()
    (gateway_pid,) = map(int, children)
    os.kill(gateway_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # a new `vpatch run` answers on the control socket, its workers bound
        with contextlib.suppress(ControlError, OSError):
            queues = control_request(sock, "status")["queues"].values()
            if not Path(f"/proc/{gateway_pid}").exists() and all(q["bound"] for q in queues):
                break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert lab_status(spec.name)["gateway"]["pid"] == keeper_pid
    curl = ["curl", "-sS", "--max-time", "10", f"http://{spec.server_addr}/"]
    ok = netns_exec(spec.client_ns, curl, check=False, timeout=30)
    assert "vpatch lab server" in ok.stdout, ok.stderr
    bad = netns_exec(spec.client_ns, [*curl, "-H", "X-Test: VPATCH-TEST-EXPLOIT-7f3a"],
                     check=False, timeout=30)  # fmt: skip
    assert bad.returncode != 0 and "vpatch lab server" not in bad.stdout
