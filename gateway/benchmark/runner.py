"""Run the side-by-side benchmark and render its report (table and JSON).

One run: build a bridge lab (`gateway.lab`, nginx only on the server; TIME_WAIT reuse on in the
client namespace so that repeated new-connection runs do not exhaust its ports), start an
iperf3 server beside nginx, then for each subject (kernel, suricata-default, suricata-tuned,
vpatch) start it, check one HTTP request gets through, and measure from the client namespace:
bulk TCP each direction (`iperf3 -c` / `-R`), HTTP requests/s and p50/p99 latency with
keep-alive and with a new connection per request (`wrk --latency`, `-H "Connection: close"`,
nginx's 1 KiB /1k.bin), and the CPU seconds of the subject's processes during each measurement
(/proc/PID/stat utime+stime over the process tree, all threads).

Guarantees: all traffic stays between the lab's client and server (198.18.0.0/15); each subject
is stopped and its kernel rules removed before the next starts; the lab is torn down in a
`finally`, also when a subject or measurement fails. A failing measurement is recorded (None and
an error text) and the run goes on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.benchmark import BenchError
from gateway.benchmark.parse import (
    cpu_seconds_between,
    cpu_ticks,
    parse_iperf3,
    parse_wrk,
    process_tree,
)
from gateway.benchmark.subjects import Subject, make_subjects, suricata_version
from gateway.errors import VpatchError
from gateway.intake.breakdown import STAGES, per_request
from gateway.lab import LabSpec, lab_down, lab_up, netns
from gateway.lab import services as lab_services
from gateway.lab.netns import netns_exec, pid_alive, stop_pids

SUBJECTS = ("kernel", "suricata-default", "suricata-tuned", "suricata-inspect-all", "vpatch")
# The four tests, in the order they run; `--tests` picks some (the others' rows read "-").
TESTS = ("bulk_up", "bulk_down", "http_keepalive", "http_close")
PAGE = "/1k.bin"  # the lab nginx's 1 KiB benchmark file
# Extra seconds a client tool gets beyond the test duration before it is killed.
TOOL_GRACE_S = 30.0
# Pause between measurements so TIME_WAIT/conntrack churn of one does not bleed into the next.
SETTLE_S = 1.0
QUIET_CPU_S = 0.05  # CPU seconds per second under which a started subject counts as idle
QUIET_TIMEOUT_S = 60.0
# Wait before reading a subject's counters after a test: vpatch's workers publish theirs once
# a second (gateway/intake/nfqueue.py EXPIRE_INTERVAL).
COUNTERS_DELAY_S = 1.3
PROBE_TIMEOUT_S = 30.0

# (key, label, unit, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("bulk_up_gbps", "bulk TCP client->server", "Gbit/s", True),
    ("bulk_down_gbps", "bulk TCP server->client", "Gbit/s", True),
    ("http_keepalive_rps", "HTTP keep-alive", "req/s", True),
    ("http_keepalive_p50_ms", "  latency p50", "ms", False),
    ("http_keepalive_p99_ms", "  latency p99", "ms", False),
    ("http_close_rps", "HTTP new conn/request", "req/s", True),
    ("http_close_p50_ms", "  latency p50", "ms", False),
    ("http_close_p99_ms", "  latency p99", "ms", False),
    ("cpu_bulk_up_s", "CPU during bulk up", "s", False),
    ("cpu_bulk_down_s", "CPU during bulk down", "s", False),
    ("cpu_http_keepalive_s", "CPU during keep-alive", "s", False),
    ("cpu_http_close_s", "CPU during new-conn", "s", False),
)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    duration: int = 5
    subjects: tuple[str, ...] = SUBJECTS
    skip_suricata_if_missing: bool = False
    suricata_rules: Path = Path()
    lab_name: str = "vpbench"
    connections: int = 32
    threads: int = 2
    iperf_port: int = 445
    repeat: int = 1  # each test runs this many times; the median is reported
    breakdown: bool = False  # vpatch's workers time their stages (gateway/intake/breakdown.py)
    tests: tuple[str, ...] = TESTS


@dataclass
class SubjectResult:
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _client_tool(spec: LabSpec, argv: list[str], duration: int) -> str:
    proc = netns_exec(spec.client_ns, argv, check=False, timeout=duration + TOOL_GRACE_S)
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)!r} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def probe_http(spec: LabSpec, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One GET of the benchmark page from the client; BenchError if it never succeeds."""
    url = f"http://{spec.server_addr}{PAGE}"
    code = (
        "import sys, urllib.request\n"
        f"body = urllib.request.urlopen({url!r}, timeout=3).read()\n"
        "sys.exit(0 if len(body) == 1024 else 3)\n"
    )
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = netns_exec(spec.client_ns, [sys.executable, "-c", code], check=False, timeout=10)
        if proc.returncode == 0:
            return
        lines = proc.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        time.sleep(0.5)
    raise BenchError(f"probe GET {url} from {spec.client_ns} failed for {timeout:.0f}s: {last}")


