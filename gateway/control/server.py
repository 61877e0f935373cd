"""The control socket of a running gateway: one JSON request per line, one JSON reply per line.

`vpatch run` serves it on a Unix stream socket, mode 0600 (owner only), or 0660 for the group
`vpatch` when it exists (the admin UI's user is in it; gateway/statefiles.py); the admin UI and
the CLI talk to the gateway only through it. Guarantees:
- a request is a JSON object `{"command": NAME, ...arguments}`; the reply is
  `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}` naming what was wrong;
- a handler's exception is turned into an error reply: the server never dies of a request;
- a request line is bounded (MAX_REQUEST_BYTES) and a client that stalls is timed out, so one
  client cannot hold the gateway's memory or its only control thread.
The client side: `control_request` (one command, ControlError on failure) and `notify_gateway`
(`reload`, summed up in one line for the CLI; never raises).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.errors import VpatchError
from gateway.statefiles import make_dir

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
CLIENT_TIMEOUT_S = 5.0
SOCKET_DIR_GROUP = 0o050  # shared: the group may reach the socket, not add files beside it

Handler = Callable[[dict[str, Any]], Any]


class ControlError(VpatchError):
    """The control socket could not be reached, or the gateway answered with an error."""


class ControlServer:
    """Serves `handlers` (command name -> function of the request) on a Unix socket."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], gid: int | None = None) -> None:
        self.path = path
        self.gid = gid  # the group that may connect too (None: the owner only)
        self.handlers = dict(handlers)
        self.handlers.setdefault("help", lambda _req: sorted(self.handlers))
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        make_dir(self.path.parent, self.gid, group_mode=SOCKET_DIR_GROUP)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(
                    f"{self.path}: exists and is not a socket; refusing to replace it"
                )
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))  # 0600 from the start; the group is given after
        finally:
            os.umask(old_umask)
        if self.gid is not None:
            try:
                os.chown(self.path, -1, self.gid)
                os.chmod(self.path, 0o660)
            except PermissionError as err:
                log.warning("control socket %s stays owner-only: %s", self.path, err)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="vpatch-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            with conn:
                conn.settimeout(CLIENT_TIMEOUT_S)
                try:
                    self._serve_client(conn)
                except (OSError, TimeoutError) as err:
                    log.warning("control client dropped: %s", err)

    def _serve_client(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        while True:
            line = reader.readline(MAX_REQUEST_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES:
                self._reply(
                    conn, {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
                )
                return
            self._reply(conn, self.dispatch(line))

    def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'request must be an object with a string "command"'}
        name = request["command"]
        handler = self.handlers.get(name)
        if handler is None:
            return {
                "ok": False,
                "error": f"unknown command {name!r}; known: {sorted(self.handlers)}",
            }
        try:
            return {"ok": True, "result": handler(request)}
        except VpatchError as err:
            return {"ok": False, "error": str(err)}
        except Exception as err:
            log.exception("control command %r failed", name)
            return {"ok": False, "error": f"{name}: internal error: {type(err).__name__}: {err}"}

    @staticmethod
    def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply, default=str).encode() + b"\n")


def control_request(path: Path, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """Send one command to a running gateway and return its result (ControlError on failure)."""
    request = json.dumps({"command": command, **arguments}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(request)
            line = sock.makefile("rb").readline(16 * 1024 * 1024)
    except (OSError, TimeoutError) as err:
        raise ControlError(f"control socket {path}: {err}") from err
    try:
        reply = json.loads(line)
    except ValueError as err:
        raise ControlError(f"control socket {path}: reply is not JSON: {line[:80]!r}") from err
    if not reply.get("ok"):
        raise ControlError(f"gateway refused {command!r}: {reply.get('error')}")
    return reply.get("result")


def notify_gateway(socket_path: Path, timeout: float = 30.0) -> str:
    """Ask a running gateway to reload (host modes, app control, policy); never raises, returns
    one line saying what happened (no gateway there, reload failed, or the new version)."""
    if not socket_path.exists():
        return f"no gateway running at {socket_path}: the change applies when `vpatch run` starts"
    try:
        reply = control_request(socket_path, "reload", timeout=timeout)
    except VpatchError as err:
        return f"gateway reload failed: {err}"
    modes = reply.get("host_modes", {}) if isinstance(reply, dict) else {}
    protected = reply.get("protected_hosts") if isinstance(reply, dict) else None
    return (
        f"gateway reloaded (policy version {reply.get('version')}, protected hosts "
        f"{', '.join(protected) if protected else 'none'}, host modes {modes})"
    )
