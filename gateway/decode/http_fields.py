"""Derived HTTP request fields for virtual patches: what a vulnerable server makes of a request.

Pure functions over one decoded request (no I/O, no state). The HTTP adapter in
`gateway/decode/app.py` turns their results into the `http.*` fields documented in docs/rules.md:

- `header_lines`: every header as `name: value` (lower-case name, folded lines unfolded) one per
  line, so one pattern can test "the start of ANY header value" (Shellshock, CVE-2014-6271);
- `basic_credentials`: the base64-decoded `user:password` of `Authorization`/`Proxy-Authorization:
  Basic` (RFC 7617 section 2), where Log4Shell payloads hide;
- `url_params`: `name=value` lines of an `application/x-www-form-urlencoded` string (WHATWG URL
  standard section 5.1: `+` is a space, %-escapes decoded; repeated decoding as in `http.uri`);
- `resolve_lookups`: Log4j 2 string substitution (Log4j manual, "Property Substitution" and
  "Lookups") applied the way the vulnerable library applies it, innermost `${...}` first:
  `${lower:x}`, `${upper:x}`, `${prefix:name:-default}` (a failing lookup yields its default,
  `${::-j}` is "j"), `${date:'x'}` with a quoted literal. Every other lookup (`${jndi:...}`,
  `${env:HOME}`, ...) is kept as written, so the result shows the lookups the library would run;
- `climb_depth`: how many `..` segments of a fully decoded path reach above the root, which
  `normalize_uri` clamps (RFC 3986 section 5.2.4) and a traversal exploit relies on.

Guarantees: never raises on any input; every output is bounded (`MAX_DERIVED_BYTES`,
`MAX_PARAMS` parameters); lookups are resolved in one linear pass, whatever their nesting. A
function given a `cuts` list appends one line to it whenever a bound left part of its input out
of the result (the engine's `limits.field` policy judges it: gateway/flow/limits.py), so no
padding pushes a parameter or a header out of a derived field unseen.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterable
from typing import Final

from gateway.decode import charsets as _charsets
from gateway.decode.uri import MAX_DECODE_ROUNDS, decode_once

__all__ = [
    "MAX_DERIVED_BYTES",
    "MAX_HEADER_LINES",
    "MAX_LOOKUP_INPUT",
    "MAX_PARAMS",
    "basic_credentials",
    "climb_depth",
    "decode_content",
    "form_params",
    "json_params",
    "multipart_params",
    "ognl_form",
    "xml_text",
    "full_percent_decode",
    "header_lines",
    "lookup_text",
    "may_hold_lookup",
    "resolve_lookups",
    "url_params",
]

# Bounds of the derived fields, chosen so that a request the servers accept is never cut: a
# field holds as much as the decoder keeps of its source (the body it inspects: 64 KiB, the
# head: 1 MiB), and as many parameters as PHP (max_input_vars) and ASP.NET
# (MaxHttpCollectionKeys) hand an application by default (1000). Past them `cuts` notes it.
MAX_DERIVED_BYTES: Final = 64 * 1024  # bound of every derived field value (http.MAX_BODY_INSPECT)
MAX_HEADER_LINES: Final = 1024 * 1024  # bound of http.header_lines (http.MAX_HEAD_BYTES)
MAX_LOOKUP_INPUT: Final = 1024 * 1024  # characters of one request part resolved (a head's bound)
MAX_PARAMS: Final = 1024  # parameters kept from one query string or form body

_PCT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_PCT_U: Final = re.compile(r"%[uU]([0-9A-Fa-f]{4})")
_LOOKUP_TOKEN: Final = re.compile(r"\$\{|\}")  # what opens and closes a lookup
_KEPT: Final = re.compile(r"\$\{")
_HIGH: Final = re.compile("[\xc0-\uffff]")  # a byte that may start a UTF-8 form of "." or "/"


def _cap(text: str) -> str:
    return text[:MAX_DERIVED_BYTES]


def full_percent_decode(text: str, plus_is_space: bool = False) -> str:
    """%-decode (and IIS %uXXXX) repeatedly, up to MAX_DECODE_ROUNDS, as servers that decode
    twice do; `+` becomes a space first when `plus_is_space` (form encoding)."""
    text = _cap(text)
    if plus_is_space:
        text = text.replace("+", " ")
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = _PCT_U.sub(lambda m: chr(int(m.group(1), 16)), text)
        decoded = _PCT.sub(lambda m: chr(int(m.group(1), 16)), decoded)
        if decoded == text:
            break
        text = decoded
    return text


def _past_bytes(cuts: list[str] | None, bound: int = MAX_DERIVED_BYTES) -> None:
    if cuts is not None:
        cuts.append(f"bytes past {bound}")


def _past_params(cuts: list[str] | None) -> None:
    if cuts is not None:
        cuts.append(f"parameters past {MAX_PARAMS}")


def header_lines(headers: Iterable[tuple[str, str]], cuts: list[str] | None = None) -> str:
    """`name: value` per header, in order, joined by newlines (bounded)."""
    out: list[str] = []
    size = 0
    for name, value in headers:
        line = f"{name}: {value}"
        size += len(line) + 1
        if size > MAX_HEADER_LINES:
            _past_bytes(cuts, MAX_HEADER_LINES)
            break
        out.append(line)
    return "\n".join(out)


def basic_credentials(value: str | None) -> str | None:
    """The decoded `user:password` of a `Basic` credentials header value, or None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    token = "".join(token.split())[: MAX_DERIVED_BYTES * 2]
    token += "=" * (-len(token) % 4)
    try:
        raw = base64.b64decode(token, validate=False)
    except (binascii.Error, ValueError):
        return None
    return _cap(raw.decode("latin-1"))


