"""HTTP/1.x request decoder: a sans-I/O state machine fed the client-to-server byte stream.

Shape follows h11: `receive_data(bytes)` then `next_event()` until it returns NEED_DATA. It never
touches a socket or a clock. Guarantees:
- requests are parsed as RFC 9112 describes: request line (section 3), header fields with
  obsolete line folding unfolded (section 5.2), bodies framed by Transfer-Encoding: chunked
  (section 7.1, chunk extensions and trailers skipped) or Content-Length (section 6.2), and
  pipelined requests one after another; a body the servers frame in different ways (a
  Transfer-Encoding other than plain `chunked` next to a Content-Length: request smuggling)
  is refused after its head is handed on (`_chunked_framing`);
- only HttpDecodeError escapes, and after it the decoder stays in the ERROR state (sticky);
- every buffer is bounded: a request head longer than `max_head_bytes` is an error, body data
  is passed on in pieces and at most `max_body_inspect` bytes of each body are kept for matching.

A request's target is decoded as the servers decode it (gateway/decode/uri.py `uri_forms`:
%-encoding, also applied twice, IIS `%uXXXX` and best-fit, overlong UTF-8, backslashes as path
separators, `.` and `..` segments, NUL, Tomcat path parameters, letter case): `uri_normalized`
is the primary form, `uri_variants` the others.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from gateway.decode.uri import normalize_uri, uri_forms
from gateway.errors import DecodeError

__all__ = [
    "MAX_BODY_INSPECT",
    "NEED_DATA",
    "Body",
    "EndOfRequest",
    "Event",
    "HttpDecodeError",
    "HttpRequestDecoder",
    "Request",
    "State",
    "normalize_uri",
    "parse_content_length",
    "parse_request_line",
]

# Apache accepts 100 header lines of 8190 bytes (about 800 KiB); a longer head is refused
# (policy: the decode error path), so one must fit.
MAX_HEAD_BYTES = 1024 * 1024
MAX_HEADERS = 1024
MAX_BODY_INSPECT = 64 * 1024
# A chunk-size line with its extensions: Tomcat takes 8192 bytes of extensions
# (maxExtensionSize), Apache 2.4 reads the line whole; longer is refused.
MAX_CHUNK_LINE = 16 * 1024


class HttpDecodeError(DecodeError):
    """The client sent something that is not HTTP/1.x (its fault; the state is now ERROR).
    `after_head`: the request head before it is whole and was handed on (a server may act on
    it); only its body's framing is in doubt."""

    def __init__(self, message: str, after_head: bool = False) -> None:
        super().__init__(message)
        self.after_head = after_head


class State(enum.Enum):
    HEAD = "head"  # waiting for a complete request line + header block
    BODY_LENGTH = "body-length"
    CHUNK_SIZE = "chunk-size"
    CHUNK_DATA = "chunk-data"
    CHUNK_DATA_END = "chunk-data-end"
    TRAILERS = "trailers"
    RESYNC = "resync"  # after recover(): skipping to the next line that starts a request
    ERROR = "error"


# The states as plain constants for the decoder's loop (an enum member looked up on its
# class costs about 70 ns on Python 3.11: gateway/vocabulary.py, DIRECTIONS).
_ST_HEAD = State.HEAD
_ST_BODY_LENGTH = State.BODY_LENGTH
_ST_CHUNK_SIZE = State.CHUNK_SIZE
_ST_CHUNK_DATA = State.CHUNK_DATA
_ST_CHUNK_DATA_END = State.CHUNK_DATA_END
_ST_TRAILERS = State.TRAILERS
_ST_RESYNC = State.RESYNC
_ST_ERROR = State.ERROR


@dataclass(frozen=True, slots=True)
class Request:
    """A request head. `uri` is as sent; `uri_normalized` as the server would see the path,
    `uri_variants` the other forms a server may act on (gateway/decode/uri.py `uri_forms`)."""

    method: str
    uri: str
    uri_normalized: str
    version: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order, repeats kept
    uri_variants: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        """Every value of `name` joined by ', ' (RFC 9110 section 5.3), or None."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class Body:
    """A piece of the current request's body, de-chunked."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfRequest:
    """The current request (head and body) is complete; the next one may follow (pipelining)."""

    body_length: int


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = Request | Body | EndOfRequest

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# A chunk size as Apache reads it (apr_strtoi64 base 16): blanks, then hex digits (any number
# of leading zeros), then anything up to the line end is ignored (extensions, junk).
_CHUNK_SIZE = re.compile(rb"[ \t]*0*([0-9A-Fa-f]{1,16})(?![0-9A-Fa-f])")


