"""Benchmark of the matcher's cost per packet with 10 rules and with 10,000 generated rules.

Traffic: the client-to-server TCP streams of the benign HTTP, SMB and TLS captures of the
corpora (reassembled with gateway.testing.streams), cut into 1,460-byte segments, scanned with
the group of port 80, 445 or 443 by folder; field mode uses the HTTP ones. Rules: a generated,
realistic mix (fixed seed) across ports and fields:
- 70% raw-stream rules: 1-3 contents (6-16 bytes: protocol-looking prefixes such as "GET /",
  "|FF|SMB" or "${" plus random text; some nocase, some with offset/depth, later ones with
  distance/within), 10% raw regexes;
- 20% http field rules: content on http.uri / http.header.user-agent / http.body, regexes on
  http.uri, some with a numeric comparison (http.header_count, http.body_length);
- ports: 40% [80, 8080], 20% [139, 445], 15% [443], the rest spread over 20 other ports.
The 10-rule set is the first 10 rules of the same generator.

Figures (best of --repeat rounds, microseconds per 1,460-byte packet):
- raw stream mode: open_stream, scan_stream per segment, close_stream;
- field block mode: Matcher.evaluate on every HTTP request record decoded from those streams
  (decoding is done before timing), divided by the streams' packet count (and per record);
and the 10,000 / 10 ratio for each (goal: under 2x). Prints figures; asserts nothing.
Run: .venv/bin/python bench/bench_matcher.py [--corpora DIR] [--rules N] [--repeat N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode import registry as app_registry
from gateway.errors import CaptureError, DecodeError
from gateway.match.matcher import Matcher
from gateway.match.rules import RuleSet, load_rules
from gateway.testing.streams import tcp_streams
from gateway.vocabulary import Direction

DEFAULT_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SEGMENT = 1460
RULES_PER_FILE = 1000  # keeps every generated file under the loader's MAX_RULE_FILE_BYTES
PREFIXES = ("GET /", "POST /", "|FF|SMB", "|FE|SMB", "${", "User-Agent|3a| ", "cmd.exe", "/bin/")
OTHER_PORTS = (21, 25, 53, 110, 135, 143, 389, 1433, 1434, 3306, 3389, 5432, 5900, 6379,
               8000, 8443, 9000, 9200, 11211, 27017)  # fmt: skip
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_-=&?"


def _word(rng: random.Random, low: int, high: int, alphabet: str = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _alnum(rng: random.Random, low: int, high: int) -> str:
    """A word safe inside a regex."""
    return _word(rng, low, high, "abcdefghijklmnopqrstuvwxyz0123456789")


def _ports(rng: random.Random) -> list[int]:
    x = rng.random()
    if x < 0.40:
        return [80, 8080]
    if x < 0.60:
        return [139, 445]
    if x < 0.75:
        return [443]
    return [rng.choice(OTHER_PORTS)]


def generate_rules(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        rule: dict[str, Any] = {
            "id": 5_000_000 + i,
            "title": f"generated {i}",
            "severity": rng.choice(("low", "medium", "high", "critical")),
            "action": rng.choice(("alert", "drop", "reset")),
            "protocol": "tcp",
        }
        x = rng.random()
        if x < 0.70:
            rule["ports"] = _ports(rng)
            items: list[dict[str, Any]] = []
            for k in range(rng.randint(1, 3)):
                text = (rng.choice(PREFIXES) if k == 0 else "") + _word(rng, 6, 12)
                item: dict[str, Any] = {"content": text}
                if rng.random() < 0.3:
                    item["nocase"] = True
                if k == 0 and rng.random() < 0.25:
                    item["offset"], item["depth"] = 0, 64
                if k > 0 and rng.random() < 0.5:
                    item["distance"], item["within"] = 0, 200
                items.append(item)
            leaf = (
                {"field": "raw", **items[0]}
                if len(items) == 1
                else {"field": "raw", "match": items}
            )
            rule["conditions"] = [leaf]
        elif x < 0.80:
            rule["ports"] = _ports(rng)
            rule["conditions"] = [
                {
                    "field": "raw",
                    "regex": rf"{_alnum(rng, 4, 8)}[=:]\s*[a-z0-9]{{8,}}{_alnum(rng, 3, 5)}",
                }
            ]
        else:
            rule["ports"] = [80, 8080]
            rule["app"] = "http"
            field = rng.choice(("http.uri", "http.uri", "http.header.user-agent", "http.body"))
            conds: list[dict[str, Any]] = []
            if rng.random() < 0.3 and field == "http.uri":
                conds.append(
                    {"field": field, "regex": rf"/{_alnum(rng, 4, 8)}/[^?]*\.{_alnum(rng, 2, 4)}"}
                )
            else:
                conds.append({"field": field, "content": "/" + _word(rng, 6, 14), "nocase": True})
            if rng.random() < 0.3:
                conds.append({"field": "http.header_count", "gt": rng.randint(5, 40)})
            rule["conditions"] = conds
        out.append(rule)
    return out


def build_matcher(n: int, tmp: Path) -> tuple[Matcher, RuleSet, float, float]:
    rules = generate_rules(n)
    folder = tmp / f"rules-{n}"
    folder.mkdir()
    for start in range(0, len(rules), RULES_PER_FILE):
        chunk = rules[start : start + RULES_PER_FILE]
        (folder / f"gen-{start:06d}.yaml").write_text(yaml.safe_dump({"rules": chunk}, width=200))
    t0 = time.perf_counter()
    ruleset = load_rules([folder])
    t1 = time.perf_counter()
    matcher = Matcher(ruleset)
    return matcher, ruleset, t1 - t0, time.perf_counter() - t1


FOLDER_PORTS = {"http": 80, "smb": 445, "tls": 443}  # the group each folder's streams scan with


def load_traffic(
    corpora: Path,
) -> tuple[list[tuple[int, list[bytes]]], list[dict[str, int | bytes]], int]:
    """(server port, segments) of every client->server stream of the benign HTTP, SMB and TLS
    captures; the request records decoded from the HTTP ones and how many packets those were."""
    streams: list[tuple[int, list[bytes]]] = []
    records: list[dict[str, int | bytes]] = []
    http_packets = 0
    http = app_registry.get("http")
    assert http is not None
    for folder, port in FOLDER_PORTS.items():
        for path in sorted((corpora / "benign" / folder).glob("*.pcap*")):
            try:
                found = tcp_streams(path)
            except CaptureError:  # a capture the reader refuses: not traffic for this benchmark
                continue
            for key, data in found.items():
                if not data or key.dport > key.sport:  # client->server: the lower port serves
                    continue
                segs = [data[i : i + SEGMENT] for i in range(0, len(data), SEGMENT)]
                streams.append((port, segs))
                if folder != "http":
                    continue
                http_packets += len(segs)
                decoder = http.new_decoder(6, Direction.TO_SERVER)
                try:
                    for seg in segs:
                        records.extend(r.fields for r in decoder.feed(seg))
                except DecodeError:  # the decoder gave up on this stream: keep what it gave
                    pass
    return streams, records, http_packets


def time_raw(
    matcher: Matcher, streams: list[tuple[int, list[bytes]]], repeat: int
) -> tuple[float, int]:
    packets = sum(len(s) for _, s in streams)
    best = float("inf")
    fired = 0
    for _ in range(repeat):
        fired = 0
        t0 = time.perf_counter()
        for port, segs in streams:
            group = matcher.group(6, Direction.TO_SERVER, port)
            if group is None or group.database is None:
                continue
            state = matcher.open_stream(group)
            for seg in segs:
                fired += len(matcher.scan_stream(state, seg))
            matcher.close_stream(state)
        best = min(best, time.perf_counter() - t0)
    return best / packets * 1e6, fired


def time_fields(
    matcher: Matcher, records: list[dict[str, int | bytes]], packets: int, repeat: int
) -> tuple[float, float, int]:
    group = matcher.group(6, Direction.TO_SERVER, 80)
    assert group is not None and "http" in group.apps
    app_group = group.apps["http"]
    best = float("inf")
    fired = 0
    for _ in range(repeat):
        fired = 0
        t0 = time.perf_counter()
        for fields in records:
            fired += len(matcher.evaluate(app_group, fields))
        best = min(best, time.perf_counter() - t0)
    return best / packets * 1e6, best / max(len(records), 1) * 1e6, fired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--rules", type=int, default=10_000, help="size of the large set")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    streams, records, http_packets = load_traffic(args.corpora)
    packets = sum(len(s) for _, s in streams)
    size = sum(len(seg) for _, s in streams for seg in s)
    print(
        f"traffic: {len(streams)} client->server streams of the benign HTTP/SMB/TLS captures "
        f"(scanned as ports 80/445/443), {packets} packets of <= {SEGMENT} bytes "
        f"({size / 1e6:.2f} MB); {len(records)} HTTP request records from {http_packets} packets"
    )
    results: dict[int, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vpatch-bench-matcher-") as tmp:
        for n in (10, args.rules):
            matcher, _ruleset, load_s, compile_s = build_matcher(n, Path(tmp))
            to_server = Direction.TO_SERVER
            in_group = {p: len(g.rule_indices) if (g := matcher.group(6, to_server, p)) else 0
                        for p in FOLDER_PORTS.values()}  # fmt: skip
            raw_us, raw_fired = time_raw(matcher, streams, args.repeat)
            field_us, per_record, field_fired = time_fields(
                matcher, records, http_packets, args.repeat
            )
            results[n] = (raw_us, field_us, per_record)
            covering = "/".join(map(str, in_group.values()))
            print(
                f"{n:>6} rules (covering ports 80/445/443: {covering}; "
                f"loaded in {load_s:.1f} s, compiled in {compile_s:.1f} s, "
                f"{matcher.stats.databases} databases, "
                f"{matcher.stats.database_bytes / 1e6:.1f} MB): raw stream mode "
                f"{raw_us:.2f} us/packet ({raw_fired} hits), field block mode {field_us:.2f} "
                f"us/packet ({per_record:.2f} us/record, {field_fired} hits)"
            )
    small, large = results[10], results[args.rules]
    print(
        f"ratio {args.rules} / 10 rules: raw stream mode {large[0] / small[0]:.2f}x, "
        f"field block mode {large[1] / small[1]:.2f}x (goal: < 2x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
