"""NFQUEUE worker pieces on a real kernel queue, in a namespace of the test's own.

Packets are UDP datagrams on the namespace's loopback, queued from OUTPUT. The engine is the
real one where behaviour depends on rules (tests/test_inline.py); here small engine stand-ins
inject what the real engine never does on purpose (exceptions) or fix the decision. Without a
queue: the PacketHandler's byte counter, the queue config message and its ack.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP

from gateway.config import FailPolicy, parse_config
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.intake.nfqueue import (
    CONFIG_SEQ,
    ENGINE_STAT_NAMES,
    NFQA_CFG_F_FAIL_OPEN,
    PacketHandler,
    RuleLoader,
    WorkerStats,
    _config_message,
    _find_ack,
    conntrack_lax,
    engine_config,
    engine_counter_base,
    publish_engine_counters,
)
from gateway.match.rules import RuleSet
from gateway.verdict import Decision
from gateway.vocabulary import Action, Limit

REPO = Path(__file__).resolve().parents[2]


# a packet and an engine as PacketHandler sees them (the real ones run in the tests below)
class QueuedPacket:
    """A queued packet as PacketHandler sees it (netfilterqueue.Packet's subset); `verdict`
    is what the handler gave it."""

    indev = physindev = id = 0

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.verdict = ""

    def get_payload(self) -> bytes:
        return self.data

    def get_mark(self) -> int:
        return 0

    def get_hw(self) -> bytes | None:
        return None

    def set_mark(self, mark: int) -> None:
        pass

    def set_payload(self, payload: bytes) -> None:
        self.data = payload

    def accept(self) -> None:
        self.verdict = "accept"

    def drop(self) -> None:
        self.verdict = "drop"

    def repeat(self) -> None:
        self.verdict = "repeat"


class _Engine:
    def process_ip(self, data: bytes, now: float) -> Decision:
        return Decision(Action.ACCEPT)

    def expire(self, now: float) -> None:
        pass


def test_handler_counts_bytes_handed_to_the_engine() -> None:
    stats = WorkerStats()
    handler = PacketHandler(_Engine(), stats, FailPolicy.OPEN, 1 << 28, 1 << 28)
    sizes = []
    for n in (0, 10, 1400):
        data = bytes(IP(src="198.18.0.10", dst="198.18.0.20") / UDP(sport=1, dport=53) / (b"x" * n))
        sizes.append(len(data))
        handler(QueuedPacket(data))
    assert stats.get("packets") == 3 and stats.get("bytes") == sum(sizes)


class _MarkedPkt(QueuedPacket):
    """Comes with a site's bit (0x1) and the kernel rules' "queued" bit; keeps what is set."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.mark = 0x1 | 0x4000000

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark


class _Fixed:
    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def process_ip(self, data: bytes, now: float) -> Decision:
        return self.decision

    def expire(self, now: float) -> None:
        pass


def test_verdict_marks_clear_queued_and_keep_other_bits() -> None:
    tcp = bytes(IP(src="198.18.0.10", dst="198.18.0.20") / TCP(sport=4000, dport=80, flags="PA"))
    expected = {
        Decision(Action.ACCEPT): (0x1, "accept"),
        Decision(Action.ACCEPT, final=True): (0x1 | 0x10000000, "accept"),
        Decision(Action.RESET): (0x1 | 0x8000000, "accept"),  # the RST replacing it: blocked
        # back through the hook with the blocked bit: the kernel rules connmark and drop it
        Decision(Action.DROP): (0x1 | 0x8000000, "repeat"),
        # a SYN reopening a blocked flow's ports: the handshake stays queued
        Decision(Action.ACCEPT, reopening=True): (0x1 | 0x8000000, "accept"),
    }
    for decision, (mark, verdict) in expected.items():
        handler = PacketHandler(
            _Fixed(decision), WorkerStats(), FailPolicy.OPEN, 0x10000000, 0x7C000000,
            blocked_bit=0x8000000,
        )  # fmt: skip
        pkt = _MarkedPkt(tcp)
        handler(pkt)
        assert (pkt.mark, pkt.verdict) == (mark, verdict), decision
    # spread by the flow hash, the other bits are the hash's: the packet leaves with ours only
    handler = PacketHandler(
        _Fixed(Decision(Action.ACCEPT, final=True)), WorkerStats(), FailPolicy.OPEN,
        0x10000000, 0x7C000000, blocked_bit=0x8000000, keep_other_bits=False,
    )  # fmt: skip
    pkt = _MarkedPkt(tcp)
    handler(pkt)
    assert pkt.mark == 0x10000000
    # a packet that comes back with the bit (the kernel rules are missing): dropped, no loop
    handler = PacketHandler(
        _Fixed(Decision(Action.DROP)), WorkerStats(), FailPolicy.OPEN, 0x10000000, 0x7C000000,
        blocked_bit=0x8000000,
    )  # fmt: skip
    pkt = _MarkedPkt(tcp)
    pkt.mark |= 0x8000000
    handler(pkt)
    assert pkt.verdict == "drop"


SCRIPT = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    from netfilterqueue import NetfilterQueue
    from gateway.config import FailPolicy, parse_config
    from gateway.intake.nfqueue import (PacketHandler, WorkerStats, set_queue_flags,
                                        NFQA_CFG_F_FAIL_OPEN)
    from gateway.intake.verdicts import VerdictBatch
    from gateway.verdict import Decision
    from gateway.vocabulary import Action

    mode, policy = sys.argv[1], FailPolicy(sys.argv[2])
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True).stdout
    sh("ip", "link", "set", "lo", "up")
    # as render.py does: the "queued" bit just before the queue, counted when still set after
    sh("iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9999",
       "-j", "MARK", "--or-mark", "0x4000000")
    sh("iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9999",
       "-j", "NFQUEUE", "--queue-num", "5", *(["--queue-bypass"] if mode == "noreader" else []))
    sh("iptables", "-t", "mangle", "-A", "POSTROUTING", "-p", "udp", "--dport", "9999",
       "-m", "mark", "--mark", "0x10000000/0x10000000")
    sh("iptables", "-t", "mangle", "-A", "POSTROUTING", "-p", "udp", "--dport", "9999",
       "-m", "mark", "--mark", "0x4000000/0x4000000")

    class Engine:
        def process_ip(self, data, now):
            if mode == "raise":
                raise RuntimeError("injected")
            if mode == "final":
                return Decision(Action.ACCEPT, final=True)
            if mode == "drop":
                return Decision(Action.DROP)
            if mode == "batch":  # x7 dropped, even numbers final (bypass bit), odd accepted
                if data.endswith(b"x7"):
                    return Decision(Action.DROP)
                return Decision(Action.ACCEPT, final=data[-1] % 2 == 0)
            return Decision(Action.ACCEPT)
        def expire(self, now):
            pass

    stats = WorkerStats()
    nfq = NetfilterQueue()
    if mode == "full":
        handler = lambda pkt: pkt.accept()
        nfq.bind(5, handler, max_len=2)
        if policy is FailPolicy.OPEN:
            set_queue_flags(nfq, 5, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN)
    elif mode != "noreader":
        handler = PacketHandler(Engine(), stats, policy, 0x10000000, 0x14000000)
        nfq.bind(5, handler)
        if mode == "batch":
            handler.batch = VerdictBatch(nfq.get_fd(), 5, limit=4)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 9999))
    rx.settimeout(0.3)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        tx.sendto(b"x%d" % i, ("127.0.0.1", 9999))
    passed_early = 0
    if mode == "full":  # nobody reads the queue yet
        try:
            while True:
                rx.recv(100); passed_early += 1
        except socket.timeout:
            pass
    if mode != "noreader":
        nfq.run(block=False)
        if mode == "batch":
            handler.flush()  # the end of the burst, as the worker's loop does
    received, payloads = 0, []
    try:
        while True:
            payloads.append(rx.recv(100).decode()); received += 1
    except socket.timeout:
        pass
    counters = sh("iptables", "-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n")
    marked = int(counters.splitlines()[2].split()[0])
    unseen = int(counters.splitlines()[3].split()[0])
    if mode != "noreader":
        nfq.unbind()
    print(json.dumps({"early": passed_early, "received": received, "marked": marked,
                      "unseen": unseen, "stats": stats.snapshot(), "payloads": payloads}))
    """
)


def _run(ns: str, mode: str, policy: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, mode, policy],
        check=False, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.netns
@pytest.mark.parametrize(("policy", "early"), [("open", 8), ("closed", 0)])
def test_queue_full_follows_fail_policy(ns: str, policy: str, early: int) -> None:
    # max_len 2, ten datagrams, no reader yet: with NFQA_CFG_F_FAIL_OPEN the 8 that do not fit
    # pass at once; without it they are dropped. The 2 held are accepted once read.
    r = _run(ns, "full", policy)
    assert r["early"] == early
    assert r["received"] == 2
    # the ones passed by the kernel still carry the "queued" bit; the test's handler here
    # (a bare accept) does not clear it, so the 2 it saw count as well
    assert r["unseen"] == early + 2


@pytest.mark.netns
def test_no_reader_bypass_keeps_the_queued_bit(ns: str) -> None:
    """--queue-bypass with no reader: every packet goes on with the mark it had, so the
    "queued" bit set before the NFQUEUE rule counts it (net/netfilter/nf_queue.c: -ESRCH
    with the bypass flag continues with the next hook)."""
    r = _run(ns, "noreader", "open")
    assert r["received"] == 10 and r["unseen"] == 10


@pytest.mark.netns
@pytest.mark.parametrize(("policy", "received"), [("open", 10), ("closed", 0)])
def test_exception_gives_fail_policy_verdict(ns: str, policy: str, received: int) -> None:
    r = _run(ns, "raise", policy)
    assert r["received"] == received
    stats = r["stats"]
    assert isinstance(stats, dict)
    assert stats["packets"] == 10 and stats["errors"] == 10
    assert stats["accepted" if policy == "open" else "dropped"] == 10


@pytest.mark.netns
def test_final_decision_sets_bypass_mark(ns: str) -> None:
    r = _run(ns, "final", "open")
    assert r["received"] == 10 and r["marked"] == 10 and r["unseen"] == 0
    stats = r["stats"]
    assert isinstance(stats, dict) and stats["bypassed"] == 10


@pytest.mark.netns
def test_plain_accept_leaves_mark_alone(ns: str) -> None:
    r = _run(ns, "accept", "open")
    assert r["received"] == 10 and r["marked"] == 0
    assert r["unseen"] == 0  # the verdict cleared the "queued" bit


@pytest.mark.netns
def test_drop_decision(ns: str) -> None:
    r = _run(ns, "drop", "open")
    assert r["received"] == 0
    stats = r["stats"]
    assert isinstance(stats, dict) and stats["dropped"] == 10 and stats["errors"] == 0


@pytest.mark.netns
def test_batched_verdicts_keep_order_marks_and_drops(ns: str) -> None:
    """Accept verdicts held and written four at a time (gateway/intake/verdicts.py) on a real
    queue: each packet leaves with its own mark, in the order queued; the drop of x7 writes
    the three held before it first, and the end of the burst writes the last two."""
    r = _run(ns, "batch", "open")
    assert r["payloads"] == [f"x{i}" for i in range(10) if i != 7]
    assert r["marked"] == 5 and r["unseen"] == 0  # x0 x2 x4 x6 x8 final; the queued bit cleared
    stats = r["stats"]
    assert isinstance(stats, dict)
    assert stats["accepted"] == 9 and stats["dropped"] == 1 and stats["bypassed"] == 5
    assert stats["verdict_writes"] == 3 and stats["verdict_write_errors"] == 0


def test_config_message_layout() -> None:
    msg = _config_message(513, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN)
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) == 16 + 4 + 16
    assert mtype == (3 << 8) | 2  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == 0x1 | 0x4 and seq == CONFIG_SEQ
    assert struct.unpack_from("!BBH", msg, 16) == (0, 0, 513)  # AF_UNSPEC, v0, queue (res_id)
    # attributes: NFQA_CFG_MASK (4) then NFQA_CFG_FLAGS (5), each a big-endian u32
    assert struct.unpack_from("=HH", msg, 20) == (8, 4)
    assert struct.unpack_from("!I", msg, 24) == (1,)
    assert struct.unpack_from("=HH", msg, 28) == (8, 5)
    assert struct.unpack_from("!I", msg, 32) == (1,)


def test_find_ack() -> None:
    ack = struct.pack("=IHHII", 36, 2, 0, CONFIG_SEQ, 0) + struct.pack("=i", -1) + b"\0" * 16
    other = struct.pack("=IHHII", 20, 0x300, 0, 7, 0) + b"\0" * 4
    assert _find_ack(other + ack) == -1
    assert _find_ack(other) is None
    assert _find_ack(b"") is None


@pytest.mark.parametrize(
    ("checksum", "liberal", "config", "reason"),
    [
        ("1", "0", "", None),
        ("0", "0", "", "net.netfilter.nf_conntrack_checksum is 0, not 1"),
        ("1", "1", "", "net.netfilter.nf_conntrack_tcp_be_liberal is 1, not 0"),
        (None, "0", "", "cannot read net.netfilter.nf_conntrack_checksum"),
        ("1", "0", "firewall: {drop_invalid: false}\n", "firewall.drop_invalid is off"),
    ],
)
def test_engine_leaves_tcp_checks_to_conntrack_only_when_it_does_them(
    tmp_path: Path, checksum: str | None, liberal: str, config: str, reason: str | None
) -> None:
    if checksum is not None:
        (tmp_path / "nf_conntrack_checksum").write_text(checksum + "\n")
    (tmp_path / "nf_conntrack_tcp_be_liberal").write_text(liberal + "\n")
    cfg = parse_config("protected_hosts: [198.18.0.20]\n" + config)
    lax = conntrack_lax(cfg, tmp_path)
    assert (lax is None) if reason is None else (lax is not None and lax.startswith(reason))
    assert engine_config(cfg, tmp_path).kernel_checked_tcp is (reason is None)


class _SwapEngine:
    def __init__(self) -> None:
        self.swapped: list[tuple[Any, Any]] = []

    def swap_rules(self, ruleset: Any, matcher: Any) -> None:
        self.swapped.append((ruleset, matcher))


def _poll_until_done(loader: RuleLoader, engine: _SwapEngine, stats: WorkerStats) -> None:
    loader.poll(engine)  # starts the background build
    for _ in range(3000):
        loader.poll(engine)
        if stats.get("rules_version") == stats.get("rules_wanted"):
            return
        time.sleep(0.01)
    raise AssertionError("the rule loader did not finish")


def test_rule_loader_builds_in_the_background_and_keeps_the_old_set_on_error(
    tmp_path: Path,
) -> None:
    rule = (REPO / "rules" / "vpatch-test-split.yaml").read_text()
    (tmp_path / "r.yaml").write_text(rule)
    config = parse_config(f"rules: [{tmp_path}]\n")
    stats, engine = WorkerStats(), _SwapEngine()
    loader = RuleLoader(config, stats)
    loader.poll(engine)
    assert engine.swapped == []  # nothing wanted yet
    stats.set("rules_wanted", 1)
    _poll_until_done(loader, engine, stats)
    ((ruleset, matcher),) = engine.swapped
    ids = [r.id for r in ruleset]  # the file's rule, and the built-in app-control rules
    assert 9000100 in ids and matcher.ruleset is ruleset
    assert stats.get("rules") == len(ids) and stats.get("rules_errors") == 0
    (tmp_path / "bad.yaml").write_text("id: [not a rule\n")
    stats.set("rules_wanted", 2)
    _poll_until_done(loader, engine, stats)
    assert len(engine.swapped) == 1  # the bad set was not swapped in
    assert stats.get("rules_errors") == 1 and stats.get("rules") == len(ids)


def test_engine_counters_reach_the_shared_counters() -> None:
    """The worker copies the engine's limit, normaliser and defragmenter counters into the
    shared counters the control socket's `status` reports."""
    engine = Engine(RuleSet([]), EngineConfig())
    engine.stats.limits[Limit.STREAM_HOLE] += 2
    engine.normalizer.counts["paws"] += 3
    stats = WorkerStats()
    publish_engine_counters(engine.stats.as_dict(), stats)
    snap = stats.snapshot()
    assert snap["limit_stream_hole"] == 2 and snap["norm_paws"] == 3
    assert snap["frag_refused"] == 0 and snap["packets"] == 0
    assert set(ENGINE_STAT_NAMES) <= set(engine.stats.as_dict())


