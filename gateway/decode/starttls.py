"""In-band upgrades to TLS (STARTTLS): SMTP (RFC 3207), IMAP (RFC 9051 section 6.2.1, RFC 3501),
POP3 (RFC 2595 section 4, STLS) and, through gateway/decode/ftp.py, FTP (RFC 4217 AUTH TLS).

What it does: each of these protocols starts in clear text lines and, after the client asks
(`STARTTLS`, `<tag> STARTTLS`, `STLS`, `AUTH TLS`) and the server agrees (`220`, `<tag> OK`,
`+OK`, `234`), both sides speak TLS on the same connection. A heartbeat or a malformed
handshake after the upgrade reaches the server's TLS stack as on port 443, so the TLS rules must
judge those bytes: `LineUpgradeAdapter` follows one direction line by line (a record per line:
`<app>.command` from the client, `<app>.reply` from the server, and `<app>.line_length`) and,
once its side of the upgrade happened, hands the rest of the stream over to the TLS decoder
(registry.HandoverDecoder: `handover = ("tls", bytes)`; gateway/decode/session.py feeds those
and every later byte to TLS; the rules that follow TLS follow these protocols too,
gateway/match/follow.py).

When a direction moves: at a line boundary after its side of the upgrade (the client: after its
request; the server: after its positive answer), if the next byte starts a TLS record (a
handshake record, 0x16, or an SSLv2-format hello, `starts_tls`). Each direction decides alone
(the two directions are decoded apart): the client's ClientHello comes after the server's
answer, and no clear-text line of these protocols starts with such a byte, so bytes the server
would read as TLS are decoded as TLS and clear text stays clear text, whether or not the server
agreed; a server that refused reads the client's TLS bytes as a bad command line.

What it guarantees: `feed` never raises; a line is buffered up to MAX_LINE bytes, the rest of a
longer line is counted into its length and skipped; the hand-over keeps every byte (nothing of
the TLS stream is lost or decoded twice).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.decode.registry import (
    AppDecoder,
    AppProtocol,
    AppRecord,
    FieldKind,
    FieldValue,
    Probe,
    register,
)
from gateway.vocabulary import PROTO_TCP, Direction

__all__ = ["MAX_LINE", "Dialect", "LineUpgradeAdapter", "starts_tls"]

MAX_LINE: Final = 4096  # bytes of one line kept; a longer one is cut there (its length counted)
MAX_TOKEN: Final = 32  # bytes of a command / reply token kept in the record


def starts_tls(first: int) -> bool:
    """Whether a stream whose next byte is `first` starts a TLS record a server would take as
    the start of a handshake: a TLS handshake record (content type 22, RFC 8446 section 5.1)
    or an SSLv2-format ClientHello (a 2-byte length with the high bit set; 0xFF excluded, the
    Telnet IAC that FTP clients may send)."""
    return first == 0x16 or 0x80 <= first < 0xFF


@dataclass(frozen=True, slots=True)
class Dialect:
    """One line protocol's upgrade: which client line asks, which server line agrees."""

    name: str
    asks: Callable[[bytes], bool]
    agrees: Callable[[bytes], bool]
    command: Callable[[bytes], bytes]  # the command token of a client line


def _first_word(line: bytes) -> bytes:
    return line.split(None, 1)[0][:MAX_TOKEN].upper() if line.strip() else b""


def _second_word(line: bytes) -> bytes:  # IMAP: after the tag
    words = line.split(None, 2)
    return words[1][:MAX_TOKEN].upper() if len(words) > 1 else b""


SMTP: Final = Dialect(
    "smtp",
    asks=lambda line: line.strip().upper() == b"STARTTLS",
    agrees=lambda line: line[:3] == b"220" and line[3:4] in (b" ", b""),
    command=_first_word,
)
IMAP: Final = Dialect(
    "imap",
    asks=lambda line: _second_word(line) == b"STARTTLS",
    agrees=lambda line: _second_word(line) == b"OK" and line[:1] != b"*",
    command=_second_word,
)
POP3: Final = Dialect(
    "pop3",
    asks=lambda line: line.strip().upper() == b"STLS",
    agrees=lambda line: line[:3] == b"+OK",
    command=_first_word,
)


