"""HTTP/2 over cleartext (h2c): a sans-I/O decoder of the client-to-server byte stream that
turns its frames into requests (RFC 9113).

Shape follows h11 and gateway/decode/http.py: `receive_data(bytes)` then `next_event()` until
it returns NEED_DATA; no socket, no clock. A connection reaches it two ways (RFC 9113 section
3): prior knowledge, the client preface `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` first; or an
HTTP/1.1 request with `Upgrade: h2c` (that request is stream 1's, decoded as HTTP/1 before),
the server's 101, then the same preface. The HTTP adapter (gateway/decode/app.py) hands the
stream over once the HTTP/1 decoder has read the preface's request line `PRI * HTTP/2.0`
(`H2RequestDecoder(preface=PREFACE_TAIL)`), so both ways look the same from here.

Events, per stream (frames of several streams interleave):
- `StreamHead(stream_id, request)`: a request's header block is complete; `request` is an
  HTTP/1 `Request` (gateway/decode/http.py) built as a server hands it to the application:
  :method, :path (:authority for CONNECT) and version "HTTP/2"; names lower-cased; :authority
  as a `host` header when the block has none (RFC 9113 section 8.3.1); `cookie` fields joined
  by "; " into one (section 8.2.3); values without surrounding blanks, as HTTP/1's.
- `StreamData(stream_id, data)`: DATA frame payload, padding removed, in pieces as it arrives.
- `StreamEnd(stream_id, body_length, reset)`: END_STREAM (on HEADERS, DATA or trailers), or
  the client reset the stream (RST_STREAM) or its slot was needed (see MAX_OPEN_STREAMS): the
  request is judged with what it sent.

Frames: DATA and HEADERS with their PADDED and PRIORITY flags, CONTINUATION, and the header
blocks decoded by gateway/decode/hpack.py in order (trailers too, to keep its table in step);
SETTINGS, PING, PRIORITY, WINDOW_UPDATE, GOAWAY and unknown types are skipped without being
held (section 4.1: unknown types are ignored); RST_STREAM ends its stream.

What it guarantees:
- Only H2DecodeError (a DecodeError) and HpackError escape. A connection error (what the
  server answers with GOAWAY: a bad preface, a frame inside another stream's header block, bad
  padding, a header block over MAX_HEADER_BLOCK or spread over more than MAX_CONTINUATIONS
  frames, a PUSH_PROMISE from the client, an undecodable header block) leaves the decoder in
  the ERROR state (sticky). A stream-level complaint (`H2DecodeError.stream` set) is raised
  once, in order with the events, and decoding goes on.
- Bounded: only HEADERS/CONTINUATION payloads are held, at most MAX_HEADER_BLOCK bytes per
  header block; DATA is passed on as it arrives; other frames are skipped as they arrive;
  at most MAX_OPEN_STREAMS streams are tracked (a new one beyond ends the oldest, reported).
- Lenient where servers differ: any stream id order (RFC 9113 section 5.1.1 wants new ids
  increasing), upper-case header names (lower-cased), pseudo-header fields in any order;
  frame lengths up to 2**24-1 (nginx announces that SETTINGS_MAX_FRAME_SIZE).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

from gateway.decode.hpack import HpackDecoder
from gateway.decode.http import Request
from gateway.decode.uri import uri_forms
from gateway.errors import DecodeError

__all__ = [
    "MAX_CONTINUATIONS",
    "MAX_HEADER_BLOCK",
    "MAX_OPEN_STREAMS",
    "NEED_DATA",
    "PREFACE",
    "PREFACE_TAIL",
    "FrameType",
    "H2DecodeError",
    "H2RequestDecoder",
    "StreamData",
    "StreamEnd",
    "StreamHead",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 section 3.4
PREFACE_TAIL: Final = b"SM\r\n\r\n"  # what follows the request line's head in HTTP/1 terms
# As HTTP/1's MAX_HEAD_BYTES: more than any server takes for one request's header fields.
MAX_HEADER_BLOCK: Final = 1024 * 1024
# CONTINUATION frames of one header block: a real client needs MAX_HEADER_BLOCK / 16384 = 64;
# more is the CONTINUATION flood (CVE-2024-27316 and its kin), refused.
MAX_CONTINUATIONS: Final = 1024
# Streams tracked at once: nginx allows 128 concurrent streams, Apache mod_http2 and Tomcat 100
# (a stream beyond the server's limit is refused by it).
MAX_OPEN_STREAMS: Final = 128
FRAME_HEADER: Final = 9
VERSION: Final = "HTTP/2"

FLAG_END_STREAM: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20


class FrameType(enum.IntEnum):
    """RFC 9113 section 6."""

    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class H2DecodeError(DecodeError):
    """The client sent what an HTTP/2 server refuses. `stream` 0: a connection error (the
    decoder is now in the ERROR state); else a stream error, decoding goes on."""

    def __init__(self, message: str, stream: int = 0) -> None:
        super().__init__(message)
        self.stream = stream


class State(enum.Enum):
    PREFACE = "preface"
    FRAME_HEADER = "frame-header"
    HEADER_PAYLOAD = "header-payload"  # a HEADERS/CONTINUATION payload, held whole
    DATA_PAD = "data-pad"  # a padded DATA frame's pad length byte
    DATA = "data"
    SKIP = "skip"  # payload bytes to discard
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class StreamHead:
    stream_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnd:
    stream_id: int
    body_length: int
    reset: bool = False  # ended by RST_STREAM or for lack of a slot, not by END_STREAM


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
Event = StreamHead | StreamData | StreamEnd
_WS: Final = b" \t"


class H2RequestDecoder:
    """Decodes the client-to-server direction of one h2c connection (see the module comment)."""

    __slots__ = (
        "_block",
        "_block_end_stream",
        "_block_stream",
        "_buf",
        "_continuations",
        "_end_stream",
        "_flags",
        "_frame_stream",
        "_hpack",
        "_left",
        "_length",
        "_open",
        "_pad",
        "_pending",
        "_preface",
        "_type",
        "state",
    )

    def __init__(self, preface: bytes = PREFACE) -> None:
        self.state = State.PREFACE if preface else State.FRAME_HEADER
        self._preface = preface  # what must come first (the rest of it, as it arrives)
        self._buf = bytearray()
        self._hpack = HpackDecoder()
        self._pending: deque[Event | H2DecodeError] = deque()
        # the current frame
        self._type = 0
        self._flags = 0
        self._frame_stream = 0
        self._length = 0
        self._left = 0  # DATA bytes (DATA) or payload bytes (SKIP) still to come
        self._pad = 0  # padding after the DATA bytes
        self._end_stream = False
        # the header block under way (HEADERS then CONTINUATION frames)
        self._block = bytearray()
        self._block_stream = 0  # its stream (0: none under way)
        self._block_end_stream = False
        self._continuations = 0
        # open streams: id -> body bytes so far (insertion order: oldest first)
        self._open: dict[int, int] = {}

    @property
    def buffered(self) -> int:
        return len(self._buf) + len(self._block)

    def receive_data(self, data: bytes) -> None:
        if self.state is State.ERROR:
            raise H2DecodeError("h2c decoder is in ERROR state after an earlier error")
        self._buf += data

    def next_event(self) -> Event | _NeedData:
        pending = self._pending
        while True:
            if pending:
                item = pending.popleft()
                if isinstance(item, H2DecodeError):
                    raise item
                return item
            if self.state is State.ERROR:
                raise H2DecodeError("h2c decoder is in ERROR state after an earlier error")
            try:
                progressed = self._step()
            except DecodeError:
                self.state = State.ERROR
                raise
            if not progressed and not pending:
                return NEED_DATA

    # ------------------------------------------------------------------ the frame machine

    def _step(self) -> bool:
        """Consume what the buffer allows of the current state; False: more bytes needed."""
        state = self.state
        buf = self._buf
        if state is State.FRAME_HEADER:
            if len(buf) < FRAME_HEADER:
                return False
            self._frame_header(bytes(buf[:FRAME_HEADER]))
            del buf[:FRAME_HEADER]
            return True
        if state is State.HEADER_PAYLOAD:
            if len(buf) < self._length:
                return False
            payload = bytes(buf[: self._length])
            del buf[: self._length]
            self.state = State.FRAME_HEADER
            self._header_payload(payload)
            return True
        if state is State.DATA:
            return self._data()
        if state is State.SKIP:
            if not buf:
                return False
            n = min(len(buf), self._left)
            del buf[:n]
            self._left -= n
            if not self._left:
                self.state = State.FRAME_HEADER
            return True
        if state is State.DATA_PAD:
            if not buf:
                return False
            self._pad = buf[0]
            del buf[:1]
            if self._pad > self._length - 1:
                raise H2DecodeError(f"DATA padding {self._pad} longer than its frame")
            self._left = self._length - 1 - self._pad
            self.state = State.DATA
            return True
        # PREFACE: held until it is whole, so that a caller can take the bytes back when it
        # is not one (take_buffer)
        want = self._preface
        got = bytes(buf[: len(want)])
        if not want.startswith(got):
            raise H2DecodeError(f"bad HTTP/2 client preface {got[:24]!r}")
        if len(got) < len(want):
            return False
        del buf[: len(want)]
        self._preface = b""
        self.state = State.FRAME_HEADER
        return True

    @property
    def in_preface(self) -> bool:
        """Still waiting for (the rest of) the client preface."""
        return bool(self._preface)

    def take_buffer(self) -> bytes:
        """The bytes received and not consumed (after a bad preface: every byte given)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def _frame_header(self, header: bytes) -> None:
        length = int.from_bytes(header[:3], "big")
        ftype, flags = header[3], header[4]
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        self._type, self._flags, self._frame_stream, self._length = ftype, flags, stream, length
        if self._block_stream and (ftype != FrameType.CONTINUATION or stream != self._block_stream):
            raise H2DecodeError(
                f"frame type {ftype} on stream {stream} inside the header block of stream "
                f"{self._block_stream} (only CONTINUATION may follow)"
            )
        if ftype == FrameType.DATA:
            if stream == 0:
                raise H2DecodeError("DATA frame on stream 0")
            self._end_stream = bool(flags & FLAG_END_STREAM)
            if flags & FLAG_PADDED:
                if length < 1:
                    raise H2DecodeError("padded DATA frame without its pad length")
                self.state = State.DATA_PAD
            else:
                self._pad = 0
                self._left = length
                self.state = State.DATA
            return
        if ftype in (FrameType.HEADERS, FrameType.CONTINUATION):
            if stream == 0:
                raise H2DecodeError(f"frame type {ftype} on stream 0")
            if ftype == FrameType.CONTINUATION and not self._block_stream:
                raise H2DecodeError(f"CONTINUATION on stream {stream} without a header block")
            if len(self._block) + length > MAX_HEADER_BLOCK:
                raise H2DecodeError(
                    f"header block of stream {stream} over {MAX_HEADER_BLOCK} bytes"
                )
            self.state = State.HEADER_PAYLOAD
            return
        if ftype == FrameType.PUSH_PROMISE:
            raise H2DecodeError("PUSH_PROMISE from the client (RFC 9113 section 8.4)")
        if ftype == FrameType.RST_STREAM and stream:
            self._close(stream, reset=True)
        self._left = length
        self.state = State.SKIP if length else State.FRAME_HEADER

    def _data(self) -> bool:
        buf = self._buf
        stream = self._frame_stream
        if self._left:
            if not buf:
                return False
            n = min(len(buf), self._left)
            piece = bytes(buf[:n])
            del buf[:n]
            self._left -= n
            if stream in self._open:
                self._open[stream] += n
                self._pending.append(StreamData(stream, piece))
            if self._left:
                return True
        # the DATA bytes are all in: padding to skip, then the stream may end
        if self._end_stream:
            self._close(stream, reset=False)
        self._left = self._pad
        self.state = State.SKIP if self._pad else State.FRAME_HEADER
        return True

    def _header_payload(self, payload: bytes) -> None:
        flags = self._flags
        stream = self._frame_stream
        if self._type == FrameType.HEADERS:
            if flags & FLAG_PADDED:
                pad = payload[0] if payload else 0
                if not payload or pad > len(payload) - 1:
                    raise H2DecodeError(f"HEADERS padding on stream {stream} longer than its frame")
                payload = payload[1 : len(payload) - pad]
            if flags & FLAG_PRIORITY:
                if len(payload) < 5:
                    raise H2DecodeError(f"HEADERS priority on stream {stream} cut short")
                payload = payload[5:]
            self._block_stream = stream
            self._block_end_stream = bool(flags & FLAG_END_STREAM)
            self._continuations = 0
        else:
            self._continuations += 1
            if self._continuations > MAX_CONTINUATIONS:
                raise H2DecodeError(
                    f"more than {MAX_CONTINUATIONS} CONTINUATION frames in one header block "
                    f"(stream {stream})"
                )
        self._block += payload
        if flags & FLAG_END_HEADERS:
            block = bytes(self._block)
            self._block.clear()
            self._block_stream = 0
            self._header_block(stream, block, self._block_end_stream)

    def _header_block(self, stream: int, block: bytes, end_stream: bool) -> None:
        fields = self._hpack.decode(block)
        if stream in self._open:  # trailers (RFC 9113 section 8.1): decoded, not inspected
            if end_stream:
                self._close(stream, reset=False)
            return
        if len(self._open) >= MAX_OPEN_STREAMS:
            oldest = next(iter(self._open))
            self._close(oldest, reset=True)
            self._pending.append(
                H2DecodeError(
                    f"more than {MAX_OPEN_STREAMS} open streams: stream {oldest} judged with "
                    "the body it had sent",
                    stream=oldest,
                )
            )
        self._open[stream] = 0
        self._pending.append(StreamHead(stream, build_request(fields)))
        if end_stream:
            self._close(stream, reset=False)

    def _close(self, stream: int, reset: bool) -> None:
        length = self._open.pop(stream, None)
        if length is not None:
            self._pending.append(StreamEnd(stream, length, reset))


def build_request(fields: list[tuple[bytes, bytes]]) -> Request:
    """An HTTP/1 `Request` from a request's header fields, as a server hands it on (see the
    module comment)."""
    pseudo: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    cookies: list[str] = []
    cookie_at = -1
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.strip(_WS).decode("latin-1")
        if name.startswith(":"):
            pseudo.setdefault(name, value)  # a repeated pseudo-header is malformed: first kept
        elif name == "cookie":
            if cookie_at < 0:
                cookie_at = len(headers)
                headers.append(("cookie", ""))
            cookies.append(value)
        else:
            headers.append((name, value))
    if cookie_at >= 0:
        headers[cookie_at] = ("cookie", "; ".join(cookies))
    authority = pseudo.get(":authority")
    if authority is not None and not any(name == "host" for name, _ in headers):
        headers.insert(0, ("host", authority))
    method = pseudo.get(":method", "")
    target = pseudo.get(":path", "")
    if method == "CONNECT" and not target:
        target = authority or ""
    forms = uri_forms(target)  # the same forms and variants as an HTTP/1 target's
    return Request(method, target, forms[0], VERSION, tuple(headers), forms[1:])