def test_a_restarted_worker_goes_on_counting_where_the_dead_one_stopped() -> None:
    """The engine's totals of a replaced worker are the base of the next one (issue 15 point
    14: counters kept across restarts); a level such as flows_active is not carried."""
    stats = WorkerStats()
    dead = Engine(RuleSet([]), EngineConfig())
    dead.stats.limits[Limit.STREAM_HOLE] += 2
    publish_engine_counters({**dead.stats.as_dict(), "flows_active": 7}, stats)
    base = engine_counter_base(stats)  # the new worker binds
    new = Engine(RuleSet([]), EngineConfig())
    new.stats.limits[Limit.STREAM_HOLE] += 1
    publish_engine_counters({**new.stats.as_dict(), "flows_active": 3}, stats, base)
    snap = stats.snapshot()
    assert snap["limit_stream_hole"] == 3
    assert snap["flows_active"] == 3


def test_worker_stats_travel_to_a_spawned_worker() -> None:
    """The supervisor hands each queue worker its WorkerStats through spawn: the counters the
    worker adds (here `add` and the handler's `received`, run in the child) are the parent's
    shared memory, whatever the faster view the handler writes through."""
    stats = WorkerStats()
    ctx = multiprocessing.get_context("spawn")
    for target, args in ((stats.add, ("packets", 3)), (stats.received, (1500,))):
        proc = ctx.Process(target=target, args=args)
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
    assert (stats.get("packets"), stats.get("bytes")) == (4, 1500)
