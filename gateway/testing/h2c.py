"""HTTP/2 cleartext client streams built from HTTP/1 requests (tests, the evasion harness).

`h2c_stream(requests)` gives the client-to-server bytes of an h2c connection carrying the same
requests, as a client speaking HTTP/2 to a server that accepts it would send them (RFC 9113):
the preface (prior knowledge) or an HTTP/1.1 `Upgrade: h2c` request first, SETTINGS, then per
request a HEADERS frame (PRIORITY flag, header block split over CONTINUATION frames when
`split` says so) and its body as DATA frames (the first one PADDED), streams 1, 3, 5, ... (3,
5, ... after an upgrade, whose request is stream 1's). Header blocks are HPACK-coded with
`HpackEncoder`: Huffman-coded strings and incremental indexing, so a repeated field is sent as
an index into the dynamic table and no header value appears as plain bytes on the wire.

Guarantees: the output decodes, with a correct HPACK decoder, to exactly the requests given
(method, :path, :authority from Host, the other header fields lower-cased, the body); HTTP/1
connection-specific fields (Connection, Keep-Alive, Transfer-Encoding, Upgrade, Host) are left
out as RFC 9113 section 8.2.2 requires. Pure functions over bytes; nothing leaves the process.
"""

from __future__ import annotations

import struct
from typing import Final

from gateway.decode.h2 import PREFACE, FrameType
from gateway.decode.hpack import ENTRY_OVERHEAD, STATIC_TABLE, huffman_codes

__all__ = ["UPGRADE_REQUEST", "HpackEncoder", "frame", "h2c_stream", "parse_h1_request"]

_CODES: Final = huffman_codes()
_CONNECTION_FIELDS: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}
)
# An upgrade request (RFC 9113 section 3.2 of RFC 7540, kept by servers such as Apache
# mod_http2 and Tomcat): its HTTP2-Settings is an empty SETTINGS payload, base64url.
UPGRADE_REQUEST: Final = (
    b"GET / HTTP/1.1\r\nHost: vpatch.example\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: \r\n\r\n"
)


def huffman_encode(data: bytes) -> bytes:
    """RFC 7541 section 5.2: the Huffman code of `data`, padded with one bits."""
    acc = 0
    bits = 0
    for byte in data:
        code, length = _CODES[byte]
        acc = (acc << length) | code
        bits += length
    pad = -bits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((bits + pad) // 8, "big")


def _integer(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    coded = huffman_encode(data)
    return _integer(len(coded), 7, 0x80) + coded


class HpackEncoder:
    """One connection's HPACK encoder (table size 4096, the default)."""

    def __init__(self) -> None:
        self.table: list[tuple[bytes, bytes]] = []  # newest first
        self.limit = 4096

    def _size(self) -> int:
        return sum(len(n) + len(v) + ENTRY_OVERHEAD for n, v in self.table)

    def encode(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        out = bytearray()
        for field in fields:
            if field in STATIC_TABLE:
                out += _integer(STATIC_TABLE.index(field) + 1, 7, 0x80)
                continue
            if field in self.table:
                out += _integer(len(STATIC_TABLE) + 1 + self.table.index(field), 7, 0x80)
                continue
            name, value = field
            out += b"\x40" + _string(name) + _string(value)  # literal, incremental indexing
            size = len(name) + len(value) + ENTRY_OVERHEAD
            if size > self.limit:
                self.table.clear()
                continue
            self.table.insert(0, field)
            while self._size() > self.limit:
                self.table.pop()
        return bytes(out)


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return (
        struct.pack("!I", len(payload))[1:]
        + bytes([ftype, flags])
        + struct.pack("!I", stream)
        + payload
    )


def parse_h1_request(head: bytes) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header fields of an HTTP/1 request head (request line and header lines)."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    method, target = lines[0].split()[:2]
    host = b""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        value = value.strip()
        if key == b"host":
            host = value
        if key.decode("latin-1") not in _CONNECTION_FIELDS:
            fields.append((key, value))
    pseudo = [(b":method", method), (b":scheme", b"http"), (b":authority", host)]
    return [*pseudo, (b":path", target), *fields]


def h2c_stream(
    requests: list[tuple[bytes, bytes]], upgrade: bool = False, split: bool = True
) -> bytes:
    """The client stream of an h2c connection carrying `requests` ((HTTP/1 head, body) each);
    see the module comment."""
    out = bytearray(UPGRADE_REQUEST if upgrade else b"")
    out += PREFACE + frame(FrameType.SETTINGS, 0, 0, struct.pack("!HI", 3, 100))
    encoder = HpackEncoder()
    stream = 3 if upgrade else 1
    for head, body in requests:
        block = encoder.encode(parse_h1_request(head))
        end = 0 if body else 0x1
        priority = struct.pack("!IB", 0, 15)
        cut = len(block) // 2 if split and len(block) > 8 else len(block)
        if cut == len(block):
            out += frame(FrameType.HEADERS, 0x20 | 0x4 | end, stream, priority + block)
        else:
            out += frame(FrameType.HEADERS, 0x20 | end, stream, priority + block[:cut])
            out += frame(FrameType.CONTINUATION, 0x4, stream, block[cut:])
        if body:
            half = len(body) // 2
            pad = b"\x00" * 5
            out += frame(FrameType.DATA, 0x8, stream, bytes([len(pad)]) + body[:half] + pad)
            out += frame(FrameType.DATA, 0x1, stream, body[half:])
        stream += 2
    return bytes(out)
