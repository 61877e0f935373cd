"""A `vpatch run` in a lab's gateway namespace with the HTTPS plane, for tests and benchmarks.

`LabGateway(spec, state, **overrides)` writes the lab's gateway configuration (gateway/lab/
services.py gateway_config: nginx's HTTPS proxied) with every state file under `state` and the
given top-level keys overridden, and starts the gateway (its output in state/gateway.log);
`wait(inspecting)` polls `status` until a proxied service (the first unless `index` says) is
(or is not) inspected, `events()` reads the EVE file, `stop()` ends the gateway (SIGTERM,
SIGKILL after 30 s). `curl(spec, *args)` and `send(spec, requests)` are the client
namespace's HTTPS clients (curl; exact request bytes, gateway/testing/tls_client.py). Test
tooling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import yaml

from gateway.config import BUNDLED_RULES
from gateway.control.server import ControlError, control_request
from gateway.lab.netns import netns_exec
from gateway.lab.services import gateway_config
from gateway.lab.topology import LabSpec

__all__ = ["READY_TIMEOUT", "LabGateway", "curl", "send"]

REPO: Final = Path(__file__).resolve().parents[2]
READY_TIMEOUT: Final = 120.0  # seconds for the gateway and its proxy to load the rules


class LabGateway:
    """`vpatch run` in the lab's gateway namespace, with every state file in `state`."""

    def __init__(self, spec: LabSpec, state: Path, **overrides: Any) -> None:
        state.mkdir(parents=True, exist_ok=True)
        config = gateway_config(spec)
        config.update(
            events={"sqlite": str(state / "events.db"), "jsonl": str(state / "eve.json")},
            control={"socket": str(state / "control.sock")},
            policy={"database": str(state / "vpatch.db")},
            queues={"first": 0, "count": 1},
            **overrides,
        )
        if "rules" not in overrides:  # the lab's rules.d exists only once `lab up` made it
            rules: list[str] = [str(r) for r in config["rules"]]  # type: ignore[attr-defined]
            config["rules"] = [r for r in rules if Path(r).exists()] or [str(BUNDLED_RULES)]
        self.path = state / "gateway.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.state = state
        self.socket = state / "control.sock"
        self.log = (state / "gateway.log").open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        argv = ["ip", "netns", "exec", spec.gw_ns, sys.executable, "-m", "gateway.cli", "run"]
        self.proc = subprocess.Popen(
            [*argv, "-c", str(self.path)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def status(self) -> dict[str, Any]:
        reply: dict[str, Any] = control_request(self.socket, "status")
        return reply

    def service(self, index: int = 0) -> dict[str, Any]:
        services: list[dict[str, Any]] = self.status()["tls_proxy"]
        return services[index]

    def wait(
        self,
        inspecting: bool,
        timeout: float = READY_TIMEOUT,
        bypassed: bool | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        """Service `index`'s status once its `inspecting` is `inspecting` (and its `bypassed`
        is `bypassed`, unless None)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, (self.state / "gateway.log").read_text()[-3000:]
            try:
                service = self.service(index)
                if service["inspecting"] is inspecting and (
                    bypassed is None or service["bypassed"] is bypassed
                ):
                    return service
            except (ControlError, OSError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, (self.state / "gateway.log").read_text()[-3000:]
            time.sleep(0.2)

    def events(self) -> list[dict[str, Any]]:
        path = self.state / "eve.json"
        time.sleep(0.6)  # the sink writes in batches
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def curl(spec: LabSpec, *args: str) -> subprocess.CompletedProcess[str]:
    """curl (certificate not checked, 8 s at most) from the lab's client; stdout: the HTTP
    status code."""
    argv = ["curl", "-sk", "--max-time", "8", "-o", "/dev/null", "-w", "%{http_code}", *args]
    return netns_exec(spec.client_ns, argv, check=False)


def send(
    spec: LabSpec, requests: list[bytes], versions: tuple[str, ...] = (), host: str = ""
) -> list[int]:
    """Each request on its own TLS connection from the client to `host` (default the server's
    IPv4 address), port 443; their status codes (gateway/testing/tls_client.py)."""
    argv = [sys.executable, "-m", "gateway.testing.tls_client", host or spec.server_addr, "443"]
    proc = subprocess.run(
        ["ip", "netns", "exec", spec.client_ns, *argv, *versions],
        input=json.dumps([r.hex() for r in requests]),
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )  # fmt: skip
    codes: list[int] = json.loads(proc.stdout)
    return codes
