"""RDP decoder: built connection sequences whole and byte by byte, BlueKeep and benign captures."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.rdp import (
    CS_NET,
    MCS_ATTACH_USER_REQUEST,
    MCS_CONNECT_INITIAL,
    MCS_ERECT_DOMAIN,
    ConnectionConfirm,
    ConnectionRequest,
    Encrypted,
    FastPath,
    McsConnect,
    McsDomainPdu,
    RdpDecodeError,
    RdpDecoder,
    State,
)
from gateway.testing.streams import tcp_streams
from gateway.vocabulary import PROTO_TCP, Direction


def tpkt(payload: bytes) -> bytes:
    return b"\x03\x00" + struct.pack("!H", 4 + len(payload)) + payload


def x224_cr(cookie: bytes, protocols: int | None) -> bytes:
    variable = cookie + (struct.pack("<BBHI", 1, 0, 8, protocols) if protocols is not None else b"")
    return tpkt(bytes([6 + len(variable), 0xE0]) + b"\0\0\0\0\0" + variable)


def x224_dt(mcs: bytes) -> bytes:
    return tpkt(b"\x02\xf0\x80" + mcs)


def ber(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else b"\x82" + struct.pack("!H", n)
    return tag + length + value


def domain_parameters(max_channel_ids: int) -> bytes:
    values = [max_channel_ids, 2, 0, 1, 0, 1, 65535, 2]
    return ber(b"\x30", b"".join(ber(b"\x02", v.to_bytes(3, "big")) for v in values))


def connect_initial(channels: list[bytes], max_channel_ids: int = 34, count: int = -1) -> bytes:
    net = struct.pack("<I", len(channels) if count < 0 else count) + b"".join(
        struct.pack("<8sI", name, 0x80800000) for name in channels
    )
    blocks = struct.pack("<HH", 0xC001, 8) + b"\0" * 4
    blocks += struct.pack("<HH", CS_NET, 4 + len(net)) + net
    gcc = b"\x00\x05\x00\x14\x7c\x00\x01\x81\x00" + b"\x00\x08\x00\x10\x00\x01\xc0\x00Duca"
    gcc += bytes([0x80 | len(blocks) >> 8, len(blocks) & 0xFF]) + blocks
    body = ber(b"\x04", b"\x01") + ber(b"\x04", b"\x01") + ber(b"\x01", b"\xff")
    body += domain_parameters(max_channel_ids) + domain_parameters(1)
    body += domain_parameters(65535) + ber(b"\x04", gcc)
    return ber(b"\x7f\x65", body)


BLUEKEEP = (
    x224_cr(b"Cookie: mstshash=eltons\r\n", 0)
    + x224_dt(connect_initial([b"rdpdr", b"MS_T120", b"rdpsnd"]))
    + x224_dt(b"\x04\x01\x00\x01\x00")  # erect domain request
    + x224_dt(b"\x28")  # attach user request
)


def summarize(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, McsConnect):
            out.append(
                (
                    "mcs",
                    ev.tag,
                    ev.target_parameters[:1],
                    ev.channel_count,
                    ev.channels,
                    ev.requests_ms_t120,
                    bool(ev.malformed),
                )
            )
        elif isinstance(ev, McsDomainPdu):
            out.append(("domain", ev.pdu_type, ev.name))
        else:
            out.append(ev)
    return out


CASES = [
    (
        "bluekeep shape: MS_T120 requested as a static channel",
        BLUEKEEP,
        [
            ConnectionRequest(b"Cookie: mstshash=eltons", 0, 0, 44),
            ("mcs", MCS_CONNECT_INITIAL, (34,), 3, ("rdpdr", "MS_T120", "rdpsnd"), True, False),
            ("domain", MCS_ERECT_DOMAIN, "erectDomainRequest"),
            ("domain", MCS_ATTACH_USER_REQUEST, "attachUserRequest"),
        ],
    ),
    (
        "lower-case ms_t120 still counts; count above names",
        x224_dt(connect_initial([b"ms_t120\0"], count=40)),
        [("mcs", MCS_CONNECT_INITIAL, (34,), 40, ("ms_t120",), True, False)],
    ),
    (
        "ms12-020 shape: tiny maxChannelIds is reported",
        x224_dt(connect_initial([b"rdpdr"], max_channel_ids=0)),
        [("mcs", MCS_CONNECT_INITIAL, (0,), 1, ("rdpdr",), False, False)],
    ),
    (
        "malformed BER inside a good TPKT is reported, not an error",
        x224_dt(b"\x7f\x65\x84\xff\xff\xff\xff") + x224_dt(b"\x28"),
        [
            ("mcs", MCS_CONNECT_INITIAL, (), -1, (), False, True),
            ("domain", MCS_ATTACH_USER_REQUEST, "attachUserRequest"),
        ],
    ),
    (
        "no negotiation request, then fast-path",
        x224_cr(b"Cookie: mstshash=a\r\n", None) + b"\x44\x05abc" + b"\x44\x80\x06abc",
        [ConnectionRequest(b"Cookie: mstshash=a", -1, 0, 31), FastPath(5), FastPath(6)],
    ),
    (
        "switch to TLS hides the rest",
        x224_cr(b"", 3) + b"\x16\x03\x01\x00\x05hello" + x224_dt(b"\x28"),
        [ConnectionRequest(b"", 3, 0, 19), Encrypted(0x16)],
    ),
    (
        "server confirm",
        tpkt(b"\x0e\xd0\0\0\x12\x34\0" + struct.pack("<BBHI", 2, 0, 8, 2)),
        [ConnectionConfirm(2, -1, 19)],
    ),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("name", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, stream: bytes, expected: list[object], step: int | None) -> None:
    dec = RdpDecoder()
    if step is None:
        events = dec.receive_data(stream)
    else:
        events = [ev for i in range(len(stream)) for ev in dec.receive_data(stream[i : i + 1])]
    assert summarize(events) == expected


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"GET / HTTP/1.1\r\n", "not TPKT"),
        (b"\x03\x00\x00\x05\x00", "below the X.224 minimum"),
        (tpkt(b"\x20\xe0\0\0"), "length indicator 32"),
        (tpkt(b"\x02\x50\x80"), "unknown X.224 TPDU"),
    ],
)
def test_errors_are_sticky(stream: bytes, error: str) -> None:
    dec = RdpDecoder()
    with pytest.raises(RdpDecodeError, match=error):
        dec.receive_data(stream)
    assert dec.state is State.ERROR
    with pytest.raises(RdpDecodeError, match="ERROR state"):
        dec.receive_data(b"")


def decode_capture(path: Path) -> tuple[list[object], list[str]]:
    events: list[object] = []
    refused = []
    for key, data in tcp_streams(path).items():
        try:
            events += RdpDecoder().receive_data(data)
        except RdpDecodeError:
            refused.append(f"{key.sport}->{key.dport}")
    return events, refused


def test_bluekeep_capture(corpora: Path) -> None:
    # The capture negotiates standard RDP security (selected protocol 0), so the Connect-Initial
    # is in cleartext: two of its three connections ask for MS_T120.
    events, refused = decode_capture(corpora / "attacks" / "bluekeep-cve-2019-0708.pcap")
    assert refused == []
    initials = [e for e in events if isinstance(e, McsConnect) and e.tag == MCS_CONNECT_INITIAL]
    assert len(initials) == 2 and all(e.requests_ms_t120 for e in initials)
    assert {e.selected_protocol for e in events if isinstance(e, ConnectionConfirm)} == {0}


def test_benign_rdp_captures(corpora: Path) -> None:
    captures = sorted((corpora / "benign" / "rdp").glob("*.pcap"))
    assert len(captures) >= 9
    seen_initials = seen_tls = 0
    for path in captures:
        events, refused = decode_capture(path)
        # rdp-invalid-length starts mid-stream on both sides (no TPKT header): refused.
        assert len(refused) == (2 if path.name == "rdp-invalid-length.pcap" else 0), path.name
        initials = [e for e in events if isinstance(e, McsConnect) and e.tag == MCS_CONNECT_INITIAL]
        assert not any(e.requests_ms_t120 or e.malformed for e in initials), path.name
        seen_initials += len(initials)
        seen_tls += sum(isinstance(e, Encrypted) for e in events)
    assert seen_initials >= 3 and seen_tls >= 4  # cleartext MCS and TLS-switched sessions both


def test_registered_adapter_has_one_record_per_channel() -> None:
    proto = registry.get("rdp")
    assert proto is not None
    assert registry.identify(["rdp"], PROTO_TCP, 3389, Direction.TO_SERVER, BLUEKEEP) == (
        "rdp",
        True,
    )
    records = proto.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(BLUEKEEP)
    assert [r.fields["rdp.channel"] for r in records if "rdp.channel" in r.fields] == [
        b"rdpdr",
        b"MS_T120",
        b"rdpsnd",
    ]
    for rec in records:
        assert set(rec.fields) <= set(proto.fields)
