"""End to end: `vpatch run` inline in the namespace lab (client -> bridged gateway -> server).

Each test starts its own `vpatch run` in the lab's gateway namespace with a config in tmp_path,
and stops it (SIGTERM, by PID) and removes any rule of ours afterwards, also on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.inline import REPO, RunningGateway, in_ns, package_env, running_gateway

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

MARKER = b"VPATCH-TEST-EXPLOIT-7f3a"
# A second rule with the same marker on a port where the test runs its own TCP server, so the
# server side of a reset can be observed (nginx on port 80 keeps serving the real rule).
SERVER_RULE = """\
id: 9000199
title: vpatch inline test marker on the test server port
cve: [CVE-0000-0002]
severity: high
action: reset
protocol: tcp
ports: [8080]
direction: to_server
patterns:
  - content: "VPATCH-TEST-EXPLOIT-7f3a"
"""


@contextmanager
def vpatch_run(
    lab: Any, tmp_path: Path, server_rule: bool = True, **overrides: Any
) -> Iterator[RunningGateway]:
    """`vpatch run` with the self-test rule (port 80) and, unless `server_rule` is False, the
    8080 marker rule, which follows HTTP to port 80 too (engine.identify_any_port): tests that
    count one event per block on port 80 leave it out."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    if server_rule:
        (rules_dir / "inline-test-8080.yaml").write_text(SERVER_RULE)
    cfg: dict[str, Any] = {
        "protected_hosts": [lab.server_addr, lab.server_addr6],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml"), str(rules_dir)],
        "queues": {"first": 0, "count": 2},
        "fail_policy": "open",
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "workers": {"restart_delay": 3.0},
    }
    cfg.update(overrides)
    with running_gateway(lab, tmp_path, cfg) as gw:
        yield gw


def ours_in_kernel(ns: str) -> list[str]:
    lines = []
    for tool in ("iptables-save", "ip6tables-save"):
        lines += [x for x in in_ns(ns, [tool]).stdout.splitlines() if "VPATCH" in x]
    lines += [
        x for x in in_ns(ns, ["ipset", "list", "-n"]).stdout.split() if x.startswith("vpatch-")
    ]
    return lines


def curl_ok(lab: Any, timeout: float = 3) -> bool:
    curl = ["curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w", "%{http_code}"]
    r = in_ns(lab.client_ns, [*curl, f"http://{lab.server_addr}/"], timeout=timeout + 5)
    return r.stdout == "200"


