"""A full disk and a read-only event store, for real: a small tmpfs mounted in a mount namespace
the test creates (`unshare -m`, root only; nothing is mounted in the test's own namespace).

In the namespace, a child process runs a worker's packet path (Engine + PacketHandler +
EventSink on SQLite) over a stream of firing datagrams while the store's filesystem fills up,
gets space back; then a new sink (a restarted worker) starts on the store remounted read-only,
and the store becomes writable again. Held: every packet gets its verdict throughout
(inspection goes on); the failure is visible (`store_failing`, `store_errors` in the worker's
counters, `last_error` naming the store and the reason, an ERROR log line when it starts and a
line when it ends); rows that could not be committed while the disk was full are written once
there is space again (nothing lost); a store that cannot be opened read-write does not stop
the worker: it is reported the same way and the events are written once it can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, logging, os, subprocess, sys, time
    from pathlib import Path
    from gateway.config import FailPolicy
    from gateway.engine import Engine
    from gateway.events.sink import EventSink
    from gateway.intake.nfqueue import PacketHandler, WorkerStats, publish_sink
    from gateway.match.rules import default_rule_dir, load_rules
    from gateway.testing.traffic import udp_exchange
    from tests.events.test_storm import SLAMMER
    from tests.intake.test_nfqueue import QueuedPacket as Pkt

    root = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "vpatch-test", str(root)],
                   check=True)
    lines = []
    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.levelname + " " + record.getMessage())
    logging.getLogger("vpatch.events").addHandler(Keep())
    filler = root / "filler"
    sink = EventSink(root / "events.db", None, max_queue=100_000, aggregate_window=0.0)
    vfs = os.statvfs(root)
    filler.write_bytes(bytes(vfs.f_bavail * vfs.f_frsize - 256 * 1024))  # all but 256 KiB
    engine = Engine(load_rules([default_rule_dir()]))
    stats = WorkerStats()
    handler = PacketHandler(engine, stats, FailPolicy.OPEN, 1 << 28, 1 << 28, sink)
    verdicts = {}
    sent = 0

    def storm(n):
        global sent
        for _ in range(n):
            (data,) = udp_exchange(SLAMMER, sport=1024 + sent % 60000, dport=1434,
                                   client=f"198.18.{2 + sent // 60000}.1")
            sent += 1
            pkt = Pkt(data)
            handler(pkt)
            verdicts[pkt.verdict] = verdicts.get(pkt.verdict, 0) + 1

    def wait(cond, seconds=60):
        deadline = time.monotonic() + seconds
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)
        publish_sink(stats, sink)
        return cond()

    out = {}
    t0 = time.monotonic()
    while not sink.failing and sent < 50_000:
        storm(200)
        wait(lambda: sink._queue.empty() or sink.failing, 10)
    out["full"] = {"failing": sink.failing, "error": sink.last_error, "sent": sent,
                   "counters": {k: stats.get(k) for k in ("store_failing", "store_errors")}}
    storm(1000)  # inspection goes on while the store is full
    out["during"] = dict(verdicts)
    filler.unlink()  # space again: the held rows are written
    storm(10)
    out["recovered"] = wait(
        lambda: sink.written_events >= engine.stats.events and not sink.failing)
    publish_sink(stats, sink)
    out["after_recovery"] = {"written": sink.written, "lost": sink.lost, "sent": sent,
                             "events": engine.stats.events, "failing": stats.get("store_failing")}
    sink.close(timeout=15)
    # read-only: the worker (re)starts on a store remounted read-only (no writer holds it)
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    sink = EventSink(root / "events.db", None, max_queue=100_000, aggregate_window=0.0,
                     strict=False)
    handler.sink = sink
    before = engine.stats.events
    storm(500)
    wait(lambda: sink.failing, 10)
    out["readonly"] = {"failing": sink.failing, "error": sink.last_error}
    subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    out["readonly_recovered"] = wait(
        lambda: sink.written_events >= engine.stats.events - before and not sink.failing)
    out["readonly_written"] = [sink.written, sink.lost, engine.stats.events - before]
    out["readonly_stats"] = sink.stats()
    out["verdicts"] = dict(verdicts)
    out["sent"] = sent
    sink.close(timeout=15)
    out["log"] = lines
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs in a mount namespace needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) not installed")
def test_disk_full_and_read_only_store_are_reported_and_inspection_goes_on(
    tmp_path: Path,
) -> None:
    mnt = tmp_path / "store"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", CHILD, str(mnt)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any(mnt.iterdir())  # the tmpfs lived in the child's namespace only
    full = out["full"]
    assert full["failing"] and "full" in full["error"] and "events.db" in full["error"]
    assert full["counters"]["store_failing"] == 1 and full["counters"]["store_errors"] >= 1
    assert out["during"].get("drop", 0) == full["sent"] + 1000  # every packet its verdict
    assert out["recovered"], out
    after = out["after_recovery"]
    assert after["lost"] == 0 and after["written"] == after["events"] == after["sent"]
    assert after["failing"] == 0
    ro = out["readonly"]
    assert ro["failing"] and "events.db" in ro["error"], ro
    assert out["readonly_recovered"], out["readonly_stats"]
    written, lost, events = out["readonly_written"]
    assert written == events == 500 and lost == 0  # held while read-only, written after
    assert out["verdicts"] == {"drop": out["sent"]}
    log = out["log"]
    assert any(line.startswith("ERROR event store failing, inspection goes on") for line in log)
    assert any("writable again" in line for line in log)