class HttpRequestDecoder:
    """Decodes one direction (client to server) of an HTTP/1.x connection."""

    __slots__ = (
        "_body_length",
        "_buf",
        "_deferred",
        "_refused_consumed",
        "_remaining",
        "max_head_bytes",
        "max_headers",
        "requests",
        "state",
    )

    def __init__(
        self,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.state = _ST_HEAD
        self._buf = bytearray()
        self._remaining = 0  # body bytes left in the current Content-Length body or chunk
        self._body_length = 0
        self._refused_consumed = False  # the bytes of the last error left the buffer
        # a head's framing error, raised after its Request event (a server may act on that head)
        self._deferred: HttpDecodeError | None = None
        self.requests = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        if self.state is _ST_ERROR:
            raise HttpDecodeError("decoder is in ERROR state after an earlier error")
        self._buf += data

    def next_event(self) -> Event | _NeedData:
        before = len(self._buf)
        try:
            return self._next_event()
        except HttpDecodeError:
            self.state = _ST_ERROR
            # recover() may resume right at the buffer's start only if the refused bytes are
            # gone from it, or it would refuse them again
            self._refused_consumed = len(self._buf) < before or self._deferred is not None
            self._deferred = None
            raise

    def take_buffer(self) -> bytes:
        """The bytes received and not yet turned into events, handed over to whoever decodes
        the stream from here (the h2c decoder after the preface's `PRI * HTTP/2.0` head)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def recover(self) -> None:
        """Leave the ERROR state: skip to the next line that starts an HTTP request and decode on
        from there. For a caller whose policy lets the connection go on after an anomaly: what
        the server makes of the skipped bytes is unknown, so every later request is still
        found and inspected instead of none."""
        self.state = _ST_RESYNC
        self._remaining = 0
        self._body_length = 0

    def _resync(self) -> Event | _NeedData:
        buf = self._buf
        if self._refused_consumed:
            # The refused bytes are gone: the next request may start right here.
            if _REQUEST_LINE_AT_START.match(buf):
                self.state = _ST_HEAD
                return self._parse_head()
            first = bytes(buf[:MAX_RESYNC_TAIL]).lstrip(b"\r\n")
            if b"\n" not in first and len(buf) < MAX_RESYNC_TAIL:
                return NEED_DATA  # the first line is not complete yet
            self._refused_consumed = False  # it is complete and no request line
        found = _REQUEST_LINE_START.search(buf)
        if found is not None:
            del buf[: found.start() + 1]
            self.state = _ST_HEAD
            return self._parse_head()
        # Keep the last line's start (a request line may be arriving), bounded.
        cut = max(buf.rfind(b"\n"), len(buf) - MAX_RESYNC_TAIL)
        if cut > 0:
            del buf[:cut]
        return NEED_DATA

    def _next_event(self) -> Event | _NeedData:
        if self._deferred is not None:
            raise self._deferred
        state = self.state
        if state is _ST_ERROR:
            raise HttpDecodeError("decoder is in ERROR state after an earlier error")
        if state is _ST_RESYNC:
            return self._resync()
        if state is _ST_HEAD:
            return self._parse_head()
        if state is _ST_BODY_LENGTH or state is _ST_CHUNK_DATA:
            if self._remaining == 0:
                if state is _ST_BODY_LENGTH:
                    return self._end_request()
                self.state = _ST_CHUNK_DATA_END
                return self._next_event()
            if not self._buf:
                return NEED_DATA
            piece = bytes(self._buf[: self._remaining])
            del self._buf[: len(piece)]
            self._remaining -= len(piece)
            self._body_length += len(piece)
            return Body(piece)
        if state is _ST_CHUNK_DATA_END:
            if len(self._buf) < 2:
                return NEED_DATA
            if self._buf[:2] != b"\r\n":
                # Tolerate a bare LF like most servers do.
                if self._buf[:1] != b"\n":
                    raise HttpDecodeError(
                        f"chunk data not followed by CRLF: {bytes(self._buf[:8])!r}"
                    )
                del self._buf[:1]
            else:
                del self._buf[:2]
            self.state = _ST_CHUNK_SIZE
            return self._next_event()
        if state is _ST_CHUNK_SIZE:
            line = self._take_line(MAX_CHUNK_LINE, "chunk size line")
            if line is None:
                return NEED_DATA
            match = _CHUNK_SIZE.match(line)
            if not match:
                raise HttpDecodeError(f"bad chunk size line {line[:40]!r}")
            size = int(match.group(1), 16)
            if size == 0:
                self.state = _ST_TRAILERS
            else:
                self._remaining = size
                self.state = _ST_CHUNK_DATA
            return self._next_event()
        # TRAILERS: header lines until an empty one; their content is not inspected here.
        while True:
            line = self._take_line(self.max_head_bytes, "trailer line")
            if line is None:
                return NEED_DATA
            if not line:
                return self._end_request()

    def _end_request(self) -> EndOfRequest:
        event = EndOfRequest(self._body_length)
        self.state = _ST_HEAD
        self._body_length = 0
        self._remaining = 0
        self.requests += 1
        return event

    def _take_line(self, limit: int, what: str) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > limit:
                raise HttpDecodeError(f"{what} longer than {limit} bytes")
            return None
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        return line

    def _parse_head(self) -> Request | _NeedData:
        buf = self._buf
        # RFC 9112 section 2.2: ignore at least one empty line before a request line (Apache
        # skips any number of them).
        skip = 0
        while True:
            if buf[skip : skip + 2] == b"\r\n":
                skip += 2
            elif buf[skip : skip + 1] == b"\n":
                skip += 1
            else:
                break
        if skip:
            del buf[:skip]
        # The head ends at the first empty line; a line ends at LF with an optional CR before it
        # (Apache's and IIS's getline), so CRLF CRLF, LF LF, CRLF LF and LF CRLF all end it.
        found = _HEAD_END.search(buf)
        if found is None:
            if len(buf) > self.max_head_bytes:
                raise HttpDecodeError(f"request head longer than {self.max_head_bytes} bytes")
            return NEED_DATA
        end = found.start()
        if end > self.max_head_bytes:
            raise HttpDecodeError(f"request head longer than {self.max_head_bytes} bytes")
        head = bytes(buf[:end])
        del buf[: found.end()]
        lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
        method, target, version = parse_request_line(lines[0])
        headers = self._parse_headers(lines[1:])
        forms = uri_forms(target)
        request = Request(method, target, forms[0], version, headers, forms[1:])
        try:
            self._start_body(request)
        except HttpDecodeError as err:
            if not err.after_head:
                raise
            self._deferred = err  # the head is an event; its body cannot be framed
        return request

    def _parse_headers(self, lines: list[bytes]) -> tuple[tuple[str, str], ...]:
        headers: list[tuple[str, str]] = []
        for raw in lines:
            if raw[:1] in (b" ", b"\t") and headers:
                # Obsolete line folding (RFC 9112 section 5.2): replace with a space.
                last_name, last_value = headers[-1]
                headers[-1] = (last_name, f"{last_value} {raw.strip().decode('latin-1')}")
                continue
            name, colon, value = raw.partition(b":")
            name = name.strip(_WS)
            if not colon or not name:
                # Apache and IIS answer 400 and close: nothing after it reaches the application.
                raise HttpDecodeError(f"bad header line {raw[:80]!r}")
            # Apache 2.2 strips whitespace between the name and the colon and takes any byte in
            # a name; the value loses surrounding SP/HTAB (RFC 9112 section 5.1).
            headers.append((name.decode("latin-1").lower(), value.strip(_WS).decode("latin-1")))
            if len(headers) > self.max_headers:
                raise HttpDecodeError(f"more than {self.max_headers} header fields")
        return tuple(headers)

    def _start_body(self, request: Request) -> None:
        te = request.header("transfer-encoding")
        length = request.header("content-length")
        if te is not None and _chunked_framing(te, length is not None):
            self.state = _ST_CHUNK_SIZE
            return
        if length is None:
            self._remaining = 0
            self.state = _ST_BODY_LENGTH
            return
        self._remaining = parse_content_length(length)
        self.state = _ST_BODY_LENGTH


_WS = b" \t"
MAX_RESYNC_TAIL = 8192  # bytes kept while looking for the next request line after recover()
# The start of a request line: a method token, blanks, a target, blanks, "HTTP/"; resync looks
# for it after a LF, or at the buffer's start (after empty lines) when that is allowed.
_REQUEST_LINE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}[ \t]+\S+[ \t]+(?i:HTTP/)"
_REQUEST_LINE_START = re.compile(rb"\n" + _REQUEST_LINE)
_REQUEST_LINE_AT_START = re.compile(rb"[\r\n]*" + _REQUEST_LINE)
_HEAD_END = re.compile(rb"\n\r?\n")
# "HTTP/" then major.minor the way Apache 2.2 reads it (sscanf "HTTP/%u.%u": optional
# whitespace and sign before each number, any number of leading zeros).
_LENIENT_VERSION = re.compile(rb"(?i)HTTP/\s*\+?(\d+)\.\s*\+?(\d+)")
# A Content-Length value as strtoll reads it (leading blanks, optional '+'), nothing after.
_CONTENT_LENGTH = re.compile(r"[ \t]*\+?(\d{1,18})[ \t]*\Z")


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """(method, target, version) of a request line, as leniently as Apache 2.2 reads it.

    Words are separated by any run of whitespace (ap_getword_white). The method is the first
    word, the target the second; a third word that is not "HTTP/major.minor" (any case,
    leading zeros) is read as HTTP/1.0, as Apache 2.2 does (RFC 9112 section 2.3 lets a
    server treat an unknown version so), and words after it are ignored. Two words are an
    HTTP/0.9 request. The method must still be a token (RFC 9110 section 9.1): bytes such as '('
    or ':' make it something other than HTTP.
    """
    parts = line.split()
    if len(parts) == 2:  # HTTP/0.9 style "GET /path"
        parts.append(b"HTTP/0.9")
    if len(parts) < 3:
        raise HttpDecodeError(f"bad request line {line[:80]!r}")
    method, target, version = parts[0], parts[1], parts[2]
    if not _TOKEN.match(method):
        raise HttpDecodeError(f"bad method {method[:40]!r} in request line")
    found = _LENIENT_VERSION.match(version)
    text = f"HTTP/{int(found.group(1))}.{int(found.group(2))}" if found else "HTTP/1.0"
    return method.decode("latin-1"), target.decode("latin-1"), text


def _chunked_framing(te: str, with_length: bool) -> bool:
    """Whether a request with Transfer-Encoding `te` (repeats joined by ", ") has a chunked
    body, or HttpDecodeError when the servers read its body in different ways (request
    smuggling, RFC 9112 section 6.3 and 11.2).

    `chunked` alone (any case, blanks around it) is chunked for every server, with or without
    a Content-Length (Transfer-Encoding wins). Any other value next to a Content-Length is
    ambiguous: Apache 2.2 compares the whole value with "chunked" and, when it differs, reads
    the Content-Length ("Unknown Transfer-Encoding ... using Content-Length"), while Apache
    2.4 reads chunks when chunked is the last coding and refuses the request otherwise, as
    IIS and Tomcat refuse unknown codings: refused here (the decoder resynchronises on the
    next request line, which finds a request hidden in either reading). Without a
    Content-Length, a value holding "chunked" is read as chunks (the only reading of a server
    that does not refuse it)."""
    codings = [c.strip(" \t").lower() for c in te.split(",")]
    if codings == ["chunked"]:
        return True
    if with_length:
        raise HttpDecodeError(
            f"Transfer-Encoding {te[:40]!r} with a Content-Length: servers frame the body "
            "differently",
            after_head=True,
        )
    return "chunked" in te.lower()


def parse_content_length(value: str) -> int:
    """The body length a Content-Length value gives, or HttpDecodeError when servers refuse it.

    Repeats (joined by ", ") must agree (RFC 9110 section 8.6). Leading zeros, blanks and a
    '+' sign are taken, as strtoll does in Apache; anything else is refused, as the servers do.
    """
    values = {v.strip(" \t") for v in value.split(",")}
    lengths = set()
    for item in values:
        found = _CONTENT_LENGTH.match(item)
        if found is None:
            raise HttpDecodeError(f"bad Content-Length {value[:40]!r}")
        lengths.add(int(found.group(1)))
    if len(lengths) != 1:
        raise HttpDecodeError(f"bad Content-Length {value[:40]!r} (values disagree)")
    return lengths.pop()