def url_params(text: str, cuts: list[str] | None = None) -> str:
    """`name=value` lines of a urlencoded string, both sides fully decoded (bounded)."""
    out: list[str] = []
    size = 0
    parts = text.split("&", MAX_PARAMS)
    if len(parts) > MAX_PARAMS and parts.pop().strip("&"):
        _past_params(cuts)
    for part in parts:
        if not part:
            continue
        name, eq, value = part.partition("=")
        if len(value) > MAX_DERIVED_BYTES or len(name) > MAX_DERIVED_BYTES:
            _past_bytes(cuts)
            break
        line = full_percent_decode(name, True) + eq + full_percent_decode(value, True)
        size += len(line) + (1 if out else 0)  # the joined length exactly
        if size > MAX_DERIVED_BYTES:
            _past_bytes(cuts)
            break
        out.append(line)
    return "\n".join(out)


def _substitute(body: str) -> str:
    """One lookup's replacement, its nested lookups already resolved."""
    prefix, colon, rest = body.partition(":")
    key = prefix.strip().lower()
    if colon and key == "lower":
        return rest.lower()
    if colon and key == "upper":
        return rest.upper()
    if ":-" in body:  # ${prefix:name:-default}: the lookup fails, the default is used
        return body.split(":-", 1)[1]
    if colon and key == "date":
        quoted = re.fullmatch(r"\s*'([^']*)'\s*", rest)
        if quoted:
            return quoted.group(1)
    return "${" + body + "}"  # a lookup that runs as written (jndi, env, ...): keep it


def resolve_lookups(text: str) -> str:
    """Log4j-style substitution of `text`, innermost lookups first, in one pass over it: a
    lookup is replaced when its "}" arrives, its nested ones already resolved, so any nesting
    depth costs time linear in the text (at most MAX_LOOKUP_INPUT characters). An unclosed
    "${" stays as written. When the result is longer than MAX_DERIVED_BYTES, the text around
    each lookup Log4j would still run is kept instead of the head, so no padding before a
    lookup hides it."""
    text = text[:MAX_LOOKUP_INPUT]
    stack: list[list[str]] = [[]]
    pos = 0
    search = _LOOKUP_TOKEN.search
    while True:
        if len(stack) == 1:  # outside any lookup: a "}" is plain text, go to the next "${"
            start = text.find("${", pos)
            if start < 0:
                break
            stack[0].append(text[pos:start])
            stack.append([])
            pos = start + 2
            continue
        token = search(text, pos)
        if token is None:
            break
        stack[-1].append(text[pos : token.start()])
        pos = token.end()
        if token.group() == "${":
            stack.append([])
        else:
            body = "".join(stack.pop())
            stack[-1].append(_substitute(body))
    stack[-1].append(text[pos:])
    while len(stack) > 1:  # unclosed lookups: as written
        inner = "".join(stack.pop())
        stack[-1].append("${" + inner)
    result = "".join(stack[0])
    if len(result) <= MAX_DERIVED_BYTES:
        return result
    return _cap(_around_lookups(result) or result)


