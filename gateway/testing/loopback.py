"""A throwaway HTTP server on 127.0.0.1 for tests (the scan's probes, the UI's scans).

Guarantees: `serve_http(handler)` listens on a free loopback port, serves each request in its
own thread with `handler`, and is shut down, closed and joined when the block ends, also when
the test fails.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["serve_http"]


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
