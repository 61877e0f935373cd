"""gateway/testing/corpora.py on files made in tmp_path (expected.tsv, a gzipped CSIC-style
dataset, a constructed capture) and on the real corpora: expected.tsv's rows and CVE lists,
the requests cut out of the dataset with bodies cut to their Content-Length, and replay_capture
as `vpatch replay` runs it."""

from __future__ import annotations

import gzip
from pathlib import Path

from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.corpora import NO_EXPLOIT, csic_requests, expected, replay_capture
from gateway.testing.traffic import contiguous, tcp_session, write_pcap

MARKER = b"VPATCH-TEST-EXPLOIT-7f3a"  # rules/vpatch-test-split.yaml


def test_expected_rows(tmp_path: Path) -> None:
    (tmp_path / "expected.tsv").write_text(
        "# path\tkind\tcves\n"
        "attacks/a.pcap\tattacks\tCVE-2017-0144|CVE-2017-0145\n"
        "attacks/b.pcap\tattacks\tCVE-2019-0708\n"
        "benign/c.pcap\tbenign\t\n"
        "benign/d.pcap\tbenign\n"
        "lonely-line-without-a-tab\n"
        "\n"
    )
    assert expected(tmp_path) == {
        "attacks/a.pcap": ("attacks", {"CVE-2017-0144", "CVE-2017-0145"}),
        "attacks/b.pcap": ("attacks", {"CVE-2019-0708"}),
        "benign/c.pcap": ("benign", set()),
        "benign/d.pcap": ("benign", set()),
    }


def test_expected_of_the_real_corpora_names_existing_files(corpora: Path) -> None:
    rows = expected(corpora)
    assert rows and all((corpora / path).is_file() for path in rows)
    assert {kind for kind, _ in rows.values()} <= {"attacks", "benign", "malformed"}
    assert NO_EXPLOIT.issubset(rows)


def test_csic_requests_cut_heads_and_bodies(tmp_path: Path) -> None:
    text = (
        b"GET /a?x=1 HTTP/1.1\r\nHost: shop\r\n\r\n\r\n"
        b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\n\r\nhello-and-more\r\n\r\n"
        b"PUT /c HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc\r\n"
        b"\r\nDELETE /d HTTP/1.1\r\n\r\n"
    )
    path = tmp_path / "csic.txt.gz"
    with gzip.open(path, "wb") as out:
        out.write(text)
    assert csic_requests(path) == [
        b"GET /a?x=1 HTTP/1.1\r\nHost: shop\r\n\r\n",
        b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",  # blank lines before it skipped
        b"PUT /c HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
        b"DELETE /d HTTP/1.1\r\n\r\n",
    ]


def test_replay_capture_runs_a_fresh_engine_over_the_file(tmp_path: Path) -> None:
    matcher = Matcher(load_rules([default_rule_dir() / "vpatch-test-split.yaml"]))
    attack = tcp_session(contiguous(b"GET /" + MARKER + b" HTTP/1.1\r\n\r\n", 9), sport=40000)
    path = write_pcap(tmp_path / "attack.pcap", attack, start=3000.0)
    first = replay_capture(matcher, path)
    assert [e.signature_id for e in first] == [9000100] and first[0].timestamp >= 3000.0
    # a fresh engine each time: the same capture fires again
    assert [e.signature_id for e in replay_capture(matcher, path)] == [9000100]
    benign = write_pcap(
        tmp_path / "benign.pcap", tcp_session(contiguous(b"GET / HTTP/1.1\r\n\r\n"))
    )
    assert replay_capture(matcher, benign) == []
