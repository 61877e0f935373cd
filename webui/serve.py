"""The waitress server of `vpatch ui`, with limits a slow client cannot exhaust (slowloris).

`build_server(app, host, port, ui, threads)` returns a waitress server (call `.run()`) for
every address `host` resolves to. Guarantees, from the `ui.*` configuration (gateway/config.py):
- at most `ui.connection_limit` connections are served at once (waitress's default is 100);
  beyond that new ones wait in the listen backlog until one closes;
- a connection idle for `ui.idle_timeout` seconds between requests is closed (waitress's
  `channel_timeout`);
- a request (head and body) not received whole within `ui.request_timeout` seconds of its
  first byte is cut, however steadily its bytes trickle in. waitress 3 restarts its inactivity
  timer on every byte received, so a client sending one byte a second is never idle for it:
  `RequestTimedChannel` notes when each request began and `GuardedServer.maintenance`, which
  waitress runs every SWEEP_S seconds, closes the connections past their time.
So slow clients hold a connection for at most `ui.request_timeout` (plus SWEEP_S), and the admin
gets in as long as fewer than `ui.connection_limit` of them arrive within that time.
"""

from __future__ import annotations

import time
from typing import Any, Final

from waitress.adjustments import Adjustments  # type: ignore[import-untyped]
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.server import MultiSocketServer, TcpWSGIServer  # type: ignore[import-untyped]
from waitress.task import ThreadedTaskDispatcher  # type: ignore[import-untyped]

from gateway.config import UiConfig

SWEEP_S: Final = 1.0  # how often waitress looks for connections past their time


class RequestTimedChannel(HTTPChannel):  # type: ignore[misc]
    """A waitress connection that knows since when its current request has been arriving."""

    request_started: float | None = None  # time.time() of the request's first byte
    _timed: object = None  # the request (waitress parser) request_started belongs to

    def received(self, data: bytes) -> Any:
        done = super().received(data)
        if self.request is None:  # nothing half-received: every request so far is complete
            self._timed, self.request_started = None, None
        elif self.request is not self._timed:  # a new request began in these bytes
            self._timed, self.request_started = self.request, time.time()
        return done


class GuardedServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server whose periodic maintenance also ends overdue requests."""

    channel_class = RequestTimedChannel

    def __init__(self, *args: Any, request_timeout: float, **kw: Any) -> None:
        self.request_timeout = request_timeout
        super().__init__(*args, **kw)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections (channel_timeout)
        cutoff = now - self.request_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.requests:
                channel.will_close = True  # closed by the loop at its next turn


def build_server(app: Any, host: str, port: int, ui: UiConfig, threads: int) -> Any:
    """A waitress server for `app` on host:port (each address `host` resolves to)."""
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident="vpatch",
        connection_limit=ui.connection_limit,
        channel_timeout=ui.idle_timeout,
        cleanup_interval=SWEEP_S,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    timeout = ui.request_timeout
    servers = [
        GuardedServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=info,
                      request_timeout=timeout)
        for info in adj.listen
    ]  # fmt: skip
    if len(servers) == 1:
        return servers[0]
    listening = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(socket_map, adj, listening, dispatcher, servers[-1].log_info)
