"""Application layer: protocol identification, the registry of app decoders, and the adapters
that turn decoder events into field records for the rule conditions.

What it does:
- `AppProtocol` describes one application protocol: its name (the rule's `app:`), transports,
  well-known ports, the fields its records carry (name -> FieldKind, used by rule validation),
  a content `probe` and a factory of per-flow-direction decoders.
- `register(protocol)` adds one to the registry; `get(name)`, `protocols()` and `field_kind(name)`
  read it. The four bundled decoders (http, tls, dns, smb) are registered here; further decoder
  modules (`PLUGIN_MODULES`: dcerpc, rdp, mssql, ftp) register themselves when imported, and the
  registry imports them (if present) the first time it is read.
- `identify(candidates, transport, server_port, direction, data)` picks the protocol of a flow
  direction from its first bytes (content probes), falling back to the port for protocols
  without a probe.

The decoder interface (what a plug-in implements):
    class MyDecoder:                       # one per flow direction (TCP) or per UDP flow direction
        def feed(self, data: bytes) -> list[AppRecord]: ...
TCP: `feed` gets the next in-order bytes of the reassembled stream, in any slicing. UDP: `feed`
gets exactly one datagram's payload per call. `feed` raises nothing but a
gateway.errors.DecodeError subclass; after one the engine stops feeding that direction (its app
layer is "failed": raw-stream conditions keep working). Buffers must be bounded.
An `AppRecord` is one decoded unit (an HTTP request, a TLS record, an SMB command, a DNS
resource record...): `app` (the protocol whose rules judge it; an adapter may emit records of
another app, e.g. DCE/RPC inside SMB named pipes) and `fields`, a dict of field name -> int or
bytes. Field names start with "<app>." and are declared in `AppProtocol.fields`; a declared name
ending in ".*" declares a family (`http.header.*` covers `http.header.user-agent`).

What it guarantees:
- Registration validates names (unique protocol names, field names prefixed by the protocol
  name, kinds "int" or "bytes") and raises ValueError naming the offending value.
- Probes look at no more than MAX_PROBE_BYTES; `identify` never raises on any input.
- The adapters below never grow without bound: they hold at most their decoder's own bounded
  buffers, and an HTTP body is kept for matching up to MAX_BODY_INSPECT bytes per request.
"""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from gateway.decode import dns as _dns
from gateway.decode import http as _http
from gateway.decode import http_fields as _httpf
from gateway.decode import smb as _smb
from gateway.decode import tls as _tls
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction

__all__ = [
    "MAX_PROBE_BYTES",
    "PLUGIN_MODULES",
    "AppDecoder",
    "AppProtocol",
    "AppRecord",
    "FieldKind",
    "FieldValue",
    "Probe",
    "field_kind",
    "get",
    "identify",
    "protocols",
    "register",
]

MAX_PROBE_BYTES: Final = 64  # bytes a direction may buffer while its protocol is undecided
MAX_BLANK_PREFIX: Final = 4096  # leading CR/LF bytes a probe looks past (not counted above)
MAX_BODY_INSPECT: Final = _http.MAX_BODY_INSPECT
MAX_RECORDS_PER_FEED: Final = 4096  # records one feed may return (bounds a hostile stream)
PLUGIN_MODULES: Final = (
    "gateway.decode.dcerpc",
    "gateway.decode.rdp",
    "gateway.decode.mssql",
    "gateway.decode.ftp",
)

FieldValue = int | bytes


class FieldKind(enum.Enum):
    """The type of a field's values: numbers compare, byte strings match content/regex."""

    INT = "int"
    BYTES = "bytes"


class Probe(enum.Enum):
    """What a content probe says about a direction's first bytes."""

    YES = "yes"
    NO = "no"
    NEED_DATA = "need-data"


@dataclass(frozen=True, slots=True)
class AppRecord:
    """One decoded unit of an application protocol, as fields for the rule conditions."""

    app: str
    fields: dict[str, FieldValue]


