"""Several gateways on one policy: each follows the shared store's policy version and reports
its health there.

`PolicySync(target, name, reload, status, poll_interval, heartbeat)` is a thread of `vpatch run`
when `database.url` is set (docs/multi-gateway.md). Every `poll_interval` it reads the policy
version (one row, bumped by every audited change in the same transaction as the change:
gateway/policy/store.py `audit`); when it differs from the version this gateway last applied
it calls `reload()` (the gateway's own reload path: compile the policy, refill the kernel sets
and rules, have every worker apply it), and records the version as applied only once that
returned. Every `heartbeat` seconds it writes the gateway's row in `gateways` (name, start,
last seen, applied policy version, `status()` as JSON), which the UI lists.

What it guarantees:
- a change made in any UI reaches this gateway within poll_interval plus one reload;
- while the database cannot be reached (or the reload fails), the gateway keeps enforcing the
  policy it has (kernel sets, rules and workers are untouched), the failure is logged once when
  it starts and once when it ends, and the version is retried every poll_interval; the first
  read after the database is back reloads if anything changed meanwhile;
- `reload` is never called concurrently by this thread (one thread, one call at a time).
`heartbeat_row` and `list_gateways` are the store-side reads and writes, used by the UI too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from gateway.database import Target, db_errors, describe
from gateway.errors import VpatchError
from gateway.policy.store import MAX_LIST, Store, StoreError

__all__ = ["GatewayRow", "PolicySync", "heartbeat_row", "list_gateways"]

STALE_AFTER: Final = 3  # heartbeats missed before the UI shows a gateway as silent

log = logging.getLogger("vpatch.sync")


@dataclass(frozen=True, slots=True)
class GatewayRow:
    name: str
    started_at: float
    last_seen: float
    policy_version: int
    status: dict[str, Any]


def heartbeat_row(
    store: Store, name: str, started_at: float, version: int, status: dict[str, Any]
) -> None:
    """Insert or refresh gateway `name`'s row (not audited: it changes no policy)."""
    store.db.execute(
        "INSERT INTO gateways (name, started_at, last_seen, policy_version, status_json)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET started_at ="
        " excluded.started_at, last_seen = excluded.last_seen, policy_version ="
        " excluded.policy_version, status_json = excluded.status_json",
        (name, started_at, time.time(), version, json.dumps(status, default=str)),
    )


def list_gateways(store: Store) -> list[GatewayRow]:
    rows = store.db.execute("SELECT * FROM gateways ORDER BY name LIMIT ?", (MAX_LIST,))
    return [
        GatewayRow(
            r["name"],
            float(r["started_at"]),
            float(r["last_seen"]),
            int(r["policy_version"]),
            json.loads(r["status_json"] or "{}"),
        )  # fmt: skip
        for r in rows
    ]


class PolicySync:
    """Follows the shared policy version and writes this gateway's heartbeat (a thread)."""

    def __init__(
        self,
        target: Target,
        name: str,
        reload: Callable[[], object],
        status: Callable[[], dict[str, Any]],
        poll_interval: float,
        heartbeat: float,
    ) -> None:
        self.target = target
        self.name = name
        self._reload = reload
        self._status = status
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.started_at = time.time()
        self.applied: int | None = None  # the store's version this gateway runs
        self.reloads = 0
        self.failing = False
        self.last_error = ""
        self._store: Store | None = None
        self._next_beat = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vpatch-policy-sync", daemon=True)

    def start(self, applied: int | None = None) -> None:
        """`applied`: the version the gateway loaded at start (None: reload on the first read)."""
        self.applied = applied
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._store is not None:
            self._store.close()
            self._store = None

    def stats(self) -> dict[str, Any]:
        return {"applied": self.applied, "reloads": self.reloads, "failing": self.failing,
                "last_error": self.last_error}  # fmt: skip

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.step()

    def step(self) -> None:
        """One round: follow the version, and beat when due (failures logged, never raised)."""
        try:
            if self._store is None:
                self._store = Store(self.target)
            version = self._store.policy_version()
            if version != self.applied:
                self._reload()
                self.applied = version
                self.reloads += 1
                log.info("shared policy version %d applied", version)
            if time.monotonic() >= self._next_beat:
                self._next_beat = time.monotonic() + self.heartbeat
                status = {**self._status(), "sync": self.stats()}
                heartbeat_row(self._store, self.name, self.started_at, self.applied, status)
        except db_errors(VpatchError, OSError) as err:
            self._failed(err)
            return
        if self.failing:
            self.failing = False
            log.warning("shared policy store %s reachable again", describe(self.target))

    def _failed(self, err: BaseException) -> None:
        self.last_error = f"{describe(self.target)}: {err}"
        if self._store is not None and not isinstance(err, StoreError):
            with contextlib.suppress(*db_errors()):
                self._store.close()
            self._store = None
        if not self.failing:
            self.failing = True
            log.error("policy sync failing, the gateway keeps its policy: %s", self.last_error)
