"""Batched accept verdicts (gateway/intake/verdicts.py): the bytes written, the limit, and a
failed write. On a real kernel queue: tests/intake/test_nfqueue.py
test_batched_verdicts_keep_order_marks_and_drops and every inline test (batching is on by
default); here the batch writes to a socket pair so the datagram can be read back."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP

from gateway.config import FailPolicy
from gateway.intake.nfqueue import PacketHandler, WorkerStats
from gateway.intake.verdicts import MESSAGE_SIZE, VerdictBatch
from tests.intake.test_nfqueue import QueuedPacket, _Engine


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.settimeout(1.0)
    yield a, b
    a.close()
    b.close()


def _messages(datagram: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(type, flags, queue, verdict, packet id, mark) of each NFQNL_MSG_VERDICT, as the kernel
    parses them: nlmsghdr and attribute headers in host order, their values big endian."""
    out = []
    off = 0
    while off < len(datagram):
        length, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", datagram, off)
        family, version, res_id = struct.unpack_from("=BB2s", datagram, off + 16)
        assert (family, version) == (0, 0)
        alen, atype = struct.unpack_from("=HH", datagram, off + 20)
        assert (alen, atype) == (12, 2)  # NFQA_VERDICT_HDR
        verdict, packet_id = struct.unpack_from(">II", datagram, off + 24)
        mlen, mtype_attr = struct.unpack_from("=HH", datagram, off + 32)
        assert (mlen, mtype_attr) == (8, 3)  # NFQA_MARK
        (mark,) = struct.unpack_from(">I", datagram, off + 36)
        assert length == MESSAGE_SIZE == 40
        out.append((mtype, flags, int.from_bytes(res_id, "big"), verdict, packet_id, mark))
        off += length
    return out


def test_held_verdicts_are_written_as_one_datagram_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    batch = VerdictBatch(a.fileno(), 513, limit=3)
    assert batch.accept(7, 0x10000000) is False
    assert batch.accept(8, 0) is False
    assert batch.accept(0xFFFFFFFE, 0xFFFFFFFF) is True  # the limit: the caller flushes
    batch.flush()
    assert _messages(b.recv(4096)) == [
        (0x301, 1, 513, 1, 7, 0x10000000),
        (0x301, 1, 513, 1, 8, 0),
        (0x301, 1, 513, 1, 0xFFFFFFFE, 0xFFFFFFFF),
    ]
    assert len(batch) == 0
    batch.flush()  # nothing held: nothing written
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        b.recv(4096)
    batch.close()


def test_limit_must_be_positive(pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(ValueError, match="limit 0"):
        VerdictBatch(pair[0].fileno(), 0, limit=0)


class _Packet(QueuedPacket):
    """A queued UDP datagram with the packet id the kernel gave it."""

    def __init__(self, packet_id: int) -> None:
        super().__init__(bytes(IP(src="198.18.0.10", dst="198.18.0.20") / UDP(sport=1, dport=53)))
        self.id = packet_id


def test_handler_holds_accepts_and_counts_a_failed_write(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    stats = WorkerStats()
    batch = VerdictBatch(a.fileno(), 0, limit=2)
    handler = PacketHandler(_Engine(), stats, FailPolicy.OPEN, 1 << 28, 1 << 28, batch=batch)
    first, second = _Packet(1), _Packet(2)
    handler(first)
    assert first.verdict == "" and len(batch) == 1  # held, not given through netfilterqueue
    handler(second)  # the limit: written at once
    assert [m[4] for m in _messages(b.recv(4096))] == [1, 2]
    handler(_Packet(3))
    batch.close()  # the next write fails
    handler.flush()
    assert stats.get("verdict_write_errors") == 1 and stats.get("errors") == 1
    assert stats.get("verdict_writes") == 2 and stats.get("accepted") == 3
    assert len(batch) == 0  # discarded, never written twice
