"""The app-layer adapters of the bundled HTTP, TLS and DNS decoders: they turn decoder events
into field records for the rule conditions, and register the three protocols with
gateway.decode.registry when this module is imported (SMB, DCE/RPC, RDP, MSSQL and FTP register
from their own modules; gateway/decode/bundled.py imports them all).

What it guarantees:
- The adapters never grow without bound: they hold at most their decoder's own bounded buffers,
  an HTTP body is kept for matching in windows of http.MAX_BODY_INSPECT bytes, inflated as the
  application reads it (gateway/decode/http_body.py: a body longer than a window is judged
  window by window, so no padding pushes a parameter out of sight), and one feed returns at
  most MAX_RECORDS_PER_FEED records.
- HTTP is recognised by content: an upper-case method, or any method token before a target
  (Apache hands "get" to a CGI script).
- `feed` raises nothing but the decoder's own DecodeError subclass (the registry's contract).
"""

from __future__ import annotations

import re
from typing import Final

from gateway.decode import charsets as _charsets
from gateway.decode import dns as _dns
from gateway.decode import h2 as _h2
from gateway.decode import http as _http
from gateway.decode import http_body as _hbody
from gateway.decode import http_fields as _httpf
from gateway.decode import tls as _tls
from gateway.decode import uri as _uri
from gateway.decode.registry import (
    MAX_VARIANTS,
    AppDecoder,
    AppProtocol,
    AppRecord,
    FieldKind,
    FieldValue,
    Probe,
    cut_field,
    register,
    variant_key,
)
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction

__all__ = [
    "CUT_FIELD",
    "MAX_RECORDS_PER_FEED",
    "add_variant",
    "DnsTcpAdapter",
    "DnsUdpAdapter",
    "HttpAdapter",
    "TlsAdapter",
]

MAX_RECORDS_PER_FEED: Final = 4096  # records one feed may return (bounds a hostile stream)
CUT_FIELD: Final = cut_field("http")  # the derived fields a bound cut (limits.field)
# A header announcing a body (RFC 9112 section 6.3): such a request head is no whole unit.
_BODY_HEADERS: Final = re.compile(rb"(?i)\r\n(?:content-length|transfer-encoding)\s*:")


# ------------------------------------------------------------------------- HTTP

# A request line's start after any empty lines: an upper-case method, any run of blanks (Apache
# splits the line on whitespace), the first byte of the target.
HTTP_REQUEST_START: Final = re.compile(rb"[\r\n]*[A-Z][A-Z_-]{2,15}[ \t]+[^\s]")
_HTTP_PREFIX: Final = re.compile(rb"[\r\n]*(?:[A-Z][A-Z_-]{0,15}[ \t]*)?\Z")
# Any other method token (RFC 9110 section 9.1: methods are case-sensitive tokens; Apache hands
# an unregistered one such as "get" or "Post" to CGI scripts and modules, HttpProtocolOptions'
# default LenientMethods) before an origin-form, absolute-form or asterisk target; "HTTP/" must
# follow on the line when the line ends within the probe's bytes. Method letters, digits, "-"
# and "_" only (the methods servers know; "SSH-2.0-..." is not one).
_TOKEN_CHARS: Final = rb"[A-Za-z0-9_\-]"
_ANY_METHOD_START: Final = re.compile(
    rb"[\r\n]*" + _TOKEN_CHARS + rb"{1,32}[ \t]+(?:/|\*|[A-Za-z][A-Za-z0-9+.\-]{0,15}://)"
)
_ANY_METHOD_PREFIX: Final = re.compile(
    rb"[\r\n]*" + _TOKEN_CHARS + rb"{0,32}(?:[ \t]+(?:[A-Za-z][A-Za-z0-9+.\-]{0,15}:?/?)?)?\Z"
)
_VERSION_ON_LINE: Final = re.compile(rb"[ \t](?i:HTTP/)")


_YES: Final = Probe.YES  # a plain constant (gateway/vocabulary.py, DIRECTIONS)
_HTTP_HEAD: Final = _http.State.HEAD


