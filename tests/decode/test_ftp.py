"""FTP control decoder: commands and replies whole and byte by byte, long lines, sticky errors."""

from __future__ import annotations

import pytest

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.ftp import (
    MAX_LINE,
    Command,
    FtpDecodeError,
    FtpDecoder,
    Reply,
    State,
)
from gateway.vocabulary import PROTO_TCP, Direction

LONG = b"A" * 10000

CASES = [
    (
        "login and transfer",
        True,
        b"USER anonymous\r\nPASS guest@\r\ntype i\r\nRETR /pub/file.txt\r\nQUIT\r\n",
        [
            Command("USER", b"anonymous", 9, 14, True),
            Command("PASS", b"guest@", 6, 11, True),
            Command("TYPE", b"i", 1, 6, True),
            Command("RETR", b"/pub/file.txt", 13, 18, True),
            Command("QUIT", b"", 0, 4, True),
        ],
    ),
    (
        "abort with telnet IAC IP / synch, bare LF",
        True,
        b"\xff\xf4\xff\xf2ABOR\nNOOP\r\n",
        [Command("ABOR", b"", 0, 4, True), Command("NOOP", b"", 0, 4, True)],
    ),
    (
        "over-long argument reported at the bound, next command still seen",
        True,
        b"MKD " + LONG + b"\r\nPWD\r\n",
        [
            Command("MKD", b"A" * 1024, MAX_LINE + 1 - 4, MAX_LINE + 1, False),
            Command("PWD", b"", 0, 3, True),
        ],
    ),
    (
        "replies incl. multi-line",
        False,
        b"220-Welcome\r\n220-to the server\r\n220 ready\r\n331 Password required\r\n",
        [Reply(220, b"Welcome", 3, 41, True), Reply(331, b"Password required", 1, 21, True)],
    ),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("name", "client", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(
    name: str, client: bool, stream: bytes, expected: list[object], step: int | None
) -> None:
    dec = FtpDecoder(client)
    if step is None:
        events = dec.receive_data(stream)
    else:
        events = []
        for i in range(len(stream)):
            events += dec.receive_data(stream[i : i + 1])
            assert len(dec._buf) <= MAX_LINE + 1
    assert events == expected


@pytest.mark.parametrize(
    ("client", "stream", "error"),
    [
        (True, b"\x16\x03\x01\x00\x05 hello\r\n", "not 1-16 letters"),
        (True, b"GET/ HTTP/1.1\r\n", "not 1-16 letters"),
        (False, b"hello\r\n", "3-digit code"),
    ],
)
def test_errors_are_sticky(client: bool, stream: bytes, error: str) -> None:
    dec = FtpDecoder(client)
    with pytest.raises(FtpDecodeError, match=error):
        dec.receive_data(stream)
    assert dec.state is State.ERROR
    with pytest.raises(FtpDecodeError, match="ERROR state"):
        dec.receive_data(b"")


def test_registered_adapter() -> None:
    proto = registry.get("ftp")
    assert proto is not None
    assert registry.identify(["ftp"], PROTO_TCP, 21, Direction.TO_SERVER, b"USER x\r\n") == (
        "ftp",
        True,
    )
    records = proto.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(b"SITE " + LONG + b"\r\n")
    assert records[0].fields["ftp.command"] == b"SITE"
    assert records[0].fields["ftp.argument_length"] == MAX_LINE + 1 - 5
    (reply,) = proto.new_decoder(PROTO_TCP, Direction.TO_CLIENT).feed(b"220 hi\r\n")
    assert reply.fields["ftp.reply.code"] == 220
    for rec in records + [reply]:
        assert set(rec.fields) <= set(proto.fields)
