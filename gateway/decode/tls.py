"""TLS/SSL record decoder: a sans-I/O state machine fed one direction's byte stream.

Follows RFC 5246 section 6.2 (record layer), section 7.4 (handshake) and RFC 6520 (heartbeat).
Emits one event per record and per handshake message, and a Heartbeat event whose
`payload_length` can be compared with the record length (Heartbleed, CVE-2014-0160: a request
whose claimed payload does not fit in its record). Guarantees:
- only TlsDecodeError escapes, and after it the decoder stays in the ERROR state;
- records longer than 2**14 + 2048 bytes (RFC 5246 section 6.2.3) are an error, so the buffer is
  bounded; handshake messages are reassembled across records up to MAX_HANDSHAKE_BYTES;
- after ChangeCipherSpec the direction is marked encrypted: later heartbeats report
  `encrypted=True` and their inner lengths are not read (an early ChangeCipherSpec can make
  that so for an attacker, so rules/cve-2014-0160-heartbeat-restrict.yaml refuses heartbeats
  whatever they hold); a plaintext heartbeat too short to hold its length claims 0xFFFF;
- an SSLv2-format ClientHello as the first message (RFC 5246 appendix E.2) is decoded as a
  ClientHello; records follow it as usual;
- a hello's `effective_version` is what a version floor must compare: for a ClientHello the
  highest version offered (the supported_versions extension, RFC 8446 section 4.2.1, GREASE
  values of RFC 8701 skipped; else legacy client_version), for a ServerHello the version chosen
  (its supported_versions, else legacy server_version). A TLS 1.3 hello says 0x0303 in its
  legacy field, so only this tells 1.3 from 1.2. Malformed extensions are not an error (the
  legacy version stands): the hello itself was well formed up to its cipher suites.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from gateway.errors import DecodeError

MAX_RECORD_BYTES = 2**14 + 2048
MAX_HANDSHAKE_BYTES = 64 * 1024

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
CONTENT_HEARTBEAT = 24
_CONTENT_TYPES = frozenset({20, 21, 22, 23, 24})

SSL2_VERSION = 0x0002
SSL2_SERVER_HELLO = 4
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_SERVER_HELLO = 2
EXT_HEARTBEAT = 15
EXT_SUPPORTED_VERSIONS = 43
HEARTBEAT_REQUEST = 1
HEARTBEAT_RESPONSE = 2

_RECORD = struct.Struct("!BHH")
_HANDSHAKE = struct.Struct("!B3s")
_HEARTBEAT = struct.Struct("!BH")


class TlsDecodeError(DecodeError):
    """The peer sent something that is not TLS (its fault; the state is now ERROR)."""


class State(enum.Enum):
    RECORDS = "records"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Record:
    content_type: int
    version: int  # 0x0300 SSLv3, 0x0301 TLS 1.0, ... as on the wire
    length: int


@dataclass(frozen=True, slots=True)
class Handshake:
    msg_type: int
    length: int
    version: int = 0  # client/server hello: the legacy_version field
    cipher_suites: tuple[int, ...] = ()  # client hello: offered; server hello: the chosen one
    effective_version: int = 0  # client hello: highest offered; server hello: chosen
    extensions: tuple[int, ...] = ()  # extension types, in order (hellos only)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    hb_type: int  # HEARTBEAT_REQUEST or HEARTBEAT_RESPONSE
    payload_length: int  # the claimed payload length (RFC 6520 section 4)
    record_length: int
    encrypted: bool

    @property
    def overflows(self) -> bool:
        """The claimed payload plus type, length and 16 bytes of padding exceed the record."""
        return not self.encrypted and self.payload_length + 3 + 16 > self.record_length


Event = Record | Handshake | Heartbeat


class TlsDecoder:
    """Decodes the records of one direction of a TLS connection."""

    def __init__(self) -> None:
        self.state = State.RECORDS
        self.encrypted = False
        self._first = True  # nothing decoded yet: an SSLv2-format ClientHello may come
        self._sslv2 = False  # the hello asked for SSL 2.0 itself: SSLv2 records follow
        self._buf = bytearray()
        self._handshake = bytearray()

    def _sslv2_hello(self, events: list[Event]) -> bool:
        """An SSLv2-format CLIENT-HELLO (RFC 6101 appendix E.2, RFC 5246 appendix E.2), which
        OpenSSL, Schannel and NSS servers still take as the first message of a TLS 1.0-1.2
        handshake. Emitted as a handshake record and a ClientHello (cipher specs of the form
        00 xx yy are the TLS suites). False: more bytes needed."""
        buf = self._buf
        if len(buf) < 2:
            return False
        length = (buf[0] & 0x7F) << 8 | buf[1]
        if length < 9 or (len(buf) > 2 and buf[2] != 1):
            raise TlsDecodeError(f"not an SSLv2 CLIENT-HELLO: length {length}, type {buf[2:3]!r}")
        if len(buf) < 2 + length:
            return False
        msg = bytes(buf[2 : 2 + length])
        del buf[: 2 + length]
        version, spec_len, sid_len, challenge_len = struct.unpack_from("!HHHH", msg, 1)
        if 9 + spec_len + sid_len + challenge_len > length or spec_len % 3:
            raise TlsDecodeError(f"SSLv2 CLIENT-HELLO lengths do not fit its {length} bytes")
        specs = msg[9 : 9 + spec_len]
        suites = tuple(
            int.from_bytes(specs[i + 1 : i + 3], "big")
            for i in range(0, spec_len, 3)
            if specs[i] == 0
        )
        events.append(Record(CONTENT_HANDSHAKE, version, length))
        events.append(Handshake(HANDSHAKE_CLIENT_HELLO, length, version, suites, version))
        self._sslv2 = version == SSL2_VERSION
        return True

    def _skip_sslv2_records(self) -> None:
        """An SSL 2.0 session (RFC 6101 appendix E; no heartbeat exists there): its records, a
        2-byte header (high bit set) or a 3-byte one with padding, are skipped whole."""
        buf = self._buf
        while len(buf) >= 3:
            if buf[0] & 0x80:
                size = 2 + ((buf[0] & 0x7F) << 8 | buf[1])
            else:
                size = 3 + ((buf[0] & 0x3F) << 8 | buf[1])
            if len(buf) < size:
                return
            del buf[:size]

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes, get the events they complete."""
        if self.state is State.ERROR:
            raise TlsDecodeError("decoder is in ERROR state after an earlier error")
        self._buf += data
        events: list[Event] = []
        try:
            if self._first and self._buf:
                if self._buf[0] & 0x80:
                    if len(self._buf) < 3:
                        return events
                    if self._buf[2] == SSL2_SERVER_HELLO:
                        self._sslv2 = True  # an SSL 2.0 server answering in kind
                    elif not self._sslv2_hello(events):
                        return events
                self._first = False
            if self._sslv2:
                self._skip_sslv2_records()
                return events
            while len(self._buf) >= _RECORD.size:
                ctype, version, length = _RECORD.unpack_from(self._buf)
                if ctype not in _CONTENT_TYPES or version >> 8 not in (0x03, 0xFE):
                    raise TlsDecodeError(
                        f"not a TLS record header: type {ctype}, version 0x{version:04x}"
                    )
                if length > MAX_RECORD_BYTES:
                    raise TlsDecodeError(f"record length {length} exceeds {MAX_RECORD_BYTES}")
                if len(self._buf) < _RECORD.size + length:
                    break
                body = bytes(self._buf[_RECORD.size : _RECORD.size + length])
                del self._buf[: _RECORD.size + length]
                events.append(Record(ctype, version, length))
                self._record(ctype, body, events)
        except TlsDecodeError:
            self.state = State.ERROR
            raise
        return events

    def _record(self, ctype: int, body: bytes, events: list[Event]) -> None:
        if ctype == CONTENT_CHANGE_CIPHER_SPEC:
            self.encrypted = True
        elif ctype == CONTENT_HEARTBEAT:
            if self.encrypted:
                events.append(Heartbeat(0, 0, len(body), True))
            elif len(body) < _HEARTBEAT.size:
                # Too short to hold its own length: OpenSSL 1.0.1a-f reads the length from
                # whatever follows in its buffer, so the claimed payload is unknown: the worst.
                events.append(Heartbeat(body[0] if body else 0, 0xFFFF, len(body), False))
            else:
                hb_type, payload_length = _HEARTBEAT.unpack_from(body)
                events.append(Heartbeat(hb_type, payload_length, len(body), False))
        elif ctype == CONTENT_HANDSHAKE and not self.encrypted:
            self._handshake += body
            if len(self._handshake) > MAX_HANDSHAKE_BYTES:
                raise TlsDecodeError(f"handshake message longer than {MAX_HANDSHAKE_BYTES} bytes")
            while len(self._handshake) >= _HANDSHAKE.size:
                msg_type, raw_len = _HANDSHAKE.unpack_from(self._handshake)
                length = int.from_bytes(raw_len, "big")
                if length > MAX_HANDSHAKE_BYTES:
                    raise TlsDecodeError(f"handshake length {length} exceeds {MAX_HANDSHAKE_BYTES}")
                end = _HANDSHAKE.size + length
                if len(self._handshake) < end:
                    break
                msg = bytes(self._handshake[_HANDSHAKE.size : end])
                del self._handshake[:end]
                events.append(parse_hello(msg_type, msg))


