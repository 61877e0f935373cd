"""Hypothesis fuzz over every app decoder: only the decoder's own DecodeError subclass escapes,
errors are sticky, and internal buffers stay under their named bounds.

Inputs are random bytes and mutations of a valid seed of each protocol (so the fuzz reaches past
the first header), fed in random slices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decode import dcerpc, dns, ftp, http, mssql, rdp, smb, tls
from gateway.errors import DecodeError


@dataclass(frozen=True)
class Target:
    error: type[DecodeError]
    new: Callable[[], object]
    feed: Callable[[object, bytes], object]
    buffered: Callable[[object], int]
    bound: int  # what `buffered` may reach after a feed of at most MAX_FEED bytes
    seed: bytes


MAX_FEED = 2048


def _http_feed(dec: object, data: bytes) -> None:
    assert isinstance(dec, http.HttpRequestDecoder)
    dec.receive_data(data)
    for _ in range(10000):
        if dec.next_event() is http.NEED_DATA:
            return


def _feed(dec: object, data: bytes) -> object:
    return dec.receive_data(data)  # type: ignore[attr-defined]


def _buf(dec: object) -> int:
    return len(dec._buf)  # type: ignore[attr-defined]


class _DnsUdp:
    def receive_data(self, data: bytes) -> object:
        return dns.parse_message(data)


class _Sqlr:
    def receive_data(self, data: bytes) -> object:
        return mssql.parse_datagram(data)


DCERPC_SEED = bytes.fromhex(
    "05000b031000000048000000010000 00d016d01600000000010000000100010"
    "0a001000000000000c000000000000046000000000"
    "45d888aeb1cc9119fe808002b10486002000000".replace(" ", "")
) + bytes.fromhex("0500000310000000200000000200000008000000010004000102030405060708")

TARGETS = {
    "http": Target(
        http.HttpDecodeError,
        http.HttpRequestDecoder,
        _http_feed,
        _buf,
        http.MAX_HEAD_BYTES + MAX_FEED,
        b"GET /a%20b/../c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    "tls": Target(
        tls.TlsDecodeError,
        tls.TlsDecoder,
        _feed,
        lambda d: _buf(d) + len(d._handshake),  # type: ignore[attr-defined]
        5 + tls.MAX_RECORD_BYTES + tls.MAX_HANDSHAKE_BYTES + MAX_FEED,
        bytes.fromhex("16030100")
        + bytes([9])
        + bytes.fromhex("010000050301")
        + b"\0" * 3
        + bytes.fromhex("1803020003014000"),
    ),
    "dns-tcp": Target(
        dns.DnsDecodeError,
        dns.DnsTcpDecoder,
        _feed,
        _buf,
        2 + dns.MAX_TCP_MESSAGE + MAX_FEED,
        bytes.fromhex("002112340100000100000000000003777777076578616d706c6503636f6d0000010001"),
    ),
    "dns-udp": Target(
        dns.DnsDecodeError,
        _DnsUdp,
        _feed,
        lambda d: 0,
        0,
        bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001"),
    ),
    "smb": Target(
        smb.SmbDecodeError,
        smb.SmbDecoder,
        _feed,
        _buf,
        4 + smb.MAX_MESSAGE + MAX_FEED,
        b"\0\0\0\x2f\xffSMB\x72" + b"\0" * 27 + b"\0\x0c\x00\x02NT LM 0.12\0",
    ),
    "dcerpc": Target(
        dcerpc.DceRpcDecodeError,
        dcerpc.DceRpcDecoder,
        _feed,
        lambda d: d.buffered,  # type: ignore[attr-defined]
        dcerpc.MAX_FRAG_LENGTH + MAX_FEED + dcerpc.MAX_PENDING_CALLS * dcerpc.MAX_STUB_KEEP,
        DCERPC_SEED,
    ),
    "rdp": Target(
        rdp.RdpDecodeError,
        rdp.RdpDecoder,
        _feed,
        _buf,
        rdp.MAX_PDU + MAX_FEED,
        bytes.fromhex(
            "0300002d28e00000000000436f6f6b69653a206d737473686173683d6a6152674c67430d0a010008000b000000"
        )
        + bytes.fromhex("0300000c02f0807f6582000a"),
    ),
    "mssql": Target(mssql.MssqlDecodeError, _Sqlr, _feed, lambda d: 0, 0, b"\x04" + b"\x01" * 60),
    "ftp-client": Target(
        ftp.FtpDecodeError,
        lambda: ftp.FtpDecoder(True),
        _feed,
        _buf,
        ftp.MAX_LINE + 1,
        b"USER a\r\n\xff\xf4ABOR\r\nMKD xxxx\r\n",
    ),
    "ftp-server": Target(
        ftp.FtpDecodeError,
        lambda: ftp.FtpDecoder(False),
        _feed,
        _buf,
        ftp.MAX_LINE + 1,
        b"220-hi\r\n there\r\n220 ok\r\n331 pw\r\n",
    ),
}


@st.composite
def inputs(draw: st.DrawFn, seed: bytes) -> tuple[bytes, int]:
    if draw(st.booleans()):
        data = draw(st.binary(max_size=600))
    else:
        data = bytearray(seed)
        for _ in range(draw(st.integers(0, 6))):
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
            if op == "flip" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del data[pos : pos + draw(st.integers(1, 8))]
            else:
                data += data[pos:]
        data = bytes(data)
    return data, draw(st.integers(1, 64))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_own_errors_and_bounded_buffers(name: str) -> None:
    target = TARGETS[name]
    datagram = name in ("dns-udp", "mssql")

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs(target.seed))
    def run(case: tuple[bytes, int]) -> None:
        data, step = case
        dec = target.new()
        pieces = [data] if datagram else [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces or [b""]:
            try:
                target.feed(dec, piece)
            except target.error:
                if hasattr(dec, "state"):
                    with pytest.raises(target.error):
                        target.feed(dec, b"x")  # sticky
                    return
            assert target.buffered(dec) <= target.bound

    run()


def test_seeds_decode() -> None:
    for name, target in TARGETS.items():
        dec = target.new()
        target.feed(dec, target.seed)  # a valid seed: no error
        assert target.buffered(dec) <= target.bound, name


def test_dns_tcp_decoder_is_not_sticky() -> None:
    # DnsTcpDecoder (dns.py) has no ERROR state: a bad message is dropped from the buffer before
    # it raises, and the next message decodes. The sticky check above is skipped for it; this
    # records the behaviour so a change to dns.py shows up.
    dec = dns.DnsTcpDecoder()
    with pytest.raises(dns.DnsDecodeError):
        dec.receive_data(b"\x00\x03abc")
    assert len(dec.receive_data(TARGETS["dns-tcp"].seed)) == 1
