"""Keep the lab's `vpatch run` running, as systemd's `Restart=on-failure` does on an appliance.

`python -m gateway.lab.keeper ARGV...` runs ARGV (the lab passes `python -m gateway.cli run -c
<state_dir>/gateway.yaml`) and starts it again RESTART_DELAY seconds after it ends, unless it
ended on its own terms: exit status 0 (stopped), 2 (configuration or start-up error: running
it again would fail the same way), or killed by SIGTERM/SIGINT (someone stopped it). A gateway
killed by SIGKILL, or crashed, comes back; its leftovers need nothing: `vpatch run` removes any
rule of a previous run before applying its own (gateway/firewall/apply.py), and replaces a
stale control socket. SIGTERM/SIGINT to the keeper are passed on to the gateway, and the keeper
then exits with it.

What it guarantees: at most MAX_RESTARTS restarts per RESTART_WINDOW seconds, then it gives up
(exit status 1) rather than loop; each restart is logged on stderr with the reason.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["MAX_RESTARTS", "RESTART_DELAY", "RESTART_WINDOW", "keep", "should_restart"]

RESTART_DELAY: Final = 1.0  # seconds, systemd/vpatch.service has RestartSec=2s
MAX_RESTARTS: Final = 5
RESTART_WINDOW: Final = 60.0
_FINAL: Final = frozenset({0, 2, -signal.SIGTERM, -signal.SIGINT})


def should_restart(returncode: int) -> bool:
    """Did the gateway end in a way that calls for a restart (killed or crashed)?"""
    return returncode not in _FINAL


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def keep(argv: Sequence[str], say: Callable[[str], None] | None = None) -> int:
    """Run argv until it ends on its own terms (see the module comment); its exit status."""
    out = (
        say
        if say is not None
        else (lambda text: print(f"vpatch keeper: {text}", file=sys.stderr, flush=True))
    )
    stop = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        restarts: deque[float] = deque()
        while True:
            child = subprocess.Popen(list(argv))
            code = child.wait()
            if stop or not should_restart(code):
                return code if code >= 0 else 128 - code
            now = time.monotonic()
            while restarts and now - restarts[0] > RESTART_WINDOW:
                restarts.popleft()
            if len(restarts) >= MAX_RESTARTS:
                out(f"gateway {_describe(code)}; {MAX_RESTARTS} restarts within "
                    f"{RESTART_WINDOW:.0f}s, giving up")  # fmt: skip
                return 1
            restarts.append(now)
            out(f"gateway {_describe(code)}; restarting in {RESTART_DELAY:.0f}s")
            time.sleep(RESTART_DELAY)
            if stop:
                return 0
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(keep(sys.argv[1:]))
