"""The running gateway's record of each queue's worker (the worker process itself:
gateway/intake/nfqueue.py), and which queues are stalled.

A `QueueWorker` is the queue's, not a process's: its counters (WorkerStats, shared memory)
outlive the workers that write them, and it holds the current process, the standby, the
restart history and the liveness figures `stalled_queues` compares. gateway/supervisor.py
starts, restarts and stops the processes; gateway/control/status.py and
gateway/control/reload.py read and ask the workers through these records.

Guarantees: `stalled_queues` only reads the shared counters and the process state (it updates
the record's own `progress` figures); a queue counts as stalled while its worker is dead, or
when neither its loop heartbeat nor its packet count has moved for WORKER_STALL_S
(`bind_timeout` while it has not bound yet, loading its rules).
"""

from __future__ import annotations

import multiprocessing.process
import time
from collections import deque
from typing import Any

from gateway.intake.nfqueue import WorkerStats

__all__ = ["WORKER_STALL_S", "QueueWorker", "stalled_queues"]

# A worker whose loop has not turned (heartbeat) and that has counted no packet for this long
# is stalled (stopped, hung): the systemd watchdog is no longer fed (gateway/sdnotify.py).
WORKER_STALL_S = 5.0


class QueueWorker:
    """One queue's worker as the running gateway sees it."""

    def __init__(self, queue_num: int) -> None:
        self.queue_num = queue_num
        self.stats = WorkerStats()
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.died: float | None = None  # monotonic time the current death was noticed
        self.standby: multiprocessing.process.BaseProcess | None = None  # rules loaded, waiting
        self.go: Any = None  # the standby's multiprocessing Event
        self.packets_at_start = 0  # `packets` when the current worker started (kernel_unseen)
        self.progress: tuple[int, int] = (0, 0)  # (heartbeat, packets) at the last change
        self.progress_at = time.monotonic()  # when `progress` last changed


def stalled_queues(workers: list[QueueWorker], bind_timeout: float) -> list[int]:
    """The queues whose worker is dead or has not moved (loop heartbeat, packets) for
    WORKER_STALL_S (a worker still loading its rules before it binds: `bind_timeout`,
    workers.bind_timeout): while any is, the systemd watchdog is not fed."""
    now = time.monotonic()
    stalled = []
    for w in workers:
        progress = (w.stats.get("heartbeat"), w.stats.get("packets"))
        if progress != w.progress:
            w.progress, w.progress_at = progress, now
        alive = w.proc is not None and w.died is None and w.proc.is_alive()
        limit = WORKER_STALL_S if w.stats.get("bound") else bind_timeout
        if not alive or now - w.progress_at > limit:
            stalled.append(w.queue_num)
    return stalled