# What can decode into a lookup's "$" or "{": a %-escape (any number of %25 layers, IIS %u)
# or a backslash-u escape of either; a text holding neither decodes into no lookup.
_PCT_LOOKUP: Final = re.compile(r"%(?:25)*(?:24|7[bB])|%[uU]00(?:24|7[bB])")
_ESCAPED_LOOKUP: Final = re.compile(r"\\u00(?:24|7[bB])")
LOOKUP_CONTEXT: Final = 4096  # a resolved part longer than this keeps only its lookups' context


def may_hold_lookup(text: str) -> bool:
    """Whether `text` holds a lookup's "${" or an escape that `lookup_text` decodes into one."""
    return (
        "${" in text
        or ("%" in text and _PCT_LOOKUP.search(text) is not None)
        or ("\\" in text and _ESCAPED_LOOKUP.search(text) is not None)
    )


def _around_lookups(text: str) -> str:
    """The text around each `${` still in `text` (64 characters before it, 256 from it),
    overlapping spans merged, one per line; "" when there is none."""
    spans: list[list[int]] = []
    for m in _KEPT.finditer(text):
        start, end = max(0, m.start() - 64), m.start() + 256
        if spans and start <= spans[-1][1]:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return "\n".join(text[a:b] for a, b in spans)


def lookup_text(parts: Iterable[str], cuts: list[str] | None = None) -> str:
    """Every part that holds a lookup (`${`, also once %-decoded, and with its backslash-u
    escapes decoded: a JSON or JavaScript string in a parameter, header or cookie that the
    application unescapes before logging it), resolved, one per line; of a resolved part
    longer than LOOKUP_CONTEXT (a whole body) only the context of each lookup still in it,
    so the lookups of a body and of its parameters fit side by side whatever their size."""
    out: list[str] = []
    size = 0
    for part in parts:
        candidates = [part]
        if "%" in part:  # any escape may decode, in rounds, into one ("%%32%34" is "$")
            candidates.append(full_percent_decode(part, plus_is_space=True))
        for text in list(candidates):
            if "\\" in text and _ESCAPED_LOOKUP.search(text):
                candidates.append(_JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text))
        for text in candidates:
            if "${" not in text:
                continue
            resolved = resolve_lookups(text)
            if len(resolved) > LOOKUP_CONTEXT:  # a whole body: what matters is each lookup
                resolved = _around_lookups(resolved)
            size += len(resolved) + 1
            if size > MAX_DERIVED_BYTES:
                _past_bytes(cuts)
                return "\n".join(out)
            out.append(resolved)
    return "\n".join(out)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes | None:
    """The body as the application reads it after its server's inflate filter (Apache
    mod_deflate's input filter, a framework's gzip middleware): `Content-Encoding` gzip, x-gzip
    or deflate (zlib or raw), applied in the order listed (RFC 9110 section 8.4), at most
    `limit` bytes out. None when nothing applies or the data does not inflate."""
    data = body
    changed = False
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            wbits = zlib.MAX_WBITS if data[:1] == b"\x78" else -zlib.MAX_WBITS
        elif coding == "identity":
            continue
        else:
            return None
        try:
            data = zlib.decompressobj(wbits).decompress(data, limit)
        except zlib.error:
            return None
        changed = True
    return data if changed else None