def _measure(
    subject: Subject,
    result: SubjectResult,
    cpu_key: str,
    action: Callable[[], int | None],
    inspected: dict[str, list[dict[str, Any]]],
) -> None:
    """Run action with the subject's CPU time counted around it; record failures. Where the
    subject has counters, what it inspected meanwhile goes to `inspected[cpu_key]` (the
    action returns the requests it sent, if any)."""
    roots = subject.inspecting_root_pids()
    pids = [pid for root in roots for pid in process_tree(root)]
    before = cpu_ticks(pids)
    counted = subject.counters()
    sent: int | None = None
    try:
        sent = action()
    except VpatchError as err:
        result.errors.append(f"{cpu_key}: {err}")
        _log(f"{cpu_key} failed: {err}")
    after = cpu_ticks(pids)
    result.metrics[cpu_key] = cpu_seconds_between(before, after) if roots else None
    dead = [pid for pid in roots if not pid_alive(pid)]
    if dead:
        raise BenchError(f"{subject.name}: inspecting process(es) {dead} died during {cpu_key}")
    if counted is not None:
        time.sleep(COUNTERS_DELAY_S)  # the workers publish their counters once a second
        now = subject.counters()
        if now is not None:
            inspected.setdefault(cpu_key, []).append(inspection_figures(counted, now, sent))
    time.sleep(SETTLE_S)


def wait_quiet(subject: Subject) -> float:
    """Wait until the subject's processes (and their descendants) spend less than QUIET_CPU_S
    per second, at most QUIET_TIMEOUT_S; returns the seconds waited. A gateway is ready
    before all of its children finished starting (the HTTPS plane's proxies import mitmproxy,
    workers compile their rules): measured during that, the first test (bulk up) lost a core
    to it in some runs and not in others."""
    started = time.monotonic()

    def tree() -> list[int]:
        return [pid for root in subject.inspecting_root_pids() for pid in process_tree(root)]

    while time.monotonic() - started < QUIET_TIMEOUT_S:
        before = cpu_ticks(tree())
        time.sleep(1.0)
        # a child born during the second counts from zero (it is starting, so busy)
        if cpu_seconds_between(before, cpu_ticks(tree())) < QUIET_CPU_S:
            break
    waited = time.monotonic() - started
    if waited > 1.5:
        _log(f"{subject.name}: idle after {waited:.0f}s")
    return waited


def measure_subject(subject: Subject, spec: LabSpec, opts: BenchOptions) -> SubjectResult:
    result = SubjectResult(subject.name)
    server = spec.server_addr
    d = opts.duration
    m = result.metrics

    def iperf(reverse: bool) -> None:  # sends no request
        argv = ["iperf3", "-c", server, "-p", str(opts.iperf_port), "-t", str(d), "-J"]
        if reverse:
            argv.append("-R")
        label = f"iperf3 {'-R ' if reverse else ''}via {subject.name}"
        out = parse_iperf3(_client_tool(spec, argv, d), label)
        m["bulk_down_gbps" if reverse else "bulk_up_gbps"] = round(out.gbit_per_s, 3)

    def wrk(close: bool) -> int:
        argv = ["wrk", f"-t{opts.threads}", f"-c{opts.connections}", f"-d{d}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{server}{PAGE}")
        kind = "close" if close else "keepalive"
        out = parse_wrk(_client_tool(spec, argv, d), f"wrk {kind} via {subject.name}")
        m[f"http_{kind}_rps"] = round(out.requests_per_s, 1)
        m[f"http_{kind}_p50_ms"] = round(out.latency_p50_ms, 3)
        m[f"http_{kind}_p99_ms"] = round(out.latency_p99_ms, 3)
        if out.errors:
            result.errors.append(
                f"wrk {kind}: {out.errors} errors (connect {out.errors_connect}, read "
                f"{out.errors_read}, write {out.errors_write}, timeout {out.errors_timeout}, "
                f"non-2xx/3xx {out.non_2xx_3xx})"
            )
        return out.requests

    samples: list[dict[str, float | None]] = []
    inspected: dict[str, list[dict[str, Any]]] = {}
    for _ in range(opts.repeat):
        runs: dict[str, Callable[[], int | None]] = {
            "bulk_up": lambda: iperf(False),
            "bulk_down": lambda: iperf(True),
            "http_keepalive": lambda: wrk(False),
            "http_close": lambda: wrk(True),
        }
        for test in opts.tests:
            _measure(subject, result, f"cpu_{test}_s", runs[test], inspected)
        samples.append(dict(m))
        m.clear()
    for key, *_ in METRICS:
        values = [v for sample in samples if (v := sample.get(key)) is not None]
        m[key] = round(statistics.median(values), 3) if values else None
    if opts.repeat > 1:
        result.info["samples"] = samples
    if inspected:
        result.info["inspected"] = inspected
    return result


