"""Parsers for what the benchmark reads: wrk's text report, iperf3's JSON, /proc/PID/stat.

Guarantees: each parser either returns a complete frozen record or raises BenchError naming the
source (a label the caller gives, e.g. "wrk keep-alive via suricata-tuned") and the line or
key that did not fit; nothing here runs a process. Time values are normalised to milliseconds,
rates to bits per second or requests per second.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.benchmark import BenchError

# wrk prints durations with these unit suffixes (src/units.c: time units).
_WRK_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_WRK_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h)\s*$")
_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+(\S+)\s*$")
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([0-9.]+\w+), ")
_WRK_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$")
_WRK_SOCKET_ERRORS = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$"
)
_WRK_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)\s*$")

# Bound on what we accept from a tool's output: a runaway tool must not make us parse gigabytes.
MAX_TOOL_OUTPUT = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run (`wrk --latency`)."""

    requests: int
    duration_ms: float
    requests_per_s: float
    latency_p50_ms: float
    latency_p75_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_timeout: int = 0
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        """Socket errors of every kind plus non-2xx/3xx answers."""
        return (
            self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_timeout
            + self.non_2xx_3xx
        )


@dataclass(frozen=True, slots=True)
class IperfResult:
    """One iperf3 TCP run (`iperf3 -J`), seen from the receiving side."""

    reverse: bool  # True: server sent, client received (-R)
    seconds: float
    bytes_received: int
    bits_per_second: float
    retransmits: int

    @property
    def gbit_per_s(self) -> float:
        return self.bits_per_second / 1e9


def parse_wrk_time_ms(text: str, source: str) -> float:
    """'278.00us' / '2.57ms' / '1.02s' -> milliseconds."""
    m = _WRK_TIME.match(text)
    if m is None:
        raise BenchError(f"{source}: not a wrk duration: {text!r}")
    return float(m.group(1)) * _WRK_TIME_UNITS_MS[m.group(2)]


def parse_wrk(text: str, source: str = "wrk output") -> WrkResult:
    """Parse the report `wrk --latency` prints on stdout."""
    if len(text) > MAX_TOOL_OUTPUT:
        raise BenchError(f"{source}: output of {len(text)} characters exceeds {MAX_TOOL_OUTPUT}")
    percentiles: dict[str, float] = {}
    requests: int | None = None
    duration_ms: float | None = None
    rps: float | None = None
    errors = (0, 0, 0, 0)
    non2xx = 0
    in_distribution = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip() == "Latency Distribution":
            in_distribution = True
            continue
        if in_distribution:
            m = _WRK_PERCENTILE.match(line)
            if m is not None:
                percentiles[m.group(1)] = parse_wrk_time_ms(m.group(2), f"{source} line {lineno}")
                continue
            in_distribution = False
        if (m := _WRK_TOTAL.match(line)) is not None:
            requests = int(m.group(1))
            duration_ms = parse_wrk_time_ms(m.group(2), f"{source} line {lineno}")
        elif (m := _WRK_RPS.match(line)) is not None:
            rps = float(m.group(1))
        elif (m := _WRK_SOCKET_ERRORS.match(line)) is not None:
            errors = (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)))
        elif (m := _WRK_NON2XX.match(line)) is not None:
            non2xx = int(m.group(1))
    missing = [
        name
        for name, value in (("requests total", requests), ("Requests/sec", rps))
        if value is None
    ] + [f"{p}% latency" for p in ("50", "75", "90", "99") if p not in percentiles]
    if missing:
        first = text.strip().splitlines()[:1]
        raise BenchError(
            f"{source}: wrk report lacks {', '.join(missing)} (was --latency given? "
            f"first line: {first[0] if first else '<empty>'!r})"
        )
    assert requests is not None and duration_ms is not None and rps is not None
    return WrkResult(
        requests=requests,
        duration_ms=duration_ms,
        requests_per_s=rps,
        latency_p50_ms=percentiles["50"],
        latency_p75_ms=percentiles["75"],
        latency_p90_ms=percentiles["90"],
        latency_p99_ms=percentiles["99"],
        errors_connect=errors[0],
        errors_read=errors[1],
        errors_write=errors[2],
        errors_timeout=errors[3],
        non_2xx_3xx=non2xx,
    )