_BOUNDARY: Final = re.compile(r'(?i)boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;,]{1,200}))')
_DISPOSITION_PARAM: Final = re.compile(
    r'(?i)(?:^|;)\s*(name|filename\*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))'
)
MAX_PART_VALUE: Final = 1024  # bytes of each multipart field value kept in the params
_PART_END: Final = b"\r\n-"  # the CRLF (and dashes) before the next delimiter
_PART_CHARSET: Final = re.compile(r"""(?i)charset\s*=\s*["']?([^"'\s;,]{1,80})""")


def _multipart_parts(
    body: bytes, content_type: str, cuts: list[str] | None = None
) -> list[tuple[dict[str, str], str, bytes]]:
    """Each part of a multipart body with a Content-Disposition: its parameters (name,
    filename, filename*), the `charset` of its own Content-Type ("" when none) and its value
    (cut at MAX_PART_VALUE bytes), at most MAX_PARAMS parts. A value cut is not noted in
    `cuts` (file contents are long by nature; the raw body rules see them), the parts past
    MAX_PARAMS are."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return []
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    parts: list[tuple[dict[str, str], str, bytes]] = []
    pieces = body.split(delimiter, MAX_PARAMS + 1)
    if len(pieces) > MAX_PARAMS + 1 and len(pieces[-1].strip(b"-\r\n")) > 0:
        _past_params(cuts)
    for part in pieces[1 : MAX_PARAMS + 1]:
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            head, sep, value = part.partition(b"\n\n")
        if not sep:
            continue
        params: dict[str, str] | None = None
        charset = ""
        for raw in _unfolded(head.decode("latin-1")):
            name, colon, text = raw.partition(":")
            key = name.strip().lower()
            if colon and key == "content-disposition":
                params = {
                    m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                    for m in _DISPOSITION_PARAM.finditer(text)
                }
            elif colon and key == "content-type":
                got = _PART_CHARSET.search(text)
                charset = got.group(1) if got else ""
        if params is not None:
            parts.append((params, charset, value[:MAX_PART_VALUE].rstrip(_PART_END)))
    return parts


def _unfolded(head: str) -> list[str]:
    """A part's header lines with folded continuations (a line starting with a space or tab)
    joined to the line before by one space, as commons-fileupload's FileUploadBase
    getParsedHeaders and PHP's multipart parser read them (RFC 5322 section 2.2.3)."""
    lines: list[str] = []
    for raw in head.splitlines():
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += " " + raw.strip(" \t")
        else:
            lines.append(raw)
    return lines


def multipart_params(
    body: bytes, content_type: str, codec: str | None = None, cuts: list[str] | None = None
) -> str:
    """`name=value` lines of a multipart/form-data body (RFC 7578), and `filename=NAME` for
    file parts: what the application's form parser hands it, field names and filenames
    included (Struts S2-046 runs the filename). Values are cut at MAX_PART_VALUE bytes; bounded
    like every derived field. With `codec` (not None, "" for none declared), each value is
    decoded as the server reads it, in UTF-8: in its part's own `charset`, else the one the
    `_charset_` field names (RFC 7578 section 4.6), else `codec`; values of no known charset
    stay as their bytes."""
    parts = _multipart_parts(body, content_type, cuts)
    default = codec
    if codec is not None:
        for params, _charset, value in parts:
            if params.get("name") == "_charset_":
                default = _charsets.codec_of(value.decode("latin-1")) or codec
    out: list[str] = []
    size = 0
    for params, charset, value in parts:
        part_codec = (_charsets.codec_of(charset) if charset else None) or default
        decode = codec is not None and part_codec and params.get("name") != "_charset_"
        kept = _utf8_latin(value, part_codec) if decode and part_codec else None
        lines = [f"{params.get('name', '')}={kept or value.decode('latin-1')}"]
        for key in ("filename", "filename*"):
            if key in params:
                lines.append(f"filename={params[key].strip()}")
        for line in lines:
            size += len(line) + 1
            if size > MAX_DERIVED_BYTES:
                _past_bytes(cuts)
                return "\n".join(out)
            out.append(line)
    return "\n".join(out)


def _utf8_latin(data: bytes, codec: str) -> str:
    """`data` decoded in `codec`, as its UTF-8 bytes one character each (the form every
    derived field has before it is encoded as Latin-1)."""
    return _charsets.decode_text(data, codec).encode("utf-8", "replace").decode("latin-1")


