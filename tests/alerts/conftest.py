"""Real local receivers for the alert channels, all on 127.0.0.1 with ports chosen by the
kernel: an SMTP server (aiosmtpd; with a self-signed certificate for STARTTLS and AUTH), an
HTTP webhook receiver (http.server) and syslog receivers (UDP and TCP). Each is stopped at the
end of its test, also on failure."""

from __future__ import annotations

import http.server
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RECEIVE_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(items: list[Any], count: int = 1, timeout: float = RECEIVE_TIMEOUT) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return items


@dataclass
class SmtpReceiver:
    port: int
    messages: list[Any] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    tls_seen: list[bool] = field(default_factory=list)
    cert: Path | None = None


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _smtp(tls: tuple[Path, Path] | None) -> Iterator[SmtpReceiver]:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    rec = SmtpReceiver(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            rec.messages.append(envelope)
            rec.tls_seen.append(session.ssl is not None)
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        if isinstance(data, LoginPassword):
            rec.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=data.password == b"smtp-secret")
        return AuthResult(success=False)

    kwargs: dict[str, Any] = {}
    if tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        kwargs = {"tls_context": ctx, "require_starttls": True, "authenticator": authenticator,
                  "auth_require_tls": True}  # fmt: skip
        rec.cert = tls[0]
    controller = Controller(Handler(), hostname="127.0.0.1", port=rec.port, **kwargs)
    controller.start()
    try:
        yield rec
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    yield from _smtp(None)


@pytest.fixture
def smtp_tls(tls_cert: tuple[Path, Path]) -> Iterator[SmtpReceiver]:
    yield from _smtp(tls_cert)


@dataclass
class WebhookReceiver:
    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 204


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    holder: list[WebhookReceiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            holder[0].requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(holder[0].status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(WebhookReceiver(f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SyslogReceiver:
    port: int
    messages: list[bytes] = field(default_factory=list)


@pytest.fixture
def syslog_udp() -> Iterator[SyslogReceiver]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    rec = SyslogReceiver(sock.getsockname()[1])
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                rec.messages.append(sock.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        stop.set()
        thread.join(2)
        sock.close()


@pytest.fixture
def syslog_tcp() -> Iterator[SyslogReceiver]:
    """RFC 6587 octet-counting framing: 'LEN SP MSG' repeated."""
    holder: list[SyslogReceiver] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            buf = b""
            while True:
                data = self.request.recv(65535)
                if not data:
                    return
                buf += data
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    if len(rest) < int(length):
                        break
                    holder[0].messages.append(rest[: int(length)])
                    buf = rest[int(length) :]

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(SyslogReceiver(server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
