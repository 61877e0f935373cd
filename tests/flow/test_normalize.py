"""Tests for gateway/flow/normalize.py: each rule on hand-built segments (gateway/testing/wire.py
builds the datagrams, gateway.decode decodes them as the engine does). tests/evasion runs the
same rules through the engine against whole evasion techniques."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.decode.packet import Packet, parse_ip
from gateway.flow.normalize import ChecksumMode, Normalizer, Verdict
from gateway.flow.reassembly import StreamReassembler
from gateway.flow.table import FlowTable
from gateway.testing.evasion import Conn, Piece, session
from gateway.testing.wire import ACK, PSH, RST, SYN, Checksum, Seg, build
from gateway.vocabulary import Direction

DATA = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"


def segs(conn: Conn | None = None) -> list[Seg]:
    conn = conn or Conn()
    return session(conn, [Piece(i, DATA[i : i + 8]) for i in range(0, len(DATA), 8)])


def pkt(seg: Seg) -> Packet:
    (datagram,) = build(seg)
    return parse_ip(datagram)


class Run:
    """A flow table, a normaliser and the client's reassembler, fed like the engine does."""

    def __init__(self, mode: ChecksumMode = ChecksumMode.VERIFY, kernel: bool = False) -> None:
        self.norm = Normalizer(mode, kernel_checked=kernel)
        self.table = FlowTable(10, 60, 60, salt=1, close_check=self.norm.closes)
        self.reasm = StreamReassembler(1 << 20, 1 << 16, history=1024, refuse_excess=True)
        self.out = b""

    def feed(self, seg: Seg) -> Verdict:
        p = pkt(seg)
        if not self.norm.intact(p):
            return Verdict.DROP
        flow, d = self.table.lookup(p, 1.0)
        if d is Direction.TO_SERVER:
            flow.streams = (self.reasm, None)
        reasm = self.reasm if d is Direction.TO_SERVER else None
        if not self.norm.admit(flow, p, d, reasm):
            return Verdict.DROP
        if reasm is None or not (p.payload or p.flags & SYN):
            return Verdict.PASS
        verdict, data = self.norm.receive(flow, p, d, reasm)
        self.out += data
        return verdict

    def all(self, seq: list[Seg]) -> list[Verdict]:
        return [self.feed(s) for s in seq]


def test_a_plain_session_passes_whole() -> None:
    run = Run()
    assert set(run.all(segs())) == {Verdict.PASS}
    assert run.out == DATA


@pytest.mark.parametrize("version", [4, 6])
def test_wrong_checksums_are_dropped_and_offload_passes(version: int) -> None:
    s = segs(Conn(version=version))[3]
    run = Run()
    assert run.norm.intact(pkt(s))
    assert not run.norm.intact(pkt(replace(s, checksum=Checksum.BAD)))
    assert run.norm.intact(pkt(replace(s, checksum=Checksum.PARTIAL)))
    if version == 4:
        assert not run.norm.intact(pkt(replace(s, ip_checksum_bad=True)))
    assert run.norm.counts["tcp_checksum"] == 1


def test_auto_mode_passes_wrong_checksums_when_most_are_wrong() -> None:
    bad = [replace(s, checksum=Checksum.BAD) for s in segs()]
    run = Run(ChecksumMode.AUTO)
    assert all(run.norm.intact(pkt(s)) for s in bad)  # a rewritten capture: all wrong
    run = Run(ChecksumMode.AUTO)
    good = segs()
    assert all(run.norm.intact(pkt(s)) for s in good)
    assert not run.norm.intact(pkt(bad[3]))  # one wrong among many right ones: dropped


def test_syn_data_and_data_without_ack_are_dropped() -> None:
    s = segs()
    run = Run()
    assert run.feed(s[0].with_data(b"junk")) is Verdict.DROP
    run.all(s[:3])
    assert run.feed(replace(s[3], flags=PSH)) is Verdict.DROP
    assert run.norm.counts["syn_data"] == 1 and run.norm.counts["no_ack"] == 1


def test_paws_drops_an_old_timestamp() -> None:
    s = segs()
    run = Run()
    run.all(s[:4])
    ts = s[4].ts
    assert ts is not None
    assert run.feed(replace(s[4], ts=(ts[0] - 100, ts[1]))) is Verdict.DROP
    assert run.feed(s[4]) is Verdict.PASS
    assert run.norm.counts["paws"] == 1