class AppDecoder(Protocol):
    """A per-flow-direction decoder adapter (see the module comment)."""

    def feed(self, data: bytes) -> list[AppRecord]: ...


# (transport, direction) -> decoder for one flow direction
DecoderFactory = Callable[[int, Direction], AppDecoder]
ProbeFunc = Callable[[bytes, Direction], Probe]  # (first bytes, direction) -> Probe


@dataclass(frozen=True, slots=True)
class AppProtocol:
    """One application protocol the engine can decode.

    name: the rule's `app:` value and the prefix of every field name.
    transports: PROTO_TCP and/or PROTO_UDP.
    ports: well-known server ports (documentation, and identification when `probe` is None).
    fields: field name (or "prefix.*" family) -> FieldKind.
    new_decoder: factory (transport, direction) -> AppDecoder.
    probe: content identification on the first bytes of a direction; None: by port only.
    directions: which directions the decoder understands.
    late_fields: fields present only in a record emitted at the end of a unit (e.g. the HTTP
        body): a rule that references one is evaluated only on records that carry it.
    carried_by: protocols whose adapters emit this protocol's records (DCE/RPC inside SMB
        named pipes: carried_by={"smb"}); where rules of this protocol cover a port, those
        decoders are candidates for identification too.
    """

    name: str
    transports: frozenset[int]
    ports: frozenset[int]
    fields: Mapping[str, FieldKind]
    new_decoder: DecoderFactory
    probe: ProbeFunc | None = None
    directions: frozenset[Direction] = frozenset(Direction)
    late_fields: frozenset[str] = field(default_factory=frozenset)
    carried_by: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


_REGISTRY: dict[str, AppProtocol] = {}
_plugins_loaded = False
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*\Z")
_FIELD_RE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_\-]+)*(\.\*)?\Z")


def register(protocol: AppProtocol) -> None:
    """Add `protocol` to the registry; ValueError naming the offending value if invalid."""
    name = protocol.name
    if not _NAME_RE.match(name) or name == "raw":
        raise ValueError(f"app protocol name {name!r} must be lower-case [a-z0-9_], not 'raw'")
    if name in _REGISTRY:
        raise ValueError(f"app protocol {name!r} is already registered")
    if not protocol.transports or not protocol.transports <= {PROTO_TCP, PROTO_UDP}:
        raise ValueError(f"app protocol {name!r}: transports {set(protocol.transports)} invalid")
    for fname, kind in protocol.fields.items():
        if not fname.startswith(name + ".") or not _FIELD_RE.match(fname):
            raise ValueError(f"app protocol {name!r}: field {fname!r} must be '{name}.<name>'")
        if not isinstance(kind, FieldKind):
            raise TypeError(f"app protocol {name!r}: field {fname!r} kind {kind!r} invalid")
    for fname in protocol.late_fields:
        if fname not in protocol.fields:
            raise ValueError(f"app protocol {name!r}: late field {fname!r} is not declared")
    _REGISTRY[name] = protocol


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def get(name: str) -> AppProtocol | None:
    """The registered protocol called `name`, or None."""
    _load_plugins()
    return _REGISTRY.get(name)


def protocols() -> tuple[AppProtocol, ...]:
    """Every registered protocol, by name."""
    _load_plugins()
    return tuple(_REGISTRY[n] for n in sorted(_REGISTRY))


def field_kind(name: str) -> FieldKind | None:
    """The kind of field `name` ("http.header.host" resolves through "http.header.*")."""
    _load_plugins()
    app = _REGISTRY.get(name.split(".", 1)[0])
    if app is None:
        return None
    kind = app.fields.get(name)
    if kind is not None:
        return kind
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        family = app.fields.get(".".join(parts[:i]) + ".*")
        if family is not None:
            return family
    return None


