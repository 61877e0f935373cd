"""HTTP/2 cleartext: gateway/decode/h2.py and the HTTP adapter's h2c records, fed real curl
bytes (tests/data/h2c, captured on loopback) and constructed streams (gateway/testing/h2c.py),
whole and one byte at a time; hostile streams are bounded and raise anomalies; through the
engine, every HTTP rule (field and raw) sees h2c requests as it sees HTTP/1 ones."""

from __future__ import annotations

import gzip
import struct
from functools import cache
from pathlib import Path

import pytest

from gateway.decode.app import H2_BODY_BUDGET, HttpAdapter
from gateway.decode.h2 import (
    MAX_CONTINUATIONS,
    MAX_OPEN_STREAMS,
    PREFACE,
    FrameType,
    H2DecodeError,
    H2RequestDecoder,
    StreamEnd,
    StreamHead,
)
from gateway.decode.registry import AppRecord
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import RuleSet, default_rule_dir, load_rules
from gateway.testing.evasion_app import H2C_REWRITES
from gateway.testing.h2c import HpackEncoder, frame, h2c_stream, parse_h1_request
from gateway.testing.traffic import contiguous, replay_packets, tcp_session

DATA = Path(__file__).resolve().parents[1] / "data" / "h2c"
SETTINGS = frame(FrameType.SETTINGS, 0, 0, b"")


def feed_all(data: bytes, step: int = 0) -> tuple[list[AppRecord], list[str], HttpAdapter]:
    """Records and anomalies of `data` fed whole (step 0) or `step` bytes at a time, with the
    app session's recovery (recover() then feed(b"")) after each complaint."""
    adapter = HttpAdapter()
    records: list[AppRecord] = []
    anomalies: list[str] = []
    pieces = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        records += adapter.feed(piece)
        for _ in range(20):
            if adapter.refused is None:
                break
            anomalies.append(str(adapter.refused))
            adapter.recover()
            records += adapter.feed(b"")
    return records, anomalies, adapter