def _probe_http(data: bytes, direction: Direction) -> Probe:
    if HTTP_REQUEST_START.match(data):
        return _YES
    found = _ANY_METHOD_START.match(data)
    if found is not None:
        end = data.find(b"\n", found.end())
        if end < 0 or _VERSION_ON_LINE.search(data, found.end(), end):
            return Probe.YES
        return Probe.NO
    if _HTTP_PREFIX.match(data) or _ANY_METHOD_PREFIX.match(data):
        return Probe.NEED_DATA
    return Probe.NO


class HttpAdapter:
    """HTTP/1.x requests -> one "head" record per request head (method, URIs, version, every
    header) and one record at the end of the request that adds `http.body` (first
    http.MAX_BODY_INSPECT bytes, de-chunked) and `http.body_length`. A request without a body
    whose end arrives with its head yields the end record only (it holds every head field),
    so each such request is evaluated once. After the HTTP/2 client preface (prior knowledge,
    or after an `Upgrade: h2c` request) the stream is HTTP/2: `H2cRequests` gives the same
    records for each of its requests."""

    __slots__ = ("_body", "_body_len", "_decoder", "_h2", "_head", "refused")

    def __init__(self) -> None:
        self._decoder = _http.HttpRequestDecoder()
        self._head: dict[str, FieldValue] | None = None
        self._body: _hbody.BodyWindows | None = None  # made for the first request with a body
        self._body_len = 0
        self._h2: H2cRequests | None = None  # the stream is HTTP/2 from the preface on
        self.refused: DecodeError | None = None  # the error that stopped the last feed

    def at_boundary(self) -> bool:
        """Between two requests: nothing buffered, no request under way (never in HTTP/2,
        whose header blocks depend on the connection's HPACK table)."""
        decoder = self._decoder
        return (
            self._h2 is None
            and decoder.state is _HTTP_HEAD
            and not decoder.buffered
            and self._head is None
        )

    def recover(self) -> None:
        """After an HttpDecodeError: drop the request under way and resume at the next request
        line (RecoverableDecoder, HttpRequestDecoder.recover); in HTTP/2, H2cRequests.recover."""
        self.refused = None
        if self._h2 is not None:
            self._h2.recover()
            return
        self._decoder.recover()
        self._head = None
        if self._body is not None:
            self._body.clear()
        self._body_len = 0

    def memo_unit(self, data: bytes) -> bool:
        """`data` is exactly one complete request head without a body (no Content-Length, no
        Transfer-Encoding) and the decoder is between requests (MemoDecoder)."""
        return (
            data.endswith(b"\r\n\r\n")
            and data.find(b"\r\n\r\n") == len(data) - 4
            and not _BODY_HEADERS.search(data)
            and self.at_boundary()
        )

    def feed(self, data: bytes) -> list[AppRecord]:
        if self._h2 is not None:
            return self._feed_h2(data, [])
        decoder = self._decoder
        decoder.receive_data(data)
        out: list[AppRecord] = []
        # A head is held back until we know whether a body follows: a request without a body
        # (most of them) then yields ONE record, head and end together, evaluated once.
        pending: dict[str, FieldValue] | None = None
        while len(out) < MAX_RECORDS_PER_FEED:
            try:
                event = decoder.next_event()
            except _http.HttpDecodeError as err:
                # Kept, not raised: the records of the requests before the error are returned
                # with it (RecoverableDecoder.refused), so a valid request and a malformed one
                # in the same segment cannot hide the first.
                self.refused = err
                break
            if isinstance(event, _http.Request):
                if pending is not None:
                    out.append(AppRecord("http", pending))
                    pending = None
                if _is_h2_preface(event):
                    self._h2 = H2cRequests()
                    return self._feed_h2(decoder.take_buffer(), out)
                head = head_fields(event)
                self._head = head
                self._start_body(event)
                pending = head
            elif isinstance(event, _http.Body):
                if pending is not None:
                    out.append(AppRecord("http", pending))
                    pending = None
                out.extend(self._body_windows(event.data))
            elif isinstance(event, _http.EndOfRequest):
                head = self._head if self._head is not None else {}
                out.append(self._end_record(head, event.body_length))
                pending = None
                self._head = None
                if self._body is not None:
                    self._body.clear()
            else:
                break
        if pending is not None:  # the body has not arrived yet: judge the head now
            out.append(AppRecord("http", pending))
        return out

    def _start_body(self, request: _http.Request) -> None:
        self._body_len = 0
        if self._body is None:
            if request.header("content-length") is None and not request.header("transfer-encoding"):
                return  # no body: nothing to hold
            self._body = _hbody.BodyWindows(_http.MAX_BODY_INSPECT)
        self._body.start(request.header("content-encoding"))

    def _body_windows(self, data: bytes) -> list[AppRecord]:
        """Body bytes kept for matching (gateway/decode/http_body.py): a body longer than a
        window is judged window by window, each full window as an end record of its own."""
        self._body_len += len(data)
        if self._body is None:
            self._body = _hbody.BodyWindows(_http.MAX_BODY_INSPECT)
            self._body.start(None)
        head = self._head if self._head is not None else {}
        return [
            AppRecord("http", end_fields(head, window, self._body_len, decoded=True))
            for window in self._body.feed(data)
        ]

    def _end_record(self, head: dict[str, FieldValue], body_length: int) -> AppRecord:
        body = self._body
        if body is None:
            return AppRecord("http", end_fields(head, b"", body_length, decoded=True))
        fields = end_fields(head, body.last(), body_length, decoded=True)
        cut = body.cut
        if cut is not None:
            _Cuts.note(fields, f"http.{cut}")
        return AppRecord("http", fields)

    def take_derived(self) -> bytes:
        """HTTP/2 requests decoded since the last call, as HTTP/1 text, for the raw stream
        patterns (DerivingDecoder); b"" for HTTP/1, whose bytes they scan already."""
        return self._h2.take_derived() if self._h2 is not None else b""

    def _feed_h2(self, data: bytes, out: list[AppRecord]) -> list[AppRecord]:
        """HTTP/2 from here on; back to HTTP/1 when what followed `PRI * HTTP/2.0` is not the
        rest of the client preface (the server reads it as HTTP/1 then)."""
        h2 = self._h2
        assert h2 is not None
        out.extend(h2.feed(data))
        self.refused = h2.refused
        if h2.refused is not None and h2.not_h2:
            self._h2 = None
            self.refused = None
            self._decoder = _http.HttpRequestDecoder()
            out.extend(self.feed(h2.take_buffer()))
        return out


