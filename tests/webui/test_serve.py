"""Slowloris against the UI's real waitress server (webui/serve.py, issue 15.6): 150 clients on
loopback trickle a never-ending request head one byte a second. waitress's default (100
connections, an inactivity timer that every byte restarts) let them hold every connection, so
the admin's login page never came. Here the admin's GET /auth/login is answered while they all
trickle, and each trickler is cut once its request is older than `ui.request_timeout`."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from waitress import wasyncore  # type: ignore[import-untyped]

from gateway.config import UiConfig
from webui.serve import build_server

TRICKLERS = 150
REQUEST_TIMEOUT_S = 4.0
GENEROUS_S = 60.0  # limits for things that take a second or two: never a timing assertion


@pytest.fixture
def live(app: Flask) -> Iterator[tuple[int, Any]]:
    ui = UiConfig(request_timeout=REQUEST_TIMEOUT_S, idle_timeout=60.0)
    server = build_server(app, "127.0.0.1", 0, ui, threads=4)

    def run() -> None:
        with contextlib.suppress(OSError):
            server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.effective_port, server
    finally:
        server.task_dispatcher.shutdown()
        wasyncore.close_all(server._map)
        thread.join(5)


def _closed(sock: socket.socket) -> bool:
    """True when the server has closed `sock` (EOF or reset); never blocks."""
    try:
        return sock.recv(1 << 16, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _trickle(socks: list[socket.socket], open_: set[int]) -> None:
    """One more byte of the endless header on every connection still open."""
    for i in list(open_):
        if _closed(socks[i]):
            open_.discard(i)
            continue
        try:
            socks[i].send(b"a")
        except OSError:
            open_.discard(i)


def _login_page(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
    try:
        conn.request("GET", "/auth/login")
        return conn.getresponse().status
    finally:
        conn.close()


def test_slow_clients_cannot_keep_the_admin_out(live: tuple[int, Any], tmp_path: Path) -> None:
    port, _server = live
    socks = []
    try:
        for _ in range(TRICKLERS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S)
            sock.settimeout(None)  # blocking, so that MSG_DONTWAIT alone decides (_closed)
            sock.sendall(b"GET /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(sock)
        open_ = set(range(TRICKLERS))
        _trickle(socks, open_)
        answer: list[int] = []
        admin = threading.Thread(target=lambda: answer.append(_login_page(port)))
        admin.start()
        while admin.is_alive():  # the tricklers go on while the admin waits
            _trickle(socks, open_)
            admin.join(1.0)
        assert answer == [200]
        assert len(open_) == TRICKLERS  # answered while every trickler was still connected
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + GENEROUS_S
        while open_ and time.monotonic() < deadline:
            time.sleep(1.0)
            _trickle(socks, open_)
        assert not open_, f"{len(open_)} trickling clients still connected"
        assert _login_page(port) == 200
    finally:
        for sock in socks:
            sock.close()


def test_a_slow_request_is_cut_but_a_complete_one_is_served(live: tuple[int, Any]) -> None:
    """Request timing follows each request: a keep-alive connection that sends whole requests
    slowly apart is served; one whose single request trickles past the timeout is cut."""
    port, _server = live
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
    try:
        for _ in range(2):
            conn.request("GET", "/auth/login")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            time.sleep(REQUEST_TIMEOUT_S / 2 + 0.5)  # idle between requests: not a slow request
        conn.request("GET", "/auth/login")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