_PCT_BYTES: Final = re.compile(rb"%([0-9A-Fa-f]{2})")


def _form_part(data: bytes, codec: str) -> str:
    """One name or value of a form body as a server that honours the charset reads it: `+` a
    space, %-escapes decoded to bytes, the bytes decoded in `codec`, then the further rounds
    of `full_percent_decode` (double encoding)."""
    raw = _PCT_BYTES.sub(lambda m: bytes((int(m.group(1), 16),)), data.replace(b"+", b" "))
    text = full_percent_decode(_charsets.decode_text(raw, codec))
    return text.encode("utf-8", "replace").decode("latin-1")


def form_params(body: bytes, codec: str, cuts: list[str] | None = None) -> str:
    """`name=value` lines of a urlencoded body in charset `codec` (a value of
    charsets.CHARSETS) as ASP.NET (`HttpValueCollection.FillFromEncodedBytes`), Tomcat and
    Django read it: split at the ASCII bytes `&` and `=`, each side %-decoded to bytes then
    decoded in `codec`; the lines in UTF-8, bounded as `url_params`."""
    out: list[str] = []
    size = 0
    if len(body) > MAX_DERIVED_BYTES * 4:
        _past_bytes(cuts)
    parts = body[: MAX_DERIVED_BYTES * 4].split(b"&", MAX_PARAMS)
    if len(parts) > MAX_PARAMS and parts.pop().strip(b"&"):
        _past_params(cuts)
    for part in parts:
        if not part:
            continue
        name, eq, value = part.partition(b"=")
        line = _form_part(name, codec) + ("=" if eq else "") + _form_part(value, codec)
        size += len(line) + (1 if out else 0)  # the joined length exactly
        if size > MAX_DERIVED_BYTES:
            _past_bytes(cuts)
            break
        out.append(line)
    return "\n".join(out)


_JSON_ESCAPE: Final = re.compile(r"\\u([0-9A-Fa-f]{4})")


def json_params(body: bytes, cuts: list[str] | None = None) -> str:
    """`path=value` lines of a JSON body's strings and numbers, keys and values with their
    escapes decoded (backslash-u0024{jndi: is ${jndi: to the application). A body that does
    not parse (or nests too deep for the parser) still has its backslash-u escapes decoded, as
    one line. Bounded like every derived field."""
    text = body.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        decoded = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
        if len(decoded) > MAX_DERIVED_BYTES:
            _past_bytes(cuts)
        return _cap(decoded)
    out: list[str] = []
    size = 0
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        if len(out) >= MAX_PARAMS:
            _past_params(cuts)
            break
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{path}.{key}" if path else str(key), v) for key, v in node.items())
            continue
        if isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
            continue
        line = f"{path}={node}"
        size += len(line) + 1
        if size > MAX_DERIVED_BYTES:
            _past_bytes(cuts)
            break
        out.append(line)
    return "\n".join(out)


_XML_TOKEN: Final = re.compile(
    r"<!--.*?(?:-->|\Z)|<!\[CDATA\[(.*?)(?:\]\]>|\Z)|&#(?:([0-9]{1,7})|[xX]([0-9A-Fa-f]{1,6}));"
    r"|&([A-Za-z_][\w.\-]{0,63});",
    re.S,
)
_XML_ENTITY_DECL: Final = re.compile(
    r"""<!ENTITY\s{1,64}([A-Za-z_][\w.\-]{0,63})\s{1,64}(?:"([^"]{0,4096})"|'([^']{0,4096})')"""
)
# `&lt;`, `&gt;` and their references stay as written, and a "<" in a CDATA section is written
# `&lt;`: text never turns into markup (an escaped `<java.lang.Runtime>` is no element).
_XML_PREDEFINED: Final = {"amp": "&", "quot": '"', "apos": "'"}
_XML_MARKUP: Final = frozenset({ord("<"), ord(">")})
MAX_ENTITY_DEPTH: Final = 4  # nested internal entity references expanded