def identify(
    candidates: Iterable[str], transport: int, server_port: int, direction: Direction, data: bytes
) -> tuple[str | None, bool]:
    """Which of `candidates` (protocol names) the direction whose first bytes are `data` speaks.

    Returns (name, decided): (name, True) identified; (None, True) none of them (the app layer
    is "failed" for this direction); (None, False) undecided, call again with more bytes (the
    caller gives up once it has MAX_PROBE_BYTES). Protocols without a probe are identified by
    `server_port` being one of their ports. Never raises.
    """
    undecided = False
    # Empty lines before an HTTP request line are skipped by the servers (RFC 9112 section
    # 2.2; Apache takes up to 100): they do not count against the probe's budget.
    blank = min(len(data) - len(data.lstrip(b"\r\n")), MAX_BLANK_PREFIX)
    head = data[: blank + MAX_PROBE_BYTES]
    by_port: str | None = None
    for name in candidates:
        app = get(name)
        if app is None or transport not in app.transports or direction not in app.directions:
            continue
        if app.probe is None:
            if by_port is None and server_port in app.ports:
                by_port = name
            continue
        try:
            verdict = app.probe(head, direction)
        except Exception:  # noqa: BLE001 (a plug-in probe must not break identification)
            verdict = Probe.NO
        if verdict is Probe.YES:
            return name, True
        if verdict is Probe.NEED_DATA:
            undecided = True
    if by_port is not None:
        return by_port, True
    if undecided and len(data) < blank + MAX_PROBE_BYTES:
        return None, False
    return None, True


# ------------------------------------------------------------------------- HTTP

# A request line's start after any empty lines: an upper-case method, any run of blanks (Apache
# splits the line on whitespace), the first byte of the target.
HTTP_REQUEST_START: Final = re.compile(rb"[\r\n]*[A-Z][A-Z_-]{2,15}[ \t]+[^\s]")
_HTTP_PREFIX: Final = re.compile(rb"[\r\n]*(?:[A-Z][A-Z_-]{0,15}[ \t]*)?\Z")


def _probe_http(data: bytes, direction: Direction) -> Probe:
    if HTTP_REQUEST_START.match(data):
        return Probe.YES
    if _HTTP_PREFIX.match(data):
        return Probe.NEED_DATA
    return Probe.NO


class HttpAdapter:
    """HTTP/1.x requests -> one "head" record per request head (method, URIs, version, every
    header) and one record at the end of the request that adds `http.body` (first
    MAX_BODY_INSPECT bytes, de-chunked) and `http.body_length`. A request without a body
    whose end arrives with its head yields the end record only (it holds every head field),
    so each such request is evaluated once."""

    __slots__ = ("_body", "_body_len", "_decoder", "_head")

    def __init__(self) -> None:
        self._decoder = _http.HttpRequestDecoder()
        self._head: dict[str, FieldValue] | None = None
        self._body = bytearray()
        self._body_len = 0

    def at_boundary(self) -> bool:
        """Between two requests: nothing buffered, no request under way."""
        decoder = self._decoder
        return decoder.state is _http.State.HEAD and not decoder.buffered and self._head is None

    def feed(self, data: bytes) -> list[AppRecord]:
        decoder = self._decoder
        decoder.receive_data(data)
        out: list[AppRecord] = []
        # A head is held back until we know whether a body follows: a request without a body
        # (most of them) then yields ONE record, head and end together, evaluated once.
        pending: dict[str, FieldValue] | None = None
        while len(out) < MAX_RECORDS_PER_FEED:
            event = decoder.next_event()
            if isinstance(event, _http.Request):
                if pending is not None:
                    out.append(AppRecord("http", pending))
                head: dict[str, FieldValue] = {
                    "http.method": event.method.encode("latin-1"),
                    "http.uri": event.uri_normalized.encode("latin-1", "replace"),
                    "http.uri.raw": event.uri.encode("latin-1"),
                    "http.version": event.version.encode("latin-1"),
                    "http.header_count": len(event.headers),
                }
                # every value of a repeated header joined by ", " (RFC 9110 section 5.3)
                joined: dict[str, str] = {}
                for name, value in event.headers:
                    prev = joined.get(name)
                    joined[name] = value if prev is None else f"{prev}, {value}"
                for name, value in joined.items():
                    head["http.header." + name] = value.encode("latin-1", "replace")
                head["http.header_names"] = ",".join(joined).encode("latin-1", "replace")
                _derived_head_fields(event, head)
                self._head = head
                self._body.clear()
                self._body_len = 0
                pending = head
            elif isinstance(event, _http.Body):
                if pending is not None:
                    out.append(AppRecord("http", pending))
                    pending = None
                room = MAX_BODY_INSPECT - len(self._body)
                if room > 0:
                    self._body += event.data[:room]
                self._body_len += len(event.data)
            elif isinstance(event, _http.EndOfRequest):
                fields = dict(self._head) if self._head is not None else {}
                fields["http.body"] = bytes(self._body)
                fields["http.body_length"] = event.body_length
                _derived_body_fields(fields, bytes(self._body))
                out.append(AppRecord("http", fields))
                pending = None
                self._head = None
                self._body.clear()
            else:
                break
        if pending is not None:  # the body has not arrived yet: judge the head now
            out.append(AppRecord("http", pending))
        return out


