"""Network-namespace primitives for the lab: run commands inside a namespace, list and stop the
processes in it, create and delete namespaces.

Guarantees: every command is run with an argv list (no shell); a failing command raises LabError
naming the command, its exit status and its stderr; waits are bounded (the bound is a named
constant or an argument); signals go only to PIDs inside a namespace the caller names (which the
lab made) or to PIDs whose identity was checked, never by process name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import LabError

NETNS_DIR = Path("/run/netns")
# Upper bound on how long any single helper command (ip, sysctl, ethtool) may take.
COMMAND_TIMEOUT_S = 30.0
# How long stopped processes get between SIGTERM and SIGKILL.
TERM_GRACE_S = 3.0
# Longest stderr excerpt quoted in an error message.
MAX_ERROR_OUTPUT = 2000


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT_S,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv in the current namespace and return its completed process.

    Raises LabError (naming the command, exit status and stderr) when check is set and the
    command fails, is missing, or exceeds timeout seconds.
    """
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except FileNotFoundError as err:
        raise LabError(f"command not found: {argv[0]!r} (running {' '.join(argv)!r})") from err
    except subprocess.TimeoutExpired as err:
        raise LabError(f"command timed out after {timeout:.0f}s: {' '.join(argv)!r}") from err
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-MAX_ERROR_OUTPUT:]
        raise LabError(f"command failed (exit {proc.returncode}): {' '.join(argv)!r}: {output}")
    return proc


def netns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs argv inside namespace ns (`ip netns exec` execs, so PIDs are kept);
    ns=None: in the current namespace (a lab VM running the lab's services itself)."""
    return list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]


def netns_exec(
    ns: str | None,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT_S,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace ns and wait for it (see run())."""
    return run(netns_argv(ns, argv), check=check, timeout=timeout, input_text=input_text)


def netns_popen(ns: str | None, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[bytes]:
    """Start argv inside namespace ns in the background, in its own session.

    The returned PID is the PID of argv itself (`ip netns exec` execs it).
    """
    popen_kw.setdefault("start_new_session", True)
    popen_kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.Popen(netns_argv(ns, argv), **popen_kw)
    except FileNotFoundError as err:
        missing, where = ("ip", f"in {ns}") if ns is not None else (argv[0], "here")
        raise LabError(
            f"command not found: {missing!r} (starting {' '.join(argv)!r} {where})"
        ) from err


def netns_exists(ns: str) -> bool:
    """True when a named namespace ns is mounted under /run/netns."""
    return (NETNS_DIR / ns).exists()


def netns_add(ns: str) -> None:
    """Create namespace ns with its loopback up."""
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def netns_delete(ns: str) -> None:
    """Delete namespace ns if it exists (its interfaces go with it)."""
    if netns_exists(ns):
        run(["ip", "netns", "delete", ns])


def netns_pids(ns: str) -> list[int]:
    """PIDs of the processes living in namespace ns (empty if the namespace is gone)."""
    if not netns_exists(ns):
        return []
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def pid_alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z is a zombie, X is dead.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str]:
    """The command line of pid, or an empty list if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop_pids(pids: Iterable[int], grace: float = TERM_GRACE_S) -> list[int]:
    """SIGTERM each pid, wait up to grace seconds, SIGKILL the survivors.

    Returns the PIDs still alive afterwards (normally none). The caller guarantees the PIDs are
    its own.
    """
    wanted = sorted({pid for pid in pids if pid > 1 and pid != os.getpid()})
    for pid in wanted:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in wanted):
        time.sleep(0.02)
    for pid in wanted:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in wanted):
        time.sleep(0.02)
    return [pid for pid in wanted if pid_alive(pid)]


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def sysctl(ns: str, key: str, value: str) -> None:
    """Set sysctl key to value inside namespace ns (never in the root namespace)."""
    netns_exec(ns, ["sysctl", "-q", "-w", f"{key}={value}"])
