"""Benchmark of the HTTP request fields: microseconds per request for the HTTP app adapter
(gateway/decode/app.py HttpAdapter: decoding, URI normalisation, derived fields) and for the
adapter plus the matcher's evaluation of the bundled rules on port 80, on one keep-alive
connection.

Request sets: a plain keep-alive GET (what wrk sends), the first --csic requests of CSIC 2010
(normal traffic: many %-encoded queries and form bodies), and %-, double- and %u-encoded paths.
Prints figures; asserts nothing. Best of --repeat runs, in CPU time (process_time: less
sensitive than wall time to other processes on a shared machine).
Run: .venv/bin/python bench/bench_http_fields.py [--corpora DIR] [--csic N] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.decode.app import HttpAdapter
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.corpora import csic_requests
from gateway.vocabulary import PROTO_TCP, Direction

REPO = Path(__file__).resolve().parents[1]
PLAIN = b"GET /index.html HTTP/1.1\r\nHost: 198.19.0.1\r\nUser-Agent: wrk\r\n\r\n"
ENCODED = [
    b"GET /scripts/%2e%2e%c0%af%2e%2e/winnt/system32/cmd.exe?/c+dir HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /%2573cripts/%25%32%65%2e/w%u0069nnt/a%5Cb.asp?q=%41%42 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a/b/../c/./d//e.php?x=caf%C3%A9&y=1 HTTP/1.1\r\nHost: x\r\n\r\n",
]


def per_request(requests: list[bytes], matcher: Matcher | None, repeat: int) -> float:
    """Best microseconds per request: all of `requests` through one adapter (keep-alive)."""
    group = matcher.group(PROTO_TCP, Direction.TO_SERVER, 80) if matcher else None
    app_group = group.apps.get("http") if group is not None else None
    best = float("inf")
    for _ in range(repeat):
        adapter = HttpAdapter()
        start = time.process_time()
        for data in requests:
            for record in adapter.feed(data):
                if matcher is not None and app_group is not None:
                    matcher.evaluate(app_group, record.fields)
        best = min(best, time.process_time() - start)
    return best * 1e6 / len(requests)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--csic", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    matcher = Matcher(load_rules([default_rule_dir()]))
    sets = {"plain keep-alive GET": [PLAIN] * 3000, "encoded paths": ENCODED * 1000}
    csic = args.corpora / "benign" / "csic2010-normal-training.txt.gz"
    if csic.is_file():
        sets["CSIC 2010 normal"] = csic_requests(csic)[: args.csic]
    print(f"{'requests':<24}{'adapter us':>12}{'+ rules us':>12}")
    for name, requests in sets.items():
        alone = per_request(requests, None, args.repeat)
        both = per_request(requests, matcher, args.repeat)
        print(f"{name:<24}{alone:>12.2f}{both:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
