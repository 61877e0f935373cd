"""Evasion: every corpus exploit, and every rule's inline TCP attack sample, is still caught when
its client payload is delivered differently.

For each attack capture (except the two that hold no exploit, see test_corpus.py) the client
stream of the one TCP connection that carries the exploit is taken with
gateway/testing/streams.py and re-sent as a constructed connection (gateway/testing/traffic.py,
raw IPv4 bytes -> Engine.process_ip, in process):
- 1-byte segments, in order;
- out of order: 1-byte segments in reversed windows of 64, and 7-byte segments shuffled
  (seeded) within windows of 24;
- every segment followed by an overlapping retransmission of harmless bytes over what was
  already sent: bytes that differ from those inspected, so the TCP normaliser resets the flow
  (gateway/flow/normalize.py), which counts as caught (the server never gets the harmless
  copy, nor anything after it; tests/evasion judges that with a model of the server);
- for HTTP, the request URI re-encoded: %-encoding, double encoding, IIS %u, hex-digit case,
  extra /./ segments (the server resolves each to the same resource).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Final

import pytest

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, Sample, all_rules_on, default_rule_dir, load_rules
from gateway.testing.corpora import NO_EXPLOIT, expected
from gateway.testing.samples import ANY_PORT_SAMPLE_PORT
from gateway.testing.streams import StreamKey, tcp_streams
from gateway.testing.traffic import Segment, contiguous, replay_packets, tcp_session

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
WINDOW = 64


@cache
def matcher() -> Matcher:
    return Matcher(all_rules_on(load_rules([default_rule_dir()])))


def caught(
    segments: list[Segment], to_client: bytes, dport: int, cves: set[str] | None, sid: int | None
) -> bool:
    engine = Engine(matcher().ruleset, EngineConfig(), matcher=matcher())
    try:
        events = replay_packets(engine, tcp_session(segments, to_client, dport=dport))
    finally:
        engine.close()
    if engine.normalizer.counts["conflict"]:
        return True  # refused: the flow was reset at the first copy that differed
    return any((cves and set(e.cves) & cves) or e.signature_id == sid for e in events)


# ----------------------------------------------------------------------------- transformations


def one_byte(data: bytes) -> list[Segment]:
    return contiguous(data, 1)


def reversed_windows(data: bytes) -> list[Segment]:
    segs = contiguous(data, 1)
    out: list[Segment] = []
    for i in range(0, len(segs), WINDOW):
        out.extend(reversed(segs[i : i + WINDOW]))
    return out


def shuffled_windows(data: bytes) -> list[Segment]:
    rng = random.Random(len(data))
    segs = contiguous(data, 7)
    out: list[Segment] = []
    for i in range(0, len(segs), 24):
        window = segs[i : i + 24]
        rng.shuffle(window)
        out.extend(window)
    return out


def overlapping_junk(data: bytes) -> list[Segment]:
    out: list[Segment] = []
    for seg in contiguous(data, 5):
        out.append(seg)
        start = max(0, seg.offset - 3)
        end = seg.offset + len(seg.data)
        out.append(Segment(start, b"X" * (end - start)))
    return out


SEGMENTATIONS: dict[str, Callable[[bytes], list[Segment]]] = {
    "one-byte": one_byte,
    "reversed-windows": reversed_windows,
    "shuffled-windows": shuffled_windows,
    "overlapping-junk": overlapping_junk,
}

_REQUEST_LINE = re.compile(rb"\A([A-Z]+) (\S+) (HTTP/1\.[01])\r\n")
_UNRESERVED = re.compile(rb"[A-Za-z0-9._~-]")


def _map_uri(data: bytes, fn: Callable[[bytes, bool], bytes]) -> bytes:
    """Apply fn(byte, in_query) to the URI of every pipelined request line of `data`."""

    def one(match: re.Match[bytes]) -> bytes:
        uri = match.group(2)
        path, q, query = uri.partition(b"?")
        out = b"".join(fn(bytes([c]), False) for c in path)
        if q:
            out += b"?" + b"".join(fn(bytes([c]), True) for c in query)
        return match.group(1) + b" " + out + b" " + match.group(3) + b"\r\n"

    return re.sub(rb"(?m)^([A-Z]+) (\S+) (HTTP/1\.[01])\r\n", one, data)


def _pct(c: bytes, q: bool) -> bytes:
    return b"%%%02X" % c[0] if _UNRESERVED.fullmatch(c) and c != b"." else c


def _double(c: bytes, q: bool) -> bytes:
    return b"%%25%02X" % c[0] if _UNRESERVED.fullmatch(c) and c != b"." else c


def _double_existing(data: bytes) -> bytes:
    """Existing escapes encoded once more ("%24" -> "%2524")."""
    return _map_uri(data, lambda c, q: b"%25" if c == b"%" else c)


def _iis_u(c: bytes, q: bool) -> bytes:
    return b"%%u%04X" % c[0] if c.isalpha() and not q else c


def _hex_case(data: bytes) -> bytes:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: b"%" + m.group(1).swapcase(), data)


def _dot_segments(c: bytes, q: bool) -> bytes:
    return b"/./" if c == b"/" and not q else c


ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "percent": lambda d: _map_uri(d, _pct),
    "double-percent": lambda d: _map_uri(d, _double),
    "double-existing": _double_existing,
    "iis-u": lambda d: _map_uri(d, _iis_u),
    "hex-case": _hex_case,
    "dot-segments": lambda d: _map_uri(d, _dot_segments),
}


# ----------------------------------------------------------------------------- cases


def exploit_connection(path: Path, cves: set[str]) -> tuple[bytes, bytes, int]:
    """(client stream, server stream, server port) of the first connection whose constructed
    replay (whole, in order) raises an event naming one of `cves`."""
    streams = tcp_streams(path)
    for key, data in streams.items():
        reverse = StreamKey(key.dst, key.dport, key.src, key.sport, key.index)
        if key.dport > key.sport and key.sport < 49152:
            continue  # a server -> client direction
        to_client = streams.get(reverse, b"")
        if caught(contiguous(data), to_client, key.dport, cves, None):
            return data, to_client, key.dport
    raise AssertionError(f"{path.name}: no connection is caught even when replayed whole")


# Captures whose event comes from the server side of the connection, where the client's
# re-segmentation has nothing to evade: Blaster's capture holds the worm's bind shell answering
# on 4444 (rule 9001013 matches the shell's output, to_client), not the RPC exploit itself.
SERVER_SIDE_ONLY: Final = frozenset({"attacks/blaster-ms03-026.pcap"})


def corpus_cases() -> list[tuple[str, set[str]]]:
    if not CORPORA.is_dir():
        return []
    rows = expected(CORPORA)
    return [
        (rel, cves)
        for rel, (kind, cves) in sorted(rows.items())
        if kind == "attacks"
        and rel not in NO_EXPLOIT | SERVER_SIDE_ONLY
        and (CORPORA / rel).is_file()
    ]


@pytest.mark.parametrize(("rel", "cves"), corpus_cases(), ids=[c[0] for c in corpus_cases()])
def test_corpus_exploit_survives_evasion(rel: str, cves: set[str]) -> None:
    client, server, port = exploit_connection(CORPORA / rel, cves)
    failed = [
        name
        for name, segment in SEGMENTATIONS.items()
        if not caught(segment(client), server, port, cves, None)
    ]
    if _REQUEST_LINE.match(client):
        for name, encode in ENCODINGS.items():
            encoded = encode(client)
            assert encoded != client or name in ("hex-case", "double-existing"), name
            if not caught(contiguous(encoded), server, port, cves, None):
                failed.append(name)
            if not caught(one_byte(encoded), server, port, cves, None):
                failed.append(name + "+one-byte")
    assert not failed, f"{rel}: evaded by {failed}"


def sample_cases() -> list[tuple[Rule, Sample]]:
    return [
        (rule, sample)
        for rule in matcher().ruleset.rules
        for sample in rule.samples
        if rule.protocol == "tcp" and sample.kind == "attack" and sample.pcap is None
    ]


@pytest.mark.parametrize(
    ("rule", "sample"), sample_cases(), ids=[f"{r.id}-line{s.line}" for r, s in sample_cases()]
)
def test_rule_attack_sample_survives_segmentation(rule: Rule, sample: Sample) -> None:
    """Caught by the rule or by a sibling naming the same CVE (the first to block ends the flow,
    so which sibling fires first depends on where the segment boundaries fall)."""
    port = rule.ports[0] if rule.ports else ANY_PORT_SAMPLE_PORT  # `ports: any`
    failed = [
        name
        for name, segment in SEGMENTATIONS.items()
        if not caught(segment(sample.to_server), sample.to_client, port, set(rule.cves), rule.id)
    ]
    assert not failed, f"rule {rule.id} sample line {sample.line}: evaded by {failed}"
