"""Parsers of `vpatch bench` (gateway/benchmark/parse.py) on real tool outputs captured in the
lab (tests/data/bench/). The report is in test_runner.py, the CLI's --only parsing in
tests/commands/test_bench.py; the benchmark itself is not a test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.benchmark import BenchError
from gateway.benchmark.parse import (
    CLOCK_TICKS,
    cpu_seconds_between,
    cpu_ticks,
    parse_iperf3,
    parse_proc_stat,
    parse_suricata_stats,
    parse_wrk,
    parse_wrk_time_ms,
    process_tree,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "bench"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_wrk_keepalive_report() -> None:
    out = parse_wrk(read("wrk-kernel-keepalive.txt"))
    assert out.requests == 316393
    assert out.duration_ms == pytest.approx(3000.0)
    assert out.requests_per_s == pytest.approx(105367.40)
    assert out.latency_p50_ms == pytest.approx(0.278)  # "278.00us"
    assert out.latency_p75_ms == pytest.approx(0.365)
    assert out.latency_p90_ms == pytest.approx(0.412)
    assert out.latency_p99_ms == pytest.approx(2.57)  # "2.57ms"
    assert out.errors == 0


def test_wrk_close_report_through_suricata() -> None:
    out = parse_wrk(read("wrk-suricata-close.txt"))
    assert out.requests == 11687
    assert out.duration_ms == pytest.approx(3040.0)  # "3.04s"
    assert out.requests_per_s == pytest.approx(3839.07)
    assert (out.latency_p50_ms, out.latency_p99_ms) == pytest.approx((2.04, 26.38))


def test_wrk_non_2xx_counted_as_errors() -> None:
    out = parse_wrk(read("wrk-non2xx.txt"))
    assert out.non_2xx_3xx == 59125
    assert out.errors == 59125
    assert out.latency_p99_ms == pytest.approx(0.134)


def test_wrk_socket_errors_line() -> None:
    text = read("wrk-kernel-keepalive.txt").replace(
        "Requests/sec:", "  Socket errors: connect 1, read 2, write 3, timeout 4\nRequests/sec:"
    )
    out = parse_wrk(text)
    assert (out.errors_connect, out.errors_read, out.errors_write, out.errors_timeout) == (
        1,
        2,
        3,
        4,
    )
    assert out.errors == 10


def test_wrk_failure_output_raises_naming_source() -> None:
    with pytest.raises(BenchError, match=r"wrk via x: .*Requests/sec.*unable to connect"):
        parse_wrk(read("wrk-refused.txt"), "wrk via x")


def test_wrk_without_latency_flag_raises() -> None:
    text = read("wrk-kernel-keepalive.txt")
    head, _, tail = text.partition("  Latency Distribution\n")
    stripped = head + "\n".join(tail.splitlines()[4:]) + "\n"
    with pytest.raises(BenchError, match="50% latency"):
        parse_wrk(stripped)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("278.00us", 0.278), ("2.57ms", 2.57), ("1.02s", 1020.0), ("2.00m", 120000.0)],
)
def test_wrk_time_units(text: str, ms: float) -> None:
    assert parse_wrk_time_ms(text, "t") == pytest.approx(ms)


def test_wrk_time_rejects_garbage() -> None:
    with pytest.raises(BenchError, match="'12 parsecs'"):
        parse_wrk_time_ms("12 parsecs", "t")


def test_iperf3_upload() -> None:
    out = parse_iperf3(read("iperf3-kernel-up.json"))
    assert out.reverse is False
    assert out.bytes_received == 5433720832
    assert out.gbit_per_s == pytest.approx(14.489, abs=0.001)
    assert out.retransmits == 8910


def test_iperf3_reverse() -> None:
    out = parse_iperf3(read("iperf3-kernel-reverse.json"))
    assert out.reverse is True
    assert out.gbit_per_s == pytest.approx(15.764, abs=0.001)
    assert out.seconds == pytest.approx(3.0, abs=0.01)


def test_iperf3_error_key_raises_even_though_exit_was_zero() -> None:
    with pytest.raises(BenchError, match="Connection refused"):
        parse_iperf3(read("iperf3-refused.json"), "iperf3 up")


def test_iperf3_truncated_json_raises() -> None:
    text = read("iperf3-kernel-up.json")
    with pytest.raises(BenchError, match="not JSON"):
        parse_iperf3(text[: len(text) // 2])


def test_iperf3_missing_summary_raises() -> None:
    with pytest.raises(BenchError, match="sum_received"):
        parse_iperf3('{"start": {"test_start": {}}, "end": {"sum_sent": {}}}')


def test_proc_stat_with_spaces_and_parens_in_comm() -> None:
    line = "4242 (Suricata) (Main)) S 1 4242 4242 0 -1 4194560 100 0 0 0 463 796 0 0 20 0 9 0"
    stat = parse_proc_stat(line)
    assert (stat.pid, stat.comm, stat.ppid) == (4242, "Suricata) (Main)", 1)
    assert (stat.utime_ticks, stat.stime_ticks) == (463, 796)


def test_proc_stat_short_line_raises() -> None:
    with pytest.raises(BenchError, match="fields"):
        parse_proc_stat("1 (init) S 0 1")


def test_cpu_accounting_of_own_process_tree() -> None:
    me = os.getpid()
    assert me in process_tree(os.getppid())
    before = cpu_ticks([me])
    deadline = sum(range(3_000_000))  # burn some CPU
    assert deadline > 0
    after = cpu_ticks([me])
    spent = cpu_seconds_between(before, after)
    assert spent >= 0
    assert cpu_seconds_between({me: 0}, {me: 3 * CLOCK_TICKS}) == pytest.approx(3.0)
    # a process born in between counts from zero
    assert cpu_seconds_between({}, {1: CLOCK_TICKS}) == pytest.approx(1.0)


def test_suricata_stats_last_block_totals() -> None:
    """A real stats.log of suricata-tuned after a 5 s wrk keep-alive test (lab, 32 connections,
    234,420 requests sent): the bypass at the stream depth left 26,273 requests parsed."""
    text = read("suricata-stats.log")
    stats = parse_suricata_stats(text)
    assert stats["decoder.pkts"] == 52720 and stats["app_layer.tx.http"] == 26273
    assert stats["tcp.stream_depth_reached"] == 32
    older = text.replace("| 52720", "| 1", 1)  # an earlier block: only the last one counts
    assert parse_suricata_stats(older + text)["decoder.pkts"] == 52720
    assert parse_suricata_stats("") == {}
    with pytest.raises(BenchError, match="counter 'ips.accepted' is not a number: 'lots'"):
        parse_suricata_stats(text.replace("| 52720", "| lots", 2))
