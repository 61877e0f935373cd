"""Reassembled TCP byte streams of a capture file, per connection and direction.

Built from the gateway's own capture reader, packet decoder and reassembler, so a decoder test
sees exactly the bytes the engine would. A SYN starts a new connection on a reused 4-tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.decode.packet import TCP_ACK, TCP_SYN, parse_frame
from gateway.errors import DecodeError
from gateway.flow.reassembly import StreamReassembler
from gateway.intake.pcap import read_capture
from gateway.vocabulary import PROTO_TCP

MAX_STREAM_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamKey:
    src: str
    sport: int
    dst: str
    dport: int
    index: int  # n-th connection on this 4-tuple in the capture


def tcp_streams(path: Path, max_bytes: int = MAX_STREAM_BYTES) -> dict[StreamKey, bytes]:
    """Every TCP direction of `path` with payload, reassembled first-wins."""
    assemblers: dict[tuple[str, int, str, int], StreamReassembler] = {}
    index: dict[tuple[str, int, str, int], int] = {}
    data: dict[StreamKey, bytearray] = {}
    for record in read_capture(path):
        try:
            pkt = parse_frame(record.data, record.linktype)
        except DecodeError:
            continue
        if pkt.proto != PROTO_TCP or pkt.fragment:
            continue
        four = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        syn = bool(pkt.flags & TCP_SYN)
        if syn and four in assemblers and assemblers[four].delivered:
            index[four] = index.get(four, 0) + 1
            del assemblers[four]
        if syn and not pkt.flags & TCP_ACK:
            reverse = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
            if reverse in assemblers and assemblers[reverse].delivered:
                index[reverse] = index.get(reverse, 0) + 1
                del assemblers[reverse]
        asm = assemblers.setdefault(four, StreamReassembler(max_bytes, max_bytes))
        out = asm.receive(pkt.seq, pkt.payload, syn=syn)
        if out:
            key = StreamKey(*four, index.get(four, 0))
            data.setdefault(key, bytearray()).extend(out)
    return {k: bytes(v) for k, v in data.items()}
