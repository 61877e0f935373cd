"""Character sets of HTTP request bodies: which one the server decodes a body (or a parameter)
in, and that decoding, so that an attack re-encoded in a charset the application honours is
still seen by the rules on `http.body` and `http.body_params`.

Servers decode text in the charset the request declares before the application reads it:
ASP.NET on IIS reads `Request.Form` (and `Request.QueryString`) in the `charset` of
`Content-Type` through .NET's `Encoding.GetEncoding`, which knows the EBCDIC code pages
(`ibm037`, `ibm500`, `cp875`, `ibm1026`, ...: the known WAF bypass), UTF-16/UTF-32 and UTF-7;
Tomcat and Django honour the charset for form parameters; JSON parsers (RFC 4627 section 3,
Jackson, body-parser) read UTF-16 and UTF-32 bodies, found by their BOM or by the pattern of
zero bytes in the first four octets; XML parsers do the same (XML 1.0 appendix F).

- `declared_codec(content_type)`: the Python codec of a `charset=` parameter, or None when there
  is none, it is UTF-8 or US-ASCII (what the undecoded fields already show), or the name is not in
  the table `CHARSETS` (such a body is kept as its bytes; documented in docs/rules.md);
- `sniffed_codec(body, json_or_xml)`: UTF-8-with-BOM/UTF-16/UTF-32 found by a byte order mark,
  and for JSON or XML bodies by the zero-byte pattern;
- `decode_text(data, codec)`: the text, errors replaced; "utf-16"/"utf-32" without a BOM take
  the byte order the zero bytes show (a server with the other order would read no attack);
- `ascii_compatible(codec)`: whether ASCII bytes (and so `=`, `&`, `%`) mean themselves.

Guarantees: never raises; charset names are resolved through the fixed table `CHARSETS` only,
never by looking an attacker's name up in Python's codec registry (whose cache of misses would
grow with every new name); names are cut at MAX_CHARSET_NAME characters.
"""

from __future__ import annotations

import codecs
import re
from typing import Final

__all__ = [
    "CHARSETS",
    "MAX_CHARSET_NAME",
    "ascii_compatible",
    "codec_of",
    "decode_text",
    "declared_codec",
    "sniffed_codec",
]

MAX_CHARSET_NAME: Final = 40


def _names(codec: str, *aliases: str) -> dict[str, str]:
    return dict.fromkeys((codec, *aliases), codec)


# The charset names (lower case) servers accept -> the Python codec. .NET's names and aliases
# (Encoding.GetEncoding), the IANA names and the "cpNNN"/"ibmNNN" forms.
CHARSETS: Final[dict[str, str]] = {
    **_names("utf-16", "utf16", "unicode", "ucs-2", "iso-10646-ucs-2", "csunicode"),
    **_names("utf-16-le", "utf-16le", "utf16le"),
    **_names("utf-16-be", "utf-16be", "utf16be", "unicodefffe"),
    **_names("utf-32", "utf32", "ucs-4", "iso-10646-ucs-4"),
    **_names("utf-32-le", "utf-32le", "utf32le"),
    **_names("utf-32-be", "utf-32be", "utf32be"),
    **_names("utf-7", "utf7", "csunicode11utf7", "unicode-1-1-utf-7", "x-unicode-2-0-utf-7"),
    **_names("utf-8-sig"),
    # EBCDIC code pages Python knows (.NET also has ibm870, ibm01047, ... which it does not)
    **_names(
        "cp037",
        "ibm037",
        "ibm-037",
        "ibm37",
        "csibm037",
        "ebcdic-cp-us",
        "ebcdic-cp-ca",
        "ebcdic-cp-wt",
        "ebcdic-cp-nl",
        "ibm00037",
    ),
    **_names("cp500", "ibm500", "ibm-500", "csibm500", "ebcdic-cp-be", "ebcdic-cp-ch", "ibm00500"),
    **_names("cp875", "ibm875", "ibm-875", "x-ebcdic-greek"),
    **_names("cp1026", "ibm1026", "ibm-1026", "csibm1026", "ibm01026"),
    **_names("cp273", "ibm273", "ibm-273", "csibm273", "ibm00273"),
    **_names("cp424", "ibm424", "ibm-424", "csibm424", "ebcdic-cp-he"),
    **_names("cp1140", "ibm1140", "ibm01140", "ibm-1140"),
    # ASCII-compatible single- and multi-byte sets: only bytes >= 0x80 change
    **{f"windows-{n}": f"cp{n}" for n in range(1250, 1259)},
    **{f"cp{n}": f"cp{n}" for n in range(1250, 1259)},
    **{f"iso-8859-{n}": f"iso8859-{n}" for n in (*range(2, 12), *range(13, 17))},
    **{f"iso8859-{n}": f"iso8859-{n}" for n in (*range(2, 12), *range(13, 17))},
    **_names("latin-1", "latin1", "l1", "iso-8859-1", "iso8859-1", "iso_8859-1", "cp819"),
    **_names("ascii", "us-ascii"),
    **_names("koi8-r", "koi8r"),
    **_names("koi8-u", "koi8u"),
    **_names("cp437", "ibm437"),
    **_names("cp850", "ibm850"),
    **_names("cp866", "ibm866"),
    **_names("shift_jis", "shift-jis", "sjis", "ms_kanji", "x-sjis", "cp932", "windows-31j"),
    **_names("euc-jp", "eucjp", "x-euc-jp"),
    **_names("iso-2022-jp", "csiso2022jp"),
    **_names("gbk", "gb2312", "cp936", "x-gbk"),
    **_names("gb18030"),
    **_names("big5", "cp950", "x-x-big5"),
    **_names("euc-kr", "euckr", "cp949", "ks_c_5601-1987"),
}
_UNDECODED: Final = frozenset({"ascii", "utf-8"})  # what the undecoded fields already show