SPLIT_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    parts = [b"GET /?q=VPATCH-TE", b"ST-EXPLOIT", b"-7f3a HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n"]
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for part in parts:
            s.send(part)
            time.sleep(0.3)
        data = s.recv(4096)
        print("EOF" if not data else "DATA " + data[:40].decode(errors="replace"))
    except ConnectionResetError:
        print("RESET")
    except OSError as err:
        print("ERROR", err)
    """
)

RECORDING_SERVER = textwrap.dedent(
    """
    import socket, sys
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(1)
    print("LISTENING", flush=True)
    srv.settimeout(20)
    conn, _ = srv.accept()
    conn.settimeout(10)
    got = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                print("EOF", len(got), flush=True)
                break
            got += data
            if sys.argv[3] == "sink" and len(got) >= int(sys.argv[4]):
                conn.sendall(b"OK")
                print("DONE", len(got), flush=True)
                break
    except ConnectionResetError:
        print("RESET", got, flush=True)
    except socket.timeout:
        print("TIMEOUT", got, flush=True)
    """
)


@contextmanager
def recording_server(
    lab: Any, mode: str = "record", size: int = 0
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.server_ns, sys.executable, "-c", RECORDING_SERVER,
         lab.server_addr, "8080", mode, str(size)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "LISTENING"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_http_and_smb_pass_through_gateway(lab: Any, tmp_path: Path) -> None:
    with vpatch_run(lab, tmp_path) as gw:
        page = in_ns(lab.client_ns, ["curl", "-s", "-m", "5", f"http://{lab.server_addr}/"])
        assert "vpatch lab server" in page.stdout
        page6 = in_ns(
            lab.client_ns, ["curl", "-s", "-m", "5", "-g", f"http://[{lab.server_addr6}]/"]
        )
        assert "vpatch lab server" in page6.stdout
        smb = in_ns(
            lab.client_ns,
            [
                "smbclient",
                "-N",
                "-L",
                f"//{lab.server_addr}",
                "--option=client min protocol=NT1",
                "-m",
                "NT1",
            ],
        )
        assert "public" in smb.stdout, smb.stdout + smb.stderr
        # SMB3 (srvsvc over SMB2 WRITE/IOCTL, compounded CREATEs) and an SMB1 file read
        smb3 = in_ns(
            lab.client_ns,
            ["smbclient", "-N", "-L", f"//{lab.server_addr}", "-m", "SMB3",
             "--option=client min protocol=SMB3"],
        )  # fmt: skip
        assert "public" in smb3.stdout, smb3.stdout + smb3.stderr
        got = in_ns(
            lab.client_ns,
            ["smbclient", "-N", f"//{lab.server_addr}/public", "--option=client min protocol=NT1",
             "-m", "NT1", "-c", "get readme.txt -"],
        )  # fmt: skip
        assert "vpatch lab" in got.stdout, got.stdout + got.stderr
        status = gw.status()
        assert status["backend"] in ("nft", "legacy")
        # HTTP (rule on 80) and SMB (MS17-010 rule on 445/139) were inspected...
        assert gw.queued() >= 4
        assert gw.events() == []  # ...and nothing benign raised an event
    assert b"firewall backend iptables-" in gw.log.read_bytes()


def test_split_exploit_is_reset_both_ways(lab: Any, tmp_path: Path) -> None:
    with vpatch_run(lab, tmp_path) as gw, recording_server(lab) as server:
        # Port 8080: our recording server sees the reset from the gateway.
        client = in_ns(lab.client_ns, [sys.executable, "-c", SPLIT_CLIENT, lab.server_addr, "8080"])
        assert client.stdout.strip() == "RESET", client.stdout + client.stderr
        out, _ = server.communicate(timeout=15)
        assert out.startswith("RESET"), out
        assert MARKER not in out.encode()  # the last segment never reached the server
        # Port 80: nginx, with the project's rule file.
        client80 = in_ns(lab.client_ns, [sys.executable, "-c", SPLIT_CLIENT, lab.server_addr, "80"])
        assert client80.stdout.strip() == "RESET", client80.stdout + client80.stderr
        deadline = time.monotonic() + 5
        while len(gw.events()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        events = gw.events()
        by_rule = {e["alert"]["signature_id"]: e for e in events}
        # both raw rules list a well-known HTTP port (80, 8080): they follow HTTP, so each
        # flow raises both (gateway/match/follow.py), and is reset once
        assert len(events) == 4 and set(by_rule) == {9000199, 9000100}, events
        assert by_rule[9000100]["alert"]["metadata"]["cve"] == ["CVE-0000-0001"]
        assert by_rule[9000199]["alert"]["metadata"]["cve"] == ["CVE-0000-0002"]
        assert all(e["alert"]["action"] == "blocked" for e in events)
        assert sum(q["reset"] for q in gw.status()["queues"].values()) == 2
        # nginx never got a complete request carrying the marker, and still serves others.
        assert curl_ok(lab)
    nginx_log = lab.state_dir / "logs" / "nginx.log"
    if nginx_log.exists():
        assert "VPATCH-TEST-EXPLOIT" not in nginx_log.read_text()


def test_h2c_prior_knowledge_exploit_is_reset(lab: Any, tmp_path: Path) -> None:
    """A real HTTP/2 client (curl with nghttp2, prior knowledge) whose header value holds the
    marker, HPACK-coded (Huffman) so that no raw byte of it is on the wire: the gateway decodes
    the h2c request, the raw-pattern rule fires on it and the connection is reset."""
    with vpatch_run(lab, tmp_path, server_rule=False) as gw:
        curl = ["curl", "-s", "-m", "5", "--http2-prior-knowledge", "-o", "/dev/null"]
        headers = ["-H", f"X-Test: {MARKER.decode()}"]
        r = in_ns(lab.client_ns, [*curl, *headers, f"http://{lab.server_addr}/"], timeout=15)
        assert r.returncode != 0, r.stdout + r.stderr  # reset: curl never gets an answer
        deadline = time.monotonic() + 5
        while not gw.events() and time.monotonic() < deadline:
            time.sleep(0.1)
        events = gw.events()
        assert [e["alert"]["signature_id"] for e in events] == [9000100], events
        assert events[0]["alert"]["action"] == "blocked"
        # the blocked flow's later packets (curl's retransmissions) are reset too
        assert sum(q["reset"] for q in gw.status()["queues"].values()) >= 1
        assert curl_ok(lab)  # HTTP/1 still passes


def test_bypass_after_stream_depth(lab: Any, tmp_path: Path) -> None:
    size = 400_000
    with vpatch_run(lab, tmp_path, stream_depth={"to_server": 2048, "to_client": 0}) as gw:
        with recording_server(lab, "sink", size) as server:
            upload = textwrap.dedent(
                f"""
                import socket
                s = socket.create_connection(("{lab.server_addr}", 8080), timeout=10)
                s.sendall(b"x" * {size})
                print(s.recv(10).decode())
                """
            )
            client = in_ns(lab.client_ns, [sys.executable, "-c", upload])
            assert client.stdout.strip() == "OK", client.stdout + client.stderr
            out, _ = server.communicate(timeout=15)
            assert out.startswith("DONE")
        queued = gw.queued()
        bypassed = sum(q["bypassed"] for q in gw.status()["queues"].values())
        # ~280 segments of payload; fewer than 20 queued means the connmark bypass set by the
        # engine at its 2048-byte depth stopped the queueing (there is no kernel byte bound).
        assert bypassed >= 1
        assert queued < 20, gw.status()
        ct = in_ns(lab.gw_ns, ["conntrack", "-L", "-p", "tcp", "--dport", "8080"])
        assert "mark=268435456" in ct.stdout, ct.stdout + ct.stderr
        # A large download: only SYN and the request are queued, not the client's pure ACKs.
        before = gw.queued()
        curl = ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{size_download}"]
        r = in_ns(lab.client_ns, [*curl, f"http://{lab.server_addr}/"])
        assert int(r.stdout) > 0
        assert gw.queued() - before <= 3


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_worker_killed(lab: Any, tmp_path: Path, policy: str) -> None:
    with vpatch_run(lab, tmp_path, fail_policy=policy, queues={"first": 0, "count": 1},
                    workers={"restart_delay": 4.0}) as gw:  # fmt: skip
        assert curl_ok(lab)
        (pid,) = gw.worker_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)  # the kernel releases the queue when the socket closes
        # open: the kernel bypasses the unbound queue; closed: it drops the queued SYN
        assert curl_ok(lab, timeout=1.5) is (policy == "open")
        # the worker comes back (after restart_delay) and traffic is inspected again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = gw.status()["queues"]["0"]
            if st["bound"] and st["pid"] != pid:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"worker not restarted: {gw.log.read_text()}")
        assert gw.status()["queues"]["0"]["restarts"] == 1
        before = gw.queued()
        assert curl_ok(lab)
        assert gw.queued() > before
    assert b"died with exit status" in gw.log.read_bytes()


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_run_process_killed_then_cleanup(lab: Any, tmp_path: Path, policy: str) -> None:
    with vpatch_run(lab, tmp_path, fail_policy=policy) as gw:
        pids = gw.worker_pids()
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(5)
        # the workers follow their parent (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{p}").exists() for p in pids)
        assert ours_in_kernel(lab.gw_ns)  # a crash leaves the rules in place...
        assert curl_ok(lab, timeout=1.5) is (policy == "open")  # ...following the fail policy
        cleanup = in_ns(lab.gw_ns, [sys.executable, "-m", "gateway.cli", "run", "--cleanup", "-c",
                                    str(gw.config)], env=package_env())  # fmt: skip
        assert cleanup.returncode == 0, cleanup.stderr
        assert ours_in_kernel(lab.gw_ns) == []
        assert curl_ok(lab)


def test_sigterm_removes_every_rule(lab: Any, tmp_path: Path) -> None:
    before = [in_ns(lab.gw_ns, [t]).stdout for t in ("iptables-save", "ip6tables-save")]
    with vpatch_run(lab, tmp_path) as gw:
        assert ours_in_kernel(lab.gw_ns)
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(15) == 0
        assert ours_in_kernel(lab.gw_ns) == []
        after = [in_ns(lab.gw_ns, [t]).stdout for t in ("iptables-save", "ip6tables-save")]

        def strip(texts: list[str]) -> list[str]:
            return [
                x.split(" [")[0] for t in texts for x in t.splitlines() if not x.startswith("#")
            ]

        if any(x.startswith("-A") for x in strip(before)):
            assert strip(after) == strip(before)
        assert not any("VPATCH" in x for x in strip(after))
        assert not gw.control.exists()


RESPONSE_RULE = """\
id: 9000198
title: vpatch inline test marker in responses on the test server port
cve: [CVE-0000-0003]
severity: high
action: alert
protocol: tcp
ports: [8080]
direction: to_client
patterns:
  - content: "VPATCH-TEST-RESPONSE-7f3a"
