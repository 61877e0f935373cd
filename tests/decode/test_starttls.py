"""STARTTLS hand-over (gateway/decode/starttls.py, ftp.py's AUTH TLS, session.py): constructed
conversations through the app session alone and through the engine, whole and byte by byte."""

from __future__ import annotations

from functools import cache

import pytest

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.session import AppSession, UnitMemo
from gateway.decode.starttls import MAX_LINE, SMTP, LineUpgradeAdapter, starts_tls
from gateway.engine import Engine, EngineStats
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.vocabulary import PROTO_TCP, Direction
from tests.test_engine import Conn

# A ClientHello, then a heartbeat claiming 16384 bytes in a 3-byte record (Heartbleed, 9010070)
HELLO = bytes.fromhex("16030100310100002d0301" + "00" * 32 + "000004002f00ff01000000")
HEARTBLEED = HELLO + bytes.fromhex("18030100030140" + "00")
BENIGN_TLS = HELLO + bytes.fromhex("1803010018010005" + "68656c6c6f" + "00" * 16)

# (name, port, conversation: (side, bytes) in order; "c" client, "s" server)
UPGRADES = [
    (
        "smtp",
        25,
        [
            ("s", b"220 mail.example ESMTP Postfix\r\n"),
            ("c", b"EHLO client.example\r\n"),
            ("s", b"250-mail.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
            ("c", b"STARTTLS\r\n"),
            ("s", b"220 2.0.0 Ready to start TLS\r\n"),
        ],
    ),
    (
        "smtp-submission",
        587,
        [
            ("s", b"220 mx ESMTP\r\n"),
            ("c", b"ehlo me\r\n"),
            ("s", b"250 STARTTLS\r\n"),
            ("c", b"starttls\r\n"),
            ("s", b"220 go ahead\r\n"),
        ],
    ),
    (
        "imap",
        143,
        [
            ("s", b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n"),
            ("c", b"a001 CAPABILITY\r\n"),
            ("s", b"* CAPABILITY IMAP4rev1 STARTTLS\r\na001 OK done\r\n"),
            ("c", b"a002 STARTTLS\r\n"),
            ("s", b"a002 OK Begin TLS negotiation now\r\n"),
        ],
    ),
    (
        "pop3",
        110,
        [
            ("s", b"+OK POP3 server ready\r\n"),
            ("c", b"CAPA\r\n"),
            ("s", b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
            ("c", b"STLS\r\n"),
            ("s", b"+OK Begin TLS\r\n"),
        ],
    ),
    (
        "ftp",
        21,
        [
            ("s", b"220 (vsFTPd 3.0.3)\r\n"),
            ("c", b"AUTH TLS\r\n"),
            ("s", b"234 Proceed with negotiation.\r\n"),
        ],
    ),
    (
        "ftp-auth-ssl",
        21,
        [
            ("s", b"220-Microsoft FTP Service\r\n220 ready\r\n"),
            ("c", b"AUTH SSL\r\n"),
            ("s", b"234 AUTH command ok. Expecting TLS Negotiation.\r\n"),
        ],
    ),
]


@cache
def _matcher() -> Matcher:
    return Matcher(load_rules([default_rule_dir()]))


def _run(port: int, conversation: list[tuple[str, bytes]], tls: bytes) -> tuple[Engine, list[int]]:
    matcher = _matcher()
    engine = Engine(matcher.ruleset, matcher=matcher)
    c = Conn(engine, dport=port)
    c.handshake()
    offsets = {"c": 0, "s": 0}
    fired: list[int] = []
    for side, data in [*conversation, ("c", tls)]:
        send = c.data if side == "c" else c.reply
        decision = send(offsets[side], data)
        offsets[side] += len(data)
        fired += [e.signature_id for e in decision.events]
    return engine, fired


@pytest.mark.parametrize(("name", "port", "conversation"), UPGRADES, ids=[u[0] for u in UPGRADES])
def test_heartbleed_after_starttls_is_caught(
    name: str, port: int, conversation: list[tuple[str, bytes]]
) -> None:
    engine, fired = _run(port, conversation, HEARTBLEED)
    assert fired == [9010070]
    assert engine.stats.app_handovers == 1


@pytest.mark.parametrize(("name", "port", "conversation"), UPGRADES, ids=[u[0] for u in UPGRADES])
def test_benign_tls_after_starttls_fires_nothing(
    name: str, port: int, conversation: list[tuple[str, bytes]]
) -> None:
    engine, fired = _run(port, conversation, BENIGN_TLS)
    assert fired == [] and engine.stats.app_handovers == 1
    assert engine.stats.app_decode_errors == 0


def test_refused_starttls_keeps_clear_text() -> None:
    """The server refuses: the client goes on in clear text, nothing is handed over."""
    conversation = [
        ("s", b"220 mx ESMTP\r\n"),
        ("c", b"EHLO me\r\n"),
        ("s", b"250 ok\r\n"),
        ("c", b"STARTTLS\r\n"),
        ("s", b"454 4.7.0 TLS not available\r\n"),
    ]
    engine, fired = _run(25, conversation, b"MAIL FROM:<a@b>\r\n")
    assert fired == [] and engine.stats.app_handovers == 0


def _session(app: str, direction: Direction) -> tuple[AppSession, EngineStats]:
    matcher = _matcher()
    stats = Engine(matcher.ruleset, matcher=matcher).stats
    return AppSession(
        (app,), PROTO_TCP, direction, "198.18.0.20", 25, stats, UnitMemo(0), None
    ), stats


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_client_side_moves_at_the_line_after_starttls_in_any_slicing(chunk: int) -> None:
    stream = b"EHLO me\r\nSTARTTLS\r\n" + HEARTBLEED
    session, stats = _session("smtp", Direction.TO_SERVER)
    records = []
    for i in range(0, len(stream), chunk):
        got = session.feed(stream[i : i + chunk])
        assert got is not None
        records += got
    assert [r.fields.get("smtp.command") for r in records if r.app == "smtp"] == [
        b"EHLO",
        b"STARTTLS",
    ]
    beats = [r.fields for r in records if "tls.heartbeat.payload_length" in r.fields]
    assert beats == [
        {
            "tls.heartbeat.type": 1,
            "tls.heartbeat.payload_length": 0x4000,
            "tls.heartbeat.encrypted": 0,
            "tls.record_length": 3,
            "tls.version": 0x0301,
        }
    ]
    assert stats.app_handovers == 1


def test_pipelined_hello_in_the_starttls_segment_is_tls() -> None:
    """STARTTLS and the ClientHello in one segment (pipelining after STARTTLS, RFC 3207
    forbids it, some servers read it anyway): the bytes after the line are TLS."""
    session, _ = _session("smtp", Direction.TO_SERVER)
    records = session.feed(b"EHLO me\r\nSTARTTLS\r\n" + HEARTBLEED)
    assert records is not None
    assert [r.app for r in records][:3] == ["smtp", "smtp", "tls"]


def test_only_a_tls_byte_moves_and_long_lines_are_bounded() -> None:
    adapter = LineUpgradeAdapter(SMTP, client=True)
    assert adapter.feed(b"STARTTLS\r\nRSET\r\n")[1].fields["smtp.command"] == b"RSET"
    assert adapter.handover is None  # a clear-text line after the request: no TLS
    long = adapter.feed(b"X" * (3 * MAX_LINE) + b"\r\n")
    assert long[0].fields["smtp.line_length"] == 3 * MAX_LINE
    assert starts_tls(0x16) and starts_tls(0x80) and not starts_tls(0xFF)
    assert not any(starts_tls(c) for c in b"0123456789+-*ABCabc \r\n")


def test_line_protocols_carry_the_tls_rules() -> None:
    for name in ("smtp", "imap", "pop3", "ftp"):
        protocol = registry.get(name)
        assert protocol is not None and protocol.hands_over == frozenset({"tls"})