def _latin(text: str) -> bytes:
    return text.encode("latin-1", "replace")


def _derived_head_fields(request: _http.Request, head: dict[str, FieldValue]) -> None:
    """The derived fields of gateway/decode/http_fields.py that a request head yields."""
    head["http.header_lines"] = _latin(_httpf.header_lines(request.headers))
    head["http.uri.climb"] = _httpf.climb_depth(request.uri)
    query = request.uri.partition("?")[2]
    head["http.query"] = _latin(_httpf.url_params(query))
    credentials = _httpf.basic_credentials(
        request.header("authorization") or request.header("proxy-authorization")
    )
    parts = [request.method, request.uri, *(value for _name, value in request.headers)]
    if credentials is not None:
        head["http.auth.basic"] = _latin(credentials)
        parts.append(credentials)
    head["http.lookups"] = _latin(_httpf.lookup_text(parts))


def _derived_body_fields(fields: dict[str, FieldValue], body: bytes) -> None:
    """Body parameters (urlencoded forms) and lookups in the body, on the end-of-request record."""
    content_type = fields.get("http.header.content-type", b"")
    text = body.decode("latin-1")
    params = ""
    if isinstance(content_type, bytes) and b"x-www-form-urlencoded" in content_type.lower():
        params = _httpf.url_params(text)
    fields["http.body_params"] = _latin(params)
    if "${" in text or "%24" in text.lower():
        previous = fields.get("http.lookups", b"")
        more = _latin(_httpf.lookup_text([text]))
        if isinstance(previous, bytes) and more:
            fields["http.lookups"] = previous + b"\n" + more if previous else more


def _new_http(transport: int, direction: Direction) -> AppDecoder:
    return HttpAdapter()


# ------------------------------------------------------------------------- TLS


def _probe_tls(data: bytes, direction: Direction) -> Probe:
    if data and data[0] & 0x80:  # SSLv2 format: a 2-byte length, then the message type
        if len(data) < 4:
            return Probe.NEED_DATA
        client = data[2] == 1 and data[3] in (0x00, 0x03)  # CLIENT-HELLO, version 2.0 or 3.x
        server = data[2] == 4 and data[3] in (0x00, 0x01)  # SERVER-HELLO, session-id-hit
        return Probe.YES if client or server else Probe.NO
    if len(data) < 3:
        if data and data[0] not in _tls._CONTENT_TYPES:
            return Probe.NO
        return Probe.NEED_DATA
    if data[0] in _tls._CONTENT_TYPES and data[1] in (0x03, 0xFE):
        return Probe.YES
    return Probe.NO


