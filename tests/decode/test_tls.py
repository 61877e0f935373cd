"""TLS record decoder: synthetic records whole and byte by byte, and real Heartbleed captures."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, IPv6, rdpcap

from gateway.decode.tls import (
    Handshake,
    Heartbeat,
    Record,
    State,
    TlsDecodeError,
    TlsDecoder,
)

# SSLv2 CLIENT-HELLO (RFC 5246 appendix E.2): msg type 1, version 3.1, three cipher specs (one
# SSLv2-only, dropped), no session id, a 16-byte challenge.
_V2_BODY = (
    bytes([1])
    + struct.pack("!HHHH", 0x0301, 9, 0, 16)
    + bytes.fromhex("00003500002f010080")
    + b"\x11" * 16
)
SSLV2_HELLO = struct.pack("!H", 0x8000 | len(_V2_BODY)) + _V2_BODY


def record(ctype: int, body: bytes, version: int = 0x0302) -> bytes:
    return struct.pack("!BHH", ctype, version, len(body)) + body


CLIENT_HELLO = (
    bytes([1])
    + (2 + 32 + 1 + 2 + 4 + 2).to_bytes(3, "big")
    + bytes.fromhex("0302" + "00" * 32 + "00" + "0004" + "c02f0035" + "0100")
)
HEARTBLEED = record(24, bytes([1]) + struct.pack("!H", 0x4000))  # claims 16 KiB in a 3-byte record
HEARTBEAT_OK = record(24, bytes([1]) + struct.pack("!H", 4) + b"ping" + b"\0" * 16)

CASES = [
    (
        "client hello",
        record(22, CLIENT_HELLO),
        [
            Record(22, 0x0302, len(CLIENT_HELLO)),
            Handshake(1, len(CLIENT_HELLO) - 4, 0x0302, (0xC02F, 0x0035), 0x0302),
        ],
    ),
    (
        "hello split over two records",
        record(22, CLIENT_HELLO[:10]) + record(22, CLIENT_HELLO[10:]),
        [
            Record(22, 0x0302, 10),
            Record(22, 0x0302, len(CLIENT_HELLO) - 10),
            Handshake(1, len(CLIENT_HELLO) - 4, 0x0302, (0xC02F, 0x0035), 0x0302),
        ],
    ),
    ("heartbleed request", HEARTBLEED, [Record(24, 0x0302, 3), Heartbeat(1, 0x4000, 3, False)]),
    ("honest heartbeat", HEARTBEAT_OK, [Record(24, 0x0302, 23), Heartbeat(1, 4, 23, False)]),
    (
        "heartbeat after change cipher spec is opaque",
        record(20, b"\x01") + HEARTBLEED,
        [Record(20, 0x0302, 1), Record(24, 0x0302, 3), Heartbeat(0, 0, 3, True)],
    ),
    (
        "heartbeat too short to hold its length claims the worst",
        record(24, b"\x01"),
        [Record(24, 0x0302, 1), Heartbeat(1, 0xFFFF, 1, False)],
    ),
    (
        "an SSL 2.0 session: its records are skipped, not taken for TLS",
        SSLV2_HELLO[:3]
        + b"\x00\x02"
        + SSLV2_HELLO[5:]
        + b"\x80\x03\x02\xaa\xbb"
        + b"\x00\x02\x01\x07\x07",
        [
            Record(22, 0x0002, len(SSLV2_HELLO) - 2),
            Handshake(1, len(SSLV2_HELLO) - 2, 0x0002, (0x0035, 0x002F), 0x0002),
        ],
    ),
    (
        "SSLv2-format ClientHello, then a heartbeat record",
        SSLV2_HELLO + HEARTBLEED,
        [
            Record(22, 0x0301, len(SSLV2_HELLO) - 2),
            Handshake(1, len(SSLV2_HELLO) - 2, 0x0301, (0x0035, 0x002F), 0x0301),
            Record(24, 0x0302, 3),
            Heartbeat(1, 0x4000, 3, False),
        ],
    ),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("name", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, stream: bytes, expected: list[object], step: int | None) -> None:
    dec = TlsDecoder()
    if step is None:
        events = dec.receive_data(stream)
    else:
        events = [ev for i in range(len(stream)) for ev in dec.receive_data(stream[i : i + 1])]
    assert events == expected


def test_overflow_condition() -> None:
    assert Heartbeat(1, 0x4000, 3, False).overflows
    assert not Heartbeat(1, 4, 23, False).overflows
    assert not Heartbeat(0, 0, 3, True).overflows


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"GET / HTTP/1.1\r\n", "not a TLS record"),
        (struct.pack("!BHH", 23, 0x0303, 30000), "exceeds"),
    ],
)
def test_errors_are_sticky(stream: bytes, error: str) -> None:
    dec = TlsDecoder()
    with pytest.raises(TlsDecodeError, match=error):
        dec.receive_data(stream)
    assert dec.state is State.ERROR
    with pytest.raises(TlsDecodeError, match="ERROR state"):
        dec.receive_data(b"")


def client_streams(path: Path) -> dict[tuple[str, int, int], bytes]:
    """Each direction's payload in sequence order, keyed by (source, sport, dport) (test helper)."""
    segments: dict[tuple[str, int, int], dict[int, bytes]] = {}
    for pkt in rdpcap(str(path)):
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None or TCP not in pkt or not bytes(pkt[TCP].payload):
            continue
        key = (ip.src, pkt[TCP].sport, pkt[TCP].dport)
        segments.setdefault(key, {}).setdefault(pkt[TCP].seq, bytes(pkt[TCP].payload))
    return {k: b"".join(v[s] for s in sorted(v)) for k, v in segments.items()}


