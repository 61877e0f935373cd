"""The report of `vpatch bench` (gateway/benchmark/runner.py) without a lab: ratios of vpatch to
every other subject, the report's JSON form, the Markdown table (one row per metric, units,
missing values, errors and notes), which subjects run when Suricata is or is not
installed, and that measuring waits for a started subject's processes to fall idle. Running the
benchmark itself is not a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.benchmark import BenchError
from gateway.benchmark.runner import (
    METRICS,
    BenchOptions,
    SubjectResult,
    build_report,
    inspection_figures,
    inspection_lines,
    ratio,
    render_table,
    resolve_subjects,
    wait_quiet,
    write_json,
)
from gateway.benchmark.subjects import Subject, SuricataSubject, suricata_version
from gateway.lab import LabSpec

# a child that spins for a while (as a gateway's children do while they start), then says so
# in a file and sleeps
BUSY_THEN_IDLE = """
import sys, time
end = time.process_time() + float(sys.argv[2])
while time.process_time() < end:
    pass
open(sys.argv[1], "w").write("done")
time.sleep(60)
"""


def test_measuring_waits_until_the_subjects_children_are_idle(tmp_path: Path) -> None:
    marker = tmp_path / "busy-done"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(60)",
         sys.executable, "-c", BUSY_THEN_IDLE, str(marker), "2.5"],
    )  # fmt: skip
    try:
        subject = Subject("gw", "a parent whose child starts busy", LabSpec(name="vpq"))
        subject.pids.append(parent.pid)  # counted with its descendants, as a gateway's workers
        wait_quiet(subject)
        assert marker.exists(), "wait_quiet returned while the child was still busy"
    finally:
        parent.kill()
        parent.wait()


def test_report_ratios_and_table() -> None:
    results = {
        "kernel": SubjectResult("kernel", metrics={"bulk_up_gbps": 10.0, "http_close_rps": 0.0}),
        "vpatch": SubjectResult(
            "vpatch", metrics={"bulk_up_gbps": 2.5, "http_close_rps": 100.0}, errors=["boom"]
        ),
    }
    report = build_report(BenchOptions(duration=2), results, ["a note"], 12.0)
    ratios = report["ratios"]["vpatch/kernel"]
    assert ratios["bulk_up_gbps"] == pytest.approx(0.25)
    assert ratios["http_close_rps"] is None  # division by zero is no ratio
    table = render_table(report)
    assert "| bulk TCP client->server | Gbit/s | 10.00 | 2.50 | 0.25x |" in table
    assert "! vpatch: boom" in table


@pytest.mark.parametrize(
    ("num", "den", "expected"),
    [(1.0, 3.0, 0.333), (2.0, 1.0, 2.0), (None, 1.0, None), (1.0, None, None), (1.0, 0.0, None)],
)
def test_ratio(num: float | None, den: float | None, expected: float | None) -> None:
    assert ratio(num, den) == expected


def test_report_has_a_ratio_column_per_other_subject_and_none_without_vpatch() -> None:
    kernel = SubjectResult("kernel", metrics={"http_keepalive_rps": 1000.0})
    tuned = SubjectResult("suricata-tuned", metrics={"http_keepalive_rps": 400.0})
    vpatch = SubjectResult("vpatch", metrics={"http_keepalive_rps": 200.0})
    both = build_report(BenchOptions(), {"kernel": kernel, "suricata-tuned": tuned,
                                         "vpatch": vpatch}, [], 1.0)  # fmt: skip
    assert set(both["ratios"]) == {"vpatch/kernel", "vpatch/suricata-tuned"}
    assert both["ratios"]["vpatch/suricata-tuned"]["http_keepalive_rps"] == 0.5
    # every metric has a ratio entry, None where a side did not measure it
    assert set(both["ratios"]["vpatch/kernel"]) == {key for key, *_ in METRICS}
    assert both["ratios"]["vpatch/kernel"]["bulk_up_gbps"] is None
    assert build_report(BenchOptions(), {"kernel": kernel}, [], 1.0)["ratios"] == {}


def test_report_records_options_and_metric_declarations(tmp_path: Path) -> None:
    opts = BenchOptions(duration=7, repeat=3, connections=8, threads=1, iperf_port=5201)
    report = build_report(opts, {"kernel": SubjectResult("kernel")}, ["n"], 12.345)
    assert report["options"]["duration_s"] == 7 and report["options"]["repeat"] == 3
    assert report["options"]["wrk"] == {"threads": 1, "connections": 8, "page": "/1k.bin"}
    assert report["options"]["iperf3_port"] == 5201
    assert [m["key"] for m in report["metrics"]] == [key for key, *_ in METRICS]
    assert report["metrics"][3] == {
        "key": "http_keepalive_p50_ms",
        "label": "latency p50",
        "unit": "ms",
        "higher_is_better": False,
    }
    assert report["wall_seconds"] == 12.3 and report["notes"] == ["n"]
    path = tmp_path / "new" / "dir" / "bench.json"
    write_json(report, path)
    assert json.loads(path.read_text()) == report and path.read_text().endswith("}\n")


def test_table_rows_units_missing_values_errors_and_notes() -> None:
    results = {
        "kernel": SubjectResult(
            "kernel", metrics={"http_keepalive_rps": 105367.4, "http_keepalive_p50_ms": 0.278}
        ),
        "vpatch": SubjectResult(
            "vpatch",
            metrics={"http_keepalive_rps": 5000.0},
            errors=["vpatch: did not start", "wrk failed"],
        ),
    }
    report = build_report(BenchOptions(duration=3), results, ["suricata skipped"], 1.0)
    report["machine"] = {"cores": 2, "kernel": "6.1", "python": "3.11", "suricata": None}
    lines = render_table(report).splitlines()
    assert lines[0] == "| metric | unit | kernel | vpatch | vpatch/kernel |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    rows = lines[2 : 2 + len(METRICS)]
    assert len(rows) == len(METRICS) and lines[2 + len(METRICS)] == ""
    assert "| HTTP keep-alive | req/s | 105,367 | 5,000 | 0.05x |" in rows
    assert "| ↳ latency p50 | ms | 0.28 | - | - |" in rows  # sub-rows, missing values
    assert "Suricata n/a, 3 s per test, median of 1 run(s)" in lines[3 + len(METRICS)]
    # an error that already names its subject is not prefixed twice
    assert lines[-3:] == [
        "! vpatch: did not start",
        "! vpatch: wrk failed",
        "note: suricata skipped",
    ]


def test_resolve_subjects_without_suricata_needs_no_suricata() -> None:
    assert resolve_subjects(BenchOptions(subjects=("kernel", "vpatch"))) == (
        ["kernel", "vpatch"],
        [],
    )


def test_resolve_subjects_with_suricata_depends_on_it_being_installed() -> None:
    wanted = ("kernel", "suricata-default", "vpatch")
    if suricata_version() is not None:
        assert resolve_subjects(BenchOptions(subjects=wanted)) == (list(wanted), [])
        return
    with pytest.raises(BenchError, match="suricata is not installed"):
        resolve_subjects(BenchOptions(subjects=wanted))
    names, notes = resolve_subjects(BenchOptions(subjects=wanted, skip_suricata_if_missing=True))
    assert names == ["kernel", "vpatch"] and notes == [
        "suricata not installed: Suricata columns skipped"
    ]


def test_inspection_lines_set_requests_sent_against_requests_inspected() -> None:
    before = {"packets": 100, "app_records": 40, "bd_packets": 0, "bd_run_ns": 0, "bd_cpu_ns": 0}
    after = {
        "packets": 1100, "app_records": 1030, "bd_packets": 1000, "bd_run_ns": 8_000_000,
        "bd_cpu_ns": 4_000_000, "bd_verdict_ns": 6_000_000, "bd_match_ns": 2_000_000,
    }  # fmt: skip
    run = inspection_figures(before, after, 990)
    assert (run["sent_requests"], run["engine_requests"], run["packets"]) == (990, 990, 1000)
    assert run["breakdown_us"]["cpu_share"] == 0.5
    lines = inspection_lines("vpatch", {"inspected": {"cpu_http_keepalive_s": [run]}})
    assert lines[0] == (
        "vpatch http_keepalive run 1: 1,000 packets inspected, 1.01 per request; "
        "wrk sent 990 requests, the engine inspected 990"
    )
    assert "verdict 3.03" in lines[1] and "match 1.01" in lines[1]
    bulk = inspection_figures(before, after, None)  # iperf3: per packet
    assert bulk["sent_requests"] is None and bulk["breakdown_us"]["verdict"] == 3.0


def test_suricata_counters_are_read_once_two_stats_blocks_agree(tmp_path: Path) -> None:
    """Right after a test Suricata's last stats block can still lag: the counters are those of
    the first block that the next one (a stats interval later) repeats."""
    spec = LabSpec(name="vpsc", state_dir=tmp_path)
    subject = SuricataSubject("suricata-tuned", "tuned", spec, tuned=True)
    subject.log_dir().mkdir(parents=True)
    stats = subject.log_dir() / "stats.log"
    real = (
        Path(__file__).resolve().parents[1] / "data" / "bench" / "suricata-stats.log"
    ).read_text()
    lagging = real.replace("| 26273", "| 20000")
    stats.write_text(lagging)
    blocks = iter([real, real])  # the late counts arrive, then stay

    def sleep(_seconds: float) -> None:
        stats.write_text(stats.read_text() + next(blocks, ""))

    assert subject.counters(sleep=sleep) == {"packets": 52720, "app_records": 26273}
    assert subject.counters(sleep=lambda _s: None) == {"packets": 52720, "app_records": 26273}
    (tmp_path / "bench" / "suricata-tuned" / "stats.log").unlink()
    assert subject.counters(sleep=lambda _s: None) == {}
