"""Request-target decoding: what the servers behind the gateway make of a URI, for the `http.uri`
and `http.uri.raw` fields (gateway/decode/app.py) and for policy exceptions
(gateway/policy/compiled.py).

Sources: libhtp (htp_util.c: htp_decode_path_inplace, decode_u_encoding_path,
htp_utf8_decode_path_inplace, htp_normalize_uri_path_inplace, and the Windows-1252 best-fit map
of htp_config.c), IIS (MS00-078: overlong UTF-8; MS01-026: a second decoding; `%uXXXX`; `\\` as a
path separator; case-insensitive paths), Apache httpd (ap_unescape_url, ap_getparents) and
Tomcat (path parameters after `;` removed from every segment).

- `uri_forms(target)`: the forms a server may act on, the primary one first. The primary form
  (`normalize_uri`) is the target split at its first `?`, then path and query decoded as often as
  something decodes (at most MAX_DECODE_ROUNDS, as a server that decodes twice does): `%XX`,
  IIS `%uXXXX` (code points above 0xFF through the best-fit map, as IIS hands them to an ANSI
  application; unmapped ones become `?`), overlong UTF-8 (2, 3 and 4 bytes) read as the ASCII byte
  it spells, valid UTF-8 whose code point best-fits to ASCII read as that byte (fullwidth `.` is
  `.`); then `\\` read as `/`, an absolute-form target reduced to its path, `.` and `..` segments
  removed and `//` merged (RFC 3986 section 5.2.4, never above the root), and ASCII letters in
  lower case (other bytes, of UTF-8 say, are kept). The other forms, when they differ: the path
  decoded once only (what Apache, Tomcat and IIS 6 act on) and twice, cut at its first NUL (CGI
  and file-system calls stop there), and with Tomcat's path parameters removed (`/a/..;/b` is
  `/b` to Tomcat).
- `raw_variants(target)`: the target with superfluous encoding layers peeled, for rules that
  describe the encoding a vulnerable component mis-decodes (`http.uri.raw`). Two kinds of pass:
  one decodes only the escapes of unreserved characters (RFC 3986 section 2.3: no client needs
  to encode them, so only a layer added on purpose holds them), the other only the escapes of
  `%` itself (`%25`: a layer of double encoding). What they leave encoded keeps its meaning, so a
  re-encoded `%c0%af` (`%%63%30%%61%66`, `%%2563%2530%%2561%2566`, `%%u0063%u0030...`) or
  `%255c` (`%255%u0063`) reads as written before the extra layer.

Guarantees: pure functions that never raise on any `str` (a code point above 0xFF in the input
is read as `?`); no output is longer than its input; at most MAX_FORMS forms and
MAX_RAW_VARIANTS raw variants.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "MAX_DECODE_ROUNDS",
    "MAX_FORMS",
    "MAX_RAW_VARIANTS",
    "decode_once",
    "normalize_uri",
    "peel_percent",
    "peel_unreserved",
    "raw_variants",
    "remove_dot_segments",
    "uri_forms",
]

MAX_DECODE_ROUNDS: Final = 3
MAX_FORMS: Final = 5  # primary, decoded once, decoded twice, cut at NUL, without path parameters
MAX_RAW_VARIANTS: Final = 2 * MAX_DECODE_ROUNDS - 1

# libhtp htp_config.c bestfit_1252 (from Microsoft's bestfit1252.txt): triples of
# (code point high byte, low byte, Windows-1252 byte) for code points above 0xFF.
_BESTFIT_1252: Final = bytes.fromhex(
    "010041010161010241010361010441010561010643010763010843010963010a43010b63010c43010d63010e44010f64"
    "011164011245011365011445011565011645011765011845011965011a45011b65011c47011d67011e47011f67012047"
    "012167012247012367012448012568012648012768012849012969012a49012b69012c49012d69012e49012f69013049"
    "01316901344a01356a01364b01376b01394c013a6c013b4c013c6c013d4c013e6c01414c01426c01434e01446e01454e"
    "01466e01474e01486e014c4f014d6f014e4f014f6f01504f01516f015452015572015652015772015852015972015a53"
    "015b73015c53015d73015e53015f73016254016374016454016574016654016774016855016975016a55016b75016c55"
    "016d75016e55016f7501705501717501725501737501745701757701765901777901795a017b5a017c7a018062019749"
    "019a6c019f4f01a04f01a16f01ab7401ae5401af5501b07501b67a01c07c01c32101cd4101ce6101cf4901d06901d14f"
    "01d26f01d35501d47501d55501d67501d75501d87501d95501da7501db5501dc7501de4101df6101e44701e56701e647"
    "01e76701e84b01e96b01ea4f01eb6f01ec4f01ed6f01f06a02616702b92702ba2202bc2702c45e02c82702cb6002cd5f"
    "03006003025e03037e030e2203315f03325f037e3b03934703985403a35303a64603a94f03b16103b46403b56503c070"
    "03c37303c47403c66604bb6805893a066a2520002020012020022020032020042020052020062020102d20112d20173d"
    "20322720356020442f207434207535207636207737207838207f6e208030208131208232208333208434208535208636"
    "20873720883820893920a750210243210745210a67210b48210c48210d48210e6821104921114921124c21136c21154e"
    "211850211950211a51211b52211c52211d5221245a21285a212a4b212c42212d43212e65212f6521304521314621334d"
    "21346f22122d22152f22165c22172a221a76221e3822237c22296e22363a223c7e22613d22643d22653d23035e232028"
    "23212923293c232a3e25002d250c2b25102b25142b25182b251c2b252c2d25342d253c2b25502d25522b25532b25542b"
    "25552b25562b25572b25582b25592b255a2b255b2b255c2b255d2b25642d25652d25662d25672d25682d25692d256a2b"
    "256b2b256c2b25845f27587c30002030083c30093e301a5b301b5dff0121ff0222ff0323ff0424ff0525ff0626ff0727"
    "ff0828ff0929ff0a2aff0b2bff0c2cff0d2dff0e2eff0f2fff1030ff1131ff1232ff1333ff1434ff1535ff1636ff1737"
    "ff1838ff1939ff1a3aff1b3bff1c3cff1d3dff1e3eff2040ff2141ff2242ff2343ff2444ff2545ff2646ff2747ff2848"
    "ff2949ff2a4aff2b4bff2c4cff2d4dff2e4eff2f4fff3050ff3151ff3252ff3353ff3454ff3555ff3656ff3757ff3858"
    "ff3959ff3a5aff3b5bff3c5cff3d5dff3e5eff3f5fff4060ff4161ff4262ff4363ff4464ff4565ff4666ff4767ff4868"
    "ff4969ff4a6aff4b6bff4c6cff4d6dff4e6eff4f6fff5070ff5171ff5272ff5373ff5474ff5575ff5676ff5777ff5878"
    "ff5979ff5a7aff5b7bff5c7cff5d7dff5e7e"
)
BESTFIT: Final[dict[int, int]] = {
    _BESTFIT_1252[i] << 8 | _BESTFIT_1252[i + 1]: _BESTFIT_1252[i + 2]
    for i in range(0, len(_BESTFIT_1252), 3)
}
_REPLACEMENT: Final = 0x3F  # "?": libhtp's bestfit_replacement_byte

_ESCAPE: Final = re.compile(r"%(?:([0-9A-Fa-f]{2})|[uU]([0-9A-Fa-f]{4}))")
# A lead byte of a multi-byte UTF-8 sequence (or of an overlong one) and what follows it.
_UTF8_SEQUENCE: Final = re.compile("[\xc0-\xf7][\x80-\xbf]+")
_UTF8_MASK: Final = (0x1F, 0x0F, 0x07)
_UTF8_MIN: Final = (0x80, 0x800, 0x10000)
_NOT_LATIN1: Final = re.compile("[^\x00-\xff]")
# An escape that `peel_unreserved` may decode: of an unreserved character (ALPHA, DIGIT, "-",
# ".", "_", "~"), or any %u escape (checked one by one).
_SUPERFLUOUS: Final = re.compile(
    r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee]|[uU][0-9A-Fa-f]{4})"
)
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT: Final = re.compile(r"%(?:25|[uU]0025)")
_PATH_PARAMETER: Final = re.compile(r";[^/]*")
# Lower case for ASCII letters only: the other characters are bytes (of UTF-8, say) to keep.
_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_PLAIN: Final = re.compile(r"/[A-Za-z0-9_\-~/]*(?:\.[A-Za-z0-9_\-~]+)?(?:\?[^%\\\x80-\uffff]*)?\Z")


def _code_point_byte(cp: int) -> str:
    """The Windows-1252 character IIS hands an ANSI application for a code point."""
    if cp < 0x100:
        return chr(cp)
    return chr(BESTFIT.get(cp, _REPLACEMENT))


def _escape(m: re.Match[str]) -> str:
    pair = m.group(1)
    if pair is not None:
        return chr(int(pair, 16))
    return _code_point_byte(int(m.group(2), 16))


def _utf8(m: re.Match[str]) -> str:
    """One UTF-8 sequence: overlong -> the ASCII byte it spells (IIS, MS00-078); a code point
    above 0xFF that best-fits -> that byte; anything else (valid, truncated) as it is."""
    text = m.group()
    lead = ord(text[0])
    extra = 1 if lead < 0xE0 else 2 if lead < 0xF0 else 3
    if len(text) <= extra:
        return text  # truncated sequence
    cp = lead & _UTF8_MASK[extra - 1]
    for ch in text[1 : extra + 1]:
        cp = cp << 6 | (ord(ch) & 0x3F)
    rest = text[extra + 1 :]
    if cp < _UTF8_MIN[extra - 1]:
        return chr(cp & 0x7F) + rest
    if cp > 0xFF:
        best = BESTFIT.get(cp)
        if best is not None:
            return chr(best) + rest
    return text


def decode_once(text: str) -> str:
    """One decoding pass as a server makes it: `%XX` and `%uXXXX` escapes, then UTF-8 forms.
    `text` holds bytes as Latin-1 characters; so does the result."""
    if "%" in text:
        text = _ESCAPE.sub(_escape, text)
    if _NOT_LATIN1.search(text):
        text = _NOT_LATIN1.sub("?", text)
    if _UTF8_SEQUENCE.search(text):
        text = _UTF8_SEQUENCE.sub(_utf8, text)
    return text


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on '/'-separated segments, `//` merged; never climbs above the
    root."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        elif seg == "" and out and not last:
            continue  # collapse '//'
        else:
            out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") or not path.startswith("/") else "/" + result


def _normalize(path: str, question: str, query: str) -> str:
    path = path.replace("\\", "/")
    if path[:7].lower() == "http://" or path[:8].lower() == "https://":  # absolute-form
        slash = path.find("/", path.index("//") + 2)
        path = "/" if slash < 0 else path[slash:]
    text = remove_dot_segments(path) + question + query
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def uri_forms(target: str) -> tuple[str, ...]:
    """The forms of a request target a server may act on, the primary one first (see the
    module comment); each form appears once."""
    if _PLAIN.match(target) and "//" not in target.partition("?")[0]:
        # Nothing to decode and no dot segment to remove (a single ".ext" in the last segment
        # is not one): the general path below would return exactly this.
        return (target.lower(),)
    path, question, query = target.partition("?")
    paths, queries = [path], [query]
    for _ in range(MAX_DECODE_ROUNDS):
        p, q = decode_once(paths[-1]), decode_once(queries[-1]) if question else ""
        if p == paths[-1] and q == queries[-1]:
            break
        paths.append(p)
        queries.append(q)
    forms = [_normalize(paths[-1], question, queries[-1])]
    for i in range(1, len(paths) - 1):  # decoded once, twice: what a single decoder acts on
        forms.append(_normalize(paths[i], question, queries[i]))
    full = paths[-1]
    nul = full.find("\x00")
    if nul >= 0:
        forms.append(_normalize(full[:nul], question, queries[-1]))
    if ";" in full:
        forms.append(_normalize(_PATH_PARAMETER.sub("", full), question, queries[-1]))
    return tuple(dict.fromkeys(forms))


def normalize_uri(target: str) -> str:
    """The primary form of `uri_forms`: the path (and query) the server acts on, lower-cased,
    for matching on `http.uri`."""
    return uri_forms(target)[0]


def _peel_escape(m: re.Match[str]) -> str:
    pair = m.group(1)
    if pair is not None:
        ch = chr(int(pair, 16))
    else:
        cp = int(m.group(2), 16)
        ch = chr(cp) if cp < 0x80 else chr(BESTFIT.get(cp, 0))
    return ch if ch in _UNRESERVED else m.group()


def peel_unreserved(text: str) -> str:
    """One pass decoding only the escapes (`%XX`, `%uXXXX`) of unreserved characters: what no
    client needs to encode, so only a layer added on purpose holds them."""
    if _SUPERFLUOUS.search(text) is None:
        return text
    return _ESCAPE.sub(_peel_escape, text)


def peel_percent(text: str) -> str:
    """One pass decoding only the escapes of `%` itself (`%25`, `%u0025`): a layer of double
    encoding."""
    if "%25" not in text and "%u0025" not in text.lower():
        return text
    return _PERCENT.sub("%", text)


def raw_variants(target: str) -> tuple[str, ...]:
    """`target` with superfluous encoding layers peeled (see the module comment): the target
    with double-encoding layers peeled (`peel_percent`, up to MAX_DECODE_ROUNDS - 1 times) and
    each of those and the target with the escapes of unreserved characters decoded
    (`peel_unreserved`). Distinct forms other than `target`, at most MAX_RAW_VARIANTS."""
    chain = [target]
    for _ in range(MAX_DECODE_ROUNDS - 1):
        peeled = peel_percent(chain[-1])
        if peeled == chain[-1]:
            break
        chain.append(peeled)
    forms = [*chain[1:], *(peel_unreserved(text) for text in chain)]
    return tuple(f for f in dict.fromkeys(forms) if f != target)