def request(head: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
    return head, body


@pytest.mark.parametrize("step", [0, 1, 7])
def test_curl_prior_knowledge_request(step: int) -> None:
    records, anomalies, _ = feed_all((DATA / "curl-prior-knowledge.bin").read_bytes(), step)
    assert anomalies == []
    assert len(records) == 1
    fields = records[0].fields
    assert fields["http.method"] == b"GET"
    assert fields["http.uri"] == b"/cgi-bin/x.cgi?q=1"
    assert fields["http.version"] == b"HTTP/2"
    assert fields["http.header.x-test"] == b"VPATCH-TEST-EXPLOIT-7f3a"  # Huffman-coded by curl
    assert fields["http.header.cookie"] == b"a=1; b=2"  # two cookie fields, joined
    assert fields["http.header.host"].startswith(b"127.0.0.1:")  # from :authority
    assert fields["http.query"] == b"q=1"


@pytest.mark.parametrize("step", [0, 1])
def test_curl_upgrade_request_then_preface(step: int) -> None:
    records, anomalies, adapter = feed_all((DATA / "curl-upgrade.bin").read_bytes(), step)
    assert anomalies == []
    assert [r.fields["http.uri"] for r in records] == [b"/a?b=c"]  # stream 1, as HTTP/1
    assert records[0].fields["http.header.upgrade"] == b"h2c"
    assert not adapter.at_boundary()  # HTTP/2 from here: never memoised
    # a request on stream 3 after the upgrade is decoded
    block = HpackEncoder().encode(parse_h1_request(b"GET /next HTTP/1.1\r\nHost: h"))
    more = adapter.feed(frame(FrameType.HEADERS, 0x5, 3, block))
    assert [r.fields["http.uri"] for r in more] == [b"/next"]


@pytest.mark.parametrize("step", [0, 1])
def test_constructed_streams_with_bodies_padding_priority_and_continuation(step: int) -> None:
    body = gzip.compress(b"name=()+{+:;+};+whoami+")
    stream = h2c_stream(
        [
            request(b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: s=1"),
            request(
                b"POST /cgi-bin/form.cgi HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                b"Content-Type: application/x-www-form-urlencoded",
                body,
            ),
            request(b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: s=1"),  # indexed fields now
        ],
        upgrade=step == 1,
    )
    records, anomalies, _ = feed_all(stream, step)
    assert anomalies == []
    uris = [r.fields["http.uri"] for r in records if r.fields["http.uri"] != b"/"]
    assert list(dict.fromkeys(uris)) == [b"/a", b"/cgi-bin/form.cgi"] and uris[-1] == b"/a"
    ends = [r.fields for r in records if "http.body_length" in r.fields]
    post = next(f for f in ends if f["http.uri"] == b"/cgi-bin/form.cgi")
    assert post["http.body_length"] == len(body)
    assert post["http.body_params"] == b"name=() { :; }; whoami "  # inflated, form-decoded
    assert [f["http.header.cookie"] for f in ends if f["http.uri"] == b"/a"] == [b"s=1", b"s=1"]


def test_interleaved_streams_keep_their_own_bodies() -> None:
    enc = HpackEncoder()
    h1 = enc.encode(parse_h1_request(b"POST /one HTTP/1.1\r\nHost: x"))
    h3 = enc.encode(parse_h1_request(b"POST /two HTTP/1.1\r\nHost: x"))
    data = PREFACE + SETTINGS
    data += frame(FrameType.HEADERS, 0x4, 1, h1) + frame(FrameType.HEADERS, 0x4, 3, h3)
    data += frame(FrameType.DATA, 0, 1, b"AAA") + frame(FrameType.DATA, 0, 3, b"BBB")
    data += frame(FrameType.DATA, 0x1, 3, b"bb") + frame(FrameType.DATA, 0x1, 1, b"aa")
    records, anomalies, adapter = feed_all(data)
    assert anomalies == []
    bodies = {
        r.fields["http.uri"]: r.fields["http.body"] for r in records if "http.body" in r.fields
    }
    assert bodies == {b"/one": b"AAAaa", b"/two": b"BBBbb"}
    derived = adapter.take_derived()
    assert b"AAAaa" in derived and b"BBBbb" in derived  # contiguous for the raw patterns


def test_rst_stream_judges_what_was_sent() -> None:
    block = HpackEncoder().encode(parse_h1_request(b"POST /up HTTP/1.1\r\nHost: x"))
    data = PREFACE + frame(FrameType.HEADERS, 0x4, 1, block) + frame(FrameType.DATA, 0, 1, b"xy")
    data += frame(FrameType.RST_STREAM, 0, 1, struct.pack("!I", 8))
    records, _, _ = feed_all(data)
    assert records[-1].fields["http.body"] == b"xy"


def test_not_the_rest_of_the_preface_is_http1_again() -> None:
    """`PRI * HTTP/2.0` then no `SM`: a server reads what follows as HTTP/1 (evasion: hide a
    request behind a false preface)."""
    data = b"PRI * HTTP/2.0\r\n\r\nGET /evil HTTP/1.1\r\nHost: x\r\n\r\n"
    for step in (0, 1):
        records, anomalies, _ = feed_all(data, step)
        assert [r.fields["http.uri"] for r in records] == [b"/evil"]
        assert anomalies == []


def _frames_after_preface(*frames: bytes) -> bytes:
    return PREFACE + SETTINGS + b"".join(frames)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (
            _frames_after_preface(
                frame(FrameType.HEADERS, 0, 1, b"\x82"),
                *(frame(FrameType.CONTINUATION, 0, 1, b"") for _ in range(MAX_CONTINUATIONS + 1)),
            ),
            "CONTINUATION frames",
        ),
        (
            _frames_after_preface(frame(FrameType.HEADERS, 0, 1, b"\x82"), SETTINGS),
            "inside the header block",
        ),
        (_frames_after_preface(frame(FrameType.DATA, 0x8, 1, b"\x09abc")), "padding"),
        (_frames_after_preface(frame(FrameType.HEADERS, 0xC, 1, b"\x05\x82")), "padding"),
        (_frames_after_preface(frame(FrameType.PUSH_PROMISE, 0x4, 1, b"\0\0\0\2\x82")), "PUSH"),
        (_frames_after_preface(frame(FrameType.HEADERS, 0x5, 1, b"\xff\x10")), "index"),
        (_frames_after_preface(frame(FrameType.HEADERS, 0x5, 1, b"\x3f\xe1\xff\x07")), "size"),
        (_frames_after_preface(frame(FrameType.CONTINUATION, 0x4, 1, b"\x82")), "without"),
        (
            PREFACE + b"\x00\x00\x00" + bytes([1, 0]) + b"\x7f" + b"\x10" * 3,  # 1 MiB+ header
            "over",
        ),
    ],
)
def test_hostile_streams_raise_one_anomaly_and_are_bounded(data: bytes, complaint: str) -> None:
    if data.endswith(b"\x10" * 3):  # a HEADERS frame announcing 0x7f101010 bytes > 1 MiB
        data = PREFACE + b"\x7f\x10\x10\x01\x00\x00\x00\x00\x01" + b"\x82" * 100
    records, anomalies, adapter = feed_all(data)
    assert len(anomalies) == 1 and complaint in anomalies[0], anomalies
    # after a connection error the rest is left to the raw stream rules, bounded
    assert adapter.feed(b"\x00" * 5000) == []
    assert adapter.refused is None


def test_hpack_bomb_through_the_decoder() -> None:
    """A 4 KiB value indexed, then referenced 400 times in 400 bytes: refused, not expanded."""
    big = b"\x40\x01a\x7f" + bytes([(4000 - 127) & 0x7F | 0x80, (4000 - 127) >> 7]) + b"x" * 4000
    data = _frames_after_preface(
        frame(FrameType.HEADERS, 0x5, 1, b"\x82\x84" + big),
        frame(FrameType.HEADERS, 0x5, 3, b"\x82\x84" + b"\xbe" * 400),
    )
    records, anomalies, _ = feed_all(data)
    assert len(records) == 1 and "header list larger" in anomalies[0]


def test_open_streams_are_bounded_and_the_oldest_judged() -> None:
    enc = HpackEncoder()
    frames = [
        frame(FrameType.HEADERS, 0x4, 2 * i + 1, enc.encode(parse_h1_request(b"POST /p HTTP/1.1")))
        for i in range(MAX_OPEN_STREAMS + 1)
    ]
    decoder = H2RequestDecoder()
    decoder.receive_data(_frames_after_preface(*frames))
    events: list[object] = []
    with pytest.raises(H2DecodeError, match="open streams") as caught:
        while True:
            events.append(decoder.next_event())
    assert caught.value.stream == 1  # a stream complaint: decoding goes on
    assert sum(isinstance(e, StreamHead) for e in events) == MAX_OPEN_STREAMS
    assert isinstance(events[-1], StreamEnd) and events[-1].reset
    assert isinstance(decoder.next_event(), StreamHead)


def test_body_budget_over_open_streams_is_an_anomaly() -> None:
    enc = HpackEncoder()
    per_stream = 64 * 1024
    frames = []
    count = H2_BODY_BUDGET // per_stream + 1
    for i in range(count):
        head = enc.encode(parse_h1_request(b"POST /p HTTP/1.1"))
        frames.append(frame(FrameType.HEADERS, 0x4, 2 * i + 1, head))
        frames += [frame(FrameType.DATA, 0, 2 * i + 1, b"z" * 16384) for _ in range(4)]
    records, anomalies, _ = feed_all(_frames_after_preface(*frames))
    assert anomalies and "inspected in part" in anomalies[0]


# ----------------------------------------------------------------------------- the engine


@cache
def ruleset() -> RuleSet:
    return load_rules([default_rule_dir()])


@cache
def matcher() -> Matcher:
    return Matcher(ruleset())


def events_of(stream: bytes, port: int = 80, size: int = 1400) -> set[int]:
    engine = Engine(ruleset(), EngineConfig(), matcher=matcher())
    try:
        packets = tcp_session(contiguous(stream, size), dport=port)
        return {e.signature_id for e in replay_packets(engine, packets)}
    finally:
        engine.close()


@pytest.mark.parametrize("size", [1400, 5])
def test_real_curl_h2c_with_the_marker_fires_the_raw_rule(size: int) -> None:
    """rules/vpatch-test-split.yaml matches raw bytes; curl Huffman-codes the header value, so
    only the decoded request (as HTTP/1 text) carries it."""
    stream = (DATA / "curl-prior-knowledge.bin").read_bytes()
    assert b"VPATCH-TEST-EXPLOIT-7f3a" not in stream
    assert 9000100 in events_of(stream, size=size)


def _http_attack_samples() -> list[tuple[int, bytes, int]]:
    out = []
    for rule in ruleset().rules:
        if rule.app != "http" or rule.default_mode.value == "off":
            continue
        for sample in rule.samples:
            if sample.kind == "attack" and sample.pcap is None and sample.to_server:
                out.append((rule.id, sample.to_server, rule.ports[0]))
    return out


def _as_h2c(data: bytes, upgrade: bool) -> bytes | None:
    return H2C_REWRITES["h2c-upgrade" if upgrade else "h2c-prior-knowledge"][0](data)


@pytest.mark.parametrize("upgrade", [False, True])
def test_every_http_attack_sample_is_caught_in_h2c(upgrade: bool) -> None:
    samples = _http_attack_samples()
    assert len(samples) > 20
    missed = []
    tried = 0
    for sid, data, port in samples:
        stream = _as_h2c(data, upgrade)
        if stream is None:
            continue
        tried += 1
        if sid not in events_of(stream, port):
            missed.append(sid)
    assert tried > 20
    assert missed == []
