"""Tests for gateway/flow/reassembly.py.

One shared table of cases: segments given as (offset from ISN + 1, bytes); each case runs
with several ISNs (including just below the 2**32 wrap) and, where byte-exactness of the
output does not depend on segment boundaries, once more with every segment split into
one-byte segments. Hypothesis checks that any segmentation, order and duplication of a
payload delivers exactly that payload.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.flow.reassembly import MAX_PENDING_SEGMENTS, SEQ_MOD, StreamReassembler

ISNS = [0, 1000, SEQ_MOD - 1, SEQ_MOD - 4]


@dataclass(frozen=True)
class Case:
    name: str
    segments: list[tuple[int, bytes]]
    want: bytes
    max_depth: int = 1 << 20
    max_pending: int = 1 << 16
    overlaps_conflicting: int = 0
    gaps: int = 0
    depth_reached: bool = False
    pending_bytes: int = 0
    bytewise: bool = True  # the outcome is the same when every segment is split into bytes


CASES = [
    Case("in-order", [(0, b"hello "), (6, b"world")], b"hello world"),
    Case("out-of-order", [(6, b"world"), (0, b"hello ")], b"hello world"),
    Case("reverse-three", [(4, b"ef"), (2, b"cd"), (0, b"ab")], b"abcdef"),
    Case("duplicate", [(0, b"abc"), (0, b"abc"), (3, b"def"), (3, b"def")], b"abcdef"),
    Case("duplicate-pending", [(3, b"def"), (3, b"def"), (0, b"abc")], b"abcdef"),
    Case(
        "overlap-old-data-wins-delivered",
        [(0, b"abcd"), (2, b"XXef")],
        b"abcdef",
        overlaps_conflicting=0,  # delivered bytes are not kept (history=0): not compared
    ),
    Case(
        "overlap-first-wins-pending-later-covers-earlier",
        [(2, b"cd"), (0, b"abXXef"), (6, b"g")],
        b"abcdefg",
        overlaps_conflicting=1,
        bytewise=False,  # split into bytes, the conflict counts once per conflicting byte
    ),
    Case(
        "overlap-first-wins-pending-earlier-covers-later",
        [(4, b"efgh"), (2, b"cdXY"), (0, b"ab")],
        b"abcdefgh",
        overlaps_conflicting=1,
        bytewise=False,
    ),
    Case(
        "overlap-spanning-several-pending",
        [(2, b"c"), (4, b"e"), (6, b"g"), (1, b"bXdXfXh"), (0, b"a")],
        b"abcdefgh",
        overlaps_conflicting=1,
        bytewise=False,
    ),
    Case("overlap-agreeing", [(3, b"de"), (0, b"abcdef")], b"abcdef"),
    Case("missing-segment", [(0, b"ab"), (4, b"ef")], b"ab", pending_bytes=2),
    Case(
        "gap-skipped-when-pending-bound-exceeded",
        [(0, b"ab"), (4, b"efgh"), (10, b"kl")],
        b"abefgh",  # "kl" pushes pending to 6 > 4: the hole before "efgh" is given up
        max_pending=4,
        gaps=1,
        pending_bytes=2,
        bytewise=False,
    ),
    Case("depth-exact", [(0, b"abcd"), (4, b"efgh")], b"abcd", max_depth=4, depth_reached=True),
    Case(
        "depth-mid-segment", [(0, b"abc"), (3, b"defg")], b"abcde", max_depth=5, depth_reached=True
    ),
    Case(
        "depth-out-of-order-beyond-depth-dropped",
        [(6, b"zz"), (0, b"abc")],
        b"abc",
        max_depth=5,
        depth_reached=False,
    ),
    Case("depth-zero", [(0, b"abc")], b"", max_depth=0, depth_reached=True),
    Case("old-retransmission-ignored", [(0, b"abcdef"), (1, b"bc")], b"abcdef"),
]


def _run(case: Case, isn: int, bytewise: bool) -> tuple[bytes, StreamReassembler]:
    r = StreamReassembler(case.max_depth, case.max_pending)
    out = r.receive(isn, b"", syn=True)
    for off, data in case.segments:
        pieces = (
            [(off + i, data[i : i + 1]) for i in range(len(data))] if bytewise else [(off, data)]
        )
        for o, d in pieces:
            out += r.receive((isn + 1 + o) % SEQ_MOD, d)
    return out, r


@pytest.mark.parametrize("isn", ISNS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_whole(case: Case, isn: int) -> None:
    out, r = _run(case, isn, bytewise=False)
    assert out == case.want
    assert r.delivered == len(case.want)
    assert r.overlaps_conflicting == case.overlaps_conflicting
    assert r.gaps == case.gaps
    assert r.depth_reached == case.depth_reached
    assert r.pending_bytes == case.pending_bytes
    assert r.isn == isn


@pytest.mark.parametrize("isn", ISNS)
@pytest.mark.parametrize("case", [c for c in CASES if c.bytewise], ids=lambda c: c.name)
def test_case_one_byte_at_a_time(case: Case, isn: int) -> None:
    out, r = _run(case, isn, bytewise=True)
    assert out == case.want
    assert r.depth_reached == case.depth_reached


def test_syn_consumes_one_sequence_number_and_may_carry_data() -> None:
    r = StreamReassembler(100, 100)
    assert r.receive(SEQ_MOD - 1, b"fast-open", syn=True) == b"fast-open"
    assert r.receive(9, b"!") == b"!"  # ISN + 1 + 9 wraps to 9
    assert r.next_seq == 10


def test_mid_stream_pickup_starts_at_first_segment() -> None:
    r = StreamReassembler(100, 100)
    assert r.receive(5000, b"middle") == b"middle"
    assert r.isn is None
    assert r.receive(5006, b"!") == b"!"
    assert r.receive(4990, b"x" * 10) == b""  # before the pickup point: old data


def test_history_counts_conflicting_retransmission_of_delivered_data() -> None:
    r = StreamReassembler(100, 100, history=16)
    r.receive(0, b"", syn=True)
    r.receive(1, b"GET /index")
    assert r.receive(5, b"evil") == b""
    assert r.overlaps_conflicting == 1
    assert r.receive(6, b"inde") == b""  # offset 5: the bytes really sent
    assert r.overlaps_conflicting == 1


def test_pending_segment_count_is_bounded() -> None:
    r = StreamReassembler(1 << 30, 1 << 30)
    r.receive(0, b"", syn=True)
    for i in range(MAX_PENDING_SEGMENTS + 10):
        r.receive(1 + 2 * (i + 1), b"x")  # every other byte: nothing ever contiguous
    assert len(r._starts) <= MAX_PENDING_SEGMENTS
    assert r.gaps > 0


def test_negative_bounds_rejected() -> None:
    with pytest.raises(ValueError, match="max_pending=-1"):
        StreamReassembler(10, -1)


@st.composite
def _segmented(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, bytes]]]:
    payload = draw(st.binary(min_size=0, max_size=400))
    isn = draw(st.one_of(st.integers(0, SEQ_MOD - 1), st.integers(SEQ_MOD - 600, SEQ_MOD - 1)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(payload) - 1)), max_size=30)))
    bounds = [0, *[c for c in cuts if c < len(payload)], len(payload)]
    segs = [(a, payload[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    # retransmissions of arbitrary ranges with the same bytes
    for _ in range(draw(st.integers(0, 5))):
        if payload:
            a = draw(st.integers(0, len(payload) - 1))
            b = draw(st.integers(a + 1, len(payload)))
            segs.append((a, payload[a:b]))
    order = draw(st.permutations(segs))
    return payload, isn, list(order)


@settings(max_examples=400, deadline=None)
@given(_segmented())
def test_any_segmentation_delivers_exactly_the_payload(
    sample: tuple[bytes, int, list[tuple[int, bytes]]],
) -> None:
    payload, isn, segs = sample
    r = StreamReassembler(1 << 20, 1 << 20)
    out = r.receive(isn, b"", syn=True)
    for off, data in segs:
        out += r.receive((isn + 1 + off) % SEQ_MOD, data)
    assert out == payload
    assert r.pending_bytes == 0
    assert r.overlaps_conflicting == 0
    assert r.gaps == 0


@settings(max_examples=300, deadline=None)
@given(_segmented(), st.integers(0, 64), st.integers(0, 500))
def test_bounded_reassembly_delivers_a_subsequence_within_bounds(
    sample: tuple[bytes, int, list[tuple[int, bytes]]], max_pending: int, max_depth: int
) -> None:
    payload, isn, segs = sample
    r = StreamReassembler(max_depth, max_pending)
    out = r.receive(isn, b"", syn=True)
    for off, data in segs:
        out += r.receive((isn + 1 + off) % SEQ_MOD, data)
        assert r.pending_bytes <= max_pending
    assert len(out) <= max_depth
    if r.gaps == 0:
        assert out == payload[: len(out)]
        assert r.pending_bytes == 0  # every byte arrived: nothing can still be held
        assert out == payload[:max_depth]
