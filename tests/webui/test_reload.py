"""Live policy change end to end: the UI (Flask test client) switches rule 9000100 on a real
`vpatch run` in the namespace lab from prevent to off and back; the gateway applies it through
its control socket `reload` without a restart, the marker request is reset or not
accordingly, and a keep-alive connection opened before the first change stays up throughout.

The gateway process is stopped (SIGTERM, by PID) and our kernel rules removed afterwards, also
on failure; the lab's namespaces belong to the session-wide `lab` fixture."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.control.server import control_request
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.testing.inline import REPO, in_ns, running_gateway

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


MARKER_CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    s.sendall(
        b"GET /VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\\r\\n"
        b"Host: lab\\r\\nConnection: close\\r\\n\\r\\n"
    )
    try:
        data = s.recv(4096)
        print("EOF" if not data else "DATA " + data.split(b"\\r\\n")[0].decode())
    except ConnectionResetError:
        print("RESET")
    except OSError as err:
        print("ERROR", err)
    """
)

KEEPALIVE_CLIENT = textwrap.dedent(
    """
    import re, socket, sys
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    port = s.getsockname()[1]
    def once():
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")
        buf = b""
        while b"\\r\\n\\r\\n" not in buf:
            d = s.recv(4096)
            if not d:
                return "EOF"
            buf += d
        head, _, body = buf.partition(b"\\r\\n\\r\\n")
        n = int(re.search(rb"(?i)content-length: *(\\d+)", head).group(1))
        while len(body) < n:
            d = s.recv(4096)
            if not d:
                return "EOF"
            body += d
        return head.split(b"\\r\\n")[0].decode() + f" port={port}"
    for line in sys.stdin:
        try:
            print(once(), flush=True)
        except OSError as err:
            print("ERROR", err, flush=True)
    """
)


def marker(lab: Any) -> str:
    r = in_ns(lab.client_ns, [sys.executable, "-c", MARKER_CLIENT, lab.server_addr], timeout=20)
    return r.stdout.strip() or r.stderr.strip()


def test_ui_mode_change_reaches_running_gateway(
    lab: Any, tmp_path: Path, auth: Any, client: Any, app: Any
) -> None:
    policy_db = tmp_path / "vpatch.db"
    sock = tmp_path / "gw-control.sock"
    cfg = {
        "protected_hosts": [lab.server_addr],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml")],
        "queues": {"first": 0, "count": 2},
        "events": {"sqlite": str(tmp_path / "gw-events.db"), "jsonl": None},
        "control": {"socket": str(sock)},
        "policy": {"database": str(policy_db)},
    }
    app.config.update(CONTROL_SOCKET=str(sock), RULE_PATHS=cfg["rules"], POLICY_DB=str(policy_db))
    keepalive: subprocess.Popen[str] | None = None
    with running_gateway(lab, tmp_path, cfg) as gw:
        log = gw.log
        try:
            pids_before = [q["pid"] for q in control_request(sock, "status")["queues"].values()]
            assert marker(lab) == "RESET"  # the rule's default mode: prevent

            client_argv = [sys.executable, "-c", KEEPALIVE_CLIENT, lab.server_addr]
            keepalive = subprocess.Popen(
                ["ip", "netns", "exec", lab.client_ns, *client_argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert keepalive.stdin is not None and keepalive.stdout is not None

            def keepalive_request() -> str:
                assert keepalive is not None and keepalive.stdin and keepalive.stdout
                keepalive.stdin.write("go\n")
                keepalive.stdin.flush()
                return keepalive.stdout.readline().strip()

            first = keepalive_request()
            assert first.startswith("HTTP/1.1 200"), first
            # Users live in the test's policy database (the `app` fixture made them in its own
            # tmp file); create the admin here.
            with Store(policy_db) as store:
                accounts = Accounts(store)
                if accounts.get_user("admin") is None:
                    accounts.create_user("admin", "admin-password-1", "admin", "test")
            assert auth.login().status_code == 302

            timings = []
            for mode, expect in (
                ("off", "DATA HTTP/1.1 404 Not Found"),
                ("prevent", "RESET"),
                ("detect", "DATA HTTP/1.1 404 Not Found"),
            ):
                t0 = time.monotonic()
                resp = client.post(
                    "/rules/9000100/mode",
                    data={"mode": mode, "scope": "global", "csrf_token": auth.token()},
                )
                took = time.monotonic() - t0
                assert resp.status_code == 302
                page = client.get("/rules/").get_data(as_text=True)
                m = re.search(r"gateway reloaded in ([0-9.]+) s", page)
                assert m, page[page.find("flash") :][:300]
                policy = control_request(sock, "policy")
                assert set(policy["queues"].values()) == {policy["version"]}  # every worker has it
                timings.append((mode, took, float(m.group(1))))
                assert marker(lab) == expect, (mode, log.read_text()[-2000:])
                same = keepalive_request()
                assert same == first, (mode, same, first)  # same connection (port), still served
            print("\nUI POST -> all workers applied (s):", timings)
            assert all(t[1] < 2.0 for t in timings), timings
            status = control_request(sock, "status")
            assert [q["pid"] for q in status["queues"].values()] == pids_before  # no restart
            assert sum(q["policy_errors"] for q in status["queues"].values()) == 0
        finally:
            if keepalive is not None:
                keepalive.kill()
                keepalive.wait(5)