def inspection_figures(
    before: dict[str, int], after: dict[str, int], sent: int | None
) -> dict[str, Any]:
    """What the subject's counters say about one test: the requests the client sent (wrk's
    count; None for iperf3), the HTTP requests the engine decoded or answered from its memo
    (`app_records`: one per request on the bench's port 80, where no response is inspected),
    the packets it inspected, and with the breakdown on, the worker's microseconds per
    request (per packet for iperf3) by stage."""
    packets = after.get("packets", 0) - before.get("packets", 0)
    return {
        "sent_requests": sent,
        "engine_requests": after.get("app_records", 0) - before.get("app_records", 0),
        "packets": packets,
        "breakdown_us": per_request(before, after, sent if sent is not None else packets),
    }


def _start_iperf_server(spec: LabSpec, port: int) -> int:
    argv = ["iperf3", "-s", "-B", spec.server_addr, "-p", str(port)]
    pid = lab_services.start_background(spec, spec.server_ns, "bench-iperf3", argv)
    deadline = time.monotonic() + 10
    while port not in lab_services.listening(spec.server_ns)[0]:
        if not pid_alive(pid) or time.monotonic() > deadline:
            raise BenchError(f"iperf3 server did not listen on {spec.server_addr}:{port}")
        time.sleep(0.1)
    return pid


