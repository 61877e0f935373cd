"""DNS decoder: built messages, the real benign DNS captures, and fuzzing."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import DNS, DNSQR, DNSRR, UDP, raw, rdpcap

from gateway.decode.dns import (
    TYPE_TKEY,
    DnsDecodeError,
    DnsTcpDecoder,
    parse_message,
)

QUERY = raw(DNS(id=7, rd=1, qd=DNSQR(qname="www.lab.test", qtype="A")))
ANSWER = raw(
    DNS(
        id=7,
        qr=1,
        qd=DNSQR(qname="www.lab.test"),
        an=DNSRR(rrname="www.lab.test", rdata="198.18.0.20"),
    )
)
TKEY_QUERY = raw(
    DNS(
        id=9,
        qd=DNSQR(qname="x.lab.test", qtype=TYPE_TKEY),
        an=DNSRR(rrname="x.lab.test", type=TYPE_TKEY, rdata=b"\0" * 4),
    )
)


def test_query_and_answer() -> None:
    q = parse_message(QUERY)
    assert (q.id, q.is_response, q.questions[0].name, q.questions[0].qtype) == (
        7,
        False,
        "www.lab.test.",
        1,
    )
    a = parse_message(ANSWER)
    assert a.is_response and [(r.section, r.name, r.rtype, r.rdlength) for r in a.records] == [
        ("answer", "www.lab.test.", 1, 4)
    ]


def test_tkey_record_in_answer_section_is_visible() -> None:
    msg = parse_message(TKEY_QUERY)
    assert [(r.section, r.rtype) for r in msg.records] == [("answer", TYPE_TKEY)]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_tcp_framing(step: int) -> None:
    stream = b"".join(len(m).to_bytes(2, "big") + m for m in (QUERY, ANSWER, TKEY_QUERY))
    dec = DnsTcpDecoder()
    got = [m for i in range(0, len(stream), step) for m in dec.receive_data(stream[i : i + step])]
    assert [m.id for m in got] == [7, 7, 9]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\0" * 5, "shorter than the 12-byte header"),
        (QUERY[:12].replace(b"\0\x01", b"\xff\xff", 1) + QUERY[12:], "do not fit"),
        (QUERY[:12] + b"\xc0\x0c\0\x01\0\x01", "points forward"),
        (QUERY[:12] + b"\x3fabc" + b"\0" * 8, "runs past the end"),
        (QUERY[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\x01\0\x01", "longer than 255"),
    ],
)
def test_errors_name_the_problem(data: bytes, error: str) -> None:
    with pytest.raises(DnsDecodeError, match=error):
        parse_message(data)


def test_real_dns_captures_decode(corpora: Path) -> None:
    decoded = failed = 0
    for path in sorted((corpora / "benign" / "dns").glob("*.pcap")):
        for pkt in rdpcap(str(path)):
            if UDP in pkt and 53 in (pkt[UDP].sport, pkt[UDP].dport):
                try:
                    parse_message(bytes(pkt[UDP].payload))
                    decoded += 1
                except DnsDecodeError:
                    failed += 1  # dns-corrupt.pcap and friends: refused with our error only
    print(f"decoded {decoded} DNS messages, refused {failed}")
    assert decoded >= 50
    assert failed <= 5


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DnsDecodeError):
        parse_message(data)
    with contextlib.suppress(DnsDecodeError):
        DnsTcpDecoder().receive_data(data)
