"""Fuzz over the whole engine (gateway/engine.py): hostile datagrams and TCP sessions in,
a Decision out for every one, no internal error, every configured bound held.

Inputs (gateway/testing/enginefuzz.py builds them): random bytes as IP datagrams and as frames
of every supported link type; corpus frames (../shared/corpora) with bytes flipped, truncated,
spliced, inserted or set to edge values; corpus connections and evasion sessions
(gateway/testing/evasion.py over the rules' attack samples) whose segments are shuffled,
duplicated, dropped, cut, overlapped by differing copies, or whose payload bytes change with
lengths and checksums fixed (so they reach reassembly and the decoders); and TCP sessions built
field by field with gateway/testing/wire.py (sequence numbers, flags, windows, urgent pointers,
fragments, IPv6 extension headers all drawn by hypothesis).

Held: every call returns a Decision; `internal_errors` and `app_internal_errors` (caught
exceptions: bugs) stay 0; after a long deterministic run with small bounds, the flow table,
pending bytes, history, memo, defragmenter and open Hyperscan streams are within bounds and no
flow's state exceeds `DECODER_STATE_BOUND` plus its reassembly bounds. The engine runs in both
checksum modes (captures: AUTO; inline: VERIFY with the kernel's checks assumed). The whole
file runs in about a minute; bench/fuzz_engine.py runs the same mutator for hours.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.flow.normalize import ChecksumMode
from gateway.intake.pcap import CaptureRecord
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.enginefuzz import (
    DECODER_STATE_BOUND,
    LINKTYPES,
    RAW_IP,
    CorpusMutator,
    EvasionCase,
    Unit,
    bound_violations,
    evasion_cases,
    feed,
    load_corpus,
)
from gateway.testing.wire import ACK, FIN, PSH, RST, SYN, URG, Checksum, Fragmenting, Seg, build
from gateway.verdict import Decision

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
SMALL = EngineConfig(
    max_flows=32,
    max_pending=2048,
    retransmit_history=256,
    http_memo_entries=4,
    depth_to_server=16 * 1024,
    depth_to_client=4 * 1024,
)
INLINE = EngineConfig(
    max_flows=32,
    max_pending=2048,
    retransmit_history=256,
    http_memo_entries=4,
    checksums=ChecksumMode.VERIFY,
    kernel_checked_syn=True,
    kernel_checked_tcp=True,
    fail_open=False,
)
PER_FLOW = DECODER_STATE_BOUND + 2 * (SMALL.max_pending + 2 * SMALL.retransmit_history)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@lru_cache(maxsize=1)
def matcher() -> Matcher:
    return Matcher(load_rules([default_rule_dir()]))


@lru_cache(maxsize=1)
def corpus() -> list[CaptureRecord]:
    return load_corpus(CORPORA) if CORPORA.is_dir() else []


@lru_cache(maxsize=1)
def cases() -> list[EvasionCase]:
    return evasion_cases(matcher().ruleset)


def engine(config: EngineConfig = SMALL) -> Engine:
    m = matcher()
    return Engine(m.ruleset, config, matcher=m)


def run(eng: Engine, unit: Unit, now: float = 1_700_000_000.0) -> list[Decision]:
    decisions = feed(eng, unit, now)
    assert len(decisions) == len(unit.inputs)
    assert all(isinstance(d, Decision) for d in decisions)
    assert eng.stats.internal_errors == 0, unit
    assert eng.stats.app_internal_errors == 0, unit
    return decisions


def check(eng: Engine) -> None:
    """Every bound held; then the engine's streams are closed (the matcher is shared: its
    count of open streams must be this engine's alone)."""
    try:
        assert bound_violations(eng, PER_FLOW) == []
    finally:
        eng.close()


# ----------------------------------------------------------------------------- random input


@FUZZ
@given(data=st.binary(max_size=2000), linktype=st.sampled_from((RAW_IP, *LINKTYPES)))
def test_random_bytes_get_a_decision(data: bytes, linktype: int) -> None:
    for config in (SMALL, INLINE):
        eng = engine(config)
        try:
            run(eng, Unit("random", ((linktype, data),)))
        finally:
            check(eng)