"""


def test_upload_bypassed_by_direction_while_responses_are_inspected(
    lab: Any, tmp_path: Path
) -> None:
    """A rule looks at responses on 8080 too, and the upload's few response bytes never reach
    the response depth, so the connection is never final; the request direction alone reaching
    its depth must still stop the kernel queueing the upload (the per-direction bypass bit)."""
    size = 400_000
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "inline-test-8080-responses.yaml").write_text(RESPONSE_RULE)
    depth = {"to_server": 2048, "to_client": 65536}
    with vpatch_run(lab, tmp_path, stream_depth=depth) as gw:
        with recording_server(lab, "sink", size) as server:
            upload = textwrap.dedent(
                f"""
                import socket
                s = socket.create_connection(("{lab.server_addr}", 8080), timeout=10)
                s.sendall(b"x" * {size})
                print(s.recv(10).decode())
                """
            )
            client = in_ns(lab.client_ns, [sys.executable, "-c", upload])
            assert client.stdout.strip() == "OK", client.stdout + client.stderr
            out, _ = server.communicate(timeout=15)
            assert out.startswith("DONE")
        queues = gw.status()["queues"].values()
        assert sum(q["bypassed_direction"] for q in queues) >= 1
        assert sum(q["bypassed"] for q in queues) == 0  # never final: responses still watched
        assert gw.queued() < 20, gw.status()
        ct = in_ns(lab.gw_ns, ["conntrack", "-L", "-p", "tcp", "--dport", "8080"])
        assert "mark=536870912" in ct.stdout, ct.stdout + ct.stderr  # bypass_to_server only


REUSED_PORT_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def exchange(request):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
        s.settimeout(5)
        s.connect((host, port))
        s.sendall(request)
        got = b""
        try:
            while True:
                data = s.recv(4096)
                if not data:
                    break
                got += data
        except ConnectionResetError:
            return "RESET"
        finally:
            s.close()
        return "DATA " + got.split(b"\\r\\n")[0].decode(errors="replace")

    print(exchange(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\nConnection: close\\r\\n\\r\\n"))
    print(exchange(b"GET /?q=VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\\r\\nHost: lab\\r\\n"
                   b"Connection: close\\r\\n\\r\\n"))
    """
)


