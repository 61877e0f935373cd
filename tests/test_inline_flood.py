"""A SYN flood of 200,000 spoofed sources, half-open and tiny-window connections against a
protected server, through `vpatch run` in the namespace lab (issue 15, "the packet path").

What must hold during and after the flood:
- the flow table stays within `engine.max_flows` (eviction order: gateway/flow/table.py) and
  the workers' memory within the figure stated below;
- a keep-alive connection established before the flood keeps working, and an exploit sent on
  it during the flood is still reset with its event: a full table never means "stop
  inspecting" (an evicted flow is picked up mid-stream and inspected again);
- after the flood a new connection works.

fail_policy is `closed`, what an admin protecting a server that cannot be patched chooses: a
full queue drops packets (the client's TCP retransmits them) rather than passing them
uninspected. Under `open` a flood that fills the queue lets packets pass uninspected; that is
counted (tests/test_inline_kernel.py) and is the documented trade-off of fail-open.
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
from tests.test_inline import vpatch_run

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

MAX_FLOWS = 4096  # small, so that 200,000 sources overflow it many times over
SPOOFED = 200_000
# A worker's RSS may grow by this much at most from start to the end of the flood: the flow
# table's bound times a generous per-flow figure (about 3.5 kB measured for idle flows,
# tests/flow), plus the reassembly and decoder state of the few real connections.
MAX_RSS_GROWTH_KB = 64 * 1024

# argv: server port count: SYNs from `count` spoofed sources in 198.18.128.0/17 (not the lab's
# subnet, so the server's SYN+ACKs go nowhere), with correct checksums (a wrong one would be
# dropped as INVALID before the queue and test nothing), window 1 for every other one (tiny).
SPOOF_FLOOD = textwrap.dedent(
    """
    import socket, struct, sys
    server, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dst = socket.inet_aton(server)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)

    def csum(data):
        total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    sent = 0
    for i in range(count):
        src = bytes((198, 18, 128 + (i >> 8) % 128, i & 255))
        sport = 1024 + (i * 7919) % 60000
        window = 1 if i % 2 else 64240
        tcp = struct.pack("!HHIIBBHHH", sport, port, i * 2654435761 % (1 << 32), 0, 5 << 4,
                          0x02, window, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst)
        while True:
            try:
                s.sendto(ip + tcp, (server, 0))
                break
            except (BlockingIOError, OSError):
                pass
        sent += 1
    print(sent)
    """
)

# argv: server port: one keep-alive connection; a benign request before, then, after reading
# "go" on stdin, the test exploit on the same connection; prints each answer's first line or
# RESET. Also holds 300 tiny-window connections (receive buffer at its minimum, each with a
# request whose answer it never reads) open meanwhile.
KEEP_ALIVE = textwrap.dedent(
    """
    import socket, sys
    server, port = sys.argv[1], int(sys.argv[2])
    tiny = []
    for _ in range(300):
        t = socket.socket()
        t.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        t.connect((server, port))
        t.sendall(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")
        tiny.append(t)
    s = socket.create_connection((server, port), timeout=30)

    def ask(request):
        try:
            s.sendall(request)
            data = s.recv(65536)
        except ConnectionResetError:
            return "RESET"
        return data.split(b"\\r\\n")[0].decode() if data else "CLOSED"

    print(ask(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n"), flush=True)
    sys.stdin.readline()
    print(ask(b"GET /?q=VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n"), flush=True)
    """
)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_syn_flood_keeps_the_table_bounded_and_established_flows_inspected(
    lab: Any, tmp_path: Path
) -> None:
    config = {
        "fail_policy": "closed",
        "engine": {"max_flows": MAX_FLOWS},
        "queues": {"first": 0, "count": 2, "max_len": 8192},
    }
    with vpatch_run(lab, tmp_path, server_rule=False, **config) as gw:
        pids = gw.worker_pids()
        rss_before = {pid: _rss_kb(pid) for pid in pids}
        client = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", KEEP_ALIVE,
             lab.server_addr, "80"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline().strip() == "HTTP/1.1 200 OK"
            flood = subprocess.Popen(
                ["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", SPOOF_FLOOD,
                 lab.server_addr, "80", str(SPOOFED)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            started = time.monotonic()
            # the exploit goes in the middle of the flood, on the connection opened before it
            while time.monotonic() - started < 2.0 and flood.poll() is None:
                time.sleep(0.1)
            client.stdin.write("go\n")
            client.stdin.flush()
            answer = client.stdout.readline().strip()
            out, err = flood.communicate(timeout=240)
            flood_s = time.monotonic() - started
            assert flood.returncode == 0, err
            assert int(out) == SPOOFED
        finally:
            client.kill()
            client.wait()
        assert answer == "RESET", answer
        time.sleep(1.5)  # the workers publish the engine's counters each second
        status = gw.status()
        queues = status["queues"].values()
        peak_rss = {pid: _rss_kb(pid) for pid in pids}
        print(
            f"\n{SPOOFED} spoofed SYNs in {flood_s:.1f}s; queued {status['packets']}, "
            f"flows_active {[q['flows_active'] for q in queues]} (bound {MAX_FLOWS}), "
            f"limit_flow_table {sum(q['limit_flow_table'] for q in queues)}, "
            f"worker RSS kB before {rss_before} after {peak_rss}"
        )
        assert all(q["flows_active"] <= MAX_FLOWS for q in queues)
        assert sum(q["limit_flow_table"] for q in queues) > 0  # the bound was reached
        assert sum(q["flows_inspected"] for q in queues) >= MAX_FLOWS  # the SYNs were seen
        for pid in pids:
            assert peak_rss[pid] - rss_before[pid] <= MAX_RSS_GROWTH_KB, (pid, peak_rss)
        events = gw.events()
        assert any(e.get("alert", {}).get("signature_id") == 9000100 for e in events), events
        curl_argv = ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"]
        curl = in_ns(lab.client_ns, [*curl_argv, f"http://{lab.server_addr}/"], timeout=20)
        assert curl.stdout == "200", curl
