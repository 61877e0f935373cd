"""gateway/intake/breakdown.py: the stage timers see every packet, change no decision, and
leave nothing patched behind; per_request turns two counter snapshots into us per request."""

from __future__ import annotations

from gateway.config import FailPolicy
from gateway.decode.packet import TCP_ACK, TCP_PSH, TCP_SYN
from gateway.engine import Engine
from gateway.intake.breakdown import STAGES, STAT_NAMES, Breakdown, per_request, wanted
from gateway.intake.nfqueue import PacketHandler, WorkerStats, publish_counters
from gateway.match.matcher import Matcher
from gateway.match.rules import RuleSet
from tests.flow.test_table_bound import REQUEST, Client
from tests.intake.test_nfqueue import QueuedPacket
from tests.test_engine import MARKER, rule

ATTACK = b"GET /?q=" + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def _verdicts(timed: bool) -> tuple[list[str], Breakdown, WorkerStats]:
    """Two keep-alive connections, the second attacking, through the handler."""
    engine = Engine(RuleSet([rule(1, MARKER)]))
    stats = WorkerStats()
    handler = PacketHandler(engine, stats, FailPolicy.OPEN, 1 << 28, 0xF0000000)
    timing = Breakdown()
    callback = handler
    if timed:
        timing.install(engine)
        callback = timing.handler(handler)  # type: ignore[assignment]
    client = Client(engine, 0)
    packets = [
        QueuedPacket(client.segment(TCP_SYN)),
        QueuedPacket(client.segment(TCP_SYN | TCP_ACK, to_server=False)),
        QueuedPacket(client.segment(TCP_ACK | TCP_PSH, REQUEST)),
        QueuedPacket(client.segment(TCP_ACK | TCP_PSH, ATTACK)),
    ]
    try:
        for pkt in packets:
            callback(pkt)
    finally:
        timing.uninstall()
    return [p.verdict for p in packets], timing, stats


def test_the_timers_change_no_verdict_and_see_every_packet() -> None:
    plain, _, plain_stats = _verdicts(timed=False)
    original = Matcher.scan_stream
    timed, timing, stats = _verdicts(timed=True)
    assert timed == plain
    assert stats.get("reset") == plain_stats.get("reset") == 1  # the attack, either way
    assert Matcher.scan_stream is original  # uninstalled
    assert timing.packets == len(plain)
    stages = timing.stages()
    assert set(stages) == set(STAGES)
    assert stages["decode"] > 0 and stages["match"] > 0 and stages["reassembly"] > 0
    publish_counters(timing.counters(), stats)
    assert stats.get("bd_packets") == len(plain)
    assert all(stats.get(name) >= 0 for name in STAT_NAMES)


def test_per_request() -> None:
    before = {"bd_packets": 10, "bd_match_ns": 1000, "bd_verdict_ns": 0, "bd_run_ns": 0}
    after = {"bd_packets": 30, "bd_match_ns": 5000, "bd_verdict_ns": 20_000, "bd_run_ns": 24_000}
    figures = per_request(before | {"bd_cpu_ns": 0}, after | {"bd_cpu_ns": 48_000}, 10)
    assert figures is not None
    assert figures["match"] == 0.4 and figures["verdict"] == 2.0 and figures["packets"] == 2.0
    assert figures["total"] == 2.4 and figures["wall"] == 2.4 and figures["cpu_share"] == 1.0
    # preempted half the time: half of each stage's wall time was the worker's CPU
    halved = per_request(before | {"bd_cpu_ns": 0}, after | {"bd_cpu_ns": 12_000}, 10)
    assert halved is not None and halved["total"] == 1.2 and halved["wall"] == 2.4
    assert per_request(after, after, 10) is None


def test_wanted_reads_the_environment_flag() -> None:
    assert wanted({"VPATCH_BREAKDOWN": "1"})
    assert not wanted({"VPATCH_BREAKDOWN": "0"}) and not wanted({})
