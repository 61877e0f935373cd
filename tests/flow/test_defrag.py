"""Tests for gateway/flow/defrag.py: fragments built by gateway/testing/wire.py, decoded by
gateway.decode, reassembled; the whole datagram decodes to the original segment."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.decode.packet import parse_ip
from gateway.flow.defrag import Defragmenter
from gateway.testing.evasion import Conn, Piece, session
from gateway.testing.wire import Fragmenting, FragOverlap, Seg, build
from gateway.vocabulary import Action

DATA = b"POST /cgi-bin/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" * 3


def data_seg(version: int) -> Seg:
    return session(Conn(version=version), [Piece(0, DATA)])[3]


def feed(d: Defragmenter, datagrams: list[bytes]) -> list[tuple[Action, bytes | None]]:
    return [d.add(parse_ip(x), 1.0) for x in datagrams]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("size", [8, 24])
def test_fragments_reassemble_to_the_datagram(version: int, reverse: bool, size: int) -> None:
    seg = data_seg(version)
    (whole,) = build(seg)
    frags = build(replace(seg, frag=Fragmenting(size, reverse)))
    d = Defragmenter()
    out = feed(d, frags)
    assert all(o == (Action.ACCEPT, None) for o in out[:-1])
    action, datagram = out[-1]
    assert action is Action.ACCEPT and datagram is not None
    assert parse_ip(datagram) == parse_ip(whole)
    assert len(d) == 0 and d.completed == 1


def test_a_fragment_that_contradicts_poisons_the_datagram() -> None:
    seg = data_seg(4)
    frags = build(replace(seg, frag=Fragmenting(16, overlap=FragOverlap.REAL_FIRST)))
    d = Defragmenter()
    out = feed(d, frags)
    assert out[-2] == (Action.DROP, None) and out[-1] == (Action.DROP, None)
    assert d.poisoned == 1 and d.completed == 0


def test_duplicates_and_agreeing_overlaps_pass() -> None:
    seg = data_seg(4)
    frags = build(replace(seg, frag=Fragmenting(16)))
    d = Defragmenter()
    out = feed(d, [frags[0], frags[1], frags[1], *frags[2:]])
    assert out[-1][1] is not None and d.poisoned == 0


def test_bounds_refuse_new_datagrams_and_time_out_old_ones() -> None:
    d = Defragmenter(max_datagrams=1, timeout=10.0)
    a = build(replace(data_seg(4), frag=Fragmenting(16), ident=1))
    b = build(replace(data_seg(4), frag=Fragmenting(16), ident=2))
    assert d.add(parse_ip(a[0]), 1.0) == (Action.ACCEPT, None)
    assert d.add(parse_ip(b[0]), 2.0) == (Action.DROP, None)  # full: refused
    assert d.refused == 1
    assert d.add(parse_ip(b[0]), 20.0) == (Action.ACCEPT, None)  # the first one timed out
    assert len(d) == 1


def test_a_fragment_with_a_wrong_header_checksum_is_refused() -> None:
    frags = build(replace(data_seg(4), frag=Fragmenting(16), ip_checksum_bad=True))
    d = Defragmenter()
    assert d.add(parse_ip(frags[1]), 1.0) == (Action.DROP, None)
