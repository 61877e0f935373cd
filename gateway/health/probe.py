"""What the health check looks at, turned into an Observation (gateway/health/checks.py).

- the running gateway: its control socket's `status` (ControlError, or no socket at all,
  means unreachable: the process is dead, hung or not started);
- free space of every filesystem vpatch writes to (the event store's, the EVE log's, the
  policy store's and the health state's directories; one figure per filesystem);
- whether the event store can be written: its filesystem mounted read-only, or the file or
  its directory not writable by this process (checked without writing to it);
- the outcome of the last `vpatch rules update` (gateway/rulepack.py `last_update`).
Guarantees: `observe` never raises for any of these failing; it reports them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.control.server import control_request
from gateway.errors import VpatchError
from gateway.health.checks import DiskUsage, Observation
from gateway.rulepack import last_update

__all__ = ["disk_usage", "observe", "store_problem"]


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_usage(dirs: list[Path]) -> tuple[DiskUsage, ...]:
    """Free space of each filesystem holding one of `dirs` (the first directory names it)."""
    seen: set[int] = set()
    out: list[DiskUsage] = []
    for d in dirs:
        where = _existing(d)
        try:
            dev = os.stat(where).st_dev
            vfs = os.statvfs(where)
        except OSError:
            continue
        if dev in seen or vfs.f_blocks == 0:
            continue
        seen.add(dev)
        out.append(DiskUsage(str(d), 100.0 * vfs.f_bavail / vfs.f_blocks))
    return tuple(out)


def store_problem(db: Path | None) -> str:
    """Why the event store at `db` cannot be written ("" when it can, or none configured)."""
    if db is None:
        return ""
    where = _existing(db.parent)
    try:
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            return f"{db}: its filesystem ({where}) is mounted read-only"
    except OSError as err:
        return f"{db}: {where}: {err.strerror}"
    if db.exists() and not os.access(db, os.W_OK):
        return f"{db}: not writable by this process"
    if where != db.parent or not os.access(where, os.W_OK | os.X_OK):
        return f"{db}: directory {db.parent} missing or not writable"
    return ""


def gateway_status(config: GatewayConfig) -> tuple[dict[str, Any] | None, str]:
    """(the gateway's `status`, "") or (None, why it did not answer)."""
    sock = config.control.socket
    if not sock.exists():
        return None, f"no control socket at {sock}: `vpatch run` is not running"
    try:
        status = control_request(sock, "status", timeout=config.health.control_timeout)
    except VpatchError as err:
        return None, str(err)
    if not isinstance(status, dict):
        return None, f"control socket {sock}: `status` answered {type(status).__name__}"
    return status, ""


def observe(config: GatewayConfig, now: float | None = None) -> Observation:
    status, error = gateway_status(config)
    ev = config.events
    dirs = [p.parent for p in (ev.sqlite, ev.jsonl, config.policy.database, config.health.state)
            if p is not None]  # fmt: skip
    update = last_update(config.rule_pack.dir)
    return Observation(
        time.time() if now is None else now, status, error, disk_usage(dirs),
        store_problem(ev.sqlite), update.error if update is not None else "",
    )  # fmt: skip
