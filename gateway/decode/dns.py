"""DNS message decoder (RFC 1035 section 4) for UDP datagrams and TCP streams.

`parse_message(bytes)` decodes one message; `DnsTcpDecoder` splits a TCP stream into messages by
their two-byte length prefix (RFC 1035 section 4.2.2, RFC 7766). Fields the rules need: question
names and types, and for every resource record its name, type, class and RDATA length, so that
conditions like "a TKEY record outside the additional section" (CVE-2015-5477) or "a SIG record
whose RDATA is long enough to overflow after name expansion" (CVE-2020-1350) can be written.
Guarantees:
- only DnsDecodeError escapes; names are bounded (255 bytes, RFC 1035 section 2.3.4) and
  compression pointers may only point backwards and are followed at most MAX_POINTERS times,
  so hostile loops cannot hang the decoder;
- record counts are checked against the bytes present before anything is allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.errors import DecodeError

MAX_NAME_BYTES = 255
MAX_POINTERS = 64
MAX_TCP_MESSAGE = 65535

TYPE_SIG = 24
TYPE_TKEY = 249
TYPE_ANY = 255

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RR_TAIL = struct.Struct("!HHIH")


class DnsDecodeError(DecodeError):
    """The bytes are not a well-formed DNS message (the sender's fault)."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    section: str  # "answer" | "authority" | "additional"
    name: str
    rtype: int
    rclass: int
    ttl: int
    rdlength: int


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    is_response: bool
    opcode: int
    rcode: int
    questions: tuple[Question, ...]
    records: tuple[ResourceRecord, ...]
    length: int


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Read a possibly compressed name at `pos`; return it and the offset just after it."""
    labels: list[str] = []
    total = 0
    end = -1
    jumps = 0
    while True:
        if pos >= len(data):
            raise DnsDecodeError(f"name runs past the end of the message at offset {pos}")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DnsDecodeError(f"truncated compression pointer at offset {pos}")
            target = (length & 0x3F) << 8 | data[pos + 1]
            if target >= pos:
                raise DnsDecodeError(
                    f"compression pointer at offset {pos} points forward to {target}"
                )
            jumps += 1
            if jumps > MAX_POINTERS:
                raise DnsDecodeError(f"more than {MAX_POINTERS} compression pointers in one name")
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length & 0xC0:
            raise DnsDecodeError(f"reserved label type 0x{length:02x} at offset {pos}")
        pos += 1
        if length == 0:
            break
        if pos + length > len(data):
            raise DnsDecodeError(f"label of {length} bytes runs past the end at offset {pos - 1}")
        total += length + 1
        if total > MAX_NAME_BYTES:
            raise DnsDecodeError(f"name longer than {MAX_NAME_BYTES} bytes at offset {pos - 1}")
        labels.append(data[pos : pos + length].decode("latin-1"))
        pos += length
    return ".".join(labels) + ".", (end if end >= 0 else pos)


def parse_message(data: bytes) -> Message:
    """Decode one DNS message (the payload of a UDP datagram, or one framed TCP message)."""
    if len(data) < _HEADER.size:
        raise DnsDecodeError(f"message of {len(data)} bytes is shorter than the 12-byte header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    # Every question needs at least 5 bytes and every record at least 11.
    if qd * 5 + (an + ns + ar) * 11 > len(data) - _HEADER.size:
        raise DnsDecodeError(
            f"counts (qd={qd}, an={an}, ns={ns}, ar={ar}) do not fit in {len(data)} bytes"
        )
    pos = _HEADER.size
    questions = []
    for _ in range(qd):
        name, pos = _read_name(data, pos)
        if pos + _QUESTION_TAIL.size > len(data):
            raise DnsDecodeError(f"question truncated at offset {pos}")
        qtype, qclass = _QUESTION_TAIL.unpack_from(data, pos)
        pos += _QUESTION_TAIL.size
        questions.append(Question(name, qtype, qclass))
    records = []
    for section, count in (("answer", an), ("authority", ns), ("additional", ar)):
        for _ in range(count):
            name, pos = _read_name(data, pos)
            if pos + _RR_TAIL.size > len(data):
                raise DnsDecodeError(f"{section} record truncated at offset {pos}")
            rtype, rclass, ttl, rdlength = _RR_TAIL.unpack_from(data, pos)
            pos += _RR_TAIL.size
            if pos + rdlength > len(data):
                raise DnsDecodeError(
                    f"{section} record RDATA of {rdlength} bytes runs past the end at offset {pos}"
                )
            pos += rdlength
            records.append(ResourceRecord(section, name, rtype, rclass, ttl, rdlength))
    return Message(
        ident,
        bool(flags & 0x8000),
        (flags >> 11) & 0xF,
        flags & 0xF,
        tuple(questions),
        tuple(records),
        len(data),
    )


class DnsTcpDecoder:
    """Splits one direction of a DNS-over-TCP stream into messages (two-byte length prefix)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> list[Message]:
        self._buf += data
        messages = []
        while len(self._buf) >= 2:
            length = int.from_bytes(self._buf[:2], "big")
            if len(self._buf) < 2 + length:
                break
            body = bytes(self._buf[2 : 2 + length])
            del self._buf[: 2 + length]
            messages.append(parse_message(body))
        return messages
