"""Benchmark of the dashboard against a large event store (issue 15, finding 3).

Prints figures; asserts nothing. Steps:
1. fill an SQLite event store (the sink's schema, `gateway.events.sink.store_rows`: events and
   rollups in one transaction per batch, as the gateway writes them) with N events spread over
   the last 24 hours (the dashboard's default window: the worst case), from SOURCES distinct
   source addresses (an attacker's spray: past the rollups' per-hour key bound), 40 rules and
   8 hosts; prints the insert rate. `--db PATH` keeps the store for the next run (refilled
   only when it holds fewer than N events).
2. serve the UI as `vpatch ui` does (waitress, UI_THREADS threads) in a child process on
   127.0.0.1, with an admin API token;
3. time GET /api/v1/dashboard alone (24 h and 720 h windows), then the login page (GET
   /auth/login) while P pollers ask for the dashboard as the fixed dashboard.js does (the next
   request once the answer arrived, after `--interval` seconds; 0: at once, the worst case).
Figures: median, 95th percentile and maximum in milliseconds.
Run: .venv/bin/python bench/bench_dashboard.py --events 1000000 --pollers 8,50 [--db PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.commands.ui import UI_THREADS
from gateway.events.sink import create_store, store_rows
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store

BATCH = 5000
SOURCES = 200_000
RULES = [(9000000 + i, f"bench rule {i}", f",CVE-2017-{1000 + i % 12},") for i in range(40)]
HOSTS = [f"198.18.0.{20 + i}" for i in range(8)]


def fill(db: Path, n: int, now: float) -> None:
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    create_store(conn)
    have = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    if have >= n:
        print(f"store {db}: {have:,} events already")
        return
    rng = random.Random(15)
    t0 = time.perf_counter()
    for start in range(have, n, BATCH):
        rows = []
        for i in range(start, min(n, start + BATCH)):
            ts = now - 86400 + 86400 * i / n  # ids grow with time, as the sink writes them
            sig, name, cves = RULES[rng.randrange(len(RULES))]
            src = f"198.{18 + (s := rng.randrange(SOURCES)) // 65536}.{s // 256 % 256}.{s % 256}"
            action = "blocked" if i % 4 else "allowed"
            stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
            alert = {"action": action, "signature_id": sig, "signature": name}
            eve = json.dumps({"timestamp": stamp, "flow_id": i, "event_type": "alert",
                              "src_ip": src, "dest_ip": HOSTS[i % 8], "alert": alert})  # fmt: skip
            rows.append((stamp, i, "alert", sig, name, action, "reset", 1, src, 40000 + i % 20000,
                         HOSTS[i % 8], 80, "TCP", "http", cves, eve, 1))  # fmt: skip
        conn.execute("BEGIN IMMEDIATE")
        store_rows(conn, rows)
        conn.execute("COMMIT")
        done = min(n, start + BATCH)
        if done % 500_000 < BATCH:
            rate = (done - have) / (time.perf_counter() - t0)
            print(f"  {done:,} events, {rate:,.0f} events/s", flush=True)
    took = time.perf_counter() - t0
    size = db.stat().st_size / 1e9
    print(
        f"filled {n - have:,} events in {took:.0f} s ({(n - have) / took:,.0f} events/s, "
        f"events + rollups, batches of {BATCH}); file {size:.1f} GB"
    )
    conn.close()


def serve(policy: str, events: str, port_out: Any) -> None:
    from waitress.server import create_server

    from webui import create_app

    app = create_app({"POLICY_DB": policy, "EVENTS_DB": events, "SESSION_COOKIE_SECURE": False,
                      "CONTROL_SOCKET": "/nonexistent/control.sock"})  # fmt: skip
    server = create_server(app, host="127.0.0.1", port=0, threads=UI_THREADS)
    port_out.put(server.effective_port)  # type: ignore[union-attr]
    server.run()


def in_process(policy: Path, events: Path, samples: int) -> None:
    """webui.services.dashboard_data alone (no HTTP, no token check): the queries' cost."""
    from webui import create_app
    from webui.services import dashboard_data

    app = create_app({"POLICY_DB": str(policy), "EVENTS_DB": str(events),
                      "SECRET_KEY": b"b" * 32})  # fmt: skip
    for hours in (24, 720):
        ms = []
        for _ in range(samples):
            with app.app_context():
                t0 = time.perf_counter()
                dashboard_data(hours)
                ms.append((time.perf_counter() - t0) * 1000)
        print(f"dashboard_data({hours}) in process:              {figures(ms)}")


def get(port: int, path: str, headers: dict[str, str]) -> float:
    """One GET on a fresh connection; milliseconds until the whole answer was read."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status}")
    return (time.perf_counter() - t0) * 1000


def figures(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (
        f"median {statistics.median(ms):7.1f}  p95 {p95:7.1f}  max {ms[-1]:7.1f} ms (n={len(ms)})"
    )


def under_load(port: int, auth: dict[str, str], pollers: int, interval: float,
               samples: int) -> tuple[list[float], list[float]]:  # fmt: skip
    stop = threading.Event()
    polled: list[float] = []

    def poller() -> None:
        while not stop.is_set():
            polled.append(get(port, "/api/v1/dashboard", auth))
            stop.wait(interval)

    threads = [threading.Thread(target=poller, daemon=True) for _ in range(pollers)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    login = []
    for _ in range(samples):
        login.append(get(port, "/auth/login", {}))
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(120)
    return login, polled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, help="event store to keep (default: a temporary one)")
    ap.add_argument("--pollers", default="8,50", help="concurrent dashboards, comma-separated")
    ap.add_argument("--interval", type=float, default=0.0, help="pause between a poller's polls")
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vpatch-bench-dash-"))
    events = args.db or tmp / "events.db"
    now = time.time()
    fill(events, args.events, now)
    policy = tmp / "vpatch.db"
    with Store(policy) as store:
        Accounts(store).create_user("admin", "bench-password-1", "admin", "bench")
        token = Accounts(store).create_token("admin", "bench", "bench")
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    in_process(policy, events, args.samples)
    ports: Any = multiprocessing.Queue()
    child = multiprocessing.Process(target=serve, args=(str(policy), str(events), ports))
    child.start()
    try:
        port = ports.get(timeout=60)
        total = json.loads(http_get_body(port, "/api/v1/dashboard", auth))["total"]
        print(f"dashboard total (24 h): {total:,} events")
        for hours in (24, 720):
            ms = [get(port, f"/api/v1/dashboard?hours={hours}", auth) for _ in range(args.samples)]
            print(f"GET /api/v1/dashboard?hours={hours:<4} alone:          {figures(ms)}")
        alone = [get(port, "/auth/login", {}) for _ in range(args.samples)]
        print(f"GET /auth/login alone:                        {figures(alone)}")
        for p in (int(x) for x in args.pollers.split(",")):
            login, polled = under_load(port, auth, p, args.interval, args.samples)
            print(f"{p:3} dashboards polling (interval {args.interval:g} s):")
            print(f"    GET /auth/login                           {figures(login)}")
            print(f"    GET /api/v1/dashboard                     {figures(polled)}")
    finally:
        child.terminate()
        child.join(10)


def http_get_body(port: int, path: str, headers: dict[str, str]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path, headers=headers)
    body = conn.getresponse().read()
    conn.close()
    return body


if __name__ == "__main__":
    main()
