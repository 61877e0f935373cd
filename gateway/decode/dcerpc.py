"""DCE/RPC connection-oriented PDU decoder, fed one direction's byte stream (TCP 135 or a pipe).

Follows DCE 1.1 RPC (C706) chapter 12 and [MS-RPCE] section 2.2.2: the 16-byte common header
(12.6.3.1: version 5.0/5.1, packet type, pfc flags, data representation, frag length, auth
length, call id; integers in the byte order the data representation label names), BIND and
ALTER_CONTEXT with their presentation context lists (12.6.4.3, 12.6.3.1 p_cont_list_t: context
id, abstract syntax UUID + version, transfer syntaxes), and REQUEST (12.6.4.9: alloc hint,
context id, opnum, optional object UUID, stub data, then the auth verifier of 12.6.3.2).
Multi-fragment requests (PFC_FIRST_FRAG .. PFC_LAST_FRAG, 12.6.3.1) are reassembled per call id
and reported once as a `Request` carrying the interface UUID the context id was bound to. A
one-fragment RESPONSE whose stub is an endpoint mapper's ept_map answer is reported as a
`MapResponse` naming the dynamic endpoints handed out (gateway/decode/epm.py; records carry
`dcerpc.epm.interface`, `.transport`, `.port`).
Guarantees:
- only DceRpcDecodeError escapes, for a PDU header that breaks the framing, and after it the
  decoder stays in the ERROR state; a PDU whose body does not decode inside an intact frame is
  counted in `malformed` and decoding goes on with the next PDU;
- the byte buffer holds at most one PDU (frag length is 16 bits, MAX_FRAG_LENGTH); a call's
  stub is kept up to MAX_STUB_KEEP bytes (its full length is still counted), at most
  MAX_PENDING_CALLS calls may be incomplete at once and at most MAX_CONTEXTS contexts bound;
- lengths are reported as sent and never trusted for slicing beyond the PDU.
`DceRpcPipes` feeds SMB named-pipe writes (the `data` of smb.py events; smb.pipe_records) to
one decoder per open pipe and never raises: a write that breaks the PDU framing (a file's bytes,
garbage, a malformed PDU) is dropped and the pipe's next write is decoded afresh.
`event_records` turns decoder events into "dcerpc" records; importing this module
registers the "dcerpc" protocol (gateway/decode/registry.py).
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, replace

from gateway.decode import epm
from gateway.decode.registry import (
    AppDecoder,
    AppProtocol,
    AppRecord,
    FieldKind,
    FieldValue,
    Probe,
    register,
    variant_key,
)
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, Direction

MAX_FRAG_LENGTH = 0xFFFF  # frag_length is an unsigned 16-bit field
MAX_STUB_KEEP = 64 * 1024  # stub bytes kept per call for matching
MAX_PENDING_CALLS = 16  # fragmented calls in progress at once
MAX_CONTEXTS = 256  # presentation contexts bound on one association
MAX_PIPES = 64  # pipes followed at once by DceRpcPipes
MAX_CANDIDATES = 4  # interfaces a REQUEST on a context its pipe never bound is reported with

PTYPE_REQUEST = 0
PTYPE_RESPONSE = 2
PTYPE_FAULT = 3
PTYPE_BIND = 11
PTYPE_BIND_ACK = 12
PTYPE_BIND_NAK = 13
PTYPE_ALTER_CONTEXT = 14
PTYPE_ALTER_CONTEXT_RESP = 15
PTYPE_AUTH3 = 16
PTYPE_SHUTDOWN = 17
PTYPE_CO_CANCEL = 18
PTYPE_ORPHANED = 19
_PTYPES = frozenset({0, 2, 3, 11, 12, 13, 14, 15, 16, 17, 18, 19})

PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_OBJECT_UUID = 0x80

HEADER_SIZE = 16
_SEC_TRAILER_SIZE = 8
_HEADER_LE = struct.Struct("<BBBB4sHHI")
_HEADER_BE = struct.Struct(">BBBB4sHHI")
_REQUEST_LE = struct.Struct("<IHH")
_REQUEST_BE = struct.Struct(">IHH")
_BIND_LE = struct.Struct("<HHIB3x")
_BIND_BE = struct.Struct(">HHIB3x")
_CONTEXT_LE = struct.Struct("<HBx16sHH")
_CONTEXT_BE = struct.Struct(">HBx16sHH")
_CONTEXT_SIZE = _CONTEXT_LE.size  # 24
_SYNTAX_SIZE = 20  # UUID + 32-bit version


class DceRpcDecodeError(DecodeError):
    """The peer sent something that is not DCE/RPC (its fault; the state is now ERROR)."""


class State(enum.Enum):
    PDUS = "pdus"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Pdu:
    """The common header of every PDU (C706 12.6.3.1)."""

    ptype: int
    flags: int
    little_endian: bool
    frag_length: int
    auth_length: int
    call_id: int
    version_minor: int


@dataclass(frozen=True, slots=True)
class ContextItem:
    """One presentation context of a BIND / ALTER_CONTEXT."""

    context_id: int
    interface: str  # abstract syntax UUID, lower-case canonical text
    interface_version: int  # major
    interface_version_minor: int
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """A BIND (ptype 11) or ALTER_CONTEXT (ptype 14) and the contexts it proposes."""

    ptype: int
    call_id: int
    max_xmit_frag: int
    max_recv_frag: int
    assoc_group: int
    contexts: tuple[ContextItem, ...]


@dataclass(frozen=True, slots=True)
class Request:
    """A complete call (all its fragments): what the server's stub will unmarshal."""

    call_id: int
    context_id: int
    opnum: int
    interface: str  # UUID bound to context_id on this connection, "" if never bound
    interface_version: int
    alloc_hint: int
    stub_length: int  # total stub bytes over all fragments (auth verifier excluded)
    fragments: int
    object_uuid: str  # "" unless PFC_OBJECT_UUID
    stub: bytes  # the first MAX_STUB_KEEP bytes of the stub
    little_endian: bool = True  # the NDR integer representation of its first fragment's drep