def test_data_before_the_stream_or_beyond_any_window_is_dropped() -> None:
    s = segs()
    run = Run()
    run.all(s[:4])
    assert run.feed(replace(s[4], seq=s[0].seq - 100)) is Verdict.DROP
    assert run.feed(replace(s[4], seq=s[4].seq + 70000)) is Verdict.DROP
    assert run.norm.counts["before_stream"] == 1 and run.norm.counts["beyond_window"] == 1


def test_out_of_order_data_beyond_the_offered_window_is_dropped_in_order_passes() -> None:
    conn = Conn(server_window=16)
    s = segs(conn)
    run = Run()
    run.all(s[:3])
    assert run.feed(s[5]) is Verdict.DROP  # 16 bytes ahead, out of order: beyond the edge
    for seg in s[3:-3]:
        assert run.feed(seg) is Verdict.PASS  # in order: window updates may go unseen
    assert run.out == DATA


def test_kernel_checked_leaves_checksums_and_window_edges_to_the_kernel() -> None:
    # Inline with firewall.drop_invalid the kernel dropped these before the queue; what
    # conntrack does not check (SYN data, data without ACK, PAWS, the largest window) stays.
    conn = Conn(server_window=16)
    s = segs(conn)
    run = Run(kernel=True)
    assert run.norm.intact(pkt(replace(s[3], checksum=Checksum.BAD)))
    run.all(s[:3])
    assert run.feed(s[5]) is Verdict.PASS  # beyond the offered edge: the kernel's to drop
    assert run.feed(replace(s[4], seq=s[4].seq + (65535 << 14) + 1)) is Verdict.DROP
    assert run.feed(replace(s[4], flags=PSH)) is Verdict.DROP
    ts = s[4].ts
    assert ts is not None
    assert run.feed(replace(s[4], ts=(ts[0] - 100, ts[1]))) is Verdict.DROP
    counts = run.norm.counts
    assert counts["tcp_checksum"] == 0 and counts["beyond_window"] == 1
    assert counts["no_ack"] == 1 and counts["paws"] == 1


def test_bytes_that_differ_from_inspected_ones_reset_the_flow() -> None:
    s = segs()
    run = Run()
    run.all(s[:4])
    assert run.feed(s[4].with_data(b"XXXXXXXX")) is Verdict.PASS
    assert run.feed(s[4]) is Verdict.RESET  # delivered bytes, another copy
    run = Run()
    run.all(s[:3])
    assert run.feed(s[5]) is Verdict.PASS  # held out of order
    assert run.feed(s[5].with_data(b"YYYYYYYY")) is Verdict.RESET  # held bytes, another copy
    assert run.norm.counts["conflict"] == 1


def test_the_urgent_byte_is_taken_out() -> None:
    conn = Conn()
    pieces = [Piece(0, DATA[:10] + b"X", urg=11), Piece(11, DATA[10:])]
    run = Run()
    run.all(session(conn, pieces))
    assert run.out == DATA and run.norm.counts["urgent"] == 1


def test_only_a_plausible_fin_or_rst_closes_the_flow() -> None:
    s = segs()
    run = Run()
    run.all(s[:4])
    flow = run.table.get(run.table.lookup(pkt(s[4]), 1.0)[0].key)
    assert flow is not None
    run.feed(replace(s[4], flags=RST | ACK, data=b"", seq=s[4].seq + 5000))
    assert not flow.closed  # not RCV.NXT: the server ignores it
    run.feed(replace(s[4], flags=RST | ACK, data=b"", ttl=1))
    assert not flow.closed  # its TTL is below the SYN's: it may never arrive
    run.feed(replace(s[4], flags=RST | ACK, data=b""))
    assert flow.closed


def test_out_of_order_data_past_the_pending_bound_is_dropped_not_skipped() -> None:
    run = Run()
    run.reasm = StreamReassembler(1 << 20, 8, history=1024, refuse_excess=True)
    s = segs()
    run.all(s[:3])
    assert run.feed(s[4]) is Verdict.PASS  # 8 bytes held
    assert run.feed(s[5]) is Verdict.DROP  # would exceed the bound: refused
    assert [run.feed(x) for x in (s[3], s[5])] == [Verdict.PASS, Verdict.PASS]
    assert run.out == DATA[:24] and run.reasm.gaps == 0
