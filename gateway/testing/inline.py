"""A real `vpatch run` inside a lab's gateway namespace, for tests and benchmarks.

`running_gateway(lab, workdir, config)` writes the config to workdir/gateway.yaml, starts
`python -m gateway.cli run -c ...` in the gateway namespace, waits until it says it is ready and
yields a RunningGateway. On the way out, also on failure, it stops that process by PID (SIGTERM,
then SIGKILL) and removes whatever kernel rule of ours a failed run may have left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from gateway.control.server import control_request
from gateway.firewall.apply import cleanup_all

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
READY_LINE = b"vpatch run: ready"


class LabLike(Protocol):
    @property
    def gw_ns(self) -> str: ...


def package_env() -> dict[str, str]:
    """The environment for a child `python -m gateway.cli`: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def in_ns(
    ns: str, argv: list[str], timeout: float = 30, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace ns; output captured as text, never raises on exit status."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


@dataclass
class RunningGateway:
    proc: subprocess.Popen[bytes]
    config: Path
    log: Path
    control: Path
    jsonl: Path | None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = control_request(self.control, "status")
        return result

    def queued(self) -> int:
        return sum(q["packets"] for q in self.status()["queues"].values())

    def worker_pids(self) -> list[int]:
        return [q["pid"] for q in self.status()["queues"].values()]

    def events(self) -> list[dict[str, Any]]:
        if self.jsonl is None or not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]


@contextmanager
def running_gateway(
    lab: LabLike, workdir: Path, config: Mapping[str, Any]
) -> Iterator[RunningGateway]:
    """`vpatch run` with `config` (a gateway config mapping) in lab's gateway namespace."""
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    log = workdir / "gateway.log"
    control = Path(config["control"]["socket"])
    jsonl = (config.get("events") or {}).get("jsonl")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.gw_ns, sys.executable, "-m", "gateway.cli", "run",
             "-c", str(path)],
            stdout=out, stderr=subprocess.STDOUT, env=package_env(),
        )  # fmt: skip
    gw = RunningGateway(proc, path, log, control, Path(jsonl) if jsonl else None)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while READY_LINE not in log.read_bytes():
            if proc.poll() is not None:
                raise AssertionError(f"vpatch run exited: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"vpatch run not ready: {log.read_text()}")
            time.sleep(0.1)
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        cleanup_all("VPATCH", netns=lab.gw_ns)  # whatever a failed run left behind