@FUZZ
@given(
    version=st.sampled_from((0x45, 0x46, 0x4F, 0x60)),
    proto=st.sampled_from((6, 17, 1, 58, 44, 0, 43, 60, 255)),
    body=st.binary(max_size=300),
)
def test_random_ip_headers_get_a_decision(version: int, proto: int, body: bytes) -> None:
    """Random bodies behind a plausible first byte and next-header value, so the decoder gets
    past the version check into the header chain."""
    if version == 0x60:  # IPv6: next header at offset 6
        head = bytes([version]) + body[:5].ljust(5, b"\0") + bytes([proto]) + body[5:]
    else:  # IPv4: protocol at offset 9
        head = bytes([version]) + body[:8].ljust(8, b"\0") + bytes([proto]) + body[8:]
    eng = engine()
    try:
        run(eng, Unit("ip", ((RAW_IP, head),)))
    finally:
        check(eng)


# ----------------------------------------------------------------------------- mutated corpora


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"capture corpora not found at {CORPORA}")
@settings(FUZZ, max_examples=80)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3))
def test_mutated_corpus_frames_flows_and_sessions(seed: int, n: int) -> None:
    mutator = CorpusMutator(corpus(), cases(), seed)
    for config in (SMALL, INLINE):
        eng = engine(config)
        now = 1_700_000_000.0
        try:
            for _, unit in zip(range(n), mutator, strict=False):
                run(eng, unit, now)
                now += 0.5
        finally:
            check(eng)


# ----------------------------------------------------------------------------- built sessions

_FLAGS = st.sampled_from(
    (SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, ACK | URG, 0, 0xFF)
)


@st.composite
def segments(draw: st.DrawFn) -> list[Seg]:
    """A TCP conversation between two fixed endpoints with every field drawn."""
    v6 = draw(st.booleans())
    client, server = ("2001:2::1", "2001:2::2") if v6 else ("198.18.0.1", "198.19.0.1")
    port = draw(st.sampled_from((80, 445, 139, 3389, 443, 53, 21, 8080)))
    isn = draw(st.integers(0, 2**32 - 1))
    out = []
    for _ in range(draw(st.integers(1, 12))):
        to_server = draw(st.booleans())
        src, dst, sp, dp = (
            (client, server, 40000, port) if to_server else (server, client, port, 40000)
        )
        frag = draw(
            st.one_of(
                st.none(),
                st.builds(Fragmenting, size=st.sampled_from((8, 16, 24)), reverse=st.booleans()),
            )
        )
        out.append(
            Seg(
                src,
                dst,
                sp,
                dp,
                (isn + draw(st.integers(-70000, 70000))) & 0xFFFFFFFF,
                draw(st.integers(0, 2**32 - 1)),
                draw(_FLAGS),
                draw(st.binary(max_size=200)),
                window=draw(st.integers(0, 65535)),
                urg=draw(st.integers(0, 300)),
                ts=draw(
                    st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 10)))
                ),
                checksum=draw(st.sampled_from(Checksum)),
                ttl=draw(st.integers(0, 255)),
                frag=frag,
                ext=draw(st.sampled_from(((), (0,), (60, 43)))) if v6 else (),
            )
        )
    return out


@FUZZ
@given(segs=segments())
def test_built_tcp_sessions_get_a_decision(segs: list[Seg]) -> None:
    inputs = tuple((RAW_IP, d) for seg in segs for d in build(seg))
    for config in (SMALL, INLINE):
        eng = engine(config)
        try:
            run(eng, Unit("built", inputs))
        finally:
            check(eng)


# ----------------------------------------------------------------------------- a long run


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"capture corpora not found at {CORPORA}")
def test_long_run_keeps_every_bound() -> None:
    """About 60,000 packets from the mutator through one engine with small bounds, the clock
    jumping past the idle timeouts now and then: all decisions given, no internal error,
    every bound held at checkpoints and at the end."""
    eng = engine()
    mutator = CorpusMutator(corpus(), cases(), seed=15)
    rng = random.Random(15)
    now = 1_700_000_000.0
    packets = 0
    for i, unit in enumerate(mutator):
        packets += len(run(eng, unit, now))
        now += 0.05 + (700.0 if rng.random() < 0.002 else 0.0)
        if i % 200 == 0:
            assert bound_violations(eng, PER_FLOW) == []
        if packets >= 60_000:
            break
    check(eng)
    stats = eng.stats
    assert stats.packets == packets
    assert stats.flows_inspected > 100 and stats.events > 0 and stats.decode_errors > 0
