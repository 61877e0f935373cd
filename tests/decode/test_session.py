"""Tests for gateway/decode/session.py: one flow direction's app layer (identification, the
decoder, its failures), the memo of whole units and the whole-connection probes."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.decode.registry import Probe
from gateway.decode.session import (
    MAX_MEMO_UNIT,
    AppSession,
    UnitMemo,
    record_target,
    request_uri,
    starts_whole_connection,
    whole_connection_probes,
)
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction

HEAD = b"GET /a/../b.asp HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"


@dataclass
class Counters:
    app_records: int = 0
    http_memo_hits: int = 0
    app_decode_errors: int = 0
    app_recoveries: int = 0
    app_internal_errors: int = 0
    app_unidentified: int = 0


def session(
    candidates: tuple[str, ...] = ("http",),
    memo: UnitMemo | None = None,
    transport: int = PROTO_TCP,
    port: int = 80,
    owner: object = "group",
) -> tuple[AppSession, Counters]:
    stats = Counters()
    memo = memo if memo is not None else UnitMemo(8)
    s = AppSession(
        candidates, transport, Direction.TO_SERVER, "198.18.0.20", port, stats, memo, owner
    )
    return s, stats


def test_identifies_then_decodes_in_any_slicing() -> None:
    s, stats = session(("tls", "http"))
    assert s.feed(b"GE") == ()  # undecided: buffered
    records = s.feed(HEAD[2:])
    assert records is not None and len(records) == 1
    assert records[0].fields["http.uri"] == b"/b.asp" and stats.app_records == 1


def test_unidentified_and_failing_decoders_end_the_session() -> None:
    s, stats = session(("http",))
    assert s.feed(b"\x16\x03\x01\x00\x05hello") is None and stats.app_unidentified == 1
    s, stats = session(("tls",), port=443)
    (anomaly,) = s.feed(b"\x16\x03\x01\x00\x05hello\x99\x99\x99\x99\x99") or ()
    assert b"exceeds" in anomaly.fields["tls.anomaly"]
    assert s.feed(b"\x16\x03\x01\x00\x05hello") is None and stats.app_decode_errors == 1


def test_a_refused_datagram_is_an_anomaly_and_the_next_one_is_decoded() -> None:
    s, stats = session(("dns",), transport=PROTO_UDP, port=53)
    (anomaly,) = s.feed(b"\x00") or ()
    assert anomaly.app == "dns" and anomaly.fields["dns.anomaly"]
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    records = s.feed(query) or ()
    assert any(r.fields.get("dns.qname") == b"www.example.com." for r in records)
    assert stats.app_decode_errors == 1


def test_http_resynchronises_after_a_malformed_request_in_the_same_segment() -> None:
    """A malformed request, then an attack, in one feed: both are judged before the verdict."""
    s, stats = session(("http",))
    records = (
        s.feed(
            b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n"
            b"junk\r\n"
            b"GET /evil HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        or ()
    )
    uris = [r.fields.get("http.uri") for r in records if "http.uri" in r.fields]
    assert uris == [b"/ok", b"/evil"]
    assert [r.fields["http.anomaly"] for r in records if "http.anomaly" in r.fields] == [
        b"bad header line b'no colon here'"
    ]
    assert stats.app_decode_errors == 1 and stats.app_recoveries == 1


def test_memo_answers_the_same_whole_unit_only_once_remembered() -> None:
    memo = UnitMemo(8)
    s, stats = session(memo=memo)
    assert s.feed(HEAD) and s.pending is not None
    s.remember()  # the engine found no rule on it
    assert len(memo) == 1
    assert s.feed(HEAD) == () and stats.http_memo_hits == 1 and stats.app_records == 2
    other, _ = session(memo=memo, owner="another group")  # another rule group: no hit
    assert other.feed(HEAD)
    assert s.feed(POST) and s.pending is None  # a body: not one whole unit


def test_memo_is_bounded_and_can_be_off() -> None:
    memo = UnitMemo(2)
    s, _ = session(memo=memo)
    for i in range(5):
        assert s.feed(b"GET /%d HTTP/1.1\r\n\r\n" % i)
        s.remember()
    assert len(memo) == 2
    off = UnitMemo(0)
    s, _ = session(memo=off)
    assert s.feed(HEAD) and s.pending is None
    s, _ = session()
    assert s.feed(b"GET /" + b"x" * MAX_MEMO_UNIT + b" HTTP/1.1\r\n\r\n") and s.pending is None


def test_whole_connection_probes() -> None:
    to_server, to_client = whole_connection_probes()
    assert to_server and not to_client
    assert starts_whole_connection(to_server, b"\r\nGET / HTTP/1.1\r\n", Direction.TO_SERVER)
    assert not starts_whole_connection(to_server, b"\x16\x03\x01", Direction.TO_SERVER)

    def broken(data: bytes, direction: Direction) -> Probe:
        raise RuntimeError

    assert not starts_whole_connection((broken,), b"GET / HTTP/1.1", Direction.TO_SERVER)


def test_request_uri_prefers_the_record() -> None:
    fields: dict[str, int | bytes] = {"http.uri": b"/b.asp", "http.uri.raw": b"/a/../b.asp"}
    assert record_target(fields) == b"/a/../b.asp" and record_target({}) is None
    assert request_uri(b"/ignored", fields) == "/b.asp"
    assert request_uri(b"/a/../B.asp", None) == request_uri(b"/b.asp", None)