@dataclass(frozen=True, slots=True)
class MapResponse:
    """A RESPONSE whose stub is an endpoint mapper's ept_map answer (gateway/decode/epm.py):
    the dynamic endpoints it hands out."""

    call_id: int
    endpoints: tuple[epm.Endpoint, ...]


Event = Pdu | Bind | Request | MapResponse


def _uuid(raw: bytes, little_endian: bool) -> str:
    return str(uuid.UUID(bytes_le=raw) if little_endian else uuid.UUID(bytes=raw))


class _Call:
    __slots__ = (
        "alloc_hint",
        "context_id",
        "fragments",
        "length",
        "little_endian",
        "object_uuid",
        "opnum",
        "stub",
    )

    def __init__(
        self, context_id: int, opnum: int, alloc_hint: int, object_uuid: str, little: bool
    ) -> None:
        self.context_id = context_id
        self.little_endian = little
        self.opnum = opnum
        self.alloc_hint = alloc_hint
        self.object_uuid = object_uuid
        self.stub = bytearray()
        self.length = 0
        self.fragments = 0


class DceRpcDecoder:
    """Decodes one direction of a connection-oriented DCE/RPC association."""

    def __init__(self, max_stub_keep: int = MAX_STUB_KEEP) -> None:
        self.max_stub_keep = max_stub_keep
        self.malformed = 0  # PDUs whose body did not decode (framing intact, decoding went on)
        self.evicted_calls = 0  # calls in progress forgotten at MAX_PENDING_CALLS (oldest first)
        self.resyncs = 0  # pipe writes dropped for a broken PDU header (receive_write)
        self.state = State.PDUS
        self._buf = bytearray()
        self._contexts: dict[int, tuple[str, int]] = {}
        self._calls: dict[int, _Call] = {}

    @property
    def buffered(self) -> int:
        """Bytes held: the partial PDU plus the kept stubs of incomplete calls."""
        return len(self._buf) + sum(len(c.stub) for c in self._calls.values())

    def bind_contexts(self, contexts: dict[int, tuple[str, int]]) -> None:
        """Share the context table of the other direction's decoder (the client's BINDs)."""
        self._contexts = contexts

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes, get the events they complete."""
        if self.state is State.ERROR:
            raise DceRpcDecodeError("decoder is in ERROR state after an earlier error")
        self._buf += data
        events: list[Event] = []
        try:
            self._drain(events)
        except DceRpcDecodeError:
            self.state = State.ERROR
            raise
        return events

    def receive_write(self, data: bytes) -> list[Event]:
        """Feed one write to a named pipe (never raises): a PDU header that breaks the framing
        drops the bytes buffered, the rest of this write with them, and decoding starts again
        with the next write (counted in `resyncs`), so that one bad PDU on a pipe does not
        blind it for good. Contexts bound and calls in progress are kept."""
        if not self._buf and data[:1] != b"\x05":
            self.resyncs += 1  # not a PDU start (a file's contents, or garbage): not buffered
            return []
        self._buf += data
        events: list[Event] = []
        try:
            self._drain(events)
        except DceRpcDecodeError:
            self._buf.clear()
            self.resyncs += 1
        return events

    def _drain(self, events: list[Event]) -> None:
        """Decode the whole PDUs buffered into `events`."""
        while len(self._buf) >= HEADER_SIZE:
            pdu = self._header()
            if len(self._buf) < pdu.frag_length:
                break
            body = bytes(self._buf[HEADER_SIZE : pdu.frag_length])
            del self._buf[: pdu.frag_length]
            events.append(pdu)
            try:
                self._pdu(pdu, body, events)
            except DceRpcDecodeError:
                # frag_length still frames the next PDU: the server rejects this one and
                # reads on, and so do we (a bad PDU must not blind the rest of the pipe)
                self.malformed += 1

    def _header(self) -> Pdu:
        little = bool(self._buf[4] & 0x10)
        fmt = _HEADER_LE if little else _HEADER_BE
        vers, minor, ptype, flags, _drep, frag_length, auth_length, call_id = fmt.unpack_from(
            self._buf
        )
        if vers != 5 or minor > 1:
            raise DceRpcDecodeError(f"not a DCE/RPC CO header: version {vers}.{minor}")
        if ptype not in _PTYPES:
            raise DceRpcDecodeError(f"unknown DCE/RPC packet type {ptype} (call id {call_id})")
        if frag_length < HEADER_SIZE or auth_length > frag_length - HEADER_SIZE:
            raise DceRpcDecodeError(
                f"frag length {frag_length} / auth length {auth_length} invalid (call {call_id})"
            )
        return Pdu(ptype, flags, little, frag_length, auth_length, call_id, minor)

    def _pdu(self, pdu: Pdu, body: bytes, events: list[Event]) -> None:
        if pdu.ptype in (PTYPE_BIND, PTYPE_ALTER_CONTEXT):
            events.append(self._bind(pdu, body))
        elif pdu.ptype == PTYPE_REQUEST:
            request = self._request(pdu, body)
            if request is not None:
                events.append(request)
        elif (
            pdu.ptype == PTYPE_RESPONSE and pdu.flags & PFC_FIRST_FRAG and pdu.flags & PFC_LAST_FRAG
        ):
            # an ept_map answer is one fragment; its towers name the endpoints handed out
            trailer = _SEC_TRAILER_SIZE + pdu.auth_length if pdu.auth_length else 0
            stub = body[8 : len(body) - trailer] if pdu.little_endian else b""
            endpoints = epm.parse_map_response(stub)
            if endpoints:
                events.append(MapResponse(pdu.call_id, tuple(endpoints)))

    def _bind(self, pdu: Pdu, body: bytes) -> Bind:
        little = pdu.little_endian
        head = _BIND_LE if little else _BIND_BE
        ctx = _CONTEXT_LE if little else _CONTEXT_BE
        if len(body) < head.size:
            raise DceRpcDecodeError(f"BIND of call {pdu.call_id} truncated: {len(body)} bytes")
        xmit, recv, group, count = head.unpack_from(body)
        pos = head.size
        items: list[ContextItem] = []
        for _ in range(count):
            if pos + _CONTEXT_SIZE > len(body):
                raise DceRpcDecodeError(
                    f"BIND of call {pdu.call_id}: context item {len(items)} runs past the PDU"
                )
            context_id, n_transfer, raw, major, minor = ctx.unpack_from(body, pos)
            pos += _CONTEXT_SIZE
            if pos + n_transfer * _SYNTAX_SIZE > len(body):
                raise DceRpcDecodeError(
                    f"BIND of call {pdu.call_id}: {n_transfer} transfer syntaxes run past the PDU"
                )
            transfers = tuple(
                _uuid(body[p : p + 16], little)
                for p in range(pos, pos + n_transfer * _SYNTAX_SIZE, _SYNTAX_SIZE)
            )
            pos += n_transfer * _SYNTAX_SIZE
            interface = _uuid(raw, little)
            if context_id not in self._contexts and len(self._contexts) >= MAX_CONTEXTS:
                raise DceRpcDecodeError(f"more than {MAX_CONTEXTS} presentation contexts bound")
            self._contexts[context_id] = (interface, major)
            items.append(ContextItem(context_id, interface, major, minor, transfers))
        return Bind(pdu.ptype, pdu.call_id, xmit, recv, group, tuple(items))

    def _request(self, pdu: Pdu, body: bytes) -> Request | None:
        little = pdu.little_endian
        head = _REQUEST_LE if little else _REQUEST_BE
        fixed = head.size + (16 if pdu.flags & PFC_OBJECT_UUID else 0)
        trailer = _SEC_TRAILER_SIZE + pdu.auth_length if pdu.auth_length else 0
        if len(body) < fixed + trailer:
            raise DceRpcDecodeError(
                f"REQUEST of call {pdu.call_id} too short: {len(body)} bytes,"
                f" auth length {pdu.auth_length}"
            )
        alloc_hint, context_id, opnum = head.unpack_from(body)
        object_uuid = ""
        if pdu.flags & PFC_OBJECT_UUID:
            object_uuid = _uuid(body[head.size : head.size + 16], little)
        stub = body[fixed : len(body) - trailer]
        call = self._calls.get(pdu.call_id)
        if call is None or pdu.flags & PFC_FIRST_FRAG:
            if pdu.call_id not in self._calls and len(self._calls) >= MAX_PENDING_CALLS:
                # Bound reached: the oldest call in progress is forgotten (its later fragments
                # start a call of their own), never the new one, so that keeping 16 calls open
                # cannot blind the decoder to every later call.
                del self._calls[next(iter(self._calls))]
                self.evicted_calls += 1
            call = _Call(context_id, opnum, alloc_hint, object_uuid, little)
            self._calls[pdu.call_id] = call
        call.fragments += 1
        call.length += len(stub)
        room = self.max_stub_keep - len(call.stub)
        if room > 0:
            call.stub += stub[:room]
        if not pdu.flags & PFC_LAST_FRAG:
            return None
        del self._calls[pdu.call_id]
        interface, version = self._contexts.get(call.context_id, ("", 0))
        return Request(
            pdu.call_id,
            call.context_id,
            call.opnum,
            interface,
            version,
            call.alloc_hint,
            call.length,
            call.fragments,
            call.object_uuid,
            bytes(call.stub),
            call.little_endian,
        )


class DceRpcPipes:
    """DCE/RPC over SMB named pipes: one decoder per open pipe (SMB1 TID+FID or SMB2 FileId).

    `feed(pipe, data)` takes one write and never raises: a write that breaks the PDU framing
    (an ordinary file's contents, garbage, a malformed PDU) is dropped and decoding starts again
    with the pipe's next write (DceRpcDecoder.receive_write), so a bad PDU does not disable the
    pipe. A REQUEST on a context its own pipe never bound (the BIND went to the pipe under
    another id the server takes for the same one: a related SMB2 operation's FileId, a pipe
    forgotten at CLOSE or at the bound) is reported once for each interface bound to that
    context id on any pipe of the connection (at most MAX_CANDIDATES, the latest first). At
    most MAX_PIPES pipes are followed; the least recently fed is forgotten first.
    """

    def __init__(self, max_pipes: int = MAX_PIPES) -> None:
        self.max_pipes = max_pipes
        self._pipes: dict[Hashable, DceRpcDecoder] = {}
        # context id -> interfaces bound to it on any pipe, latest first (MAX_CONTEXTS ids)
        self._bound: dict[int, list[tuple[str, int]]] = {}
        self.errors = 0  # writes dropped for a broken PDU header

    def __len__(self) -> int:
        return len(self._pipes)

    def __contains__(self, pipe: Hashable) -> bool:
        return pipe in self._pipes

    def pipe_ids(self) -> list[Hashable]:
        return list(self._pipes)

    def rename(self, old: Hashable, new: Hashable) -> None:
        """The pipe known as `old` is known as `new` from now on."""
        if old in self._pipes:
            self._pipes[new] = self._pipes.pop(old)

    def forget(self, pipe: Hashable) -> None:
        """The pipe was closed: a later pipe under the same id starts afresh."""
        self._pipes.pop(pipe, None)

    def feed(self, pipe: Hashable, data: bytes) -> list[Event]:
        if not data:
            return []
        decoder = self._pipes.pop(pipe) if pipe in self._pipes else DceRpcDecoder()
        self._pipes[pipe] = decoder
        if len(self._pipes) > self.max_pipes:
            del self._pipes[next(iter(self._pipes))]
        before = decoder.resyncs
        events = decoder.receive_write(data)
        self.errors += decoder.resyncs - before
        if not any(isinstance(e, (Bind, Request)) for e in events):
            return events
        return [out for event in events for out in self._bound_to(event)]

    def _bound_to(self, event: Event) -> list[Event]:
        if isinstance(event, Bind):
            for item in event.contexts:
                bound = self._bound.pop(item.context_id, [])
                entry = (item.interface, item.interface_version)
                self._bound[item.context_id] = [entry, *(b for b in bound if b != entry)][
                    :MAX_CANDIDATES
                ]
                if len(self._bound) > MAX_CONTEXTS:
                    del self._bound[next(iter(self._bound))]
            return [event]
        if isinstance(event, Request) and not event.interface:
            candidates = self._bound.get(event.context_id, ())
            return [replace(event, interface=i, interface_version=v) for i, v in candidates] or [
                event
            ]
        return [event]


def big_endian_stub_forms(stub: bytes) -> tuple[bytes, bytes]:
    """A big-endian NDR stub (drep integer representation 0: the server's runtime converts it,
    NdrConvert) in the two little-endian forms the rules' patterns are written for: every
    2-byte unit swapped (UTF-16 strings and shorts; NDR aligns them on even offsets) and every
    4-byte unit reversed (longs, counts and pointers, aligned on multiples of 4). A pattern
    written for a little-endian stub then finds its strings in the first and its integers in
    the second; a mixed pattern whose integer part is a wildcard matches the first."""
    even = len(stub) & ~1
    swapped = bytearray(stub)
    swapped[0:even:2], swapped[1:even:2] = stub[1:even:2], stub[0:even:2]
    words = len(stub) & ~3
    reversed_words = bytearray(stub)
    for k in range(4):
        reversed_words[k:words:4] = stub[3 - k : words : 4]
    return bytes(swapped), bytes(reversed_words)


def event_records(event: Event) -> list[AppRecord]:
    """A decoder event as rule records (dcerpc.*): a BIND gives one record per context; a
    big-endian request's stub also in its little-endian forms (`big_endian_stub_forms`, as
    variants of `dcerpc.stub`)."""
    if isinstance(event, Request):
        fields: dict[str, FieldValue] = {
            "dcerpc.ptype": PTYPE_REQUEST,
            "dcerpc.call_id": event.call_id,
            "dcerpc.interface": event.interface.encode("ascii"),
            "dcerpc.interface_version": event.interface_version,
            "dcerpc.opnum": event.opnum,
            "dcerpc.context_id": event.context_id,
            "dcerpc.stub_length": event.stub_length,
            "dcerpc.alloc_hint": event.alloc_hint,
            "dcerpc.fragments": event.fragments,
            "dcerpc.stub": event.stub,
        }
        if not event.little_endian:
            swapped, reversed_words = big_endian_stub_forms(event.stub)
            fields[variant_key("dcerpc.stub", 1)] = swapped
            fields[variant_key("dcerpc.stub", 2)] = reversed_words
        return [AppRecord("dcerpc", fields)]
    if isinstance(event, MapResponse):
        return [
            AppRecord(
                "dcerpc",
                {
                    "dcerpc.ptype": PTYPE_RESPONSE,
                    "dcerpc.call_id": event.call_id,
                    "dcerpc.epm.interface": ep.interface.encode("ascii"),
                    "dcerpc.epm.transport": ep.transport.encode("ascii"),
                    "dcerpc.epm.port": ep.port,
                },
            )
            for ep in event.endpoints
        ]
    if isinstance(event, Bind):
        return [
            AppRecord(
                "dcerpc",
                {
                    "dcerpc.ptype": event.ptype,
                    "dcerpc.call_id": event.call_id,
                    "dcerpc.interface": item.interface.encode("ascii"),
                    "dcerpc.interface_version": item.interface_version,
                    "dcerpc.context_id": item.context_id,
                    "dcerpc.bind.context_count": len(event.contexts),
                },
            )
            for item in event.contexts
        ]
    return [
        AppRecord(
            "dcerpc",
            {
                "dcerpc.ptype": event.ptype,
                "dcerpc.call_id": event.call_id,
                "dcerpc.flags": event.flags,
                "dcerpc.frag_length": event.frag_length,
                "dcerpc.auth_length": event.auth_length,
            },
        )
    ]


class DceRpcAdapter:
    """App-layer adapter for DCE/RPC over TCP (135 and dynamic endpoints)."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = DceRpcDecoder()

    def feed(self, data: bytes) -> list[AppRecord]:
        return [r for e in self._decoder.receive_data(data) for r in event_records(e)]


