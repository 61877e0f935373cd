"""The namespace lab's legacy-server stand-ins run on a machine of their own: the Vagrant lab's
server VM runs `vpatch lab serve`, which starts nginx, smbd (SMB1) and named with exactly the
configurations `vpatch lab up` generates for its server namespace (gateway/lab/services.py),
in this machine's own network namespace.

Guarantees: every configuration, pid and log file is under the state dir (never the system's
/etc configs); serve() returns only after stopping (SIGTERM, grace, SIGKILL) every service it
started, whether a service died, the caller's stop event was set, or an exception (Ctrl-C,
SIGTERM through the CLI) unwound it; it raises LabError naming the service that died.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from gateway.errors import LabError
from gateway.lab.netns import pid_alive, stop_pids
from gateway.lab.services import log_file, log_tail, start_services
from gateway.lab.topology import LabSpec

DEFAULT_SERVE_DIR = Path("/var/lib/vpatch-lab")
# How often the foreground loop checks that every service is still alive.
SERVE_POLL_S = 1.0


def serve_spec(state_dir: Path = DEFAULT_SERVE_DIR) -> LabSpec:
    """The bridge-mode lab's shape (server 198.18.0.20, client 198.18.0.10, as in the zone
    file) with its files under state_dir."""
    return LabSpec(name="vm", state_dir=state_dir)


def serve(
    spec: LabSpec,
    stop: threading.Event,
    on_ready: Callable[[dict[str, int]], None] | None = None,
) -> None:
    """Start the services here, call on_ready(pids) once all listen, run until stop is set.

    LabError when a service fails to start or dies while serving (with its log's tail).
    """
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    spec.state_dir.chmod(0o755)  # nginx's workers (user nobody) read the pages below it
    pids: dict[str, int] = {}
    try:
        pids = start_services(spec, here=True)
        if on_ready is not None:
            on_ready(pids)
        while not stop.wait(SERVE_POLL_S):
            for name, pid in pids.items():
                if not pid_alive(pid):
                    log = log_file(spec, name)
                    raise LabError(f"{name} (pid {pid}) died; log {log}: {log_tail(log)}")
    finally:
        stop_pids(pids.values())
