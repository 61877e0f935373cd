"""Throwaway servers on 127.0.0.1 for tests (the scan's probes, the UI's scans).

Guarantees: `serve_http(handler)` listens on a free loopback port, serves each request in its
own thread with `handler`; `slow_listeners(n)` gives n ports that accept connections and never
say a word (every probe waits for its timeout: a slow scan to cancel). Both are shut down,
closed and joined when the block ends, also when the test fails.
"""

from __future__ import annotations

import http.server
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SlowPorts", "serve_http", "slow_listeners"]


@contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """The port of a loopback HTTP server answering with `handler`, for the block's duration."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class SlowPorts(list[int]):
    """The ports of `slow_listeners`, and the connections they hold so far (`held`)."""

    held: list[socket.socket]


@contextmanager
def slow_listeners(count: int) -> Iterator[SlowPorts]:
    """`count` loopback ports that accept and hold every connection without answering."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            ready, _, _ = select.select(listeners, [], [], 0.1)
            for s in ready:
                held.append(s.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        ports = SlowPorts(int(s.getsockname()[1]) for s in listeners)
        ports.held = held
        yield ports
    finally:
        stop.set()
        thread.join(5)
        for s in held + listeners:
            s.close()