def _is_h2_preface(request: _http.Request) -> bool:
    """The request line and empty head of the HTTP/2 client preface (RFC 9113 section 3.4)."""
    return (
        request.method == "PRI"
        and request.uri == "*"
        and request.version == "HTTP/2.0"
        and not request.headers
    )


def head_fields(request: _http.Request) -> dict[str, FieldValue]:
    """The fields of a request head (HTTP/1 or HTTP/2)."""
    head: dict[str, FieldValue] = {
        "http.method": request.method.encode("latin-1"),
        "http.uri": request.uri_normalized.encode("latin-1", "replace"),
        "http.uri.raw": request.uri.encode("latin-1"),
        "http.version": request.version.encode("latin-1"),
        "http.header_count": len(request.headers),
    }
    # every value of a repeated header joined by ", " (RFC 9110 section 5.3)
    joined: dict[str, str] = {}
    for name, value in request.headers:
        prev = joined.get(name)
        joined[name] = value if prev is None else f"{prev}, {value}"
    for name, value in joined.items():
        head[_header_field(name)] = value.encode("latin-1", "replace")
    head["http.header_names"] = ",".join(joined).encode("latin-1", "replace")
    for name, value in joined.items():
        if "{" in value:  # an OGNL expression as Struts reads it (S2-045's Content-Type)
            ognl = _httpf.ognl_form(value)
            if ognl is not None:
                add_variant(head, _header_field(name), _latin(ognl))
    _derived_head_fields(request, head)
    return head


def _header_field(name: str) -> str:
    """The field of header `name`: "#" (a legal token character, RFC 9110 section 5.6.2) is
    written %23, since "#" in a record key starts a variant (registry.variant_key). No rule
    names such a header: a server reads "host#" as another header than "host"."""
    return "http.header." + name.replace("#", "%23")