class TlsAdapter:
    """TLS records -> a record per TLS record, handshake message and heartbeat."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _tls.TlsDecoder()

    def feed(self, data: bytes) -> list[AppRecord]:
        out: list[AppRecord] = []
        last_record: _tls.Record | None = None
        for event in self._decoder.receive_data(data):
            if isinstance(event, _tls.Record):
                last_record = event
                out.append(
                    AppRecord(
                        "tls",
                        {
                            "tls.record.content_type": event.content_type,
                            "tls.record_length": event.length,
                            "tls.version": event.version,
                        },
                    )
                )
            elif isinstance(event, _tls.Heartbeat):
                out.append(
                    AppRecord(
                        "tls",
                        {
                            "tls.heartbeat.type": event.hb_type,
                            "tls.heartbeat.payload_length": event.payload_length,
                            "tls.heartbeat.encrypted": int(event.encrypted),
                            "tls.record_length": event.record_length,
                            "tls.version": last_record.version if last_record else 0,
                        },
                    )
                )
            else:
                out.append(
                    AppRecord(
                        "tls",
                        {
                            "tls.handshake.type": event.msg_type,
                            "tls.handshake.length": event.length,
                            "tls.handshake.version": event.version,
                            "tls.handshake.effective_version": event.effective_version,
                            "tls.handshake.cipher_count": len(event.cipher_suites),
                        },
                    )
                )
        return out


def _new_tls(transport: int, direction: Direction) -> AppDecoder:
    return TlsAdapter()


# ------------------------------------------------------------------------- DNS

_SECTIONS: Final = {"answer": b"answer", "authority": b"authority", "additional": b"additional"}


def _dns_records(message: _dns.Message) -> list[AppRecord]:
    base: dict[str, FieldValue] = {
        "dns.id": message.id,
        "dns.is_response": int(message.is_response),
        "dns.opcode": message.opcode,
        "dns.rcode": message.rcode,
        "dns.length": message.length,
        "dns.qdcount": len(message.questions),
        "dns.rrcount": len(message.records),
    }
    out = [AppRecord("dns", base)]
    for q in message.questions:
        fields = dict(base)
        fields["dns.qname"] = q.name.encode("latin-1")
        fields["dns.qtype"] = q.qtype
        fields["dns.qclass"] = q.qclass
        out.append(AppRecord("dns", fields))
    for rr in message.records:
        fields = dict(base)
        fields["dns.rr.section"] = _SECTIONS.get(rr.section, rr.section.encode())
        fields["dns.rr.name"] = rr.name.encode("latin-1")
        fields["dns.rr.type"] = rr.rtype
        fields["dns.rr.class"] = rr.rclass
        fields["dns.rr.ttl"] = rr.ttl
        fields["dns.rr.rdlength"] = rr.rdlength
        out.append(AppRecord("dns", fields))
    return out


class DnsUdpAdapter:
    """One DNS message per datagram."""

    __slots__ = ()

    def feed(self, data: bytes) -> list[AppRecord]:
        return _dns_records(_dns.parse_message(data))


class DnsTcpAdapter:
    """DNS over TCP: messages framed by their two-byte length."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _dns.DnsTcpDecoder()

    def feed(self, data: bytes) -> list[AppRecord]:
        out: list[AppRecord] = []
        for message in self._decoder.receive_data(data):
            out.extend(_dns_records(message))
        return out


def _new_dns(transport: int, direction: Direction) -> AppDecoder:
    return DnsUdpAdapter() if transport == PROTO_UDP else DnsTcpAdapter()


# ------------------------------------------------------------------------- SMB

_NBSS_TYPES: Final = frozenset({0x00, 0x81, 0x82, 0x83, 0x84, 0x85})
_SMB_MAGICS: Final = frozenset({b"\xffSMB", b"\xfeSMB", b"\xfdSMB", b"\xfcSMB"})
_TRANS_PREFIX: Final = {
    _smb.SMB1_TRANS: "smb.trans.",
    _smb.SMB1_TRANS_SECONDARY: "smb.trans.",
    _smb.SMB1_TRANS2: "smb.trans2.",
    _smb.SMB1_TRANS2_SECONDARY: "smb.trans2.",
    _smb.SMB1_NT_TRANS: "smb.nt_trans.",
    _smb.SMB1_NT_TRANS_SECONDARY: "smb.nt_trans.",
}
_TRANS_FIELDS: Final = (
    "subcommand",
    "total_parameter_count",
    "total_data_count",
    "parameter_count",
    "parameter_offset",
    "data_count",
    "data_offset",
    "max_data_count",
)


