"""Benchmark of the alert path: cost per message of the formats, and end-to-end dispatcher
throughput from the event store to real receivers on 127.0.0.1 (UDP syslog, HTTP webhook).

Prints figures; asserts nothing. The dispatcher figure is events read from a real event store
(sink schema) and delivered per second by one Dispatcher.poll() loop with the rate limit opened
wide, so it is the cost of the thread `vpatch run` adds when alerts flood in.
Run: .venv/bin/python bench/bench_alerts.py [--events N]
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.alerts.channels import (
    format_syslog,
    message_from_eve,
    save_channel,
    sign,
    webhook_body,
)
from gateway.alerts.dispatcher import Dispatcher
from gateway.alerts.ratelimit import TokenBucket
from gateway.events.eve import Event, to_eve
from gateway.events.sink import _INSERT, SCHEMA, _row
from gateway.policy.store import Store
from gateway.vocabulary import Action, Direction


def eve(i: int) -> dict[str, Any]:
    return to_eve(Event(
        timestamp=time.time(), flow_id=i, src_ip="198.18.0.10", src_port=40000 + i % 20000,
        dest_ip="198.18.0.20", dest_port=80, proto=6, server_port=80, direction=Direction.TO_SERVER,
        signature_id=9000100, signature="vpatch lab test exploit marker", severity="high",
        cves=("CVE-0000-0001",), rule_action=Action.RESET, blocked=True,
    ))  # fmt: skip


def per_call_us(fn: Any, n: int = 20000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def dispatcher_rate(tmp: Path, n: int, kind: str, settings: dict[str, Any]) -> float:
    events, policy = tmp / f"{kind}-events.db", tmp / f"{kind}-policy.db"
    conn = sqlite3.connect(str(events))
    conn.executescript(SCHEMA)
    conn.commit()
    with Store(policy) as store:
        save_channel(store, {"name": kind, "kind": kind, "rate_per_min": "600", "burst": "100",
                             **settings}, "bench")  # fmt: skip
    d = Dispatcher(events, policy)
    d.poll(0.0)
    for i in range(n):
        e = eve(i)
        conn.execute(_INSERT, _row(e, json.dumps(e)))
    conn.commit()
    conn.close()
    for b in d.buckets.values():  # open the bucket wide: measure the path, not the limit
        b[1].rate, b[1].burst = 1e9, 10**9
    t0 = time.perf_counter()
    now = 1.0
    while d.sent + d.failures + d.suppressed < n:
        for ch in d.channels:
            d._bucket(ch).rate, d._bucket(ch).burst = 1e9, 10**9
        if d.poll(now) == 0 and d.sent + d.failures + d.suppressed < n:
            break
        now += 1.0
    took = time.perf_counter() - t0
    return d.sent / took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args()
    sample = eve(1)
    msg = message_from_eve(sample)
    print(f"message_from_eve      {per_call_us(lambda: message_from_eve(sample)):8.2f} us")
    print(f"format_syslog         {per_call_us(lambda: format_syslog(msg)):8.2f} us")
    body = webhook_body(msg)
    print(f"webhook body + HMAC   {per_call_us(lambda: sign('k', webhook_body(msg))):8.2f} us "
          f"({len(body)} bytes)")  # fmt: skip
    bucket = TokenBucket(rate=1e9, burst=10**9)
    print(f"token bucket take     {per_call_us(lambda: bucket.take(time.monotonic())):8.2f} us")

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

    class Hook(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_a: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rate = dispatcher_rate(
                Path(tmp),
                args.events,
                "syslog",
                {"transport": "udp", "host": "127.0.0.1", "port": str(udp.getsockname()[1])},
            )
            print(f"dispatcher -> syslog/UDP  {rate:8.0f} alerts/s ({args.events} events)")
            rate = dispatcher_rate(
                Path(tmp),
                min(args.events, 500),
                "webhook",
                {"url": f"http://127.0.0.1:{server.server_address[1]}/h", "secret": "k"},
            )
            print(
                f"dispatcher -> webhook     {rate:8.0f} alerts/s ({min(args.events, 500)} events)"
            )
    finally:
        server.shutdown()
        udp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
