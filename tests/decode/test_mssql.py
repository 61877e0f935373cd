"""MC-SQLR (UDP 1434) decoder: datagrams built with scapy, Slammer's oversized instance name."""

from __future__ import annotations

import pytest
from scapy.all import IP, UDP, Raw

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.mssql import (
    CLNT_UCAST_DAC,
    CLNT_UCAST_INST,
    MAX_INSTANCE_KEEP,
    SVR_RESP,
    MssqlDecodeError,
    parse_datagram,
)
from gateway.decode.packet import parse_ip
from gateway.vocabulary import PROTO_UDP, Direction

# MS02-039 (SQL Slammer): 0x04 and 375 bytes of name with no NUL (the worm's shape).
SLAMMER_PAYLOAD = b"\x04" + b"\x01" * 96 + b"\xdc\xc9\xb0\x42\xeb\x0e" + b"\x01" * 273


def datagram(payload: bytes) -> bytes:
    """Payload as the gateway sees it: a scapy-built IPv4/UDP datagram decoded by packet.py."""
    raw = bytes(
        IP(src="198.18.0.10", dst="198.18.0.20") / UDP(sport=1025, dport=1434) / Raw(payload)
    )
    return parse_ip(raw).payload


CASES = [
    ("broadcast", b"\x02", (0x02, "CLNT_BCAST_EX", -1, False, -1, -1)),
    ("unicast", b"\x03", (0x03, "CLNT_UCAST_EX", -1, False, -1, -1)),
    ("instance", b"\x04MSSQLSERVER\x00", (CLNT_UCAST_INST, "CLNT_UCAST_INST", 11, True, -1, -1)),
    ("dac", b"\x0f\x01SQLEXPRESS\x00", (CLNT_UCAST_DAC, "CLNT_UCAST_DAC", 10, True, 1, -1)),
    ("server response", b"\x05\x06\x00\x01\x00\x6b\x05", (SVR_RESP, "SVR_RESP", -1, False, -1, 6)),
    ("slammer", SLAMMER_PAYLOAD, (CLNT_UCAST_INST, "CLNT_UCAST_INST", 375, False, -1, -1)),
    ("ms02-039 keep-alive type", b"\x0a", (0x0A, "", -1, False, -1, -1)),
]


@pytest.mark.parametrize(("name", "payload", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, payload: bytes, expected: tuple[object, ...]) -> None:
    msg = parse_datagram(datagram(payload))
    got = (msg.msg_type, msg.name, msg.instance_length, msg.terminated, msg.protocol_version)
    assert got + (msg.resp_size,) == expected
    assert msg.length == len(payload)
    assert msg.oversized == (name == "slammer")
    assert len(msg.instance) <= MAX_INSTANCE_KEEP


def test_boundary_32_byte_name_is_legal() -> None:
    assert not parse_datagram(b"\x04" + b"A" * 32 + b"\0").oversized
    assert parse_datagram(b"\x04" + b"A" * 33 + b"\0").oversized


@pytest.mark.parametrize(
    ("payload", "error"),
    [(b"", "empty"), (b"\x0f", "protocol version"), (b"\x05\x01", "RESP_SIZE")],
)
def test_errors(payload: bytes, error: str) -> None:
    with pytest.raises(MssqlDecodeError, match=error):
        parse_datagram(payload)


def test_registered_adapter() -> None:
    proto = registry.get("mssql")
    assert proto is not None
    assert registry.identify(["mssql"], PROTO_UDP, 1434, Direction.TO_SERVER, SLAMMER_PAYLOAD) == (
        "mssql",
        True,
    )
    (rec,) = proto.new_decoder(PROTO_UDP, Direction.TO_SERVER).feed(SLAMMER_PAYLOAD)
    assert rec.fields["mssql.type"] == 4 and rec.fields["mssql.instance_length"] == 375
    assert set(rec.fields) <= set(proto.fields)
