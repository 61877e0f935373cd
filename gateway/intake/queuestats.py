"""The kernel's per-queue NFQUEUE counters (/proc/net/netfilter/nfnetlink_queue).

What it does: `read_queue_counters(path)` parses the file the kernel writes for every bound
queue of the reading process's network namespace (net/netfilter/nfnetlink_queue.c
`seq_show`): one line per queue with nine numbers,
    queue_num  peer_portid  queue_total  copy_mode  copy_range
    queue_dropped  queue_user_dropped  id_sequence  1
into `QueueCounters` records keyed by queue number. `vpatch run` runs inside the gateway's
namespace, so it sees exactly its own queues; the control `status` reports them per queue.

Meaning (the kernel source):
- `queue_total`: packets waiting in the kernel for the worker's verdict right now.
- `queue_dropped`: packets dropped because the queue was full (`queues.max_len`), only
  without the fail-open flag; with fail_policy open the kernel accepts them instead and
  counts nothing (they pass uninspected).
- `user_dropped`: packets the kernel could not deliver to the worker's netlink socket
  (receive buffer full, ENOBUFS), again only counted without fail-open.
- `id_sequence`: the last packet id handed out on this queue (packets queued since bind).
  Compared with the worker's own `packets` counter it shows packets that reached the queue
  but not the worker: `id_sequence - queue_total - packets` (ignoring the race between the
  two reads), which also covers fail-open bypasses of the netlink path.
The numbers restart at 0 whenever a queue is unbound and bound again (a worker restart).

What it guarantees: never raises on a missing file (no queue bound yet, or netfilter queue
module absent: empty result) or on malformed lines (skipped, counted in `malformed`); reads at
most MAX_PROC_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "MAX_PROC_BYTES",
    "PROC_PATH",
    "QueueCounters",
    "QueueCountersReading",
    "parse_queue_counters",
    "read_queue_counters",
]

PROC_PATH: Final = Path("/proc/net/netfilter/nfnetlink_queue")
MAX_PROC_BYTES: Final = 1 << 20  # 65536 queues of ~16 bytes each fit well within this


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """One queue's line (field names as in the kernel's nfqnl_instance)."""

    queue: int
    peer_portid: int
    queue_total: int
    copy_mode: int
    copy_range: int
    queue_dropped: int
    user_dropped: int
    id_sequence: int

    @property
    def drops(self) -> int:
        """Packets the kernel dropped on this queue (full queue + undeliverable)."""
        return self.queue_dropped + self.user_dropped

    def as_dict(self) -> dict[str, int]:
        return {
            "queue_total": self.queue_total,
            "queue_dropped": self.queue_dropped,
            "user_dropped": self.user_dropped,
            "id_sequence": self.id_sequence,
            "queue_drops": self.drops,
        }


@dataclass(frozen=True, slots=True)
class QueueCountersReading:
    """The queues found in one read, and how many lines did not parse."""

    queues: dict[int, QueueCounters]
    malformed: int
    available: bool  # False: the file does not exist / could not be read


def parse_queue_counters(text: str) -> QueueCountersReading:
    """Parse the file's text (see the module comment); never raises."""
    queues: dict[int, QueueCounters] = {}
    malformed = 0
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            numbers = [int(p) for p in parts[:8]]
        except ValueError:
            malformed += 1
            continue
        if len(numbers) < 8 or any(n < 0 for n in numbers):
            malformed += 1
            continue
        counters = QueueCounters(*numbers)
        queues[counters.queue] = counters
    return QueueCountersReading(queues, malformed, True)


def read_queue_counters(path: Path = PROC_PATH) -> QueueCountersReading:
    """Read and parse the kernel's counters; an unreadable file gives an empty reading."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PROC_BYTES)
    except OSError:
        return QueueCountersReading({}, 0, False)
    return parse_queue_counters(data.decode("ascii", "replace"))