def add_variant(fields: dict[str, FieldValue], name: str, value: bytes) -> None:
    """`value` as a variant of byte field `name` in the first free variant slot, unless it
    equals the field or a variant already there (or every slot is taken)."""
    if fields.get(name) == value:
        return
    for n in range(1, MAX_VARIANTS + 1):
        key = variant_key(name, n)
        held = fields.get(key)
        if held is None:
            fields[key] = value
            return
        if held == value:
            return


def end_fields(
    head: dict[str, FieldValue], body: bytes, body_length: int, decoded: bool = False
) -> dict[str, FieldValue]:
    """The fields of a request's end record: its head's, the body kept and the derived ones.
    `decoded`: the body is already as the application reads it (Content-Encoding applied,
    gateway/decode/http_body.py), else it is inflated here."""
    fields = dict(head)
    fields["http.body"] = body
    fields["http.body_length"] = body_length
    _derived_body_fields(fields, body, decoded)
    return fields


# Body bytes kept for matching over all the open streams of one HTTP/2 connection (each stream
# keeps at most http.MAX_BODY_INSPECT, as an HTTP/1 request does).
H2_BODY_BUDGET: Final = 16 * _http.MAX_BODY_INSPECT


class H2cRequests:
    """The records of an h2c connection (gateway/decode/h2.py), per stream as HttpAdapter's
    for HTTP/1: a head record when a request's header block is complete, an end record (body,
    body length, derived body fields) when its stream ends; a request whose stream ends with
    its head yields the end record only. A stream complaint (`H2DecodeError.stream`, or a body
    cut short by H2_BODY_BUDGET) is `refused` and decoding goes on after `recover()`; after a
    connection error the server ends the connection, and so the rest of the stream is not
    decoded (`recover()` leaves it to the raw stream rules)."""

    __slots__ = ("_bodies", "_decoder", "_derived", "_drained", "_heads", "_held", "refused")

    def __init__(self) -> None:
        self._decoder = _h2.H2RequestDecoder(preface=_h2.PREFACE_TAIL)
        self._heads: dict[int, dict[str, FieldValue]] = {}
        self._bodies: dict[int, _hbody.BodyWindows] = {}
        self._held = 0  # body bytes kept over all streams
        self._drained = False  # after a connection error: nothing more to decode
        self._derived = bytearray()  # requests as HTTP/1 text, for the raw stream patterns
        self.refused: DecodeError | None = None

    @property
    def not_h2(self) -> bool:
        """What followed `PRI * HTTP/2.0` is not the rest of the preface (see take_buffer)."""
        return self._decoder.in_preface and self._decoder.state is _h2.State.ERROR

    def take_buffer(self) -> bytes:
        return self._decoder.take_buffer()

    def take_derived(self) -> bytes:
        """Each request decoded since the last call as HTTP/1 text: its head when its header
        block is complete, its body (what is kept of it, contiguous whatever the interleaving
        of DATA frames) when its stream ends."""
        data = bytes(self._derived)
        self._derived.clear()
        return data

    def recover(self) -> None:
        self.refused = None
        if self._decoder.state is _h2.State.ERROR:
            self._drained = True
            self._heads.clear()
            self._bodies.clear()
            self._held = 0

    def feed(self, data: bytes) -> list[AppRecord]:
        if self._drained:
            return []
        decoder = self._decoder
        decoder.receive_data(data)
        out: list[AppRecord | None] = []
        pending: dict[int, int] = {}  # stream -> index in out of its head record, this feed
        while len(out) < MAX_RECORDS_PER_FEED:
            try:
                event = decoder.next_event()
            except (_h2.H2DecodeError, DecodeError) as err:
                self.refused = err
                break
            if isinstance(event, _h2.StreamHead):
                head = head_fields(event.request)
                self._heads[event.stream_id] = head
                body = self._bodies[event.stream_id] = _hbody.BodyWindows(_http.MAX_BODY_INSPECT)
                body.start(event.request.header("content-encoding"))
                pending[event.stream_id] = len(out)
                out.append(AppRecord("http", head))
                self._derived += _h1_text(event.request)
            elif isinstance(event, _h2.StreamData):
                windows = self._keep(event.stream_id, event.data)
                if windows is None:
                    break
                out.extend(windows)
            elif isinstance(event, _h2.StreamEnd):
                at = pending.pop(event.stream_id, None)
                if at is not None:
                    out[at] = None  # the end record holds every head field
                out.append(self._end(event))
            else:
                break
        return [record for record in out if record is not None]

    def _keep(self, stream: int, data: bytes) -> list[AppRecord] | None:
        """Keep a DATA piece for matching in its stream's windows (as HttpAdapter does): the
        records of the windows it filled; None (and `refused`) when the bytes held over the
        open streams pass H2_BODY_BUDGET (that stream's body is then inspected in part)."""
        body = self._bodies.get(stream)
        if body is None:
            return []
        before = body.held
        windows = body.feed(data)
        self._held += body.held - before
        head = self._heads.get(stream, {})
        out = []
        for window in windows:
            self._derived += window
            out.append(AppRecord("http", end_fields(head, window, body.fed, decoded=True)))
        if self._held > H2_BODY_BUDGET:
            self._held -= body.held
            del self._bodies[stream]
            self.refused = _h2.H2DecodeError(
                f"h2c: over {H2_BODY_BUDGET} body bytes held over open streams: "
                f"the body of stream {stream} is inspected in part",
                stream=stream,
            )
            return None
        return out

    def _end(self, event: _h2.StreamEnd) -> AppRecord:
        head = self._heads.pop(event.stream_id, {})
        body = self._bodies.pop(event.stream_id, None)
        if body is None:
            return AppRecord("http", end_fields(head, b"", event.body_length))
        self._held -= body.held
        last = body.last()
        self._derived += last
        fields = end_fields(head, last, event.body_length, decoded=True)
        if body.cut is not None:
            _Cuts.note(fields, f"http.{body.cut}")
        return AppRecord("http", fields)


