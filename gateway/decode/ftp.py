"""FTP control-connection decoder (TCP 21), a sans-I/O line state machine per direction.

Follows RFC 959: commands (section 4.1, syntax section 5.3: an alphabetic verb of up to four
letters, optionally a space and an argument, ended by CRLF; we accept verbs up to MAX_VERB
letters and bare LF) from the client, and replies (section 4.2: a 3-digit code, a space or, for
the first line of a multi-line reply, a hyphen; the reply ends with the line that starts with the
same code and a space) from the server. Telnet IAC sequences (RFC 854) that clients put before
ABOR (RFC 959 section 4.1.3) are skipped. After AUTH TLS (RFC 4217) the adapter hands the
stream over to the TLS decoder (`FtpAdapter`, gateway/decode/starttls.py).
Guarantees:
- only FtpDecodeError escapes (a client verb that is not letters, a server line without a reply
  code outside a multi-line reply), and after it the state is ERROR;
- at most MAX_LINE bytes of a line are buffered: a longer line (the shape of most FTP server
  overflows) is reported at once with `complete=False` and its length so far, and the rest of
  it is counted and skipped; arguments are kept up to MAX_ARGUMENT_KEEP bytes; a multi-line
  reply is reported after at most MAX_REPLY_LINES lines.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from gateway.decode.registry import AppDecoder, AppProtocol, AppRecord, FieldKind, register
from gateway.decode.starttls import starts_tls
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, Direction

MAX_LINE = 4096
MAX_VERB = 16
MAX_ARGUMENT_KEEP = 1024
MAX_REPLY_LINES = 1024


class FtpDecodeError(DecodeError):
    """The peer sent something that is not FTP control traffic (its fault; state is ERROR)."""


class State(enum.Enum):
    LINES = "lines"
    SKIP_LINE = "skip-line"  # inside an over-long line already reported
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper-cased
    argument: bytes  # first MAX_ARGUMENT_KEEP bytes, without the separating space and CRLF
    argument_length: int  # as sent; when not complete, of the first MAX_LINE + 1 bytes
    line_length: int  # without CRLF
    complete: bool  # False: the line exceeded MAX_LINE and was reported early


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: bytes  # first line's text (first MAX_ARGUMENT_KEEP bytes)
    lines: int
    length: int  # bytes of the whole reply without the final CRLF
    complete: bool


Event = Command | Reply


class FtpDecoder:
    """Decodes one direction of an FTP control connection (`client=True`: commands)."""

    def __init__(self, client: bool = True, max_line: int = MAX_LINE) -> None:
        self.client = client
        self.max_line = max_line
        self.state = State.LINES
        self._buf = bytearray()
        self._reply_code = -1  # inside a multi-line reply: its code
        self._reply_text = b""
        self._reply_lines = 0
        self._reply_length = 0
        self._skipped = 0  # bytes of the over-long line skipped so far

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes, get the events they complete."""
        if self.state is State.ERROR:
            raise FtpDecodeError("decoder is in ERROR state after an earlier error")
        events: list[Event] = []
        try:
            pos = 0
            while pos < len(data):
                nl = data.find(b"\n", pos)
                end = len(data) if nl < 0 else nl
                if self.state is State.SKIP_LINE:
                    self._skipped += end - pos
                else:
                    room = self.max_line + 1 - len(self._buf)
                    self._buf += data[pos : min(end, pos + room)]
                    if len(self._buf) > self.max_line:  # report exactly max_line + 1 bytes
                        event = self._line(bytes(self._buf), complete=False)
                        if event is not None:
                            events.append(event)
                        self._skipped = end - pos - room
                        self._buf.clear()
                        self.state = State.SKIP_LINE
                if nl < 0:
                    break
                pos = nl + 1
                if self.state is State.SKIP_LINE:
                    self.state = State.LINES
                    continue
                line = bytes(self._buf)
                self._buf.clear()
                if line.endswith(b"\r"):
                    line = line[:-1]
                event = self._line(line, complete=True)
                if event is not None:
                    events.append(event)
        except FtpDecodeError:
            self.state = State.ERROR
            raise
        return events

    def _line(self, line: bytes, complete: bool) -> Event | None:
        return self._command(line, complete) if self.client else self._reply(line, complete)

    def _command(self, line: bytes, complete: bool) -> Command:
        while line[:1] == b"\xff" and len(line) >= 2:  # Telnet IAC <command>
            line = line[2:]
        line = line.lstrip(b"\xf2")  # a stray Telnet synch data mark
        verb, sep, argument = line.partition(b" ")
        if not verb and not sep:
            return Command("", b"", 0, 0, complete)
        if not verb.isalpha() or len(verb) > MAX_VERB:
            raise FtpDecodeError(
                f"FTP command verb {verb[:MAX_VERB]!r} is not 1-{MAX_VERB} letters"
            )
        return Command(
            verb.decode("ascii").upper(),
            argument[:MAX_ARGUMENT_KEEP],
            len(argument),
            len(line),
            complete,
        )

    def _reply(self, line: bytes, complete: bool) -> Reply | None:
        code_text = line[:3]
        starts_with_code = len(line) >= 3 and code_text.isdigit()
        if self._reply_code >= 0:
            self._reply_lines += 1
            self._reply_length += len(line) + 2
            last = (
                starts_with_code and int(code_text) == self._reply_code and line[3:4] != b"-"
            ) or self._reply_lines >= MAX_REPLY_LINES
            if not last and complete:
                return None
            reply = Reply(
                self._reply_code,
                self._reply_text,
                self._reply_lines,
                self._reply_length - 2,
                complete and last,
            )
            self._reply_code = -1
            return reply
        if not starts_with_code or line[3:4] not in (b"", b" ", b"-"):
            raise FtpDecodeError(f"FTP reply line {line[:16]!r} does not start with a 3-digit code")
        code = int(code_text)
        if line[3:4] == b"-" and complete:
            self._reply_code = code
            self._reply_text = line[4 : 4 + MAX_ARGUMENT_KEEP]
            self._reply_lines = 1
            self._reply_length = len(line) + 2
            return None
        return Reply(code, line[4 : 4 + MAX_ARGUMENT_KEEP], 1, len(line), complete)


