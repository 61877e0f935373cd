"""The evasion harness's own parts: the datagrams it builds (gateway/testing/wire.py) and the
model of the server's receive path (gateway/testing/receiver.py) that judges every case.

The model must deliver what a receiver delivers: each technique is checked against each
target (does the server application read the intended stream, i.e. is the evasion valid?),
and single rules of the model are checked on hand-made segments (a junk copy that the
receiver must drop is delivered instead when the rule that drops it is switched off, so each
test shows the rule at work and not a broken session).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.decode.packet import parse_ip
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.evasion import TECHNIQUES, Conn, Piece, plan, session
from gateway.testing.evasion_app import HTTP_REWRITES, SMB_REWRITES
from gateway.testing.receiver import LINUX, TARGETS, WINDOWS, Receiver, Target
from gateway.testing.wire import (
    ACK,
    PSH,
    RST,
    SYN,
    URG,
    Checksum,
    Fragmenting,
    FragOverlap,
    Seg,
    build,
    junk,
    ones_sum,
)
from gateway.verdict.reset import checksum as reference_checksum
from gateway.vocabulary import PROTO_TCP

REQUEST = b"GET /cgi-bin/status HTTP/1.1\r\nHost: legacy.example\r\nReferer: () { :; }; id\r\n\r\n"


def reads(target: Target, segs: list[Seg], conn: Conn | None = None) -> bytes:
    conn = conn or Conn()
    receiver = Receiver(target, conn.server, conn.dport)
    for seg in segs:
        for datagram in build(seg):
            receiver.feed(datagram)
    return receiver.stream


def base(conn: Conn | None = None, data: bytes = REQUEST, size: int = 16) -> list[Seg]:
    conn = conn or Conn()
    return session(conn, [Piece(i, data[i : i + size]) for i in range(0, len(data), size)])


def with_junk_before(segs: list[Seg], index: int, **change: object) -> list[Seg]:
    """A junk copy of segs[index], changed by `change`, sent just before it."""
    real = segs[index]
    copy = replace(real.with_data(junk(real.data)), **change)  # type: ignore[arg-type]
    return [*segs[:index], copy, *segs[index:]]


# ----------------------------------------------------------------------------- wire


@pytest.mark.parametrize("version", [4, 6])
def test_built_datagrams_decode_with_correct_checksums(version: int) -> None:
    conn = Conn(version=version)
    for seg in base(conn):
        (datagram,) = build(seg)
        pkt = parse_ip(datagram)
        assert (pkt.proto, pkt.seq, pkt.payload) == (PROTO_TCP, seg.seq & 0xFFFFFFFF, seg.data)
        if version == 4:
            assert reference_checksum(datagram[:20]) == 0
            tcp = datagram[20:]
            pseudo = datagram[12:20] + bytes([0, 6]) + len(tcp).to_bytes(2, "big")
        else:
            tcp = datagram[40:]
            pseudo = datagram[8:40] + len(tcp).to_bytes(4, "big") + bytes([0, 0, 0, 6])
        assert reference_checksum(pseudo + tcp) == 0


def test_partial_checksum_is_the_pseudo_header_sum() -> None:
    seg = replace(base()[3], checksum=Checksum.PARTIAL)
    datagram = build(seg)[0]
    tcp = datagram[20:]
    pseudo = datagram[12:20] + bytes([0, 6]) + len(tcp).to_bytes(2, "big")
    assert int.from_bytes(tcp[16:18], "big") == ones_sum(pseudo)


def test_junk_differs_everywhere() -> None:
    data = bytes(range(256))
    assert all(a != b for a, b in zip(data, junk(data), strict=True))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("reverse", [False, True])
def test_fragments_reassemble_to_the_segment(version: int, reverse: bool) -> None:
    segs = base(Conn(version=version), size=100)
    segs[3] = replace(segs[3], frag=Fragmenting(8, reverse))
    assert len(build(segs[3])) > 5
    for target in TARGETS:
        assert reads(target, segs, Conn(version=version)) == REQUEST


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_in_order_session_is_read_whole(target: Target) -> None:
    assert reads(target, base()) == REQUEST
    assert reads(target, base(Conn(version=6)), Conn(version=6)) == REQUEST


@pytest.mark.parametrize(
    "change",
    [
        {"checksum": Checksum.BAD},
        {"checksum": Checksum.PARTIAL},
        {"ip_checksum_bad": True},
        {"ttl": 1},
    ],
    ids=["tcp-checksum", "partial-checksum", "ip-checksum", "ttl"],
)
def test_datagrams_the_server_never_gets_are_dropped(change: dict[str, object]) -> None:
    segs = with_junk_before(base(), 4, **change)
    assert reads(LINUX, segs) == REQUEST
    # the same junk copy without the fault is taken (first come), so the fault is what counts
    assert reads(WINDOWS, with_junk_before(base(), 4)) != REQUEST


def test_ttl_must_outlive_the_routers_behind_the_gateway() -> None:
    segs = with_junk_before(base(), 4, ttl=2)
    assert reads(LINUX, segs) != REQUEST  # 2 > 1 hop: it arrives
    assert reads(replace(LINUX, hops=2), segs) == REQUEST


def test_segments_without_ack_or_acking_unsent_data_are_dropped() -> None:
    segs = base()
    assert reads(LINUX, with_junk_before(segs, 4, flags=PSH)) == REQUEST
    assert reads(LINUX, with_junk_before(segs, 4, ack=segs[4].ack + 100_000)) == REQUEST


def test_paws_drops_an_old_timestamp_but_not_a_missing_one() -> None:
    segs = base()
    ts = segs[4].ts
    assert ts is not None
    assert reads(LINUX, with_junk_before(segs, 4, ts=(ts[0] - 10, ts[1]))) == REQUEST
    assert reads(LINUX, with_junk_before(segs, 4, ts=None)) != REQUEST
    assert reads(LINUX, [replace(s, ts=None) for s in segs]) == REQUEST


def test_bytes_outside_the_window_are_dropped() -> None:
    conn = Conn(server_window=32)
    segs = base(conn)
    ahead = replace(segs[3].with_data(junk(segs[5].data)), seq=segs[5].seq)  # 32 bytes ahead
    assert reads(LINUX, [*segs[:3], ahead, *segs[3:]], conn) == REQUEST
    inside = replace(segs[3].with_data(junk(segs[4].data)), seq=segs[4].seq)  # 16 bytes ahead
    assert reads(LINUX, [*segs[:3], inside, *segs[3:]], conn) != REQUEST


def test_out_of_order_overlap_first_or_last_wins() -> None:
    segs = base()
    data = segs[3:-3]
    copies = [s.with_data(junk(s.data)) for s in data[1:]]
    junk_first = [*segs[:3], *copies, *data[1:], data[0], *segs[-3:]]
    assert reads(LINUX, junk_first) == REQUEST
    assert reads(WINDOWS, junk_first) != REQUEST
    real_first = [*segs[:3], *data[1:], *copies, data[0], *segs[-3:]]
    assert reads(WINDOWS, real_first) == REQUEST
    assert reads(LINUX, real_first) != REQUEST


def test_delivered_bytes_never_change() -> None:
    segs = base()
    late = segs[4].with_data(junk(segs[4].data))
    for target in TARGETS:
        assert reads(target, [*segs[:5], late, *segs[5:]]) == REQUEST


def test_urgent_byte_is_taken_out_unless_inline() -> None:
    conn = Conn()
    pieces = [Piece(0, REQUEST[:10] + b"X", urg=11), Piece(11, REQUEST[10:])]
    segs = session(conn, pieces)
    assert reads(LINUX, segs) == REQUEST
    assert reads(replace(LINUX, urgent_inline=True), segs) == REQUEST[:10] + b"X" + REQUEST[10:]
    ahead = session(conn, [Piece(0, REQUEST[:10], urg=11), Piece(10, b"X" + REQUEST[10:])])
    assert reads(WINDOWS, ahead) == REQUEST
    zero = session(conn, [Piece(0, REQUEST[:10]), Piece(10, b"X" + REQUEST[10:], urg=0)])
    zero[4] = replace(zero[4], flags=zero[4].flags | URG)  # pointer 0: the byte at SEG.SEQ
    assert reads(LINUX, zero) == REQUEST


def test_data_on_the_syn_is_not_delivered() -> None:
    segs = base()
    segs[0] = segs[0].with_data(b"junk")
    assert reads(LINUX, segs) == REQUEST


def test_second_syn_and_early_syn_ack_change_nothing() -> None:
    segs = base()
    other = replace(segs[0], seq=segs[0].seq + 12345)
    assert reads(LINUX, [*segs[:3], other, *segs[3:]]) == REQUEST
    assert reads(LINUX, [segs[0], other, *segs[1:]]) == REQUEST
    early = replace(segs[0], flags=SYN | ACK, seq=7)
    assert reads(LINUX, [early, *segs]) == REQUEST


def test_reset_rules_differ_by_target() -> None:
    segs = base()
    exact = replace(segs[2], flags=RST | ACK)
    inexact = replace(exact, seq=exact.seq + 100)
    outside = replace(exact, seq=exact.seq + 100_000)
    for target in TARGETS:
        assert reads(target, [*segs[:3], exact, *segs[3:]]) == b""
        assert reads(target, [*segs[:3], outside, *segs[3:]]) == REQUEST
    assert reads(LINUX, [*segs[:3], inexact, *segs[3:]]) == REQUEST  # RFC 5961
    assert reads(WINDOWS, [*segs[:3], inexact, *segs[3:]]) == b""  # RFC 793


@pytest.mark.parametrize("version", [4, 6])
def test_overlapping_fragments_per_policy(version: int) -> None:
    conn = Conn(version=version)
    segs = base(conn, size=100)
    segs[3] = replace(segs[3], frag=Fragmenting(16, overlap=FragOverlap.REAL_FIRST))
    assert reads(LINUX, segs, conn) == b""  # Linux: the datagram is dropped (no retransmission)
    # Windows keeps the first copy of IPv4 fragments; IPv6 overlaps are dropped (RFC 5722)
    assert reads(WINDOWS, segs, conn) == (REQUEST if version == 4 else b"")


def test_ipv6_extension_chains() -> None:
    conn = Conn(version=6)
    long_chain = [replace(s, ext=(0, *([60] * 11))) for s in base(conn)]
    assert reads(LINUX, long_chain, conn) == REQUEST
    misplaced = [replace(s, ext=(60, 0)) if s.data else s for s in base(conn)]
    assert reads(LINUX, misplaced, conn) == b""  # hop-by-hop only first


# Which techniques really work against which target (the model's verdict on each).
INVALID: dict[str, set[str]] = {
    "overlap-real-first": {"linux"},
    "overlap-junk-first": {"windows-2003"},
    "overlap-shifted": {"windows-2003"},
    "rst-inexact": {"windows-2003"},
    "frag-overlap": {"linux"},
}


@pytest.mark.parametrize(
    "name",
    [
        n
        for n, t in TECHNIQUES.items()
        if "+" not in n and t.cls not in ("http", "smb", "smb-write")
    ],
)
def test_each_technique_is_valid_where_it_should_be(name: str) -> None:
    tech = TECHNIQUES[name]
    planned = plan(tech, REQUEST, b"", 80, "http", "iis")
    assert planned is not None
    for target in TARGETS:
        receiver = Receiver(target, planned.conn.server, planned.conn.dport)
        for _, datagram in planned.packets:
            receiver.feed(datagram)
        valid = receiver.stream == planned.intended
        assert valid == (target.name not in INVALID.get(name, set())), target.name


# ----------------------------------------------------------------------------- app rewrites

FORM = (
    b"POST /cgi-bin/form.cgi HTTP/1.1\r\nHost: legacy.example\r\nContent-Type: "
    b"application/x-www-form-urlencoded\r\nContent-Length: 23\r\n\r\nname=()+{+:;+};+whoami+"
)


DOCUMENT = (
    b"POST /api HTTP/1.1\r\nHost: java.example\r\nContent-Type: application/json\r\n"
    b'Content-Length: 18\r\n\r\n{"a": "${jndi:x}"}'
)


XML = (
    b"POST /api HTTP/1.1\r\nHost: java.example\r\nContent-Type: application/xml\r\n"
    b"Content-Length: 24\r\n\r\n<a><b>${jndi:x}</b>1</a>"
)
OGNL = b"GET /a.action HTTP/1.1\r\nContent-Type: %{(#a=@java.lang.Runtime@getRuntime())}\r\n\r\n"
MULTIPART = (
    b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    b'Content-Length: 73\r\n\r\n--b\r\nContent-Disposition: form-data; name="f"; filename="a"'
    b"\r\n\r\nx\r\n--b--\r\n"
)
# The request each rewrite that needs a kind of body or expression is tried on (else FORM).
REQUEST_FOR = {
    "http-charset-utf16-document": DOCUMENT,
    "http-json-escape": DOCUMENT,
    "http-xml-charref": XML,
    "http-xml-cdata": XML,
    "http-ognl-unicode": OGNL,
    "http-ognl-blanks": OGNL,
    "http-multipart-fold": MULTIPART,
}


@pytest.mark.parametrize("name", list(HTTP_REWRITES))
def test_http_rewrites_apply_to_a_form_request(name: str) -> None:
    request = REQUEST_FOR.get(name, FORM)
    out = HTTP_REWRITES[name][0](request)
    assert out is not None and out != request
    assert HTTP_REWRITES[name][0](b"\x00\x00\x00\x10not http at all") is None


@pytest.mark.parametrize(("name", "codec"), [("http-charset-ibm037", "cp037"),
                                             ("http-charset-utf16", "utf-16-le")])  # fmt: skip
def test_a_form_in_a_charset_reads_back_as_asp_net_reads_it(name: str, codec: str) -> None:
    """Split at the ASCII "&" and "=", %-decode, decode in the declared charset: the original
    parameters, while the bytes on the wire hold none of their text."""
    from gateway.decode.http_fields import form_params

    out = HTTP_REWRITES[name][0](FORM)
    assert out is not None
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"charset=" in head and b"whoami" not in body
    assert b"Content-Length: %d" % len(body) in head
    assert form_params(body, codec) == "name=() { :; }; whoami "
    document = HTTP_REWRITES["http-charset-utf16-document"][0](DOCUMENT)
    assert document is not None
    assert document.partition(b"\r\n\r\n")[2].decode("utf-16") == '{"a": "${jndi:x}"}'


def test_chunked_body_decodes_back() -> None:
    for name in ("http-chunked", "http-chunked-ext"):
        out = HTTP_REWRITES[name][0](FORM)
        assert out is not None
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
        decoded = b""
        while True:
            line, _, body = body.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, body = decoded + body[:size], body[size + 2 :]
        assert decoded == FORM.partition(b"\r\n\r\n")[2]


def test_smb_and_dcerpc_rewrites_keep_the_messages() -> None:
    rules = load_rules([default_rule_dir()])
    smb = next(s.to_server for r in rules.rules if r.id == 9001002 for s in r.samples)
    keep = SMB_REWRITES["smb-keepalive"][0](smb)
    assert keep is not None and keep.replace(b"\x85\x00\x00\x00", b"") == smb
    echo = SMB_REWRITES["smb-echo-first"][0](smb)
    assert echo is not None and echo.endswith(smb) and echo[8] == 0x2B
    dce = next(s.to_server for r in rules.rules if r.id == 9001012 for s in r.samples)
    split = SMB_REWRITES["dcerpc-fragments"][0](dce)
    assert split is not None and len(split) > len(dce)
