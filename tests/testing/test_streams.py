"""gateway/testing/streams.py: the reassembled TCP streams of a capture, per connection and
direction, on captures written by gateway/testing/traffic.py: segments out of order,
overlapping (first wins, as the engine's reassembler), both directions, a second connection on
the same 4-tuple, UDP and damaged frames skipped, the byte bound."""

from __future__ import annotations

from pathlib import Path

from gateway.testing.streams import StreamKey, tcp_streams
from gateway.testing.traffic import (
    CLIENT,
    SERVER,
    Segment,
    contiguous,
    tcp_session,
    udp_exchange,
    write_pcap,
)


def key(sport: int, dport: int, index: int = 0, to_client: bool = False) -> StreamKey:
    if to_client:
        return StreamKey(SERVER, dport, CLIENT, sport, index)
    return StreamKey(CLIENT, sport, SERVER, dport, index)


def test_both_directions_of_a_connection(tmp_path: Path) -> None:
    packets = tcp_session(contiguous(b"request" * 500), b"response" * 400, sport=40000)
    streams = tcp_streams(write_pcap(tmp_path / "a.pcap", packets))
    assert streams == {
        key(40000, 80): b"request" * 500,
        key(40000, 80, to_client=True): b"response" * 400,
    }


def test_out_of_order_and_overlapping_segments_first_wins(tmp_path: Path) -> None:
    segments = [Segment(6, b"world!"), Segment(0, b"hello "), Segment(3, b"XXXXXX")]
    packets = tcp_session(segments, sport=40001)
    streams = tcp_streams(write_pcap(tmp_path / "b.pcap", packets))
    assert streams == {key(40001, 80): b"hello world!"}


def test_a_new_syn_on_the_same_four_tuple_is_a_new_connection(tmp_path: Path) -> None:
    first = tcp_session(contiguous(b"first"), b"one", sport=40002)
    second = tcp_session(contiguous(b"second"), b"two", sport=40002)
    streams = tcp_streams(write_pcap(tmp_path / "c.pcap", first + second))
    assert streams == {
        key(40002, 80, 0): b"first",
        key(40002, 80, 0, to_client=True): b"one",
        key(40002, 80, 1): b"second",
        key(40002, 80, 1, to_client=True): b"two",
    }


def test_udp_damaged_frames_and_empty_connections_are_skipped(tmp_path: Path) -> None:
    packets = udp_exchange(b"dns query", b"dns answer")
    packets.append(b"\x45\x00\x00")  # a damaged IPv4 frame
    packets += tcp_session([], sport=40003)  # handshake and close, no payload
    packets += tcp_session(contiguous(b"data"), sport=40004)
    streams = tcp_streams(write_pcap(tmp_path / "d.pcap", packets))
    assert streams == {key(40004, 80): b"data"}


def test_max_bytes_bounds_each_stream(tmp_path: Path) -> None:
    packets = tcp_session(contiguous(b"a" * 5000), b"b" * 3000, sport=40005)
    streams = tcp_streams(write_pcap(tmp_path / "e.pcap", packets), max_bytes=2048)
    assert {k: len(v) for k, v in streams.items()} == {
        key(40005, 80): 2048,
        key(40005, 80, to_client=True): 2048,
    }
