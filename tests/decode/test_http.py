"""HTTP/1.x request decoder: one shared table of cases, fed whole and one byte at a time."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.http import (
    MAX_HEAD_BYTES,
    NEED_DATA,
    Body,
    EndOfRequest,
    HttpDecodeError,
    HttpRequestDecoder,
    Request,
    State,
    normalize_uri,
)


def run(stream: bytes, step: int | None) -> list[object]:
    """Feed `stream` whole (step None) or in pieces of `step` bytes; merge Body pieces."""
    dec = HttpRequestDecoder()
    events: list[object] = []
    pieces = (
        [stream] if step is None else [stream[i : i + step] for i in range(0, len(stream), step)]
    )
    for piece in pieces:
        dec.receive_data(piece)
        while (ev := dec.next_event()) is not NEED_DATA:
            if isinstance(ev, Body) and events and isinstance(events[-1], Body):
                events[-1] = Body(events[-1].data + ev.data)
            else:
                events.append(ev)
    return events


CASES = [
    (
        "simple GET",
        b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n",
        [("GET", "/index.html", {"host": "a"}), None, 0],
    ),
    (
        "content-length body then pipelined GET",
        b"POST /f HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /g HTTP/1.0\r\n\r\n",
        [("POST", "/f", {"content-length": "5"}), b"hello", 5, ("GET", "/g", {}), None, 0],
    ),
    (
        "chunked with extension and trailer",
        (
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
        ),
        [("POST", "/c", {"transfer-encoding": "chunked"}), b"abcde", 5],
    ),
    (
        "folded header and bare LF line ends",
        b"GET / HTTP/1.1\nUser-Agent: a\n  b\n\n",
        [("GET", "/", {"user-agent": "a b"}), None, 0],
    ),
    # Leniency: what Apache 2.2 (the servers vpatch protects) accepts, the decoder accepts.
    (
        "tabs and runs of blanks in the request line, unknown version read as HTTP/1.0",
        b"GET \t /a   FOO/9\r\nHost: a\r\n\r\n",
        [("GET", "/a", {"host": "a"}), None, 0],
    ),
    (
        "whitespace before the colon and any byte in a header name (Apache 2.2)",
        b"GET / HTTP/1.1\r\nRange : bytes=0-1\r\nX(y): z\r\n\r\n",
        [("GET", "/", {"range": "bytes=0-1", "x(y)": "z"}), None, 0],
    ),
    (
        "head ended by LF CRLF, then a pipelined request",
        b"GET /1 HTTP/1.1\nHost: a\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        [("GET", "/1", {"host": "a"}), None, 0, ("GET", "/2", {}), None, 0],
    ),
    (
        "Content-Length with '+', leading zeros and blanks; equal repeats",
        b"POST /f HTTP/1.1\r\nContent-Length: +0003 \r\nContent-Length: 3\r\n\r\nabc",
        [("POST", "/f", {"content-length": "3"}), b"abc", 3],
    ),
    (
        "chunk sizes with many leading zeros and junk after the digits",
        (
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"000000000000000000000003 junk\r\nabc\r\n0\r\n\r\n"
        ),
        [("POST", "/c", {"transfer-encoding": "chunked"}), b"abc", 3],
    ),
    (
        "HTTP/0.9 style request line",
        b"GET /old\r\n\r\n",
        [("GET", "/old", {}), None, 0],
    ),
]


def flatten(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Request):
            out.append((ev.method, ev.uri, dict(ev.headers)))
        elif isinstance(ev, Body):
            out.append(ev.data)
        elif isinstance(ev, EndOfRequest):
            if not out or not isinstance(out[-1], bytes):
                out.append(None)
            out.append(ev.body_length)
    return out


@pytest.mark.parametrize("step", [None, 1, 7])
@pytest.mark.parametrize(("name", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, stream: bytes, expected: list[object], step: int | None) -> None:
    assert flatten(run(stream, step)) == expected


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"GE(T / HTTP/1.1\r\n\r\n", "bad method"),
        (b"GET\r\n\r\n", "bad request line"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "disagree"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "bad header line"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", "bad Content-Length"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"GET / HTTP/1.1\r\nA: " + b"x" * (MAX_HEAD_BYTES + 1), "longer than"),
    ],
)
def test_errors_are_sticky_and_named(stream: bytes, error: str) -> None:
    dec = HttpRequestDecoder()
    dec.receive_data(stream)
    with pytest.raises(HttpDecodeError, match=error):
        while dec.next_event() is not NEED_DATA:
            pass
    assert dec.state is State.ERROR
    with pytest.raises(HttpDecodeError, match="ERROR state"):
        dec.receive_data(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("between", [b"", b"\r\n", b"garbage\r\n" * 3, b"GET /a b c\r\n"])
@pytest.mark.parametrize("step", [None, 1, 5])
def test_recover_finds_the_next_request(step: int | None, between: bytes) -> None:
    """After an error, recover() skips to the next request line, whatever lies between."""
    stream = b"GET / HTTP/1.1\r\nno colon\r\n\r\n" + between + b"GET /evil HTTP/1.1\r\nX: 1\r\n\r\n"
    dec = HttpRequestDecoder()
    pieces = (
        [stream] if step is None else [stream[i : i + step] for i in range(0, len(stream), step)]
    )
    seen: list[str] = []
    errors = 0
    for piece in pieces:
        dec.receive_data(piece)
        while True:
            try:
                ev = dec.next_event()
            except HttpDecodeError:
                errors += 1
                dec.recover()
                continue
            if ev is NEED_DATA:
                break
            if isinstance(ev, Request):
                seen.append(ev.uri)
    assert errors == 1
    assert seen == ["/evil"]


def test_recover_keeps_memory_bounded() -> None:
    dec = HttpRequestDecoder()
    dec.receive_data(b"GET / HTTP/1.1\r\nbad\r\n\r\n")
    with pytest.raises(HttpDecodeError):
        dec.next_event()
    dec.recover()
    for _ in range(100):
        dec.receive_data(b"x" * 4096)
        assert dec.next_event() is NEED_DATA
    assert dec.buffered <= 8192


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/scripts/..%c0%af../winnt/system32/cmd.exe?/c+dir", "/winnt/system32/cmd.exe?/c+dir"),
        ("/scripts/..%255c../winnt/system32/cmd.exe", "/winnt/system32/cmd.exe"),
        ("/%u0041%u0042C", "/abc"),
        ("/a/./b/../c", "/a/c"),
        ("/cgi-bin/.%2e/.%2e/.%2e/etc/passwd", "/etc/passwd"),
        ("\\Windows\\System32", "/windows/system32"),
        ("/A//B/", "/a/b/"),
        ("http://host/x/../y?q=%41", "/y?q=a"),
    ],
)
def test_normalize_uri(raw: str, normalized: str) -> None:
    assert normalize_uri(raw) == normalized


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_fuzz_only_decode_errors(data: bytes, step: int) -> None:
    with contextlib.suppress(HttpDecodeError):
        run(data, step)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_normalize_never_raises(uri: str) -> None:
    assert isinstance(normalize_uri(uri), str)