def _is_grease(value: int) -> bool:
    """RFC 8701 section 2: 0x0A0A, 0x1A1A, ... 0xFAFA, never a real version."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _extensions(msg: bytes, pos: int) -> list[tuple[int, bytes]]:
    """The (type, data) pairs of a hello's extensions block at `pos`; stops at the first that
    does not fit (RFC 5246 section 7.4.1.4: the block is optional, a 2-byte length first)."""
    out: list[tuple[int, bytes]] = []
    if pos + 2 > len(msg):
        return out
    end = min(len(msg), pos + 2 + int.from_bytes(msg[pos : pos + 2], "big"))
    pos += 2
    while pos + 4 <= end:
        kind, length = struct.unpack_from("!HH", msg, pos)
        if pos + 4 + length > end:
            break
        out.append((kind, msg[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def _offered_max(data: bytes) -> int:
    """ClientHello supported_versions: a 1-byte length, then 2-byte versions; 0 if none."""
    if not data:
        return 0
    end = min(len(data), 1 + data[0])
    versions = (int.from_bytes(data[i : i + 2], "big") for i in range(1, end - 1, 2))
    return max((v for v in versions if not _is_grease(v)), default=0)


def parse_hello(msg_type: int, msg: bytes) -> Handshake:
    """A handshake message body (after its 4-byte header): hellos are parsed (RFC 5246 section
    7.4.1.2/7.4.1.3, RFC 8446 section 4.1.2/4.1.3); others keep only type and length."""
    if msg_type not in (HANDSHAKE_CLIENT_HELLO, HANDSHAKE_SERVER_HELLO) or len(msg) < 35:
        return Handshake(msg_type, len(msg))
    version = int.from_bytes(msg[0:2], "big")
    pos = 34  # version + random
    sid_len = msg[pos]
    pos += 1 + sid_len
    if msg_type == HANDSHAKE_SERVER_HELLO:
        if pos + 2 > len(msg):
            raise TlsDecodeError("server hello truncated before the cipher suite")
        suites: tuple[int, ...] = (int.from_bytes(msg[pos : pos + 2], "big"),)
        exts = _extensions(msg, pos + 3)  # cipher suite, compression method
        chosen = [d for k, d in exts if k == EXT_SUPPORTED_VERSIONS and len(d) == 2]
        effective = int.from_bytes(chosen[0], "big") if chosen else version
    else:
        if pos + 2 > len(msg):
            raise TlsDecodeError("client hello truncated before the cipher suites")
        cs_len = int.from_bytes(msg[pos : pos + 2], "big")
        pos += 2
        if cs_len % 2 or pos + cs_len > len(msg):
            raise TlsDecodeError(f"client hello cipher suites length {cs_len} is invalid")
        suites = tuple(int.from_bytes(msg[i : i + 2], "big") for i in range(pos, pos + cs_len, 2))
        pos += cs_len
        exts = _extensions(msg, pos + 1 + msg[pos]) if pos < len(msg) else []
        offered = [_offered_max(d) for k, d in exts if k == EXT_SUPPORTED_VERSIONS]
        effective = offered[0] if offered and offered[0] else version
    return Handshake(msg_type, len(msg), version, suites, effective, tuple(k for k, _ in exts))
