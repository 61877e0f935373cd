"""The whole rule pack (every file in rules/) against the shared corpora of real captures.

- every capture under attacks/ (recursive) yields at least one event naming one of its CVEs from
  expected.tsv; the two captures that hold no exploit have that fact asserted instead;
- every capture under benign/ yields no event;
- every request of benign/csic2010-normal-training.txt.gz, sent as its own constructed TCP
  connection to port 8080 (the port the dataset's requests name), yields no event.
The engine runs in process (one compiled Matcher, a fresh Engine per capture, as `vpatch
replay` does). Counts are printed (pytest -s) and written to artifacts/rules-corpus.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.decode.packet import parse_frame
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.errors import DecodeError
from gateway.intake.pcap import read_capture
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.corpora import NO_EXPLOIT, csic_requests, expected, replay_capture
from gateway.testing.streams import tcp_streams
from gateway.testing.traffic import contiguous, replay_packets, tcp_session
from gateway.vocabulary import PROTO_TCP

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CSIC_REQUESTS = 36000


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(load_rules([default_rule_dir()]))


def _write_artifact(name: str, data: dict[str, object]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "rules-corpus.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[name] = data
    path.write_text(json.dumps(current, indent=2, sort_keys=True))


def test_every_attack_capture_yields_an_event_naming_its_cve(
    corpora: Path, matcher: Matcher
) -> None:
    rows = expected(corpora)
    captures = sorted(
        p for p in (corpora / "attacks").rglob("*") if p.suffix in (".pcap", ".pcapng")
    )
    assert len(captures) >= 27
    missed: list[str] = []
    counts: dict[str, list[int]] = {}
    for path in captures:
        rel = str(path.relative_to(corpora))
        assert rel in rows, f"{rel} has no row in expected.tsv"
        if rel in NO_EXPLOIT:
            continue
        events = replay_capture(matcher, path)
        naming = [e for e in events if set(e.cves) & rows[rel][1]]
        counts[rel] = sorted({e.signature_id for e in naming})
        if not naming:
            missed.append(f"{rel}: events {[e.signature_id for e in events]}")
    caught = sum(1 for v in counts.values() if v)
    print(f"\nattacks: {caught}/{len(counts)} captures caught (+{len(NO_EXPLOIT)} without exploit)")
    for rel, ids in counts.items():
        print(f"  {rel}: rules {ids}")
    _write_artifact("attacks", {"caught": caught, "checked": len(counts), "rules": counts})
    assert not missed, "\n".join(missed)


def _tcp_payload_packets(path: Path) -> Iterator[tuple[int, int, bytes]]:
    for record in read_capture(path):
        try:
            pkt = parse_frame(record.data, record.linktype)
        except DecodeError:
            continue
        yield pkt.proto, pkt.dport, pkt.payload


def test_eternalblue_failed_capture_holds_no_tcp(corpora: Path) -> None:
    """The patched-host capture has no TCP at all: nothing for an SMB rule to see."""
    path = corpora / "attacks" / "eternalblue-failed-patched-win7.pcap"
    protos = {proto for proto, _port, _data in _tcp_payload_packets(path)}
    assert protos, "capture unreadable or empty"
    assert PROTO_TCP not in protos


def test_blaster_capture_holds_no_ms03_026_exploit(corpora: Path) -> None:
    """blaster-ms03-026.pcap holds only the worm's later stages (TFTP/shell on 4444 and a
    38-byte exchange on 1793): no connection to the RPC endpoint mapper (135, 139, 445, 593)
    and no DCE/RPC bind (version 5, packet type 11) anywhere, so no MS03-026 exploit."""
    path = corpora / "attacks" / "blaster-ms03-026.pcap"
    ports = {
        port for proto, port, data in _tcp_payload_packets(path) if proto == PROTO_TCP and data
    }
    assert ports, "no TCP payload at all"
    assert not ports & {135, 139, 445, 593}, ports
    for data in tcp_streams(path).values():
        assert b"\x05\x00\x0b" not in data
        assert b"\xb8\x4a\x9f\x4d\x1c\x7d\xcf\x11" not in data  # ISystemActivator-style UUID start


def test_benign_captures_yield_no_event(corpora: Path, matcher: Matcher) -> None:
    captures = sorted(
        p for p in (corpora / "benign").rglob("*") if p.suffix in (".pcap", ".pcapng")
    )
    assert len(captures) >= 100
    false_positives: dict[str, list[int]] = {}
    for path in captures:
        events = replay_capture(matcher, path)
        if events:
            false_positives[str(path.relative_to(corpora))] = [e.signature_id for e in events]
    print(f"\nbenign captures: {len(captures)}, with events: {len(false_positives)}")
    _write_artifact("benign", {"captures": len(captures), "with_events": len(false_positives)})
    assert not false_positives, false_positives


# Appended after the dataset: proves that the same path (port 8080, constructed connections,
# one engine) does raise an event, so "no event" above is a finding, not a blind spot.
CANARY = (
    b"GET /a.png HTTP/1.1\r\nHost: localhost:8080\r\nRange: bytes=0-18446744073709551615\r\n\r\n"
)


def test_csic2010_normal_requests_yield_no_event(corpora: Path, matcher: Matcher) -> None:
    requests = csic_requests(corpora / "benign" / "csic2010-normal-training.txt.gz")
    assert len(requests) == CSIC_REQUESTS
    requests.append(CANARY)
    engine = Engine(matcher.ruleset, EngineConfig(), matcher=matcher)
    hits: list[tuple[int, int]] = []
    try:
        for i, request in enumerate(requests):
            packets = tcp_session(contiguous(request), sport=1024 + i % 60000, dport=8080)
            for event in replay_packets(engine, packets, start=1.0e9 + i):
                hits.append((i, event.signature_id))
    finally:
        engine.close()
    assert hits[-1:] == [(CSIC_REQUESTS, 9010020)], "the canary request was not caught"
    hits.pop()
    print(f"\ncsic2010 normal: {CSIC_REQUESTS} requests, events: {len(hits)}")
    _write_artifact("csic2010", {"requests": CSIC_REQUESTS, "events": len(hits)})
    assert not hits, [(i, sid, requests[i][:200]) for i, sid in hits[:5]]