def _probe_smb(data: bytes, direction: Direction) -> Probe:
    if not data:
        return Probe.NEED_DATA
    if data[0] not in _NBSS_TYPES:
        return Probe.NO
    if data[0] != 0x00:
        return Probe.YES  # session request / response / keep-alive (port 139)
    if len(data) < 8:
        return Probe.NEED_DATA
    return Probe.YES if data[4:8] in _SMB_MAGICS else Probe.NO


class SmbAdapter:
    """NetBIOS + SMB1/2/3 -> a record per NetBIOS message and per SMB command, followed by the
    "dcerpc" records of the DCE/RPC PDUs that command writes to a named pipe (SMB1 WriteAndX /
    Trans TransactNmPipe / WriteNmPipe, SMB2 WRITE / IOCTL FSCTL_PIPE_TRANSCEIVE), decoded by
    one dcerpc.DceRpcPipes per adapter, i.e. per flow direction (bounded by its MAX_PIPES)."""

    __slots__ = ("_decoder", "_pipe_records", "_pipes")

    def __init__(self) -> None:
        # Imported here: gateway.decode.dcerpc imports this module to register itself.
        from gateway.decode import dcerpc as _dcerpc

        self._decoder = _smb.SmbDecoder()
        self._pipes = _dcerpc.DceRpcPipes()
        self._pipe_records = _dcerpc.smb_pipe_records

    def feed(self, data: bytes) -> list[AppRecord]:
        out: list[AppRecord] = []
        for event in self._decoder.receive_data(data):
            fields: dict[str, FieldValue]
            if isinstance(event, _smb.Smb1Command):
                fields = {
                    "smb.version": 1,
                    "smb.command": event.command,
                    "smb.status": event.status,
                    "smb.is_response": int(event.is_response),
                    "smb.flags2": event.flags2,
                    "smb.tid": event.tid,
                    "smb.uid": event.uid,
                    "smb.mid": event.mid,
                    "smb.word_count": event.word_count,
                    "smb.byte_count": event.byte_count,
                }
                trans = event.transaction
                prefix = _TRANS_PREFIX.get(event.command)
                if trans is not None and prefix is not None:
                    for name in _TRANS_FIELDS:
                        fields[prefix + name] = getattr(trans, name)
                if event.dialects:
                    fields["smb.negotiate.dialects"] = "\n".join(event.dialects).encode(
                        "latin-1", "replace"
                    )
            elif isinstance(event, _smb.Smb2Command):
                fields = {
                    "smb.version": 2,
                    "smb.command": event.command,
                    "smb.status": event.status,
                    "smb.is_response": int(event.is_response),
                    "smb.message_id": event.message_id,
                    "smb.tree_id": event.tree_id,
                    "smb.session_id": event.session_id,
                }
            elif isinstance(event, _smb.Smb3Transform):
                fields = {
                    "smb.version": 3,
                    "smb.transform.original_size": event.original_size,
                    "smb.session_id": event.session_id,
                }
            elif isinstance(event, _smb.Smb3Compressed):
                fields = {
                    "smb.version": 3,
                    "smb.compression.original_size": event.original_size,
                    "smb.compression.algorithm": event.algorithm,
                    "smb.compression.flags": event.flags,
                    "smb.compression.offset": event.offset,
                    "smb.compression.message_length": event.message_length,
                }
            elif isinstance(event, _smb.NetbiosMessage):
                fields = {"smb.netbios.type": event.msg_type, "smb.netbios.length": event.length}
            else:  # SmbMalformed: counted by the decoder, nothing to judge
                continue
            out.append(AppRecord("smb", fields))
            if isinstance(event, (_smb.Smb1Command, _smb.Smb2Command)) and event.data:
                out.extend(self._pipe_records(self._pipes, event))
        return out


