"""Mixed benign and attack traffic from the lab's client namespace, for the soak (bench/soak.py).

Run as `python -m gateway.testing.soakclient PLAN.json` inside the client namespace (the soak
starts it with `ip netns exec`). The plan names the server, the duration, the rates and the
attack requests (the rules' inline HTTP attack samples); threads then send, until the duration
is over:
- benign HTTP over keep-alive connections (GET / and GET /1k.bin, `keepalive` per second),
- benign HTTP on a new connection per request (`new_conn` per second),
- benign DNS queries over UDP for the lab zone (`dns` per second),
- attacks, each on a new connection (`attacks` per second, cycling through the samples).
Counters are written as JSON to the plan's `out` file every second (replaced atomically):
requests ok / failed per kind (failures also per exception: `new_conn_ConnectionResetError`,
`new_conn_TimeoutError`, ...); attacks `blocked` (the connection was reset or closed with no
HTTP response) or `answered` (an HTTP response came back: the gateway let it through).
Only the stdlib; nothing leaves the namespace (the server address is the lab's).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["main"]

TIMEOUT = 3.0
BENIGN_PATHS = (b"/", b"/1k.bin")


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response (headers + Content-Length body); b"" when the peer closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head


class Traffic:
    """The sender threads and their counters."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.server = str(plan["server"])
        self.until = time.monotonic() + float(plan["duration"])
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.attacks = [bytes.fromhex(h) for h in plan["attacks"]]

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def paced(self, rate: float) -> Any:
        """Yield once per 1/rate seconds until the duration is over."""
        if rate <= 0:
            return
        step = 1.0 / rate
        nxt = time.monotonic()
        while time.monotonic() < self.until:
            yield
            nxt += step
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def keepalive(self) -> None:
        sock: socket.socket | None = None
        i = 0
        for _ in self.paced(float(self.plan["keepalive"])):
            try:
                if sock is None:
                    sock = socket.create_connection((self.server, 80), TIMEOUT)
                path = BENIGN_PATHS[i % 2]
                i += 1
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: lab\r\n\r\n")
                ok = _read_response(sock).startswith(b"HTTP/1.1 200")
                self.count("keepalive_ok" if ok else "keepalive_failed")
                if not ok:
                    sock.close()
                    sock = None
            except OSError as err:
                self.count("keepalive_failed")
                self.count(f"keepalive_{type(err).__name__}")
                if sock is not None:
                    sock.close()
                sock = None

    def new_conn(self) -> None:
        for _ in self.paced(float(self.plan["new_conn"])):
            try:
                with socket.create_connection((self.server, 80), TIMEOUT) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
                    ok = _read_response(sock).startswith(b"HTTP/1.1 200")
                self.count("new_conn_ok" if ok else "new_conn_failed")
            except OSError as err:
                self.count("new_conn_failed")
                self.count(f"new_conn_{type(err).__name__}")

    def dns(self) -> None:
        qid = 0
        for _ in self.paced(float(self.plan["dns"])):
            qid = (qid + 1) & 0xFFFF
            query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
            query += b"\x06server\x03lab\x04test\x00" + struct.pack("!HH", 1, 1)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(TIMEOUT)
                    sock.sendto(query, (self.server, 53))
                    reply = sock.recv(4096)
                ok = reply[:2] == query[:2]
                self.count("dns_ok" if ok else "dns_failed")
            except OSError:
                self.count("dns_failed")

    def attack(self) -> None:
        for i, _ in enumerate(self.paced(float(self.plan["attacks_per_s"]))):
            request = self.attacks[i % len(self.attacks)]
            try:
                with socket.create_connection((self.server, 80), TIMEOUT) as sock:
                    sock.sendall(request)
                    answered = bool(_read_response(sock))
                self.count("attack_answered" if answered else "attack_blocked")
            except (ConnectionResetError, BrokenPipeError):
                self.count("attack_blocked")
            except OSError:
                self.count("attack_error")

    def write(self) -> None:
        out = Path(self.plan["out"])
        with self.lock:
            text = json.dumps(dict(self.counts))
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, out)

    def report(self) -> None:
        while time.monotonic() < self.until:
            self.write()
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plan = json.loads(Path(args[0]).read_text())
    traffic = Traffic(plan)
    senders = [traffic.keepalive, traffic.new_conn, traffic.dns]
    if traffic.attacks:
        senders.append(traffic.attack)
    threads = [threading.Thread(target=f, daemon=True) for f in senders]
    for t in threads:
        t.start()
    traffic.report()
    for t in threads:
        t.join(TIMEOUT * 2)
    traffic.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