def _xml_expand(text: str, entities: dict[str, str], depth: int) -> str:
    out: list[str] = []
    size = 0
    pos = 0
    for m in _XML_TOKEN.finditer(text):
        piece = text[pos : m.start()]
        pos = m.end()
        cdata, dec, hexa, name = m.groups()
        if cdata is not None:
            piece += cdata.replace("<", "&lt;")
        elif dec is not None or hexa is not None:
            code = int(dec) if dec is not None else int(hexa, 16)
            keep = code > 0x10FFFF or code in _XML_MARKUP
            piece += m.group() if keep else chr(code)
        elif name is not None:
            if name in _XML_PREDEFINED:
                piece += _XML_PREDEFINED[name]
            elif name in entities and depth < MAX_ENTITY_DEPTH:
                piece += _xml_expand(entities[name], entities, depth + 1)
            else:
                piece += m.group()
        out.append(piece)
        size += len(piece)
        if size > MAX_DERIVED_BYTES:
            break
    else:
        out.append(text[pos:])
    return _cap("".join(out))


def xml_text(text: str) -> str | None:
    """An XML document as its parser hands the text to the application (XML 1.0 sections
    2.5, 2.7, 4.1 and 4.4; the JDK's and .NET's default parsers): comments dropped, CDATA
    sections unwrapped, character references and the predefined entities decoded (but those
    of "<" and ">": text never becomes markup), and the
    internal general entities its DTD declares expanded (up to MAX_ENTITY_DEPTH levels, the
    result bounded by MAX_DERIVED_BYTES whatever the nesting). So `&#36;{jndi:`, `${jn<!---->di:`,
    `${jn<![CDATA[di:]]>` and `&a;&b;` with a="${jn", b="di:" all read `${jndi:`. None when
    nothing would change (no `&` and no `<!`)."""
    if "&" not in text and "<!" not in text:
        return None
    entities = {
        m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _XML_ENTITY_DECL.finditer(text[:MAX_DERIVED_BYTES])
    }
    result = _xml_expand(text, entities, 0)
    return result if result != text else None


_JAVA_UNICODE: Final = re.compile(r"(\\+)u+([0-9A-Fa-f]{4})")
_EXPRESSION_OPEN: Final = re.compile(r"[%$]\s*\{")
_BLANKS: Final = re.compile(r"[ \t\f\v]+")


def _java_unescape(m: re.Match[str]) -> str:
    slashes = m.group(1)
    if len(slashes) % 2 == 0:  # an escaped backslash, then a plain "u"
        return m.group()
    return slashes[:-1] + chr(int(m.group(2), 16))


def ognl_form(text: str) -> str | None:
    """`text` as OGNL reads the expressions in it (`%{...}`, `${...}`, which Struts evaluates:
    S2-045, S2-046): Java unicode escapes decoded anywhere (OGNL's JavaCC grammar is built with
    JAVA_UNICODE_ESCAPE, so backslash-u0040 is "@" before any token is read) and blanks
    dropped (OGNL skips them between tokens: `@ java . lang . Runtime @` names the class).
    Line ends are kept, so lines stay apart. None when `text` holds no expression or nothing
    changes."""
    if "{" not in text:
        return None
    decoded = _JAVA_UNICODE.sub(_java_unescape, text) if "\\" in text else text
    if not _EXPRESSION_OPEN.search(decoded):
        return None
    result = _BLANKS.sub("", decoded)
    return result if result != text else None


def climb_depth(uri: str) -> int:
    """How far the fully decoded path (as `http.uri` decodes it, `\\` as `/` included) climbs
    above its root through `..` segments; 0 when it stays inside."""
    head = _cap(uri).partition("?")[0]
    if ".." not in head and "%" not in head and not _HIGH.search(head):
        return 0  # no dot-dot can appear: nothing decodes into one (fast path, same answer)
    path = head
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = decode_once(path)
        if decoded == path:
            break
        path = decoded
    depth = climbed = 0
    for seg in path.replace("\\", "/").split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if depth == 0:
                climbed += 1
            else:
                depth -= 1
        else:
            depth += 1
    return climbed