def heartbeats(path: Path) -> list[Heartbeat]:
    found = []
    for data in client_streams(path).values():
        # not TLS (STARTTLS preambles, HTTP): nothing to say about heartbeats
        with contextlib.suppress(TlsDecodeError):
            found += [e for e in TlsDecoder().receive_data(data) if isinstance(e, Heartbeat)]
    return found


@pytest.mark.parametrize("name", ["heartbleed.pcap", "heartbleed-success.pcap"])
def test_real_heartbleed_overflows(corpora: Path, name: str) -> None:
    assert any(hb.overflows and hb.hb_type == 1 for hb in heartbeats(corpora / "attacks" / name))


def test_benign_tls_never_overflows(corpora: Path) -> None:
    captures = sorted((corpora / "benign" / "tls").glob("*.pcap"))
    assert len(captures) > 50
    assert [p.name for p in captures if any(hb.overflows for hb in heartbeats(p))] == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
def test_fuzz_only_decode_errors(data: bytes, step: int) -> None:
    dec = TlsDecoder()
    try:
        for i in range(0, len(data), step):
            dec.receive_data(data[i : i + step])
    except TlsDecodeError:
        pass
    assert len(dec._buf) <= 5 + 2**14 + 2048


def hello(msg_type: int, body: bytes) -> bytes:
    return record(22, bytes([msg_type]) + len(body).to_bytes(3, "big") + body, 0x0301)


def ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def server_hello(version: int, extensions: bytes | None) -> bytes:
    body = struct.pack("!H", version) + b"\x11" * 32 + b"\x00" + b"\x13\x01" + b"\x00"
    return hello(
        2, body if extensions is None else body + struct.pack("!H", len(extensions)) + extensions
    )


def client_hello(extensions: bytes) -> bytes:
    body = b"\x03\x03" + b"\x22" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    return hello(1, body + struct.pack("!H", len(extensions)) + extensions)


def only_hello(stream: bytes) -> Handshake:
    (found,) = [e for e in TlsDecoder().receive_data(stream) if isinstance(e, Handshake)]
    return found


@pytest.mark.parametrize(
    ("stream", "legacy", "effective"),
    [
        # RFC 8446 4.2.1: a 1.3 client says 0x0303 and lists 0x0304 first; GREASE (RFC 8701) skipped
        (client_hello(ext(43, b"\x06\x7a\x7a\x03\x04\x03\x03")), 0x0303, 0x0304),
        (client_hello(ext(0, b"") + ext(43, b"\x04\x03\x03\x03\x02")), 0x0303, 0x0303),
        (client_hello(ext(10, b"\x00\x02\x00\x1d")), 0x0303, 0x0303),  # no supported_versions
        (client_hello(ext(43, b"\x02\xfa\xfa")), 0x0303, 0x0303),  # only GREASE: legacy stands
        (client_hello(ext(43, b"\x04\x03")), 0x0303, 0x0303),  # extension runs past the block
        (server_hello(0x0303, ext(43, b"\x03\x04")), 0x0303, 0x0304),
        (server_hello(0x0301, ext(15, b"\x01")), 0x0301, 0x0301),
        (server_hello(0x0301, None), 0x0301, 0x0301),  # no extensions block (RFC 5246 7.4.1.3)
    ],
)
def test_effective_version(stream: bytes, legacy: int, effective: int) -> None:
    found = only_hello(stream)
    assert (found.version, found.effective_version) == (legacy, effective)


def test_effective_version_of_real_hellos(corpora: Path) -> None:
    """The benign TLS captures: 1.3 hellos are told from 1.2 ones only by supported_versions, and
    no hello's effective version is below its legacy field."""
    seen: dict[tuple[int, int], int] = {}
    for path in sorted((corpora / "benign" / "tls").glob("*.pcap")):
        for data in client_streams(path).values():
            try:
                events = TlsDecoder().receive_data(data)
            except TlsDecodeError:
                continue
            for e in events:
                if isinstance(e, Handshake) and e.msg_type in (1, 2):
                    seen[(e.msg_type, e.effective_version)] = (
                        seen.get((e.msg_type, e.effective_version), 0) + 1
                    )
                    assert e.effective_version >= e.version, (path.name, e)
    assert seen.get((1, 0x0304), 0) > 0 and seen.get((2, 0x0304), 0) > 0, seen
    assert seen.get((2, 0x0303), 0) > 0, seen
