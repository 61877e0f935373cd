"""Shared fixtures of the scan tests: `http_port`, an nginx-like HTTP server on 127.0.0.1
(Server: nginx/1.22.1, GET and OPTIONS answered), stopped after the test."""

from __future__ import annotations

import http.server
from collections.abc import Iterator

import pytest

from gateway.testing.loopback import serve_http


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "nginx/1.22.1"
    sys_version = ""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_OPTIONS = do_GET

    def log_message(self, *_a: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    with serve_http(_Handler) as port:
        yield port