_CHARSET_PARAM: Final = re.compile(r"""(?i);\s*charset\s*=\s*["']?\s*([^"'\s;,]{1,80})""")
_ASCII: Final = bytes(range(128))
_ascii_ok: dict[str, bool] = {}  # codec -> ascii_compatible(codec), filled from CHARSETS only


def _table_codec(name: str) -> str | None:
    codec = CHARSETS.get(name.strip().lower()[:MAX_CHARSET_NAME])
    return None if codec is None or codec in _UNDECODED else codec


def declared_codec(content_type: str) -> str | None:
    """The codec of the `charset` parameter of a Content-Type value, when a server would decode
    the body other than as bytes/UTF-8 (see the module comment)."""
    found = _CHARSET_PARAM.search(content_type)
    return None if found is None else _table_codec(found.group(1))


def codec_of(name: str) -> str | None:
    """The codec of a bare charset name (a multipart `_charset_` field value), or None."""
    return _table_codec(name)


def sniffed_codec(body: bytes, json_or_xml: bool) -> str | None:
    """UTF-32/UTF-16/UTF-8 told by a byte order mark, or for a JSON or XML body by the zero
    bytes in its first four octets (RFC 4627 section 3: "00 00 00 xx" UTF-32BE, "00 xx 00 xx"
    UTF-16BE, "xx 00 00 00" UTF-32LE, "xx 00 xx 00" UTF-16LE)."""
    head = body[:4]
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if not json_or_xml or len(head) < 4 or 0 not in head:
        return None
    return _ZERO_PATTERNS.get(bytes(1 if b == 0 else 0 for b in head))


_ZERO_PATTERNS: Final = {  # which of the first four octets are zero -> the encoding
    b"\x01\x01\x01\x00": "utf-32-be",
    b"\x00\x01\x01\x01": "utf-32-le",
    b"\x01\x00\x01\x00": "utf-16-be",
    b"\x00\x01\x00\x01": "utf-16-le",
}


def _ordered(data: bytes, codec: str) -> str:
    """The codec to read `data` with: "utf-16"/"utf-32" with a BOM stay (the codec drops it);
    without one, the byte order the zero bytes of the first unit show (big-endian when the
    unit starts with zero)."""
    if codec == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16-be" if data[:1] == b"\x00" and data[1:2] != b"\x00" else "utf-16-le"
    if codec == "utf-32" and not data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32-be" if data[:1] == b"\x00" else "utf-32-le"
    return codec


def decode_text(data: bytes, codec: str) -> str:
    """`data` decoded in `codec` (a value of CHARSETS), undecodable bytes as U+FFFD."""
    try:
        return data.decode(_ordered(data, codec), "replace")
    except (LookupError, ValueError):  # not expected for the table's codecs: keep the bytes
        return data.decode("latin-1")


def ascii_compatible(codec: str) -> bool:
    """Whether every ASCII byte decodes to itself in `codec` (the delimiters of a form body
    then read as in UTF-8, and a pure-ASCII body decodes to itself)."""
    known = _ascii_ok.get(codec)
    if known is None:
        try:
            known = codecs.decode(_ASCII, codec, "replace") == _ASCII.decode("ascii")
        except (LookupError, ValueError):
            known = False
        if codec in CHARSETS.values():
            _ascii_ok[codec] = known
    return known