def _probe(data: bytes, direction: Direction) -> Probe:
    if len(data) < 3:
        return Probe.NEED_DATA if data[:1] in (b"", b"\x05") else Probe.NO
    if data[0] == 5 and data[1] in (0, 1) and data[2] in _PTYPES:
        return Probe.YES
    return Probe.NO


def _new_decoder(transport: int, direction: Direction) -> AppDecoder:
    return DceRpcAdapter()


_I, _B = FieldKind.INT, FieldKind.BYTES
register(
    AppProtocol(
        name="dcerpc",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({135, 593}),
        fields={
            "dcerpc.ptype": _I,
            "dcerpc.call_id": _I,
            "dcerpc.flags": _I,
            "dcerpc.frag_length": _I,
            "dcerpc.auth_length": _I,
            "dcerpc.interface": _B,
            "dcerpc.interface_version": _I,
            "dcerpc.opnum": _I,
            "dcerpc.context_id": _I,
            "dcerpc.stub_length": _I,
            "dcerpc.alloc_hint": _I,
            "dcerpc.fragments": _I,
            "dcerpc.stub": _B,
            "dcerpc.bind.context_count": _I,
            "dcerpc.epm.interface": _B,
            "dcerpc.epm.transport": _B,
            "dcerpc.epm.port": _I,
        },
        new_decoder=_new_decoder,
        probe=_probe,
        carried_by=frozenset({"smb"}),  # SmbAdapter emits dcerpc records from named pipes
        description="DCE/RPC connection-oriented PDUs (C706 ch. 12, MS-RPCE), also in SMB pipes",
    )
)