# RFC 4217 section 4: AUTH with one of these mechanisms asks for TLS (TLS-C/TLS-P and SSL are
# the draft's older names, still accepted by servers); the server agrees with 234.
_AUTH_TLS: Final = frozenset({b"TLS", b"SSL", b"TLS-C", b"TLS-P"})
REPLY_AUTH_OK: Final = 234


class FtpAdapter:
    """App-layer adapter: one record per command (to server) or reply (to client), until AUTH
    TLS: after the client's request (its side) or the server's 234 (its side), a TLS record at
    a line boundary hands the stream over to TLS (registry.HandoverDecoder; the rule is the
    one of gateway/decode/starttls.py)."""

    __slots__ = ("_armed", "_decoder", "_moved", "handover")

    def __init__(self, client: bool) -> None:
        self._decoder = FtpDecoder(client)
        self._armed = False  # this side of AUTH TLS happened: TLS may start at a line
        self._moved = False  # handed over: later bytes are not FTP's
        self.handover: tuple[str, bytes] | None = None

    def feed(self, data: bytes) -> list[AppRecord]:
        decoder = self._decoder
        if self._moved:
            return []  # the stream is TLS from there on: nothing more for this decoder
        if not self._armed and b"\n" not in data:
            return self._records(decoder.receive_data(data))
        out: list[AppRecord] = []
        pos, size = 0, len(data)
        while pos < size:  # line by line: the upgrade may come after any of them
            at_line = not decoder._buf and decoder.state is State.LINES
            if self._armed and at_line and starts_tls(data[pos]):
                self.handover = ("tls", data[pos:])
                self._moved = True
                break
            nl = data.find(b"\n", pos)
            end = size if nl < 0 else nl + 1
            out.extend(self._records(decoder.receive_data(data[pos:end])))
            pos = end
        return out

    def _records(self, events: list[Event]) -> list[AppRecord]:
        for event in events:
            if isinstance(event, Command):
                self._armed = event.verb == "AUTH" and event.argument.strip().upper() in _AUTH_TLS
            else:
                self._armed = event.code == REPLY_AUTH_OK
        return [AppRecord("ftp", event_fields(e)) for e in events]


def event_fields(event: Event) -> dict[str, int | bytes]:
    """A decoder event as rule fields (ftp.*)."""
    if isinstance(event, Command):
        return {
            "ftp.command": event.verb.encode("ascii"),
            "ftp.argument": event.argument,
            "ftp.argument_length": event.argument_length,
            "ftp.line_length": event.line_length,
            "ftp.complete": int(event.complete),
        }
    return {
        "ftp.reply.code": event.code,
        "ftp.reply.text": event.text,
        "ftp.reply.lines": event.lines,
        "ftp.reply.length": event.length,
        "ftp.complete": int(event.complete),
    }


def _new_decoder(transport: int, direction: Direction) -> AppDecoder:
    return FtpAdapter(client=direction is Direction.TO_SERVER)


register(
    AppProtocol(
        name="ftp",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({21}),
        fields={
            "ftp.command": FieldKind.BYTES,
            "ftp.argument": FieldKind.BYTES,
            "ftp.argument_length": FieldKind.INT,
            "ftp.line_length": FieldKind.INT,
            "ftp.complete": FieldKind.INT,
            "ftp.reply.code": FieldKind.INT,
            "ftp.reply.text": FieldKind.BYTES,
            "ftp.reply.lines": FieldKind.INT,
            "ftp.reply.length": FieldKind.INT,
        },
        new_decoder=_new_decoder,
        probe=None,  # by port: the client speaks first only after the server's greeting
        hands_over=frozenset({"tls"}),  # AUTH TLS (RFC 4217)
        description="FTP control connection: commands and replies (RFC 959), AUTH TLS",
    )
)