class LineUpgradeAdapter:
    """One direction of a line protocol, handed over to TLS after the upgrade (see above)."""

    __slots__ = (
        "_armed",
        "_buf",
        "_client",
        "_cr",
        "_dialect",
        "_fields",
        "_length",
        "_moved",
        "handover",
    )

    def __init__(self, dialect: Dialect, client: bool) -> None:
        self._dialect = dialect
        self._client = client
        self._buf = bytearray()  # the line under way (at most MAX_LINE bytes)
        self._length = 0  # its length so far, cut bytes included
        self._cr = False  # its last byte so far is a CR
        self._armed = False  # this side of the upgrade happened: TLS may start at a line
        name = dialect.name
        self._fields = (f"{name}.command", f"{name}.reply", f"{name}.line_length")
        self.handover: tuple[str, bytes] | None = None
        self._moved = False  # handed over: later bytes are not this protocol's

    def feed(self, data: bytes) -> list[AppRecord]:
        out: list[AppRecord] = []
        if self._moved:
            return out  # the stream is TLS from there on: nothing more for this decoder
        pos, size = 0, len(data)
        while pos < size:
            if self._armed and not self._length and starts_tls(data[pos]):
                self.handover = ("tls", data[pos:])
                self._moved = True
                break
            nl = data.find(b"\n", pos)
            end = size if nl < 0 else nl
            room = MAX_LINE - len(self._buf)
            if room > 0:
                self._buf += data[pos : min(end, pos + room)]
            if end > pos:
                self._length += end - pos
                self._cr = data[end - 1] == 0x0D
            if nl < 0:
                break
            pos = nl + 1
            length = self._length - self._cr  # without its CR
            out.append(self._line(bytes(self._buf[:length]), length))
            self._buf.clear()
            self._length = 0
            self._cr = False
        return out

    def _line(self, line: bytes, size: int) -> AppRecord:
        dialect = self._dialect
        command, reply, length = self._fields
        fields: dict[str, FieldValue] = {length: size}
        if self._client:
            fields[command] = dialect.command(line)
            self._armed = dialect.asks(line)
        else:
            fields[reply] = _first_word(line)
            self._armed = dialect.agrees(line)
        return AppRecord(dialect.name, fields)


# Probes: the client's first command, the server's greeting (RFC 5321 4.3.1, RFC 9051 7.1.1,
# RFC 1939 section 4), within the first MAX_PROBE_BYTES.
_CLIENT_FIRST: Final = {
    "smtp": re.compile(rb"(?i)(?:EHLO|HELO|LHLO)[ \t]"),
    "imap": re.compile(rb"(?i)[A-Za-z0-9.]{1,16} (?:CAPABILITY|STARTTLS|LOGIN|AUTHENTICATE|ID)\b"),
    "pop3": re.compile(rb"(?i)(?:CAPA|STLS|USER|APOP)\b"),
}
_SERVER_FIRST: Final = {
    "smtp": re.compile(rb"220[ -][^\r\n]*SMTP", re.IGNORECASE),
    "imap": re.compile(rb"\* (?:OK|PREAUTH) "),
    "pop3": re.compile(rb"\+OK\b"),
}
# What may still become a match with more bytes (a probe says NEED_DATA only then, so a short
# line of another protocol is decided at once)
_CLIENT_PREFIX: Final = {
    "smtp": re.compile(rb"(?i)(?:E(?:H(?:L(?:O)?)?)?|H(?:E(?:L(?:O)?)?)?|L(?:H(?:L(?:O)?)?)?)\Z"),
    "imap": re.compile(rb"[A-Za-z0-9.]{1,16}(?: [A-Za-z]{0,12})?\Z"),
    "pop3": re.compile(rb"(?i)(?:C(?:A(?:P)?)?|S(?:T(?:L)?)?|U(?:S(?:E)?)?|A(?:P(?:O)?)?)\Z"),
}
_SERVER_PREFIX: Final = {
    "smtp": re.compile(rb"(?:2(?:2(?:0(?:[ -][^\r\n]{0,59})?)?)?)\Z"),
    "imap": re.compile(rb"\*(?: (?:O(?:K)?|P(?:R(?:E(?:A(?:U(?:T(?:H)?)?)?)?)?)?)?)?\Z"),
    "pop3": re.compile(rb"\+(?:O)?\Z"),
}


def _probe(name: str) -> Callable[[bytes, Direction], Probe]:
    def probe(data: bytes, direction: Direction) -> Probe:
        client = direction is Direction.TO_SERVER
        if (_CLIENT_FIRST if client else _SERVER_FIRST)[name].match(data):
            return Probe.YES
        if (_CLIENT_PREFIX if client else _SERVER_PREFIX)[name].match(data):
            return Probe.NEED_DATA
        return Probe.NO

    return probe


def _factory(dialect: Dialect) -> Callable[[int, Direction], AppDecoder]:
    def new_decoder(transport: int, direction: Direction) -> AppDecoder:
        return LineUpgradeAdapter(dialect, client=direction is Direction.TO_SERVER)

    return new_decoder


for _dialect, _ports, _rfc in (
    (SMTP, {25, 587}, "RFC 5321, STARTTLS RFC 3207"),
    (IMAP, {143}, "RFC 9051, STARTTLS section 6.2.1"),
    (POP3, {110}, "RFC 1939, STLS RFC 2595"),
):
    register(
        AppProtocol(
            name=_dialect.name,
            transports=frozenset({PROTO_TCP}),
            ports=frozenset(_ports),
            fields={
                f"{_dialect.name}.command": FieldKind.BYTES,
                f"{_dialect.name}.reply": FieldKind.BYTES,
                f"{_dialect.name}.line_length": FieldKind.INT,
            },
            new_decoder=_factory(_dialect),
            probe=_probe(_dialect.name),
            hands_over=frozenset({"tls"}),
            description=f"{_dialect.name.upper()} lines until STARTTLS ({_rfc}), then TLS",
        )
    )