def resolve_subjects(opts: BenchOptions) -> tuple[list[str], list[str]]:
    """(subjects to run, notes about skipped ones)."""
    names = list(opts.subjects)
    notes: list[str] = []
    if any(n.startswith("suricata") for n in names) and suricata_version() is None:
        if not opts.skip_suricata_if_missing:
            raise BenchError(
                "suricata is not installed (run scripts/install-bench.sh, or pass "
                "--skip-suricata-if-missing or --only kernel,vpatch)"
            )
        names = [n for n in names if not n.startswith("suricata")]
        notes.append("suricata not installed: Suricata columns skipped")
    return names, notes


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Build the lab, measure every subject, tear the lab down; return the report."""
    names, notes = resolve_subjects(opts)
    spec = LabSpec(name=opts.lab_name)
    started = time.monotonic()
    results: dict[str, SubjectResult] = {}
    _log(f"lab {spec.name}: up (bridge mode, nginx on the server)")
    lab_up(spec, services=False, gateway=False)
    try:
        # wrk's new-connection test leaves the client some 50,000 TIME_WAIT sockets per run;
        # without reuse (the default, 2, allows it on loopback only) the later runs spend
        # their time in connect()'s port search and measure the client, not the subject.
        netns.sysctl(spec.client_ns, "net.ipv4.tcp_tw_reuse", "1")
        lab_services.start_services(spec, names=("nginx",))
        iperf_pid = _start_iperf_server(spec, opts.iperf_port)
        for subject in make_subjects(names, spec, opts.suricata_rules, opts.breakdown):
            result = SubjectResult(subject.name)
            _log(f"{subject.name}: starting")
            try:
                subject.start()
                probe_http(spec)
                wait_quiet(subject)
                _log(f"{subject.name}: measuring ({opts.duration}s per test)")
                result = measure_subject(subject, spec, opts)
            except VpatchError as err:
                result.errors.append(str(err))
                _log(f"{subject.name}: {err}")
            finally:
                result.info = subject.info() | result.info
                result.errors.extend(subject.stop())
                netns_exec(spec.gw_ns, ["conntrack", "-F"], check=False)
            results[subject.name] = result
            if not pid_alive(iperf_pid):
                iperf_pid = _start_iperf_server(spec, opts.iperf_port)
        stop_pids([iperf_pid])
    finally:
        _log(f"lab {spec.name}: down")
        lab_down(spec.name)
    return build_report(opts, results, notes, time.monotonic() - started)


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 3)


def build_report(
    opts: BenchOptions, results: dict[str, SubjectResult], notes: list[str], wall: float
) -> dict[str, Any]:
    ratios: dict[str, dict[str, float | None]] = {}
    if "vpatch" in results:
        vp = results["vpatch"].metrics
        for other, other_result in results.items():
            if other == "vpatch":
                continue
            ratios[f"vpatch/{other}"] = {
                key: ratio(vp.get(key), other_result.metrics.get(key)) for key, *_ in METRICS
            }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "suricata": suricata_version(),
        },
        "options": {
            "duration_s": opts.duration,
            "repeat": opts.repeat,
            "tests": list(opts.tests),
            "wrk": {"threads": opts.threads, "connections": opts.connections, "page": PAGE},
            "iperf3_port": opts.iperf_port,
            "suricata_rules": str(opts.suricata_rules),
        },
        "metrics": [
            {"key": k, "label": label.strip(), "unit": unit, "higher_is_better": hib}
            for k, label, unit, hib in METRICS
        ],
        "subjects": {
            name: {"info": r.info, "metrics": r.metrics, "errors": r.errors}
            for name, r in results.items()
        },
        "ratios": ratios,
        "notes": notes,
        "wall_seconds": round(wall, 1),
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:.2f}"


def render_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: one column per subject, then the vpatch ratios."""
    subjects = list(report["subjects"])
    ratio_names = list(report["ratios"])
    header = ["metric", "unit", *subjects, *ratio_names]
    rows = [header, ["---"] * len(header)]
    for key, label, unit, _ in METRICS:
        row = [label.strip() if not label.startswith(" ") else "↳ " + label.strip(), unit]
        row += [_fmt(report["subjects"][s]["metrics"].get(key), unit) for s in subjects]
        for r in ratio_names:
            value = report["ratios"][r].get(key)
            row.append("-" if value is None else f"{value:.2f}x")
        rows.append(row)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    m = report["machine"]
    lines.append("")
    lines.append(
        f"{report['date']}, {m['cores']} cores, kernel {m['kernel']}, Suricata "
        f"{m['suricata'] or 'n/a'}, {report['options']['duration_s']} s per test, median of "
        f"{report['options']['repeat']} run(s), wall time "
        f"{report['wall_seconds']} s"
    )
    for name in subjects:
        for err in report["subjects"][name]["errors"]:
            lines.append(f"! {err}" if err.startswith(f"{name}:") else f"! {name}: {err}")
    for name in subjects:
        lines.extend(inspection_lines(name, report["subjects"][name]["info"]))
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def inspection_lines(name: str, info: dict[str, Any]) -> list[str]:
    """Per test of a subject that has counters: the packets it inspected, for wrk the
    requests sent against the requests the engine inspected, and the breakdown of the
    worker's time per request (per packet for iperf3) when it was on."""
    lines: list[str] = []
    for key, runs in info.get("inspected", {}).items():
        label = key.removeprefix("cpu_").removesuffix("_s")
        for i, run in enumerate(runs, 1):
            sent = run["sent_requests"]
            unit = "packet"
            text = f"{name} {label} run {i}: {run['packets']:,} packets inspected"
            if sent:
                unit = "request"
                text += (
                    f", {run['packets'] / sent:.2f} per request; wrk sent {sent:,} requests, "
                    f"the engine inspected {run['engine_requests']:,}"
                )
            lines.append(text)
            bd = run.get("breakdown_us")
            if bd:
                stages = ", ".join(f"{s} {bd[s]:.2f}" for s in STAGES)
                lines.append(
                    f"  worker CPU us/{unit}: {stages}; total {bd['total']:.2f} (wall "
                    f"{bd['wall']:.2f}, CPU share {bd['cpu_share']:.2f})"
                )
    return lines


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
