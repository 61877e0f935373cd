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

HTTPS (`tls`, an ssl.SSLContext: webui/tls.py): TLS runs inside waitress's own event loop, so
the limits above hold unchanged. Each accepted socket is wrapped (no I/O yet) and `TlsChannel`
drives the handshake without blocking from the loop's read/write events; a handshake is bounded
by `ui.idle_timeout` (no byte of a request counts as activity before it is done), a request by
`ui.request_timeout` as over plain HTTP. Every response carries HSTS (`Strict-Transport-
Security`), and the WSGI environment says `https`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from waitress.adjustments import Adjustments  # type: ignore[import-untyped]
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.server import MultiSocketServer, TcpWSGIServer  # type: ignore[import-untyped]
from waitress.task import ThreadedTaskDispatcher  # type: ignore[import-untyped]

from gateway.config import UiConfig
from webui.tls import HSTS

SWEEP_S: Final = 1.0  # how often waitress looks for connections past their time
TLS_RECV_BYTES: Final = 65536  # > one TLS record (16 KiB): each read takes a whole record
log = logging.getLogger("vpatch.ui")


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


class TlsChannel(RequestTimedChannel):
    """A connection over TLS: the handshake, then records, all without blocking the loop."""

    handshaking = True
    want_write = False  # OpenSSL needs to write before the handshake can go on

    def readable(self) -> bool:
        return True if self.handshaking else bool(super().readable())

    def writable(self) -> bool:
        if self.handshaking:
            return self.want_write or bool(self.will_close)
        return bool(super().writable())

    def _handshake(self) -> None:
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self.want_write = False
            return
        except ssl.SSLWantWriteError:
            self.want_write = True
            return
        except (ssl.SSLError, OSError) as err:  # a client that does not speak TLS, or left
            log.debug("TLS handshake with %s failed: %s", self.addr, err)
            self.handle_close()
            return
        self.handshaking, self.want_write = False, False

    def handle_read(self) -> None:
        if self.handshaking:
            self._handshake()
            return
        while self.socket is not None:
            try:
                data = self.socket.recv(TLS_RECV_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError):
                self.handle_close()
                return
            if not data:  # close_notify or EOF
                self.handle_close()
                return
            self.last_activity = time.time()
            self.received(data)
            # decrypted bytes OpenSSL still holds are invisible to select(): read them now
            if self.socket is None or not self.socket.pending() or not self.readable():
                return

    def handle_write(self) -> None:
        if not self.handshaking:
            super().handle_write()
        elif self.will_close:
            self.handle_close()
        else:
            self._handshake()

    def send(self, data: bytes, do_close: bool = True) -> int:
        try:
            return int(self.socket.send(data))
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError):
            if do_close:
                self.handle_close()
            return 0


class GuardedServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server whose periodic maintenance also ends overdue requests; with `tls`
    every accepted connection speaks TLS (TlsChannel)."""

    channel_class = RequestTimedChannel

    def __init__(
        self, *args: Any, request_timeout: float, tls: ssl.SSLContext | None = None, **kw: Any
    ) -> None:
        self.request_timeout = request_timeout
        self.tls = tls
        if tls is not None:
            self.channel_class = TlsChannel
        super().__init__(*args, **kw)

    def accept(self) -> Any:
        pair = super().accept()
        if pair is None or self.tls is None:
            return pair
        conn, addr = pair
        try:  # no I/O here: the handshake is TlsChannel's, from the event loop
            return self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr
        except (ssl.SSLError, OSError):
            conn.close()
            return None

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections (channel_timeout)
        cutoff = now - self.request_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.requests:
                channel.will_close = True  # closed by the loop at its next turn


def with_hsts(app: Any) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """`app` with the HSTS header added to every response."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            if not any(name.lower() == HSTS[0].lower() for name, _ in headers):
                headers = [*headers, HSTS]
            return start_response(status, headers, *exc)

        result: Iterable[bytes] = app(environ, start)
        return result

    return wrapped


def build_server(
    app: Any, host: str, port: int, ui: UiConfig, threads: int, tls: ssl.SSLContext | None = None
) -> Any:
    """A waitress server for `app` on host:port (each address `host` resolves to); HTTPS with
    HSTS when `tls` is given."""
    if tls is not None:
        app = with_hsts(app)
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident="vpatch",
        connection_limit=ui.connection_limit,
        channel_timeout=ui.idle_timeout,
        cleanup_interval=SWEEP_S,
        url_scheme="https" if tls is not None else "http",
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    timeout = ui.request_timeout
    servers = [
        GuardedServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=info,
                      request_timeout=timeout, tls=tls)
        for info in adj.listen
    ]  # fmt: skip
    if len(servers) == 1:
        return servers[0]
    listening = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(socket_map, adj, listening, dispatcher, servers[-1].log_info)
