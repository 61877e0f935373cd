"""gateway/decode/uri.py: request-target forms and raw variants, by case and by class.

The property tests state the two guarantees the rules rely on, for every path an attack may
take, whatever encoding a client chooses among those the servers decode:
- every encoding of a path normalises to the normalised plain path (`http.uri`);
- a raw target under one more layer of superfluous encoding has the target itself among its
  raw variants (what `http.uri.raw` rules see).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.uri import (
    BESTFIT,
    MAX_FORMS,
    MAX_RAW_VARIANTS,
    decode_once,
    normalize_uri,
    peel_percent,
    peel_unreserved,
    raw_variants,
    uri_forms,
)


@pytest.mark.parametrize(
    ("target", "forms"),
    [
        ("/index.html", ("/index.html",)),
        ("/A//B/", ("/a/b/",)),
        ("/a/./b/../c", ("/a/c",)),
        ("\\Windows\\System32", ("/windows/system32",)),
        ("http://host/x/../y?q=%41", ("/y?q=a",)),
        ("/scripts/..%c0%af../winnt/cmd.exe?/c+dir", ("/winnt/cmd.exe?/c+dir",)),
        # IIS 5 decodes twice (MS01-026); Apache, Tomcat and IIS 6 act on the once-decoded form
        (
            "/scripts/..%255c../winnt/cmd.exe",
            ("/winnt/cmd.exe", "/scripts/..%5c../winnt/cmd.exe"),
        ),
        ("/%u0041%u0042C", ("/abc",)),
        # IIS best-fit: fullwidth full stop and solidus, division slash
        ("/a/%uff0e%uff0e%uff0fetc%u2215passwd", ("/etc/passwd",)),
        # the same as UTF-8, and a 4-byte overlong slash
        ("/a/%ef%bc%8e%ef%bc%8e/b", ("/b",)),
        ("/a/..%f0%80%80%afb", ("/b",)),
        # NUL: CGI and file-system calls stop at it
        ("/shell.jsp%00.txt", ("/shell.jsp\x00.txt", "/shell.jsp")),
        # Tomcat drops path parameters from every segment
        ("/app/..;/manager/html", ("/app/..;/manager/html", "/manager/html")),
        # split at the first "?" before decoding: an encoded "?" is part of the path
        ("/a%3fb/../c?x=%2e%2e", ("/c?x=..",)),
        # valid UTF-8 below U+0100 is kept as it is (bytes as Latin-1)
        ("/caf%c3%a9", ("/caf\xc3\xa9",)),
    ],
)
def test_uri_forms(target: str, forms: tuple[str, ...]) -> None:
    assert uri_forms(target) == forms
    assert normalize_uri(target) == forms[0]


def test_decode_once() -> None:
    assert decode_once("%41%u0042%c0%ae") == "AB."
    assert decode_once("%u2215") == "/"
    assert decode_once("%u4e2d") == "?"  # no best fit in Windows-1252
    assert decode_once("100%") == "100%"
    assert decode_once("%zz%4") == "%zz%4"
    assert decode_once("\u4e2d") == "?"  # not a byte


def test_bestfit_map_is_libhtps() -> None:
    assert len(BESTFIT) == 390
    assert BESTFIT[0xFF0E] == ord(".") and BESTFIT[0x2215] == ord("/")
    assert BESTFIT[0xFF3C] == ord("\\") and BESTFIT[0x0100] == ord("A")


@pytest.mark.parametrize(
    ("target", "original"),
    [
        ("/prot%%63%30%%61%66ected", "/prot%c0%afected"),  # unreserved bytes %-encoded
        ("/prot%%2563%2530%%2561%2566ected", "/prot%c0%afected"),  # ... twice (IIS)
        ("/prot%%u0063%u0030%%u0061%u0066ected", "/prot%c0%afected"),  # ... as %uXXXX
        ("/s/..%255%u0063..", "/s/..%255c.."),  # a letter of a double encoding as %uXXXX
        ("/.%%%33%32%%36%35/", "/.%%32%65/"),  # CVE-2021-42013's %%32%65, %-encoded
        ("/.%%2532%2565/", "/.%2e/"),  # CVE-2021-41773's %2e, double-encoded
        ("/%73hell.%6A%73%70/", "/shell.jsp/"),
    ],
)
def test_raw_variants_recover_the_target_under_one_more_layer(target: str, original: str) -> None:
    assert original in raw_variants(target)


def test_raw_variants_keep_meaningful_escapes() -> None:
    assert raw_variants("/a%2fb%c0%af%3f%00") == ()  # reserved, non-ASCII, NUL: as sent
    assert raw_variants("/index.html") == ()
    assert peel_unreserved("%2D%ad%u002e") == "-%ad."
    assert peel_percent("%2541%u00252e") == "%41%2e"
    assert raw_variants("/report%2550.asp") == ("/report%50.asp", "/reportP.asp")


# ----------------------------------------------------------------------------- classes

_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_~", min_size=1)
_PATHS = st.lists(st.one_of(_SEGMENT, st.sampled_from([".", ".."])), min_size=1, max_size=8).map(
    lambda segs: "/" + "/".join(segs)
)


def _overlong(c: str) -> str:
    """A 2-byte overlong UTF-8 form of an ASCII character, %-encoded (MS00-078)."""
    b = ord(c)
    return f"%{0xC0 | b >> 6:02x}%{0x80 | b & 0x3F:02x}"


# Each maps one character of a plain path to a form a server reads as that character.
_ENCODINGS = [
    lambda c: c,
    lambda c: f"%{ord(c):02X}",  # %-encoding
    lambda c: f"%25{ord(c):02x}",  # double encoding (IIS 5)
    lambda c: f"%u{ord(c):04X}",  # IIS %u
    lambda c: f"%25u{ord(c):04x}",  # %u, double-encoded
    _overlong,  # overlong UTF-8 (IIS 4/5)
    lambda c: _overlong(c).replace("%", "%25"),  # overlong, double-encoded
    lambda c: c.swapcase(),  # IIS paths are case-insensitive
    lambda c: {"/": "\\", ".": "%uff0e"}.get(c, c),  # "\" as "/" (IIS); best-fit "."
    lambda c: "/./" if c == "/" else c,  # a "." segment
    lambda c: "//" if c == "/" else c,  # repeated slashes
]


@settings(max_examples=400, deadline=None)
@given(_PATHS, st.data())
def test_every_encoding_of_a_path_normalises_to_the_plain_path(
    path: str, data: st.DataObject
) -> None:
    choices = data.draw(
        st.lists(st.integers(0, len(_ENCODINGS) - 1), min_size=len(path), max_size=len(path))
    )
    encoded = "".join(_ENCODINGS[i](c) for i, c in zip(choices, path, strict=True))
    assert normalize_uri(encoded) == normalize_uri(path)


_RESERVED_ESCAPES = st.sampled_from(["%c0%af", "%c1%9c", "%2f", "%5c", "%00", "%3f", "%e0%80%ae"])
_RAW = st.lists(st.one_of(_SEGMENT, _RESERVED_ESCAPES, st.just("/")), min_size=1, max_size=10).map(
    lambda parts: "/" + "".join(parts)
)
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_~")


def _layer(raw: str, choices: list[int], double: bool) -> str:
    """One more layer over `raw`: chosen unreserved characters %-encoded (0), as %uXXXX (1) or
    kept (2); with `double`, every "%" of `raw` as "%25" and the %-encodings as "%25XX"."""
    out = []
    for c, i in zip(raw, choices, strict=True):
        if c == "%" and double:
            out.append("%25")
        elif c in _UNRESERVED and i == 0:
            out.append(f"%25{ord(c):02X}" if double else f"%{ord(c):02X}")
        elif c in _UNRESERVED and i == 1 and not double:
            out.append(f"%u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(_RAW, st.booleans(), st.data())
def test_a_raw_target_under_one_more_layer_is_among_its_raw_variants(
    raw: str, double: bool, data: st.DataObject
) -> None:
    choices = data.draw(st.lists(st.integers(0, 2), min_size=len(raw), max_size=len(raw)))
    encoded = _layer(raw, choices, double)
    assert raw == encoded or raw in raw_variants(encoded)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_forms_never_raise_grow_or_exceed_their_bounds(target: str) -> None:
    forms = uri_forms(target)
    variants = raw_variants(target)
    assert 1 <= len(forms) <= MAX_FORMS and len(variants) <= MAX_RAW_VARIANTS
    assert all(len(f) <= len(target) for f in (*forms, *variants))
    assert target not in variants
