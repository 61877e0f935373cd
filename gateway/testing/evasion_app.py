"""Application-level evasions: rewrites of a client byte stream that keep its meaning for the
server it targets (tests, benchmarks; see gateway/testing/evasion.py).

Each function takes the client stream and returns the rewritten stream, or None when it does
not apply (not that protocol, nothing to rewrite). What "keeps its meaning" rests on the
servers the rules protect, as documented per function (the TCP model cannot judge it):
- HTTP (RFC 9112, and the leniency of IIS and Apache described in Ristic's "HTTP evasion"
  catalogue and libhtp): URI %-encoding, double encoding, IIS %u, `./` segments, `\\` for
  `/`, repeated slashes, absolute-form targets; spaces and tabs around header values
  (OWS), obsolete line folding, header-name case, bare LF line ends, extra spaces in the
  request line; a pipelined request after an ordinary one or after a keep-alive request with
  a body longer than the inspection depth; chunked transfer coding with tiny chunks, chunk
  extensions and zero-padded sizes; %-encoding of form bodies. Then (the second HTTP table):
  methods in lower case and a TE.CL smuggling request first (Apache); 70 KiB of padding before
  a body's parameters; JSON strings as backslash-u escapes; XML text as character references and as
  CDATA sections, and OGNL as Java unicode escapes and with blanks between its tokens (Java
  applications' parsers); multipart part headers folded (commons-fileupload, PHP); 4 KB chunk
  extensions (Tomcat).
- SMB (RFC 1002 NetBIOS session service; [MS-CIFS], [MS-SMB2]): NetBIOS keep-alive messages
  between SMB messages; an SMB ECHO before the first message in the same segment; a NetBIOS
  session request first (TCP 139). Every way of writing to a named pipe (SMB1 WRITE,
  WriteAndX raw mode, AndX chains, Trans + secondaries, WRITE_RAW; SMB2 WRITE, IOCTL,
  compounds with related operations) is gateway/testing/smb_writes.py's WRITE_METHODS.
- DCE/RPC (C706 12.6): a request's stub cut into many fragments (PFC_FIRST_FRAG ..
  PFC_LAST_FRAG), over TCP.
"""

from __future__ import annotations

import re
import struct
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Final

from gateway.testing.h2c import h2c_stream
from gateway.testing.smb_writes import session_first

__all__ = [
    "APACHE_ONLY",
    "CHARSET_READERS",
    "H2C_REWRITES",
    "HTTP_REWRITES",
    "IIS_ONLY",
    "JAVA_AND_APACHE",
    "JAVA_ONLY",
    "SMB_REWRITES",
]

Rewrite = Callable[[bytes], "bytes | None"]

_REQUEST_LINE: Final = re.compile(rb"(?m)^([A-Z]+) (\S+) (HTTP/1\.[01])\r?\n")
_UNRESERVED: Final = re.compile(rb"[A-Za-z0-9._~-]")
LONG_BODY: Final = (1 << 20) + (64 << 10)  # past the default inspection depth (1 MiB)