def test_exploit_on_a_reused_client_port_is_stopped(lab: Any, tmp_path: Path) -> None:
    # The gateway queues no FIN (no payload), so the first connection's flow is still open
    # when the second one arrives from the same client port: the kernel-checked SYN must start
    # a new flow, or the new request sits under the old sequence numbers and passes unseen.
    with vpatch_run(lab, tmp_path) as gw:
        client = in_ns(
            lab.client_ns,
            [sys.executable, "-c", REUSED_PORT_CLIENT, lab.server_addr, "80", "41234"],
        )
        first, second = client.stdout.splitlines()[:2]
        assert first.startswith("DATA HTTP/1.1 200"), client.stdout + client.stderr
        assert second == "RESET", client.stdout + client.stderr
        deadline = time.monotonic() + 5
        while len(gw.events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        events = gw.events()  # the port-80 rule, and the 8080 one that follows HTTP to 80
        assert sorted(e["alert"]["signature_id"] for e in events) == [9000100, 9000199]
        assert all(e["src_port"] == 41234 for e in events)


RAW_CLIENT = textwrap.dedent(
    """
    import socket, struct, sys, time
    from dataclasses import replace
    from gateway.testing.wire import ACK, PSH, SYN, Checksum, Seg, build
    client, server, sport = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    rx.settimeout(5)

    def send(seg):
        for datagram in build(seg):
            tx.sendto(datagram, (server, 0))
        time.sleep(0.3)

    def reply():
        while True:
            d = rx.recv(4096)
            ihl = (d[0] & 15) * 4
            sp, dp, seq, ack, off, flags = struct.unpack_from("!HHIIBB", d, ihl)
            if sp == 80 and dp == sport:
                return seq, flags

    send(Seg(client, server, sport, 80, 1000, 0, SYN))
    isn, _ = reply()
    request = b"GET /?q=VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n"
    data = Seg(client, server, sport, 80, 1001, isn + 1, ACK | PSH, request)
    send(Seg(client, server, sport, 80, 1001, isn + 1, ACK))
    send(replace(data, checksum=Checksum.BAD))
    send(replace(data, seq=1001 + 50_000_000))
    print("SENT", flush=True)
    sys.stdin.readline()  # the test looks at the gateway, then lets the real copy go
    send(data)
    try:
        while True:
            _, flags = reply()
            if flags & 0x04:
                print("RESET")
                break
    except socket.timeout:
        print("NO RESET")
    """
)


def _invalid_drops(lab: Any) -> int:
    out = in_ns(lab.gw_ns, ["iptables", "-t", "mangle", "-L", "VPATCH-TCP-DATA", "-v", "-n", "-x"])
    rows = [line.split() for line in out.stdout.splitlines() if "ctstate INVALID" in line]
    assert len(rows) == 1, out.stdout
    return int(rows[0][0])


def test_kernel_drops_wrong_checksum_and_out_of_window_before_the_queue(
    lab: Any, tmp_path: Path
) -> None:
    # firewall.drop_invalid (on by default): conntrack verifies the TCP checksum and the window,
    # so the engine leaves both to the kernel; a copy of the exploit with a wrong checksum and
    # one beyond the window never reach the queue (no event, no reset), the real one does.
    no_rst = ["iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP"]
    assert in_ns(lab.client_ns, no_rst).returncode == 0  # the raw client has no socket
    try:
        with vpatch_run(lab, tmp_path) as gw:
            assert "conntrack drops INVALID" in gw.log.read_text()
            before, queued = _invalid_drops(lab), gw.queued()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", RAW_CLIENT,
                 lab.client_addr, lab.server_addr, "41777"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=package_env(),
            )  # fmt: skip
            try:
                assert proc.stdout is not None and proc.stdin is not None
                assert proc.stdout.readline().strip() == "SENT"
                assert _invalid_drops(lab) - before == 2
                assert gw.events() == []
                assert gw.queued() - queued <= 2  # at most the SYN and the SYN+ACK, no data
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "RESET"
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(5)
            deadline = time.monotonic() + 5
            while not gw.events() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert {e["src_port"] for e in gw.events()} == {41777}
    finally:
        in_ns(lab.client_ns, [*no_rst[:1], "-D", *no_rst[2:]])


