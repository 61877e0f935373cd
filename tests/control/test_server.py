"""The control socket over a real Unix socket: replies, errors, bounds, permissions."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from gateway.control.server import MAX_REQUEST_BYTES, ControlError, ControlServer, control_request
from gateway.errors import ConfigError


@pytest.fixture
def server(tmp_path: Path):
    def boom(_req):
        raise RuntimeError("kaput")

    def refuse(_req):
        raise ConfigError("rule 42 is not loaded")

    srv = ControlServer(
        tmp_path / "ctl.sock",
        {"echo": lambda req: req.get("value"), "boom": boom, "refuse": refuse},
    )
    srv.start()
    yield srv
    srv.stop()


def test_round_trip_and_listing(server: ControlServer) -> None:
    assert control_request(server.path, "echo", value=[1, "a"]) == [1, "a"]
    assert control_request(server.path, "help") == ["boom", "echo", "help", "refuse"]


def test_socket_is_private(server: ControlServer) -> None:
    mode = server.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) & 0o077 == 0


def test_errors_name_the_problem_and_server_survives(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        control_request(server.path, "nope")
    with pytest.raises(ControlError, match="internal error: RuntimeError: kaput"):
        control_request(server.path, "boom")
    with pytest.raises(ControlError, match="rule 42 is not loaded"):
        control_request(server.path, "refuse")
    assert control_request(server.path, "echo", value=3) == 3


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"{not json\n", "not JSON"),
        (b"[1,2]\n", "must be an object"),
        (b'{"command": 5}\n', "string"),
    ],
)
def test_malformed_requests(server: ControlServer, line: bytes, error: str) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.path))
        sock.sendall(line)
        reply = sock.makefile("rb").readline()
    assert b'"ok": false' in reply and error.encode() in reply


def test_oversized_request_is_refused(server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.path))
        sock.sendall(b"x" * (MAX_REQUEST_BYTES + 10) + b"\n")
        reply = sock.makefile("rb").readline()
    assert b"longer than" in reply
    assert control_request(server.path, "echo", value="still up") == "still up"


def test_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(path, {}).start()
    assert path.read_text() == "precious"


def test_unreachable_gateway(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="control socket"):
        control_request(tmp_path / "absent.sock", "help", timeout=1)
