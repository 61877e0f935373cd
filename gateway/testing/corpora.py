"""The shared capture corpora (../shared/corpora, read-only) as test inputs.

`expected` reads expected.tsv (path -> kind and the CVEs an event may name); `replay_capture`
runs an in-process Engine over one capture as `vpatch replay` does; `csic_requests` cuts the
CSIC 2010 dataset (raw requests separated by blank lines) into requests, each head plus a body
cut to its Content-Length. Nothing here writes to the corpora.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Final

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.events.eve import Event
from gateway.intake.pcap import read_capture
from gateway.match.matcher import Matcher

__all__ = ["NO_EXPLOIT", "csic_requests", "expected", "replay_capture"]

# Captures in attacks/ that hold no exploit traffic at all; tests assert the reason instead of
# an event. (blaster-ms03-026.pcap holds no RPC exploit either, but the worm's shell on 4444 is
# there and its post-exploitation rule names CVE-2003-0352, so it is held to an event.)
NO_EXPLOIT: Final = frozenset({"attacks/eternalblue-failed-patched-win7.pcap"})
MAX_CSIC_BYTES: Final = 64 * 1024 * 1024  # bound of the decompressed dataset
_CSIC_SPLIT: Final = re.compile(rb"\r?\n(?:\r?\n)+(?=(?:GET|POST|PUT|HEAD|DELETE|OPTIONS) )")


def expected(corpora: Path) -> dict[str, tuple[str, set[str]]]:
    """expected.tsv: relative path -> (attacks | benign, CVEs any one of which counts)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in (corpora / "expected.tsv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and not line.startswith("#"):
            cves = set(parts[2].split("|")) if len(parts) > 2 and parts[2] else set()
            rows[parts[0]] = (parts[1], cves)
    return rows


def replay_capture(matcher: Matcher, path: Path) -> list[Event]:
    """Every event of a fresh Engine over `path` (capture timestamps as the clock)."""
    engine = Engine(matcher.ruleset, EngineConfig(), matcher=matcher)
    events: list[Event] = []
    try:
        for record in read_capture(path):
            decision = engine.process_frame(record.data, record.linktype, record.timestamp)
            events.extend(decision.events)
    finally:
        engine.close()
    return events


def csic_requests(path: Path) -> list[bytes]:
    """The dataset's requests, each head + body cut to its Content-Length."""
    with gzip.open(path, "rb") as src:
        text = src.read(MAX_CSIC_BYTES)
    out = []
    for chunk in _CSIC_SPLIT.split(text.strip()):
        head, _sep, body = chunk.partition(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        out.append(head + b"\r\n\r\n" + body.lstrip(b"\r\n")[:length])
    return out
