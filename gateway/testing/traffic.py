"""Constructed TCP/UDP traffic for rule tests: IPv4 packets built with `struct`, run through an
in-process Engine, or written to a classic pcap file.

Guarantees: packets are well-formed IPv4 (RFC 791) with TCP (RFC 9293) or UDP (RFC 768)
headers and correct checksums; a TCP session is a three-way handshake, the client's segments
(in the order and with the sequence numbers the caller chose), the server's data, and FIN/ACK
both ways. Addresses default to 198.18.0.0/15 (RFC 2544 benchmarking space). No packet leaves
the process; `write_pcap` only writes a file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.engine import Engine
from gateway.events.eve import Event

__all__ = [
    "CLIENT",
    "MAX_SEGMENT",
    "SERVER",
    "Segment",
    "contiguous",
    "replay_packets",
    "tcp_session",
    "udp_exchange",
    "write_pcap",
]

CLIENT: Final = "198.18.0.1"
SERVER: Final = "198.19.0.1"
MAX_SEGMENT: Final = 1400  # payload bytes per constructed segment (fits a 1500-byte MTU)
CLIENT_ISN: Final = 1000
SERVER_ISN: Final = 5000
_SYN, _ACK, _FIN, _PSH = 0x02, 0x10, 0x01, 0x08
_PCAP_HEADER: Final = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW


@dataclass(frozen=True, slots=True)
class Segment:
    """Client payload at `offset` bytes into the client stream (0 = first byte after SYN)."""

    offset: int
    data: bytes


def contiguous(data: bytes, size: int = MAX_SEGMENT) -> list[Segment]:
    """`data` cut into in-order segments of at most `size` bytes."""
    return [Segment(i, data[i : i + size]) for i in range(0, len(data), size)]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _addr(text: str) -> bytes:
    return bytes(int(p) for p in text.split("."))


def _ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, 64, proto, 0,
        _addr(src), _addr(dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def _tcp(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes,
    ident: int,
) -> bytes:  # fmt: skip
    header = struct.pack(
        "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0
    )
    pseudo = _addr(src) + _addr(dst) + struct.pack("!BBH", 0, 6, len(header) + len(data))
    csum = _checksum(pseudo + header + data)
    header = header[:16] + struct.pack("!H", csum) + header[18:]
    return _ipv4(src, dst, 6, header + data, ident)


def tcp_session(
    client_segments: Sequence[Segment],
    to_client: bytes = b"",
    sport: int = 40000,
    dport: int = 80,
    client: str = CLIENT,
    server: str = SERVER,
    close: bool = True,
) -> list[bytes]:
    """IPv4 packets of one TCP connection carrying `client_segments` then `to_client`."""
    c_isn, s_isn = CLIENT_ISN, SERVER_ISN
    ident = 1
    packets = [
        _tcp(client, server, sport, dport, c_isn, 0, _SYN, b"", ident),
        _tcp(server, client, dport, sport, s_isn, c_isn + 1, _SYN | _ACK, b"", ident + 1),
        _tcp(client, server, sport, dport, c_isn + 1, s_isn + 1, _ACK, b"", ident + 2),
    ]
    ident += 3
    client_end = 0
    for seg in client_segments:
        packets.append(
            _tcp(client, server, sport, dport, c_isn + 1 + seg.offset, s_isn + 1,
                 _ACK | _PSH, seg.data, ident)
        )  # fmt: skip
        ident += 1
        client_end = max(client_end, seg.offset + len(seg.data))
    c_next = c_isn + 1 + client_end
    s_next = s_isn + 1
    for i in range(0, len(to_client), MAX_SEGMENT):
        chunk = to_client[i : i + MAX_SEGMENT]
        packets.append(
            _tcp(server, client, dport, sport, s_next, c_next, _ACK | _PSH, chunk, ident)
        )
        ident += 1
        s_next += len(chunk)
    if close:
        packets.append(_tcp(client, server, sport, dport, c_next, s_next, _FIN | _ACK, b"", ident))
        packets.append(
            _tcp(server, client, dport, sport, s_next, c_next + 1, _FIN | _ACK, b"", ident + 1)
        )
        packets.append(
            _tcp(client, server, sport, dport, c_next + 1, s_next + 1, _ACK, b"", ident + 2)
        )
    return packets


def udp_exchange(
    to_server: bytes,
    to_client: bytes = b"",
    sport: int = 40000,
    dport: int = 53,
    client: str = CLIENT,
    server: str = SERVER,
) -> list[bytes]:
    """One request datagram and (if given) one reply datagram."""

    def udp(src: str, dst: str, sp: int, dp: int, data: bytes, ident: int) -> bytes:
        header = struct.pack("!HHHH", sp, dp, 8 + len(data), 0)
        pseudo = _addr(src) + _addr(dst) + struct.pack("!BBH", 0, 17, 8 + len(data))
        csum = _checksum(pseudo + header + data) or 0xFFFF
        return _ipv4(src, dst, 17, header[:6] + struct.pack("!H", csum) + data, ident)

    out = [udp(client, server, sport, dport, to_server, 1)] if to_server else []
    if to_client:
        out.append(udp(server, client, dport, sport, to_client, 2))
    return out


def replay_packets(engine: Engine, packets: Iterable[bytes], start: float = 1.0e9) -> list[Event]:
    """Every event the engine raises over `packets` (one millisecond apart)."""
    events: list[Event] = []
    now = start
    for packet in packets:
        events.extend(engine.process_ip(packet, now).events)
        now += 0.001
    return events


def write_pcap(path: Path, packets: Iterable[bytes], start: float = 1.0e9) -> Path:
    """A classic pcap (LINKTYPE_RAW: IPv4 without link header) of `packets`."""
    with open(path, "wb") as out:
        out.write(_PCAP_HEADER)
        now = start
        for packet in packets:
            sec = int(now)
            usec = round((now - sec) * 1e6)
            out.write(struct.pack("<IIII", sec, usec, len(packet), len(packet)))
            out.write(packet)
            now += 0.001
    return path
