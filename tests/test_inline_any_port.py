"""End to end: protocols identified by content on any port (engine.identify_any_port).

A real `vpatch run` in the lab's gateway namespace with only the self-test rule (port 80) and
the inline tests' rule (port 8080): an HTTP server on a port no rule lists receives the marker
split over three segments, and the gateway resets the connection with both rules' events;
a non-HTTP bulk transfer on another unlisted port is bypassed in the kernel after its first
segments (gateway/match/follow.py, gateway/firewall/render.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.inline import in_ns
from tests.test_inline import MARKER, SPLIT_CLIENT, vpatch_run

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

HTTP_PORT = 8888  # no rule lists it
BULK_PORT = 2222

HTTP_SERVER = textwrap.dedent(
    """
    import http.server, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"any-port server"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            print("GOT", self.path, flush=True)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
    print("LISTENING", flush=True)
    server.serve_forever()
    """
)

SINK_SERVER = textwrap.dedent(
    """
    import socket, sys
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(1)
    print("LISTENING", flush=True)
    conn, _ = srv.accept()
    got = 0
    while got < int(sys.argv[3]):
        data = conn.recv(65536)
        if not data:
            break
        got += len(data)
    conn.sendall(b"OK")
    print("DONE", got, flush=True)
    """
)


def _serve(lab: Any, script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.server_ns, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "LISTENING"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def test_http_exploit_on_an_unlisted_port_is_reset(lab: Any, tmp_path: Path) -> None:
    server = _serve(lab, HTTP_SERVER, lab.server_addr, str(HTTP_PORT))
    try:
        with vpatch_run(lab, tmp_path) as gw:
            url = f"http://{lab.server_addr}:{HTTP_PORT}/index"
            page = in_ns(lab.client_ns, ["curl", "-s", "-m", "5", url])
            assert page.stdout == "any-port server", page.stdout + page.stderr
            client = in_ns(
                lab.client_ns,
                [sys.executable, "-c", SPLIT_CLIENT, lab.server_addr, str(HTTP_PORT)],
            )
            assert client.stdout.strip() == "RESET", client.stdout + client.stderr
            deadline = time.monotonic() + 5
            while len(gw.events()) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            events = gw.events()
            # the rules written for port 80 (the self-test rule) and 8080 (the inline tests'):
            # raw rules on HTTP's ports follow HTTP to 8888
            assert sorted(e["alert"]["signature_id"] for e in events) == [9000100, 9000199]
            assert all(e["dest_port"] == HTTP_PORT for e in events)
            assert all(e["alert"]["action"] == "blocked" for e in events)
            assert sum(q["reset"] for q in gw.status()["queues"].values()) == 1
    finally:
        _stop(server)
        out = server.stdout.read() if server.stdout is not None else ""
    assert "GOT /index" in out
    assert MARKER.decode() not in out  # the request carrying the marker never reached it


def test_unidentified_bulk_transfer_on_an_unlisted_port_is_bypassed(
    lab: Any, tmp_path: Path
) -> None:
    size = 400_000
    with vpatch_run(lab, tmp_path) as gw:
        server = _serve(lab, SINK_SERVER, lab.server_addr, str(BULK_PORT), str(size))
        try:
            upload = textwrap.dedent(
                f"""
                import socket
                s = socket.create_connection(("{lab.server_addr}", {BULK_PORT}), timeout=10)
                s.sendall(b"\\x17binary protocol " + b"x" * {size})
                print(s.recv(10).decode())
                """
            )
            before = gw.queued()
            client = in_ns(lab.client_ns, [sys.executable, "-c", upload])
            assert client.stdout.strip() == "OK", client.stdout + client.stderr
            out, _ = server.communicate(timeout=15)
            assert out.startswith("DONE")
        finally:
            _stop(server)
        # ~280 segments of payload: the SYN and the first segments are queued, then the
        # engine's bypass connmark (nothing with rules found in the upload: BYPASS_TO_SERVER,
        # or BYPASS once the response said nothing either) stops the queueing
        assert gw.queued() - before < 20, gw.status()
        queues = gw.status()["queues"].values()
        assert sum(q["bypassed"] + q["bypassed_direction"] for q in queues) >= 1
        assert gw.events() == []