def _new_smb(transport: int, direction: Direction) -> AppDecoder:
    return SmbAdapter()


# ------------------------------------------------------------------------- registration

_I, _B = FieldKind.INT, FieldKind.BYTES

register(
    AppProtocol(
        name="http",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({80, 8000, 8008, 8080}),
        fields={
            "http.method": _B,
            "http.uri": _B,
            "http.uri.raw": _B,
            "http.version": _B,
            "http.header.*": _B,
            "http.header_names": _B,
            "http.header_count": _I,
            "http.body": _B,
            "http.body_length": _I,
            "http.header_lines": _B,
            "http.uri.climb": _I,
            "http.query": _B,
            "http.auth.basic": _B,
            "http.lookups": _B,
            "http.body_params": _B,
        },
        new_decoder=_new_http,
        probe=_probe_http,
        directions=frozenset({Direction.TO_SERVER}),
        late_fields=frozenset({"http.body", "http.body_length", "http.body_params"}),
        description="HTTP/1.x requests (RFC 9112); uri normalised as IIS/Apache would",
    )
)
register(
    AppProtocol(
        name="tls",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({443, 465, 636, 993, 995, 8443}),
        fields={
            "tls.record.content_type": _I,
            "tls.record_length": _I,
            "tls.version": _I,
            "tls.heartbeat.type": _I,
            "tls.heartbeat.payload_length": _I,
            "tls.heartbeat.encrypted": _I,
            "tls.handshake.type": _I,
            "tls.handshake.length": _I,
            "tls.handshake.version": _I,
            "tls.handshake.effective_version": _I,
            "tls.handshake.cipher_count": _I,
        },
        new_decoder=_new_tls,
        probe=_probe_tls,
        description="TLS/SSL records, handshake and heartbeat (RFC 5246, RFC 6520)",
    )
)
register(
    AppProtocol(
        name="dns",
        transports=frozenset({PROTO_TCP, PROTO_UDP}),
        ports=frozenset({53}),
        fields={
            "dns.id": _I,
            "dns.is_response": _I,
            "dns.opcode": _I,
            "dns.rcode": _I,
            "dns.length": _I,
            "dns.qdcount": _I,
            "dns.rrcount": _I,
            "dns.qname": _B,
            "dns.qtype": _I,
            "dns.qclass": _I,
            "dns.rr.section": _B,
            "dns.rr.name": _B,
            "dns.rr.type": _I,
            "dns.rr.class": _I,
            "dns.rr.ttl": _I,
            "dns.rr.rdlength": _I,
        },
        new_decoder=_new_dns,
        probe=None,  # by port: a DNS header has no magic
        description="DNS messages over UDP and TCP (RFC 1035)",
    )
)
register(
    AppProtocol(
        name="smb",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({139, 445}),
        fields={
            "smb.version": _I,
            "smb.command": _I,
            "smb.status": _I,
            "smb.is_response": _I,
            "smb.flags2": _I,
            "smb.tid": _I,
            "smb.uid": _I,
            "smb.mid": _I,
            "smb.word_count": _I,
            "smb.byte_count": _I,
            **{
                p + f: _I
                for p in ("smb.trans.", "smb.trans2.", "smb.nt_trans.")
                for f in _TRANS_FIELDS
            },
            "smb.negotiate.dialects": _B,
            "smb.message_id": _I,
            "smb.tree_id": _I,
            "smb.session_id": _I,
            "smb.transform.original_size": _I,
            "smb.compression.original_size": _I,
            "smb.compression.algorithm": _I,
            "smb.compression.flags": _I,
            "smb.compression.offset": _I,
            "smb.compression.message_length": _I,
            "smb.netbios.type": _I,
            "smb.netbios.length": _I,
        },
        new_decoder=_new_smb,
        probe=_probe_smb,
        description="NetBIOS session + SMB1/SMB2/SMB3 (RFC 1002, MS-CIFS, MS-SMB2)",
    )
)