HOLE_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s.send(b"GET /first HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")
        time.sleep(0.3)
        s.send(b"GET /HOLE-SEGMENT HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")  # never queued
        time.sleep(2.0)  # longer than limits.hole_wait (1 s) without progress
        s.send(b"GET /?q=VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")
        data = s.recv(4096)
        print("EOF" if not data else "DATA " + data[:40].decode(errors="replace"))
    except ConnectionResetError:
        print("RESET")
    except OSError as err:
        print("ERROR", err)
    """
)


def test_exploit_after_a_segment_the_queue_never_saw_is_reset(lab: Any, tmp_path: Path) -> None:
    """Issue 15 point 12: a segment the kernel passes without queueing it (as under fail-open
    with a full queue; here a rule before ours accepts it) leaves a hole in the engine's view
    of a keep-alive connection. The exploit after it is still inspected and reset, and never
    reaches the server."""
    with vpatch_run(lab, tmp_path) as gw, recording_server(lab) as server:
        iptables = "iptables-nft" if gw.status()["backend"] == "nft" else "iptables-legacy"
        bypass = ["-t", "mangle", "-I", "FORWARD", "1", "-p", "tcp", "-m", "string",
                  "--string", "HOLE-SEGMENT", "--algo", "bm", "-j", "ACCEPT"]  # fmt: skip
        added = in_ns(lab.gw_ns, [iptables, *bypass])
        if added.returncode != 0:
            pytest.skip(f"no xt_string match here: {added.stderr.strip()}")
        try:
            client = in_ns(
                lab.client_ns, [sys.executable, "-c", HOLE_CLIENT, lab.server_addr, "8080"]
            )
        finally:
            in_ns(lab.gw_ns, [iptables, "-t", "mangle", "-D", "FORWARD", *bypass[4:]])
        assert client.stdout.strip() == "RESET", client.stdout + client.stderr
        out, _ = server.communicate(timeout=15)
        assert "HOLE-SEGMENT" in out and MARKER.decode() not in out, out
        deadline = time.monotonic() + 5
        while not gw.events() and time.monotonic() < deadline:
            time.sleep(0.1)
        sids = [e["alert"]["signature_id"] for e in gw.events()]  # the 8080 rule, and the
        assert 9000199 in sids and set(sids) <= {9000100, 9000199}  # port-80 one following HTTP

        def holes() -> int:  # the workers publish their engine counters every second
            return sum(int(q["limit_stream_hole"]) for q in gw.status()["queues"].values())

        deadline = time.monotonic() + 5
        while holes() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert holes() == 1 and gw.status()["limits"]["stream_hole"] == 1
