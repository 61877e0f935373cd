"""The systemd notify protocol (sd_notify(3)) over $NOTIFY_SOCKET, without libsystemd.

`Notifier.from_env()` reads NOTIFY_SOCKET (a path, or `@name` for the abstract namespace) and
WATCHDOG_USEC/WATCHDOG_PID; outside systemd (no NOTIFY_SOCKET) every call does nothing.
Guarantees:
- each message is one datagram on an AF_UNIX SOCK_DGRAM socket, `KEY=value` lines joined by
  newlines (READY=1, STATUS=..., STOPPING=1, WATCHDOG=1), as sd_notify sends them;
- a message that cannot be sent (systemd gone, socket full) is logged once per kind and never
  raises: the gateway's packet path must not depend on its supervisor's socket;
- `watchdog_interval` is None unless systemd asked this very process (WATCHDOG_PID absent or
  equal to our pid) for keep-alives; `feed(healthy, now)` sends WATCHDOG=1 at most every third
  of the watchdog period (sd_watchdog_enabled(3)'s advice: half, with margin), and only when the
  caller says it is healthy. A gateway whose workers stall therefore stops feeding, and systemd
  kills and restarts it after WatchdogSec.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger("vpatch.sdnotify")

FEEDS_PER_PERIOD = 3  # keep-alives sent per watchdog period


@dataclass(slots=True)
class Notifier:
    """Where to send notify messages (None: nowhere) and the watchdog period in seconds."""

    address: str | None
    watchdog_interval: float | None = None
    _last_feed: float | None = None
    _failed: set[str] = field(default_factory=set)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 1e6
        return cls(address, interval)

    def send(self, *lines: str) -> bool:
        """Send one message (its lines); False when it could not be sent or there is no socket."""
        if self.address is None:
            return False
        kind = lines[0].split("=", 1)[0] if lines else ""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as err:
            if kind not in self._failed:
                self._failed.add(kind)
                log.warning("sd_notify %s to %r failed: %s", kind, self.address, err)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def feed(self, healthy: bool, now: float) -> bool:
        """WATCHDOG=1 when the watchdog is on, `healthy`, and a third of its period has passed
        since the last one (`now`: time.monotonic()); True when sent."""
        if self.watchdog_interval is None or not healthy:
            return False
        due = self.watchdog_interval / FEEDS_PER_PERIOD
        if self._last_feed is not None and now - self._last_feed < due:
            return False
        self._last_feed = now
        return self.send("WATCHDOG=1")
