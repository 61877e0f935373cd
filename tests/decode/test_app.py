"""Tests for gateway/decode/registry.py (registration, identification by content and port) with
the bundled decoders (gateway/decode/bundled.py), and the adapters' records (app.py, smb.py) over
real captures (the corpora) and fed one byte at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.registry import AppProtocol, FieldKind, Probe
from gateway.testing.streams import tcp_streams
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction


def test_bundled_protocols_and_field_kinds() -> None:
    names = {p.name for p in registry.protocols()}
    assert {"http", "tls", "dns", "smb"} <= names
    assert registry.field_kind("http.header.x-anything") is FieldKind.BYTES
    assert registry.field_kind("smb.trans2.subcommand") is FieldKind.INT
    assert registry.field_kind("http.nope") is None and registry.field_kind("zzz.x") is None


def test_register_validates() -> None:
    def new(transport: int, direction: Direction) -> registry.AppDecoder:
        raise AssertionError

    with pytest.raises(ValueError, match="'http' is already registered"):
        registry.register(AppProtocol("http", frozenset({PROTO_TCP}), frozenset(), {}, new))
    with pytest.raises(ValueError, match="field 'other.x'"):
        registry.register(
            AppProtocol("zz", frozenset({PROTO_TCP}), frozenset(), {"other.x": FieldKind.INT}, new)
        )


@pytest.mark.parametrize(
    ("data", "port", "expected"),
    [
        (b"GET / HTTP/1.1\r\n", 80, ("http", True)),
        (b"GE", 80, (None, False)),
        (b"\x16\x03\x01\x00\x05", 80, ("tls", True)),
        (b"\x00\x00\x00\x2f\xffSMB", 445, ("smb", True)),
        (b"\x81\x00\x00\x44\x20", 139, ("smb", True)),  # session request: encoded names
        (b"\x81\x00\x00\x44", 139, (None, False)),
        (b"\x85\x00\x00\x00", 139, ("smb", True)),  # keep-alive
        # another binary protocol whose first byte is a session service type is not SMB
        (b"\x81\x00\x00\x44\x07", 139, (None, True)),
        (b"\x81\x00\x00\x10\x20", 139, (None, True)),
        (b"\x83\x00\x00\x07\x01", 139, (None, True)),
        (b"\x85\x40\x00\x00", 139, (None, True)),
        (b"\x05\x00\x0b\x03", 445, (None, True)),
        (b"SSH-2.0-x", 80, (None, True)),
        # what Apache accepts before and inside a request line: empty lines, blank runs, tabs
        (b"\r\n" * 100 + b"GET /x HTTP/1.1\r\n", 8080, ("http", True)),
        (b"\n\r\n" * 40, 8080, (None, False)),
        (b"GET\t/x HTTP/1.1\r\n", 8080, ("http", True)),
        (b"POST    /x HTTP/1.1\r\n", 8080, ("http", True)),
        (b"\r\n" * 3000, 8080, (None, True)),
        (b"\x80\x2b\x01\x03\x01\x00\x09", 443, ("tls", True)),  # SSLv2-format ClientHello
    ],
)
def test_identify(data: bytes, port: int, expected: tuple[str | None, bool]) -> None:
    assert (
        registry.identify(["http", "tls", "smb"], PROTO_TCP, port, Direction.TO_SERVER, data)
        == expected
    )


def test_identify_dns_by_port_only() -> None:
    assert registry.identify(["dns"], PROTO_UDP, 53, Direction.TO_SERVER, b"\x00" * 12) == (
        "dns",
        True,
    )
    assert registry.identify(["dns"], PROTO_UDP, 5353, Direction.TO_SERVER, b"\x00" * 12) == (
        None,
        True,
    )
    http = registry.get("http")
    assert http is not None and http.probe is not None
    assert http.probe(b"", Direction.TO_SERVER) is Probe.NEED_DATA


def test_smb_records_from_the_eternalblue_capture_whole_and_bytewise(corpora: Path) -> None:
    pcap = next(iter(sorted((corpora / "attacks").rglob("eternalblue-success*.pcap"))))
    streams = [d for k, d in tcp_streams(pcap).items() if k.dport == 445 and b"\xa0" in d]
    assert streams
    data = max(streams, key=len)
    smb = registry.get("smb")
    assert smb is not None
    whole = smb.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(data)
    bytewise = []
    decoder = smb.new_decoder(PROTO_TCP, Direction.TO_SERVER)
    for i in range(len(data)):
        bytewise.extend(decoder.feed(data[i : i + 1]))
    assert whole == bytewise
    assert any(r.fields.get("smb.nt_trans.total_data_count", 0) >= 0x10000 for r in whole)
    assert any(r.fields.get("smb.trans2.subcommand") == 0x0E for r in whole)


def test_http_body_record_carries_head_and_body() -> None:
    dec = registry.get("http").new_decoder(PROTO_TCP, Direction.TO_SERVER)  # type: ignore[union-attr]
    recs = dec.feed(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert recs[0].fields["http.method"] == b"POST" and "http.body" not in recs[0].fields
    assert recs[1].fields["http.body"] == b"abc" and recs[1].fields["http.uri"] == b"/a"
    assert Direction.TO_CLIENT not in registry.get("http").directions  # type: ignore[union-attr]
