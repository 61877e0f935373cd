"""The last policy a gateway read from a shared store, kept on its own disk.

With `database.url` (docs/multi-gateway.md) the policy lives on another machine. Every
successful read of it by `vpatch run` (the supervisor's reload, each worker's start and
reload) saves what was read here (`save`), and a read that fails because the database is away
falls back to it (`load`), so a worker restarted during an outage enforces the same policy as
the others instead of the rules' defaults.

Guarantees: the file (`policy-cache.pickle` beside `policy.database`) is replaced atomically
(a reader sees the old or the new one, never half), created 0600 by the gateway (root) in its
state directory, which nobody else may write (gateway/statefiles.py checks it), so the pickle
it loads is one this gateway wrote; `load` returns None for a missing or unreadable file,
never raises.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.config import GatewayConfig

__all__ = ["CACHE_NAME", "StoredPolicy", "cache_path", "load", "save"]

CACHE_NAME: Final = "policy-cache.pickle"


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """What the gateway reads of the policy store, before compiling it."""

    hosts: list[Any]
    groups: list[Any]
    assignments: list[Any]
    exceptions: list[Any]
    app_controls: list[tuple[str, str]]  # (host address, rule text)


def cache_path(config: GatewayConfig) -> Path:
    return config.policy.database.parent / CACHE_NAME


def save(path: Path, policy: StoredPolicy) -> None:
    """Replace the cache atomically (errors are the caller's: OSError)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, tmp = tempfile.mkstemp(prefix=".policy-cache.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            pickle.dump(policy, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: Path) -> StoredPolicy | None:
    try:
        with path.open("rb") as f:
            policy = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    return policy if isinstance(policy, StoredPolicy) else None