def parse_iperf3(text: str, source: str = "iperf3 output") -> IperfResult:
    """Parse `iperf3 -J` output of a TCP test; the figure is the receiver's (`sum_received`).

    iperf3 may exit 0 and still report a failure in the JSON's "error" key: that raises.
    """
    if len(text) > MAX_TOOL_OUTPUT:
        raise BenchError(f"{source}: output of {len(text)} characters exceeds {MAX_TOOL_OUTPUT}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchError(f"{source}: not JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(doc, dict):
        raise BenchError(f"{source}: top level is {type(doc).__name__}, not an object")
    if doc.get("error"):
        raise BenchError(f"{source}: iperf3 reported error: {doc['error']}")
    try:
        end = doc["end"]
        received = end["sum_received"]
        sent = end["sum_sent"]
        reverse = bool(doc["start"]["test_start"].get("reverse", 0))
        return IperfResult(
            reverse=reverse,
            seconds=float(received["seconds"]),
            bytes_received=int(received["bytes"]),
            bits_per_second=float(received["bits_per_second"]),
            retransmits=int(sent.get("retransmits", 0)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BenchError(f"{source}: iperf3 JSON lacks or mistypes {err}") from err


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat the benchmark uses (proc(5))."""

    pid: int
    comm: str
    ppid: int
    utime_ticks: int
    stime_ticks: int


def parse_proc_stat(text: str, source: str = "/proc/PID/stat") -> ProcStat:
    """Parse one /proc/PID/stat line; comm may hold spaces and parentheses (proc(5))."""
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 1 or close_paren < open_paren:
        raise BenchError(f"{source}: no '(comm)' field in {text[:80]!r}")
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14 and stime field 15 (1-based).
    if len(rest) < 13:
        raise BenchError(f"{source}: {len(rest) + 2} fields, need at least 15")
    try:
        return ProcStat(
            pid=int(text[:open_paren]),
            comm=text[open_paren + 1 : close_paren],
            ppid=int(rest[1]),
            utime_ticks=int(rest[11]),
            stime_ticks=int(rest[12]),
        )
    except ValueError as err:
        raise BenchError(f"{source}: non-numeric field ({err})") from err


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_proc_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """The process's stat, or None when it is gone."""
    path = proc / str(pid) / "stat"
    try:
        text = path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return parse_proc_stat(text, str(path))


def process_tree(root: int, proc: Path = Path("/proc")) -> list[int]:
    """root and all its live descendants (worker processes), root first."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_proc_stat((entry / "stat").read_text(), str(entry / "stat"))
        except (OSError, BenchError):
            continue  # exited while we looked, or a kernel thread with an odd line
        children.setdefault(stat.ppid, []).append(stat.pid)
    found = [root]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def cpu_ticks(pids: list[int], proc: Path = Path("/proc")) -> dict[int, int]:
    """utime+stime (all threads, in clock ticks) of each live PID."""
    ticks: dict[int, int] = {}
    for pid in pids:
        stat = read_proc_stat(pid, proc)
        if stat is not None:
            ticks[pid] = stat.utime_ticks + stat.stime_ticks
    return ticks


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds spent between two `cpu_ticks` snapshots, summed over processes.

    A process born in between counts from zero; one that died in between is lost (its time
    is not visible any more), which the caller avoids by snapshotting a stable process set.
    """
    total = 0
    for pid, ticks in after.items():
        total += ticks - before.get(pid, 0)
    return total / CLOCK_TICKS


def parse_suricata_stats(text: str, source: str = "stats.log") -> dict[str, int]:
    """The counters of the last block of a Suricata stats.log (`name | Total | value` lines
    after the last `Date:` line); {} when no block was written yet."""
    block = text[text.rfind("Date:") :] if "Date:" in text else ""
    counters: dict[str, int] = {}
    for line in block.splitlines()[1:]:
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or parts[1] != "Total":
            continue
        try:
            counters[parts[0]] = int(parts[2])
        except ValueError as err:
            raise BenchError(
                f"{source}: counter {parts[0]!r} is not a number: {parts[2]!r}"
            ) from err
    return counters