def _requests(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """(head without the blank line, body) of each pipelined request, or None if `data` is
    not a sequence of complete HTTP/1.x requests framed by Content-Length."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0 or not _REQUEST_LINE.match(data, pos):
            return None
        head = data[pos:end]
        m = re.search(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*$", head)
        length = int(m.group(1)) if m else 0
        body = data[end + 4 : end + 4 + length]
        if re.search(rb"(?im)^transfer-encoding:", head) or len(body) < length:
            return None
        out.append((head, body))
        pos = end + 4 + length
    return out or None


def _join(requests: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(head + b"\r\n\r\n" + body for head, body in requests)


def _changed(old: bytes, new: bytes) -> bytes | None:
    return new if new != old else None


def _map_uri(fn: Callable[[int, bool], bytes]) -> Rewrite:
    """Apply fn(byte, in_query) to every byte of every request target."""

    def rewrite(data: bytes) -> bytes | None:
        if _requests(data) is None:
            return None

        def one(m: re.Match[bytes]) -> bytes:
            path, q, query = m.group(2).partition(b"?")
            out = b"".join(fn(c, False) for c in path)
            if q:
                out += b"?" + b"".join(fn(c, True) for c in query)
            return m.group(1) + b" " + out + b" " + m.group(3) + b"\r\n"

        return _changed(data, _REQUEST_LINE.sub(one, data))

    return rewrite


def _pct(c: int, q: bool) -> bytes:
    b = bytes([c])
    return b"%%%02X" % c if _UNRESERVED.fullmatch(b) and c != 0x2E else b


def _double(c: int, q: bool) -> bytes:  # IIS 5 decodes twice (MS01-026)
    b = bytes([c])
    return b"%%25%02X" % c if _UNRESERVED.fullmatch(b) and c != 0x2E else b


def _iis_u(c: int, q: bool) -> bytes:  # IIS: %uXXXX
    return b"%%u%04X" % c if bytes([c]).isalpha() and not q else bytes([c])


def _dot(c: int, q: bool) -> bytes:
    return b"/./" if c == 0x2F and not q else bytes([c])


def _backslash(c: int, q: bool) -> bytes:  # IIS takes "\" as "/" in the path
    return b"\\" if c == 0x2F and not q else bytes([c])


def _slashes(c: int, q: bool) -> bytes:  # both servers merge repeated slashes
    return b"//" if c == 0x2F and not q else bytes([c])


def _absolute(data: bytes) -> bytes | None:
    """origin-form -> absolute-form (RFC 9112 section 3.2.2: servers must accept it)."""
    if _requests(data) is None:
        return None
    return _changed(data, re.sub(rb"(?m)^([A-Z]+) /", rb"\1 http://vpatch.example/", data))


def _map_heads(fn: Callable[[bytes], bytes]) -> Rewrite:
    def rewrite(data: bytes) -> bytes | None:
        reqs = _requests(data)
        if reqs is None:
            return None
        return _changed(data, _join([(fn(head), body) for head, body in reqs]))

    return rewrite


def _header_lines(fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def head(h: bytes) -> bytes:
        first, _, rest = h.partition(b"\r\n")
        if not rest:
            return h
        return first + b"\r\n" + b"\r\n".join(fn(line) for line in rest.split(b"\r\n"))

    return head


def _ows(line: bytes) -> bytes:
    name, colon, value = line.partition(b":")
    return name + b":  \t " + value.lstrip(b" \t") + b" \t" if colon else line


def _fold(line: bytes) -> bytes:
    """obs-fold (RFC 9112 section 5.2; RFC 2616 allowed it): the value continues on a line
    starting with a space; the server reads the fold as one space."""
    name, colon, value = line.partition(b":")
    if not colon:
        return line
    value = value.lstrip(b" \t")
    if b" " in value:
        a, _, b = value.partition(b" ")
        return name + b": " + a + b"\r\n " + b
    return name + b":\r\n " + value


def _case(line: bytes) -> bytes:
    name, colon, value = line.partition(b":")
    return name.swapcase() + colon + value if colon else line


def _request_line_spaces(head: bytes) -> bytes:
    first, sep, rest = head.partition(b"\r\n")
    return first.replace(b" ", b"  ") + sep + rest


def _lf_only(data: bytes) -> bytes | None:
    """Bare LF ends the request line and the header lines (Apache, IIS and RFC 9112 section 2.2
    accept it); bodies are untouched."""
    reqs = _requests(data)
    if reqs is None:
        return None
    return _changed(data, b"".join(h.replace(b"\r\n", b"\n") + b"\n\n" + body for h, body in reqs))


def _pipeline_short(data: bytes) -> bytes | None:
    if _requests(data) is None:
        return None
    return b"GET /index.html HTTP/1.1\r\nHost: vpatch.example\r\n\r\n" + data


def _pipeline_long(data: bytes) -> bytes | None:
    """A keep-alive upload longer than the inspection depth, then the request."""
    if _requests(data) is None:
        return None
    first = (
        b"POST /upload HTTP/1.1\r\nHost: vpatch.example\r\nContent-Type: "
        b"application/octet-stream\r\nContent-Length: %d\r\n\r\n" % LONG_BODY
    )
    return first + b"A" * LONG_BODY + data


def _chunked(size: int, ext: bool, ext_len: int = 0) -> Rewrite:
    """Bodies framed by Content-Length re-sent with chunked transfer coding (RFC 9112
    section 7.1): `size`-byte chunks; with `ext`, chunk extensions and zero-padded sizes, each
    extension `ext_len` bytes long when given."""

    def rewrite(data: bytes) -> bytes | None:
        reqs = _requests(data)
        if reqs is None or not any(body for _, body in reqs):
            return None
        out = []
        for head, body in reqs:
            if not body:
                out.append(head + b"\r\n\r\n")
                continue
            head = re.sub(rb"(?im)^content-length:[^\r\n]*", b"Transfer-Encoding: chunked", head)
            chunks = []
            for i in range(0, len(body), size):
                piece = body[i : i + size]
                line = b"%04x;v=%d" % (len(piece), i) if ext else b"%x" % len(piece)
                if ext_len:
                    line += b";p=" + b"x" * ext_len
                chunks.append(line + b"\r\n" + piece + b"\r\n")
            tail = b"0000;end\r\n\r\n" if ext else b"0\r\n\r\n"
            out.append(head + b"\r\n\r\n" + b"".join(chunks) + tail)
        return b"".join(out)

    return rewrite


def _form_percent(data: bytes) -> bytes | None:
    """Every unreserved byte of a urlencoded form body %-encoded (the server decodes it)."""
    reqs = _requests(data)
    if reqs is None:
        return None
    out = []
    for head, body in reqs:
        if body and re.search(rb"(?im)^content-type:[ \t]*application/x-www-form-urlencoded", head):
            body = b"".join(
                b"%%%02X" % c if _UNRESERVED.fullmatch(bytes([c])) else bytes([c]) for c in body
            )
            head = re.sub(rb"(?im)^(content-length:[ \t]*)\d+", rb"\g<1>%d" % len(body), head)
        out.append((head, body))
    return _changed(data, _join(out))


PAD_HEADERS: Final = 48  # header lines of 400 bytes before the real ones: 19 KiB (Apache: 100)
PAD_PARAMS: Final = 300  # parameters before the real ones (PHP and ASP.NET take 1000)


def _pad_headers(head: bytes) -> bytes:
    """Padding header lines before the real ones: a server reads every header whatever how
    many come first (Apache LimitRequestFields 100, IIS 16 KiB per line)."""
    first, sep, rest = head.partition(b"\r\n")
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 400) for i in range(PAD_HEADERS))
    return first + sep + pad + rest if sep else head


_RAW_QUERY_TARGET: Final = re.compile(rb"(?i)\.(?:ida|idq|dll|exe)$")


def _param_list(query: bytes) -> bool:
    """A query string a form parser reads as name=value pairs: padding it leaves every pair
    as it was. Excluded: a query that is not such a list (php-cgi reads one without "=" as
    command-line arguments) and one for an ISAPI extension or CGI binary, which get the raw
    string (its length is what Code Red overflows)."""
    return all(b"=" in part for part in query.split(b"&") if part)


def _pad_params(data: bytes) -> bytes | None:
    """Padding parameters before the real ones, in the query string (when it is a parameter
    list read by a form parser) and in a urlencoded form body: the application gets every
    parameter (up to its own 1000)."""
    reqs = _requests(data)
    if reqs is None:
        return None
    pad = b"".join(b"pad%d=1&" % i for i in range(PAD_PARAMS))
    out = []
    for head, body in reqs:
        first, sep, rest = head.partition(b"\r\n")
        parts = first.split(b" ")
        if len(parts) == 3 and b"?" in parts[1]:
            path, _, query = parts[1].partition(b"?")
            if _param_list(query) and not _RAW_QUERY_TARGET.search(path):
                first = b" ".join((parts[0], path + b"?" + pad + query, parts[2]))
        if body and re.search(rb"(?im)^content-type:[ \t]*application/x-www-form-urlencoded", rest):
            body = pad + body
            rest = re.sub(rb"(?im)^(content-length:[ \t]*)\d+", rb"\g<1>%d" % len(body), rest)
        out.append((first + sep + rest, body))
    return _changed(data, _join(out))


def _charset_form(codec: str, label: bytes) -> Rewrite:
    """A urlencoded form body re-sent in charset `codec`, declared in Content-Type as ASP.NET
    reads it (HttpValueCollection.FillFromEncodedBytes: split at the ASCII bytes "&" and "=",
    each side %-decoded to bytes, then decoded in the declared charset): every name and value
    encoded in `codec` and its bytes %-escaped. For IIS and Java servers (CHARSET_READERS):
    Apache's PHP ignores the charset."""

    def rewrite(data: bytes) -> bytes | None:
        reqs = _requests(data)
        if reqs is None:
            return None
        out = []
        for head, body in reqs:
            form = re.search(rb"(?im)^content-type:[ \t]*application/x-www-form-urlencoded", head)
            if body and form and b"charset" not in head.lower():
                body = b"&".join(_charset_pair(pair, codec) for pair in body.split(b"&"))
                head = re.sub(rb"(?im)^(content-type:[^\r\n]*)", rb"\g<1>; charset=" + label, head)
                head = re.sub(rb"(?im)^(content-length:[ \t]*)\d+", rb"\g<1>%d" % len(body), head)
            out.append((head, body))
        return _changed(data, _join(out))

    return rewrite


def _utf16_document(data: bytes) -> bytes | None:
    """A JSON or XML body re-sent in UTF-16 (little-endian, with a byte order mark) and
    declared so: Jackson, XStream and the JDK's XML parsers read it as the original."""
    reqs = _requests(data)
    if reqs is None:
        return None
    out = []
    for head, body in reqs:
        doc = re.search(rb"(?im)^content-type:[ \t]*[^\r\n]*(?:json|xml)", head)
        if body and doc and b"charset" not in head.lower() and body.isascii():
            body = "\ufeff".encode("utf-16-le") + body.decode("ascii").encode("utf-16-le")
            head = re.sub(rb"(?im)^(content-type:[^\r\n]*)", rb"\g<1>; charset=UTF-16", head)
            head = re.sub(rb"(?im)^(content-length:[ \t]*)\d+", rb"\g<1>%d" % len(body), head)
        out.append((head, body))
    return _changed(data, _join(out))


def _charset_pair(pair: bytes, codec: str) -> bytes:
    def encode(part: bytes) -> bytes:
        text = urllib.parse.unquote_to_bytes(part.replace(b"+", b" ")).decode("latin-1")
        return b"".join(b"%%%02X" % c for c in text.encode(codec))

    name, eq, value = pair.partition(b"=")
    return encode(name) + eq + encode(value) if eq else encode(name)


# Rewrites only IIS reads as the original (double decoding, %u, backslashes); the others
# every server the rules protect.
IIS_ONLY: Final = frozenset({"http-uri-double", "http-uri-iis-u", "http-uri-backslash"})
# Rewrites the servers that honour a form body's declared charset read as the original: IIS
# (ASP.NET) and Java servlet containers (Tomcat: request.getParameter in the request's
# character encoding, which Struts and Log4j-logging applications read).
CHARSET_READERS: Final = frozenset(
    {"http-charset-ibm037", "http-charset-utf16", "http-charset-utf16-document"}
)

HTTP_REWRITES: Final[dict[str, tuple[Rewrite, str]]] = {
    "http-uri-percent": (_map_uri(_pct), "URI bytes %-encoded"),
    "http-uri-double": (_map_uri(_double), "URI bytes %25-encoded twice (IIS)"),
    "http-uri-iis-u": (_map_uri(_iis_u), "URI letters as IIS %uXXXX"),
    "http-uri-dot": (_map_uri(_dot), "every / as /./"),
    "http-uri-backslash": (_map_uri(_backslash), "every / of the path as \\ (IIS)"),
    "http-uri-slashes": (_map_uri(_slashes), "every / of the path doubled"),
    "http-uri-absolute": (_absolute, "absolute-form request target"),
    "http-ows": (_map_heads(_header_lines(_ows)), "spaces and tabs around header values"),
    "http-fold": (_map_heads(_header_lines(_fold)), "obs-fold in every header value"),
    "http-name-case": (_map_heads(_header_lines(_case)), "header names in flipped case"),
    "http-line-spaces": (_map_heads(_request_line_spaces), "two spaces in the request line"),
    "http-lf": (_lf_only, "bare LF line ends"),
    "http-pipeline": (_pipeline_short, "after a pipelined GET"),
    "http-pipeline-long": (_pipeline_long, "after a keep-alive upload past the depth"),
    "http-chunked": (_chunked(1, False), "body as 1-byte chunks"),
    "http-chunked-ext": (_chunked(3, True), "chunk extensions, zero-padded sizes"),
    "http-form-percent": (_form_percent, "form body %-encoded"),
    "http-pad-headers": (_map_heads(_pad_headers), "19 KiB of header lines before the real ones"),
    "http-charset-ibm037": (_charset_form("cp037", b"ibm037"), "form body in EBCDIC (ibm037)"),
    "http-charset-utf16": (_charset_form("utf-16-le", b"utf-16le"), "form body in UTF-16LE"),
    "http-charset-utf16-document": (_utf16_document, "JSON or XML body in UTF-16 with a BOM"),
    "http-pad-params": (_pad_params, "300 parameters before the real query and form ones"),
}


def _h2c(upgrade: bool) -> Rewrite:
    """The same requests over HTTP/2 cleartext (gateway/testing/h2c.py): HPACK-coded heads
    (Huffman, dynamic table), bodies in padded DATA frames, header blocks over CONTINUATION;
    after the preface (prior knowledge: nginx `listen ... http2`, Apache `H2Direct`) or after
    an `Upgrade: h2c` request (Apache mod_http2, Tomcat)."""

    def rewrite(data: bytes) -> bytes | None:
        reqs = _requests(data)
        if reqs is None or any(_not_h2_expressible(head) for head, _ in reqs):
            return None
        return h2c_stream(reqs, upgrade=upgrade)

    return rewrite


def _not_h2_expressible(head: bytes) -> bool:
    """A header line without a colon or folded: HTTP/2 has no way to send it (the anomaly it
    stands for does not exist there)."""
    return any(b":" not in line or line[:1] in b" \t" for line in head.split(b"\r\n")[1:])


H2C_REWRITES: Final[dict[str, tuple[Rewrite, str]]] = {
    "h2c-prior-knowledge": (_h2c(False), "as HTTP/2 cleartext, prior knowledge"),
    "h2c-upgrade": (_h2c(True), "as HTTP/2 cleartext after Upgrade: h2c"),
}


# ----------------------------------------------------------------------------- SMB, DCE/RPC


def _nbss_messages(data: bytes) -> list[bytes] | None:
    """The NetBIOS session messages of `data` (4-byte header each), or None."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4 or data[pos] not in (0x00, 0x85):
            return None
        length = int.from_bytes(data[pos + 1 : pos + 4], "big") & 0x1FFFF
        if pos + 4 + length > len(data):
            return None
        out.append(data[pos : pos + 4 + length])
        pos += 4 + length
    return out


def _keepalives(data: bytes) -> bytes | None:
    """A NetBIOS SESSION KEEP ALIVE (RFC 1002 section 4.3.7) before every message."""
    msgs = _nbss_messages(data)
    if msgs is None or not any(m[4:8] in (b"\xffSMB", b"\xfeSMB") for m in msgs):
        return None
    return b"".join(b"\x85\x00\x00\x00" + m for m in msgs)


def _echo_first(data: bytes) -> bytes | None:
    """An SMB ECHO request ([MS-CIFS] 2.2.4.39, [MS-SMB2] 2.2.28) before the first message,
    with the first message's header fields; the server answers it and goes on."""
    msgs = _nbss_messages(data)
    if not msgs:
        return None
    first = msgs[0]
    if first[4:8] == b"\xffSMB" and len(first) >= 36:
        header = first[4:8] + b"\x2b" + first[9:36]
        smb = header + b"\x01\x01\x00\x04\x00ping"
    elif first[4:8] == b"\xfeSMB" and len(first) >= 68:
        header = first[4:16] + struct.pack("<H", 13) + first[18:68]
        smb = header + struct.pack("<HH", 4, 0)
    else:
        return None
    return struct.pack("!I", len(smb)) + smb + data


_DCE: Final = struct.Struct("<BBBB4sHHI")


def _dce_split(data: bytes) -> bytes | None:
    """DCE/RPC over TCP: every REQUEST cut into fragments of at most 8 stub bytes."""
    out = []
    pos = 0
    split = False
    while pos < len(data):
        if len(data) - pos < 16 or data[pos] != 5 or data[pos + 4] & 0xF0 != 0x10:
            return None  # not little-endian connection-oriented DCE/RPC
        ver, minor, ptype, flags, drep, frag_len, auth_len, call_id = _DCE.unpack_from(data, pos)
        pdu = data[pos : pos + frag_len]
        if frag_len < 16 or len(pdu) < frag_len:
            return None
        pos += frag_len
        if ptype != 0 or auth_len or flags & 0x80 or flags & 3 != 3 or frag_len < 24:
            out.append(pdu)
            continue
        fixed = pdu[16:24]  # alloc hint, context id, opnum
        stub = pdu[24:]
        cuts = [stub[i : i + 8] for i in range(0, len(stub), 8)] or [b""]
        for i, cut in enumerate(cuts):
            f = flags & ~3 | (1 if i == 0 else 0) | (2 if i == len(cuts) - 1 else 0)
            header = _DCE.pack(ver, minor, ptype, f, drep, 24 + len(cut), 0, call_id)
            out.append(header + fixed + cut)
        split = split or len(cuts) > 1
    return b"".join(out) if split else None


_FAKE_INTERFACES: Final = (  # interfaces a client may bind alongside (NDR transfer syntax)
    "6bffd098-a112-3610-9833-46c3f87e345a",  # wkssvc
    "338cd001-2244-31f1-aaaa-900038001003",  # winreg
    "367abb81-9844-35f1-ad32-98f038001003",  # svcctl
    "e1af8308-5d1f-11c9-91a4-08002b14a0fa",  # epmapper
)
_NDR_SYNTAX: Final = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860").bytes_le + b"\x02\0\0\0"


def _dce_pdus(data: bytes) -> list[bytes] | None:
    """The PDUs of little-endian connection-oriented DCE/RPC over TCP, or None."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 16 or data[pos] != 5 or data[pos + 4] & 0xF0 != 0x10:
            return None
        frag_len = _DCE.unpack_from(data, pos)[5]
        if frag_len < 16 or pos + frag_len > len(data):
            return None
        out.append(data[pos : pos + frag_len])
        pos += frag_len
    return out


def _multibind(data: bytes) -> bytes | None:
    """Every BIND and ALTER_CONTEXT offers decoy interfaces first (context ids 200 up), as
    Metasploit's fake_bind_multi does: the server accepts them all and the calls go on naming
    the real context's id."""
    pdus = _dce_pdus(data)
    if pdus is None:
        return None
    out = []
    changed = False
    for pdu in pdus:
        ver, minor, ptype, flags, drep, frag_len, auth_len, call_id = _DCE.unpack_from(pdu)
        if ptype not in (11, 14) or auth_len or len(pdu) < 28:
            out.append(pdu)
            continue
        count = pdu[24]
        decoys = b"".join(
            struct.pack("<HBx", 200 + i, 1)
            + uuid.UUID(iface).bytes_le
            + struct.pack("<HH", 1, 0)
            + _NDR_SYNTAX
            for i, iface in enumerate(_FAKE_INTERFACES)
        )
        body = pdu[16:24] + bytes((count + len(_FAKE_INTERFACES),)) + pdu[25:28] + decoys
        body += pdu[28:]
        header = _DCE.pack(ver, minor, ptype, flags, drep, 16 + len(body), 0, call_id)
        out.append(header + body)
        changed = True
    return b"".join(out) if changed else None


SMB_REWRITES: Final[dict[str, tuple[Rewrite, str]]] = {
    "smb-keepalive": (_keepalives, "NetBIOS keep-alive before every SMB message"),
    "smb-echo-first": (_echo_first, "an SMB ECHO first, in the same segment"),
    "dcerpc-fragments": (_dce_split, "DCE/RPC requests cut into 8-byte-stub fragments"),
    "dcerpc-multibind": (_multibind, "decoy interfaces bound first (fake_bind_multi)"),
    "netbios-session-request": (session_first, "a NetBIOS session request first (TCP 139)"),
}


# ----------------------------------------------------------------------------- HTTP, more
# Rewrites where the request's framing or the parser behind the server is what changes
# (request smuggling, method tokens, padding past an inspection window, the encodings of
# the documents and expressions the application parses).


def _method_lower(data: bytes) -> bytes | None:
    """Every method in lower case: a method is a case-sensitive token (RFC 9110 section 9.1)
    and Apache hands an unregistered one to CGI scripts and modules as it is
    (HttpProtocolOptions' default LenientMethods): for Apache only (nginx, IIS and Tomcat
    refuse it or answer 501)."""
    if _requests(data) is None:
        return None
    return _changed(
        data, _REQUEST_LINE.sub(lambda m: m.group(1).lower() + m.group()[len(m.group(1)) :], data)
    )


def _smuggle_te(data: bytes) -> bytes | None:
    """A request first whose Transfer-Encoding is not exactly "chunked" and whose
    Content-Length covers only a chunk-size line: Apache 2.2 reads the Content-Length
    ("Unknown Transfer-Encoding ...; using Content-Length"), then the real requests; a reader
    that takes the chunks takes them for that chunk's data (TE.CL request smuggling). The
    chunk's end and last chunk come after them (Apache answers 400 to that line and closes).
    For Apache (2.2; 2.4 refuses the first request)."""
    if _requests(data) is None:
        return None
    size_line = b"%x\r\n" % len(data)
    carrier = (
        b"POST /index.html HTTP/1.1\r\nHost: vpatch.example\r\nTransfer-Encoding: xchunked\r\n"
        b"Content-Length: %d\r\n\r\n" % len(size_line)
    )
    return carrier + size_line + data + b"\r\n0\r\n\r\n"


PAD_BODY: Final = 70 * 1024  # bytes of padding before a body's parameters (past 64 KiB)
_CONTENT_TYPE: Final = re.compile(rb"(?im)^content-type:[ \t]*([^\r\n]*)")
_MP_BOUNDARY: Final = re.compile(rb'(?i)boundary\s*=\s*(?:"([^"]+)"|([^\s;,]+))')


def _with_body(head: bytes, body: bytes) -> tuple[bytes, bytes]:
    return re.sub(rb"(?im)^(content-length:[ \t]*)\d+", rb"\g<1>%d" % len(body), head), body


def _bodies_of(data: bytes, kind: bytes, fn: Callable[[bytes], bytes]) -> bytes | None:
    """`fn` applied to the body of every request of `data` whose Content-Type holds `kind`
    (Content-Length set again); None when `data` is not requests or nothing changed."""
    reqs = _requests(data)
    if reqs is None:
        return None
    out = []
    for head, body in reqs:
        found = _CONTENT_TYPE.search(head)
        if body and found and kind in found.group(1).lower():
            head, body = _with_body(head, fn(body))
        out.append((head, body))
    return _changed(data, _join(out))


def _padded_body(head: bytes, body: bytes) -> bytes | None:
    """`body` with PAD_BODY bytes of padding before its parameters, in its own syntax."""
    found = _CONTENT_TYPE.search(head)
    ctype = found.group(1).lower() if found else b""
    if b"x-www-form-urlencoded" in ctype:
        return b"pad=" + b"A" * PAD_BODY + b"&" + body
    if b"json" in ctype and body.lstrip()[:1] == b"{" and body.strip() != b"{}":
        start = body.index(b"{") + 1
        return body[:start] + b'"pad":"' + b"A" * PAD_BODY + b'",' + body[start:]
    bound = _MP_BOUNDARY.search(found.group(1)) if found else None
    if b"multipart/" in ctype and bound is not None:
        delim = b"--" + (bound.group(1) or bound.group(2))
        if body.startswith(delim):
            pad = b'Content-Disposition: form-data; name="pad"\r\n\r\n' + b"A" * PAD_BODY
            return delim + b"\r\n" + pad + b"\r\n" + body
    return None


def _body_pad(data: bytes) -> bytes | None:
    """70 KiB of padding before the parameters of every form, JSON or multipart body (a
    padding parameter, member or part): the application parses the whole body (Tomcat's
    maxPostSize 2 MB, PHP's post_max_size 8 MB, ASP.NET's maxRequestLength 4 MB)."""
    reqs = _requests(data)
    if reqs is None:
        return None
    out = []
    for head, body in reqs:
        padded = _padded_body(head, body) if body else None
        out.append(_with_body(head, padded) if padded is not None else (head, body))
    return _changed(data, _join(out))


_XML_TEXT: Final = re.compile(rb">([^<]+)<")


def _xml_bodies(fn: Callable[[bytes], bytes]) -> Rewrite:
    """`fn` applied to every text node of every XML body (a Content-Type naming xml)."""

    def rewrite(data: bytes) -> bytes | None:
        return _bodies_of(
            data, b"xml", lambda body: _XML_TEXT.sub(lambda m: b">" + fn(m.group(1)) + b"<", body)
        )

    return rewrite


def _charrefs(text: bytes) -> bytes:
    """Every byte but blanks as a character reference (XML 1.0 section 4.1); a text that
    holds references already is left as it is."""
    if b"&" in text:
        return text
    return b"".join(bytes([c]) if c in b" \t\r\n" else b"&#%d;" % c for c in text)


def _cdata(text: bytes) -> bytes:
    """The text as CDATA sections of 2 bytes (XML 1.0 section 2.7): the parser hands on their
    concatenation (DOM's text content, XPP3's and StAX's coalesced TEXT)."""
    if b"&" in text or not text.strip():
        return text
    return b"".join(b"<![CDATA[" + text[i : i + 2] + b"]]>" for i in range(0, len(text), 2))


_JSON_STRING: Final = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _json_escape(data: bytes) -> bytes | None:
    """Every character of every string of a JSON body written as a \\u escape (RFC 8259
    section 7): every JSON parser reads the same strings."""

    def string(m: re.Match[bytes]) -> bytes:
        out = re.sub(
            rb"\\u[0-9A-Fa-f]{4}|\\.|([\x20-\x7e])",
            lambda e: b"\\u%04x" % e.group(1)[0] if e.group(1) else e.group(),
            m.group(1),
        )
        return b'"' + out + b'"'

    return _bodies_of(data, b"json", lambda body: _JSON_STRING.sub(string, body))


_OGNL_OPEN: Final = re.compile(rb"[%$]\{")


def _ognl_expressions(text: bytes, fn: Callable[[bytes], bytes]) -> bytes:
    """`fn` applied to the inside of every `%{...}` / `${...}` of `text` that is OGNL (uses
    `#` variables or `@` class references; Log4j lookups use neither), outside its quoted
    strings; the braces are found as Struts' TextParseUtil finds them (counting nesting)."""
    out = bytearray()
    pos = 0
    for m in _OGNL_OPEN.finditer(text):
        if m.start() < pos:
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {ord("{"): 1, ord("}"): -1}.get(text[i], 0)
            i += 1
        inner = text[m.end() : i - 1]
        if depth or not (b"#" in inner or b"@" in inner):
            continue
        parts = re.split(rb"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", inner)
        done = b"".join(p if k % 2 else fn(p) for k, p in enumerate(parts))
        out += text[pos : m.end()] + done + b"}"
        pos = i
    return bytes(out + text[pos:]) if pos else text


def _ognl_rewrite(fn: Callable[[bytes], bytes]) -> Rewrite:
    """`fn` applied inside the OGNL expressions of every header value and body (not the
    request line: servers refuse a backslash or blank there)."""

    def rewrite(data: bytes) -> bytes | None:
        reqs = _requests(data)
        if reqs is None:
            return None
        out = []
        for head, body in reqs:
            first, sep, rest = head.partition(b"\r\n")
            head = first + sep + _ognl_expressions(rest, fn)
            if body:
                head, body = _with_body(head, _ognl_expressions(body, fn))
            out.append((head, body))
        return _changed(data, _join(out))

    return rewrite


def _java_escapes(text: bytes) -> bytes:
    """Letters and `.`, `@`, `_` as Java unicode escapes: OGNL's parser decodes them before
    it reads a token (its grammar is built with JAVA_UNICODE_ESCAPE)."""
    return re.sub(rb"[A-Za-z._@]", lambda m: b"\\u%04x" % m.group()[0], text)


def _ognl_blanks(text: bytes) -> bytes:
    """Blanks around every `@` and every `.` before a name: OGNL skips blanks between tokens,
    and a class name is its identifiers and dots as separate tokens (`@ java . lang . X @`)."""
    return re.sub(rb"(@|\.(?=[A-Za-z_$]))", rb" \1 ", text)


_PART_HEAD: Final = re.compile(rb"(?im)^(content-disposition:[^\r\n]*)")


def _multipart_fold(data: bytes) -> bytes | None:
    """Every part's Content-Disposition folded after each ";" (a continuation line starting
    with a space): commons-fileupload (FileUploadBase.getParsedHeaders) and PHP's rfc1867
    parser join continuation lines; for Java servers and Apache (PHP)."""
    return _bodies_of(
        data,
        b"multipart/",
        lambda body: _PART_HEAD.sub(lambda m: m.group(1).replace(b"; ", b";\r\n "), body),
    )


# Rewrites only Apache (the "" family's HTTP servers) reads as the original.
APACHE_ONLY: Final = frozenset({"http-method-lower", "http-smuggle-te"})
# Rewrites only Java servers and applications read as the original (XML text, OGNL, 4 KB chunk
# extensions: Tomcat's maxExtensionSize is 8 KiB); what Java servers and Apache both read so
# (folded multipart part headers: commons-fileupload and PHP).
JAVA_ONLY: Final = frozenset(
    {
        "http-xml-charref",
        "http-xml-cdata",
        "http-ognl-unicode",
        "http-ognl-blanks",
        "http-chunk-ext-long",
    }
)
JAVA_AND_APACHE: Final = frozenset({"http-multipart-fold"})

HTTP_REWRITES.update(
    {
        "http-method-lower": (_method_lower, "request methods in lower case (Apache)"),
        "http-smuggle-te": (_smuggle_te, "behind a TE.CL smuggling request (Apache 2.2)"),
        "http-body-pad": (_body_pad, "70 KiB of padding before a body's parameters"),
        "http-xml-charref": (_xml_bodies(_charrefs), "XML text as character references"),
        "http-xml-cdata": (_xml_bodies(_cdata), "XML text as 2-byte CDATA sections"),
        "http-json-escape": (_json_escape, "JSON strings as \\u escapes"),
        "http-ognl-unicode": (_ognl_rewrite(_java_escapes), "OGNL as Java unicode escapes"),
        "http-ognl-blanks": (_ognl_rewrite(_ognl_blanks), "blanks between OGNL tokens"),
        "http-multipart-fold": (_multipart_fold, "multipart part headers folded"),
        "http-chunk-ext-long": (_chunked(64, True, 4000), "4 KB chunk extensions (Tomcat)"),
    }
)
