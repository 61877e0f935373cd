"""The admin UI over HTTPS (issue 14.2, webui/tls.py and webui/serve.py): real TLS requests to
the real waitress server verify against the certificate it serves and get HSTS; a body of
several TLS records arrives whole; the slowloris limits hold over TLS too (clients that never
finish a handshake, clients that trickle a request inside TLS). Then `vpatch ui` itself: a
self-signed certificate made on the first start (key 0600, fingerprint printed) and kept, a
configured certificate served instead, plain HTTP refused at start on a non-loopback address
and served, without HSTS, on loopback with --insecure-http."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from waitress import wasyncore  # type: ignore[import-untyped]

from gateway.config import UiConfig
from gateway.testing.inline import package_env
from webui.serve import build_server
from webui.tls import KEY_FILE, fingerprint, server_context, ui_certificate

REQUEST_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 3.0
GENEROUS_S = 60.0  # bounds for what takes a second or two: never a timing assertion
CLIENTS = 40


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    c, k, made = ui_certificate(tmp_path / "state", ["127.0.0.1", "localhost"])
    assert made
    return c, k


@pytest.fixture
def live(app: Flask, cert: tuple[Path, Path]) -> Iterator[int]:
    ui = UiConfig(request_timeout=REQUEST_TIMEOUT_S, idle_timeout=IDLE_TIMEOUT_S)
    server = build_server(app, "127.0.0.1", 0, ui, threads=4, tls=server_context(*cert))

    def run() -> None:
        with contextlib.suppress(OSError):
            server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.task_dispatcher.shutdown()
        wasyncore.close_all(server._map)
        thread.join(5)


def verified(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


def get(port: int, ctx: ssl.SSLContext, path: str = "/auth/login") -> http.client.HTTPResponse:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=GENEROUS_S, context=ctx)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1 << 16, socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


def test_https_request_verifies_and_gets_hsts(live: int, cert: tuple[Path, Path]) -> None:
    response = get(live, verified(cert[0]))
    assert response.status == 200
    assert response.getheader("Strict-Transport-Security") == "max-age=31536000"
    with pytest.raises(ssl.SSLCertVerificationError):  # a certificate, not just any TLS
        get(live, ssl.create_default_context())
    key = cert[1].stat()
    assert (key.st_mode & 0o777, key.st_uid) == (0o600, os.geteuid())


def test_a_body_of_many_records_arrives_whole(live: int, cert: tuple[Path, Path]) -> None:
    conn = http.client.HTTPSConnection("127.0.0.1", live, timeout=GENEROUS_S,
                                       context=verified(cert[0]))  # fmt: skip
    body = b"username=admin&password=" + b"x" * 200_000  # ~13 TLS records
    conn.request("POST", "/auth/login", body=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    response = conn.getresponse()
    response.read()
    assert response.status in (200, 400, 403)  # refused by the app (CSRF), not lost in TLS
    conn.request("GET", "/auth/login")  # the same connection goes on
    assert conn.getresponse().status == 200
    conn.close()


def test_slow_tls_clients_are_cut_and_the_admin_gets_in(live: int, cert: tuple[Path, Path]) -> None:
    silent = [socket.create_connection(("127.0.0.1", live)) for _ in range(CLIENTS)]  # no hello
    ctx = verified(cert[0])
    tricklers = []
    for _ in range(CLIENTS):
        raw = socket.create_connection(("127.0.0.1", live), timeout=GENEROUS_S)
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        tricklers.append(tls)
    try:
        assert get(live, ctx).status == 200  # while all of them hold a connection
        open_ = set(range(CLIENTS))
        deadline = time.monotonic() + max(REQUEST_TIMEOUT_S, IDLE_TIMEOUT_S) + GENEROUS_S
        while (open_ or not all(_closed(s) for s in silent)) and time.monotonic() < deadline:
            time.sleep(1.0)
            for i in list(open_):
                try:
                    tricklers[i].send(b"a")
                except OSError:
                    open_.discard(i)
        assert not open_, f"{len(open_)} trickling TLS clients still connected"
        assert all(_closed(s) for s in silent), "a client without a handshake was kept"
        assert get(live, ctx).status == 200
    finally:
        for s in silent + tricklers:
            s.close()


# -- `vpatch ui` ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"policy: {{database: {tmp_path / 'state' / 'vpatch.db'}}}\n"
        f"events: {{sqlite: {tmp_path / 'state' / 'events.db'}, jsonl: null}}\n"
        f"control: {{socket: {tmp_path / 'c.sock'}}}\n" + extra
    )
    return path


@contextlib.contextmanager
def ui(tmp_path: Path, *args: str) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log = tmp_path / f"ui-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "ui", "--listen", f"127.0.0.1:{port}", *args],
            stdout=out, stderr=subprocess.STDOUT, env=package_env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + GENEROUS_S
        while True:  # the line is printed just before the socket is bound: connect too
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            if b"vpatch ui: serving " in log.read_bytes():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
            time.sleep(0.1)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(15)


def test_vpatch_ui_serves_https_with_a_certificate_it_made_and_keeps(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    state = tmp_path / "state"
    with ui(tmp_path, "-c", str(cfg)) as (port, log):
        cert = state / "ui-tls.crt"
        assert (state / KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert (
            fingerprint(cert) in log.read_text() and f"https://127.0.0.1:{port}/" in log.read_text()
        )
        response = get(port, verified(cert))
        assert response.status == 200 and response.getheader("Strict-Transport-Security")
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
        with pytest.raises((http.client.HTTPException, OSError)):  # no HTTP on the TLS port
            plain.request("GET", "/auth/login")
            plain.getresponse()
        plain.close()
    first = fingerprint(cert)
    with ui(tmp_path, "-c", str(cfg)) as (port, log):
        assert "made a self-signed" not in log.read_text() and fingerprint(cert) == first


def test_vpatch_ui_serves_the_configured_certificate(tmp_path: Path) -> None:
    mine, key, _ = ui_certificate(tmp_path / "mine", ["127.0.0.1"])
    cfg = config(tmp_path, f"ui: {{tls_cert: {mine}, tls_key: {key}}}\n")
    with ui(tmp_path, "-c", str(cfg)) as (port, _log):
        assert get(port, verified(mine)).status == 200
    assert not (tmp_path / "state" / "ui-tls.crt").exists()


def test_plain_http_is_refused_off_loopback_and_served_on_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ui", "-c", str(cfg), "--listen", "198.18.0.1:8080",
         "--insecure-http"], capture_output=True, text=True, timeout=60, env=package_env(),
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "plain HTTP is served on a loopback address only" in refused.stderr, refused.stderr
    with ui(tmp_path, "-c", str(cfg), "--insecure-http") as (port, log):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
        conn.request("GET", "/auth/login")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Strict-Transport-Security") is None
        conn.close()
        assert "http://127.0.0.1" in log.read_text()
