"""Scan runs and schedules (gateway/scan/jobs.py) against a real HTTP server on loopback:
one active run per host, progress and report stored, history entries, apply once, stale runs
expired, schedules (per host over global) due by their interval, the scheduler loop, and
`vpatch scan --job` as the UI's subprocess runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.lifecycle.state import LifecycleError, LifecycleStore
from gateway.scan.jobs import GLOBAL, ScanBusy, ScanJobs, ScanRun, run_scheduler
from gateway.scan.recommend import AffectedEntry, RuleAffected
from gateway.testing.inline import package_env
from gateway.testing.loopback import slow_listeners

RULE = RuleAffected(9999001, "test nginx rule", ("CVE-0000-0002",),
                    (AffectedEntry("nginx", ("<1.23",)),), Path("test.yaml"))  # fmt: skip


def test_run_records_report_history_and_applies_once(
    tmp_path: Path, db_target: Any, http_port: int
) -> None:
    jobs = ScanJobs(db_target)
    run = jobs.queue("127.0.0.1", "ui", "admin")
    assert run.status == "queued"
    with pytest.raises(ScanBusy, match=f"run {run.id} is queued"):
        jobs.queue("127.0.0.1", "api", "admin")
    done = jobs.execute(run.id, [RULE], [http_port], [], timeout=1.0)
    assert done.status == "done", done.error
    assert done.total > 0 and done.done == done.total
    assert done.report is not None and not done.applied
    finding = done.report["findings"][0]
    assert (finding["product"], finding["version"]) == ("nginx", "1.22.1")
    recs = done.report["recommendations"]
    assert [(r["rule_id"], r["action"]) for r in recs] == [(9999001, "assign")]
    assert recs[0]["evidence"]
    life = LifecycleStore(db_target)
    assert life.host("127.0.0.1").assigned == ()  # auto_apply off: only recommended
    history = life.history("127.0.0.1")
    assert history[-1].action == "scan" and "ui scan by admin" in history[-1].reason
    # the host is free again; apply the finished run, once
    applied, changes = jobs.apply(done.id, "admin")
    assert applied.applied and changes == 1
    assert life.host("127.0.0.1").assigned == (9999001,)
    last = life.history("127.0.0.1")[-1]
    assert last.action == "assign" and f"scan run {done.id} applied by admin" in last.reason
    with pytest.raises(LifecycleError, match="already applied"):
        jobs.apply(done.id, "admin")


def test_auto_apply_host_and_failed_scan(tmp_path: Path, db_target: Any, http_port: int) -> None:
    jobs = ScanJobs(db_target)
    LifecycleStore(db_target).update_host("127.0.0.1", auto_apply=True)
    done = jobs.execute(jobs.queue("127.0.0.1", "api", "t").id, [RULE], [http_port], [], 1.0,
                        control_socket=tmp_path / "no.sock")  # fmt: skip
    assert done.applied and done.report is not None
    assert done.report["reload"]["ok"] is False  # no gateway: said, not raised
    assert LifecycleStore(db_target).host("127.0.0.1").assigned == (9999001,)
    bad = jobs.execute(jobs.queue("127.0.0.1", "api", "t").id, [object()], [http_port], [], 1.0)  # type: ignore[list-item]
    assert bad.status == "failed" and bad.error


def test_stale_run_expires(tmp_path: Path, db_target: Any) -> None:
    jobs = ScanJobs(db_target)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = jobs.queue("127.0.0.2", "ui", "admin")
    jobs._set(run.id, status="running", pid=proc.pid)  # a scan process that died
    assert jobs.expire_stale() == 1
    failed = jobs.get(run.id)
    assert failed is not None and failed.status == "failed" and str(proc.pid) in failed.error
    assert jobs.queue("127.0.0.2", "ui", "admin").status == "queued"


def test_schedules_due_and_scheduler_loop(tmp_path: Path, db_target: Any, http_port: int) -> None:
    db = db_target
    jobs = ScanJobs(db)
    life = LifecycleStore(db)
    for h in ("127.0.0.1", "127.0.0.3"):
        life.update_host(h)
    assert jobs.due() == []
    with pytest.raises(LifecycleError, match="interval 0.1s outside"):
        jobs.set_schedule(GLOBAL, 0.1, "admin")
    jobs.set_schedule(GLOBAL, 3600, "admin")
    jobs.set_schedule("127.0.0.3", 60, "admin", enabled=False)  # own row overrides global
    assert jobs.due() == ["127.0.0.1"]
    assert run_scheduler(jobs, lambda: [RULE], tcp_ports=[http_port], udp_ports=[],
                         timeout=1.0, once=True) == 1  # fmt: skip
    assert jobs.due() == []  # scanned now, next in an hour
    assert 3500 < (jobs.next_due_in() or 0) <= 3600
    runs = jobs.runs("127.0.0.1")
    assert [(r.trigger, r.status) for r in runs] == [("schedule", "done")]
    assert jobs.due(time.time() + 3601) == ["127.0.0.1"]


def test_cli_job_runs_queued_run(tmp_path: Path, db_target: Any, http_port: int) -> None:
    db = db_target
    run = ScanJobs(db).queue("127.0.0.1", "ui", "admin")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", "127.0.0.1", "--state", str(db),
         "--job", str(run.id), "--ports", str(http_port), "--timeout", "1", "--json"],
        capture_output=True, text=True, timeout=60, env=package_env(), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "done" and out["report"]["findings"][0]["product"] == "nginx"
    stored = ScanJobs(db).get(run.id)
    assert stored is not None and stored.status == "done" and stored.pid != run.pid


def test_cancel_a_running_scan_keeps_the_probes_done(
    tmp_path: Path, db_target: Any, http_port: int
) -> None:
    """A scan of one quick HTTP port and slow silent ones is cancelled after its first probe:
    the run ends `cancelled` with what the probes done found, and no recommendation."""
    jobs = ScanJobs(db_target)
    with slow_listeners(4) as slow:
        run = jobs.queue("127.0.0.1", "ui", "admin")
        result: list[ScanRun] = []
        worker = threading.Thread(
            target=lambda: result.append(
                jobs.execute(run.id, [RULE], [http_port, *slow], [], timeout=1.0)
            )
        )
        worker.start()
        deadline = time.monotonic() + 30
        ports = 1 + len(slow)
        while ((current := jobs.get(run.id)) and current.done or 0) <= ports:
            assert time.monotonic() < deadline, "no probe finished"
            time.sleep(0.05)  # connects done (one step each), then one probe at least
        assert jobs.cancel(run.id, "admin").cancel_by == "admin"
        worker.join(30)
    done = result[0]
    assert done.status == "cancelled" and done.report is not None
    rep = done.report
    assert rep["cancelled"] and rep["cancelled_by"] == "admin"
    assert ports < rep["probes_done"] < rep["probes_total"]
    assert len(rep["open_tcp"]) == ports
    assert [f["product"] for f in rep["findings"]] in ([], ["nginx"])  # the port order decides
    assert rep["recommendations"] == [] and not done.applied
    assert "cancelled by admin after" in done.error
    history = LifecycleStore(db_target).history("127.0.0.1")
    assert "cancelled by admin" in history[-1].reason
    assert LifecycleStore(db_target).scan_services("127.0.0.1") == []
    with pytest.raises(LifecycleError, match="is cancelled, nothing to cancel"):
        jobs.cancel(run.id, "admin")
    with pytest.raises(LifecycleError, match="only a finished run applies"):
        jobs.apply(run.id, "admin")
    queued = jobs.queue("127.0.0.1", "api", "admin")  # the host is free again
    assert jobs.cancel(queued.id, "admin").status == "cancelled"
    with pytest.raises(LifecycleError, match="is cancelled, not queued"):
        jobs.execute(queued.id, [RULE], [http_port], [])


def test_ctrl_c_on_vpatch_scan_prints_a_partial_report(tmp_path: Path, http_port: int) -> None:
    with slow_listeners(4) as slow:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "scan", "127.0.0.1", "--state",
             str(tmp_path / "vpatch.db"), "--ports", ",".join(map(str, [http_port, *slow])),
             "--timeout", "1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=package_env(),
        )  # fmt: skip
        deadline = time.monotonic() + 60  # a loaded machine takes seconds to start it
        while len(slow.held) <= len(slow):  # each port connected once, then a probe under way
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelling after the probe under way" in err
    report = json.loads(out)
    assert report["cancelled"] and report["hosts"][0]["cancelled"]
    host = report["hosts"][0]
    assert host["probes_done"] < host["probes_total"] and host["recommendations"] == []