def _h1_text(request: _http.Request) -> bytes:
    """A request head as HTTP/1 text (RFC 9112 sections 3 and 5)."""
    lines = [f"{request.method} {request.uri} {request.version}"]
    lines.extend(f"{name}: {value}" for name, value in request.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _latin(text: str) -> bytes:
    return text.encode("latin-1", "replace")


def _derived_head_fields(request: _http.Request, head: dict[str, FieldValue]) -> None:
    """The derived fields of gateway/decode/http_fields.py that a request head yields, and the
    variants of `http.uri` (the other forms a server may act on) and of `http.uri.raw` (the
    target with superfluous encoding layers peeled), gateway/decode/uri.py."""
    for n, form in enumerate(request.uri_variants, 1):
        head[variant_key("http.uri", n)] = _latin(form)
    if "%" in request.uri:
        for n, layer in enumerate(_uri.raw_variants(request.uri), 1):
            head[variant_key("http.uri.raw", n)] = _latin(layer)
    cuts = _Cuts()
    lines = _httpf.header_lines(request.headers, cuts.of("header_lines"))
    head["http.header_lines"] = _latin(lines)
    head["http.uri.climb"] = _httpf.climb_depth(request.uri)
    query = request.uri.partition("?")[2]
    head["http.query"] = _latin(_httpf.url_params(query, cuts.of("query")))
    codec = _charsets.declared_codec(request.header("content-type") or "") if query else None
    if codec is not None:  # ASP.NET reads the query string in the body's charset too
        in_charset = _latin(_httpf.form_params(query.encode("latin-1", "replace"), codec))
        if in_charset != head["http.query"]:
            head[variant_key("http.query", 1)] = in_charset
    credentials = _httpf.basic_credentials(
        request.header("authorization") or request.header("proxy-authorization")
    )
    parts = [request.method, request.uri, *(value for _name, value in request.headers)]
    if credentials is not None:
        head["http.auth.basic"] = _latin(credentials)
        parts.append(credentials)
    head["http.lookups"] = _latin(_httpf.lookup_text(parts, cuts.of("lookups")))
    cuts.store(head)


class _Cuts:
    """The derived fields of one record a bound cut (http_fields' `cuts` lists), kept in the
    record's `http.cut` as `field: what` lines for the engine's `limits.field` policy."""

    __slots__ = ("lists",)

    def __init__(self) -> None:
        self.lists: list[tuple[str, list[str]]] = []

    def of(self, field: str) -> list[str]:
        found: list[str] = []
        self.lists.append((field, found))
        return found

    def store(self, fields: dict[str, FieldValue]) -> None:
        lines = [f"http.{field}: {why}" for field, found in self.lists for why in found]
        if lines:
            _Cuts.note(fields, "\n".join(dict.fromkeys(lines)))

    @staticmethod
    def note(fields: dict[str, FieldValue], text: str) -> None:
        """Add `text` (lines `field: what`) to the record's `http.cut`."""
        previous = fields.get(CUT_FIELD)
        data = text.encode("latin-1", "replace")
        fields[CUT_FIELD] = previous + b"\n" + data if isinstance(previous, bytes) else data


def _derived_body_fields(fields: dict[str, FieldValue], body: bytes, decoded: bool) -> None:
    """On the end-of-request record: the body as the application reads it (Content-Encoding
    inflated: `http.body` is then the inflated body), its parameters (urlencoded forms,
    multipart/form-data field names, values and filenames, JSON keys and values with escapes
    decoded), the forms of both in the body's character set (`_charset_variants`) and the
    lookups in all of them."""
    encoding = fields.get("http.header.content-encoding")
    if isinstance(encoding, bytes) and body and not decoded:
        inflated = _httpf.decode_content(body, encoding.decode("latin-1"), _http.MAX_BODY_INSPECT)
        if inflated is not None:
            body = inflated
            fields["http.body"] = body
    raw_type = fields.get("http.header.content-type", b"")
    type_text = raw_type.decode("latin-1") if isinstance(raw_type, bytes) else ""
    text = body.decode("latin-1")
    cuts = _Cuts()
    params = _body_params(body, type_text, cuts.of("body_params"))
    fields["http.body_params"] = _latin(params)
    texts = [text, params, *_charset_variants(fields, body, type_text, params)]
    in_charset = fields.get(variant_key("http.body", 1))  # the body in its charset, if any
    texts += _document_variants(fields, text, type_text, params)
    if isinstance(in_charset, bytes):
        texts += _document_variants(fields, in_charset.decode("latin-1"), type_text, params)
    parts = [p for p in texts if _httpf.may_hold_lookup(p)]
    if parts:
        previous = fields.get("http.lookups", b"")
        more = _latin(_httpf.lookup_text(parts, cuts.of("lookups")))
        if isinstance(previous, bytes) and more:
            fields["http.lookups"] = previous + b"\n" + more if previous else more
    cuts.store(fields)


def _document_variants(
    fields: dict[str, FieldValue], text: str, type_text: str, params: str
) -> list[str]:
    """The body and its parameters as the parsers behind the application read them, as
    variants of `http.body` and `http.body_params`; the texts added, for the lookups: an XML
    body's text with its references, entities, CDATA sections and comments resolved
    (`xml_text`), and the parameters' OGNL expressions as Struts evaluates them (`ognl_form`:
    a multipart filename, S2-046)."""
    added: list[str] = []
    if "xml" in type_text.lower() or text[:256].lstrip()[:1] == "<":
        xml = _httpf.xml_text(text)
        if xml is not None:
            add_variant(fields, "http.body", _latin(xml))
            added.append(xml)
    ognl = _httpf.ognl_form(params) if "{" in params else None
    if ognl is not None:
        add_variant(fields, "http.body_params", _latin(ognl))
    return added


def _body_params(body: bytes, type_text: str, cuts: list[str] | None = None) -> str:
    """The parameters of a body read as bytes (UTF-8 for JSON), by its Content-Type."""
    content_type = type_text.lower()
    if "x-www-form-urlencoded" in content_type:
        return _httpf.url_params(body.decode("latin-1"), cuts)
    if "multipart/" in content_type:
        return _httpf.multipart_params(body, type_text, None, cuts)
    if "json" in content_type or (body[:256].lstrip()[:1] in (b"{", b"[") and b"\\u" in body):
        return _httpf.json_params(body, cuts)
    return ""


_HIGH_ESCAPE: Final = re.compile(rb"%[89A-Fa-f][0-9A-Fa-f]")  # a %-escape of a byte >= 0x80


def _charset_variants(
    fields: dict[str, FieldValue], body: bytes, type_text: str, params: str
) -> list[str]:
    """The body and its parameters as a server that honours the body's character set reads
    them (gateway/decode/charsets.py), as variants of `http.body` and `http.body_params`; the
    texts added, for the lookups. The charset is the one `Content-Type` declares, else one a
    byte order mark (or, for JSON and XML, the zero bytes of RFC 4627 section 3) shows, and for
    multipart bodies each part's own or the `_charset_` field's. Nothing to do (the common
    case: no charset parameter, or UTF-8) costs one search of the Content-Type value."""
    content_type = type_text.lower()
    json_or_xml = "json" in content_type or "xml" in content_type
    codec = _charsets.declared_codec(type_text) or _charsets.sniffed_codec(body, json_or_xml)
    multipart = "multipart/" in content_type
    if codec is None and not (multipart and (b"harset" in body or b"HARSET" in body)):
        return []
    plain = codec is None or (_charsets.ascii_compatible(codec) and body.isascii())
    forms: list[str] = []
    added: list[str] = []
    if codec is not None and not plain:
        whole = _charsets.decode_text(body, codec).encode("utf-8", "replace")
        whole = whole[: _http.MAX_BODY_INSPECT]
        if whole != body:
            fields[variant_key("http.body", 1)] = whole
            added.append(whole.decode("latin-1"))
            forms.append(_body_params(whole, type_text))
    if codec is not None and "x-www-form-urlencoded" in content_type:
        if not plain or _HIGH_ESCAPE.search(body):
            forms.append(_httpf.form_params(body, codec))
    elif multipart:
        forms.append(_httpf.multipart_params(body, type_text, codec or ""))
    kept = list(dict.fromkeys(f for f in forms if f and f != params))
    if kept:
        variant = "\n".join(kept)[: _httpf.MAX_DERIVED_BYTES * 2]
        fields[variant_key("http.body_params", 1)] = _latin(variant)
        added.append(variant)
    return added


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


# DNS over TCP away from port 53 (AppProtocol.elsewhere): the two-byte length, a header whose QR
# bit fits the direction, opcode QUERY, IQUERY, STATUS, NOTIFY or UPDATE (RFC 1035 4.1.1, RFC
# 1996, RFC 2136), one question (zone), and a first label of at most 63 bytes or a root name.
_DNS_OPCODES: Final = frozenset({0, 1, 2, 4, 5})
_DNS_TCP_HEAD: Final = 2 + 12 + 1  # length prefix, header, first label length


def _probe_dns_tcp(data: bytes, direction: Direction) -> Probe:
    if len(data) < _DNS_TCP_HEAD:
        return Probe.NEED_DATA
    length = int.from_bytes(data[0:2], "big")
    flags = data[4]
    response = flags >> 7
    plausible = (
        length >= 12 + 5
        and response == int(direction is Direction.TO_CLIENT)
        and (flags >> 3) & 0x0F in _DNS_OPCODES
        and data[6:8] == b"\x00\x01"
        and data[14] <= 63
        and length >= 12 + 1 + data[14] + 1 + 4
    )
    return Probe.YES if plausible else Probe.NO


def _new_dns(transport: int, direction: Direction) -> AppDecoder:
    return DnsUdpAdapter() if transport == PROTO_UDP else DnsTcpAdapter()


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
            "http.cut": _B,
        },
        new_decoder=_new_http,
        probe=_probe_http,
        directions=frozenset({Direction.TO_SERVER}),
        late_fields=frozenset({"http.body", "http.body_length", "http.body_params"}),
        whole_connection=True,
        memo=True,
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
        elsewhere=_probe_dns_tcp,  # ... so on other ports only a plausible TCP query/answer
        description="DNS messages over UDP and TCP (RFC 1035)",
    )
)
