"""Benchmark of the cost of exceptions and of the event "why" (issue 4).

Prints figures; asserts nothing. The engine runs 3000 one-request HTTP flows (SYN + request)
benign and with the lab marker (rule 9000100 fires on every flow), without a policy and with
1000 URI-scoped exceptions (none covering the traffic, so every firing looks them up); best of
--repeat runs, microseconds per packet. Then the why alone (explain_raw + request_target) per
firing. Exceptions and the why cost only when a rule fires; benign lines should not move.
Run: .venv/bin/python bench/bench_why.py [--flows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from gateway.engine import Engine
from gateway.match.explain import explain_raw, request_target
from gateway.match.rules import default_rule_dir, load_rules
from gateway.policy.compiled import CompiledPolicy


@dataclass(frozen=True)
class Exc:
    id: int
    rule_id: int | None
    host: str
    port: int | None = None
    uri: str | None = None
    expires_at: float | None = None


def flows(n: int, path: bytes) -> list[bytes]:
    out = []
    for i in range(n):
        sport = 20000 + i
        ip = IP(src="198.18.0.10", dst="198.18.0.20")
        out.append(bytes(ip / TCP(sport=sport, dport=80, flags="S", seq=1000)))
        req = b"GET /p%d" % i + path + b" HTTP/1.1\r\nHost: lab\r\n\r\n"
        out.append(bytes(ip / TCP(sport=sport, dport=80, flags="PA", seq=1001, ack=1) / Raw(req)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rules = load_rules([default_rule_dir() / "vpatch-test-split.yaml"])
    traffic = {
        "benign": flows(args.flows, b"/index.html"),
        "marker": flows(args.flows, b"/VPATCH-TEST-EXPLOIT-7f3a"),
    }
    excs = [Exc(i, 9000100, f"198.18.0.{i % 250 + 1}", uri=f"/u{i}") for i in range(1000)]
    policies = {"no policy": None, "1000 URI exceptions": CompiledPolicy(exceptions=excs)}
    for pname, policy in policies.items():
        for tname, packets in traffic.items():
            best = float("inf")
            events = 0
            for _ in range(args.repeat):
                engine = Engine(rules, policy=policy)
                started = time.perf_counter()
                for j, pkt in enumerate(packets):
                    engine.process_ip(pkt, 100.0 + j * 1e-5)
                best = min(best, time.perf_counter() - started)
                events = engine.stats.events
            print(f"{pname:20s} {tname:6s}: {best / len(packets) * 1e6:7.2f} us/packet "
                  f"({len(packets)} packets, {events} events)")  # fmt: skip
    rule = rules.by_id[9000100]
    data = b"GET /p1/VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\r\nHost: lab\r\n\r\n"
    end = data.index(b"7f3a") + 4
    n = 20000
    took = timeit.timeit(
        lambda: (explain_raw(rule, 0, data, end), request_target(data, end)), number=n
    )
    print(f"why per firing (explain_raw + request_target): {took / n * 1e6:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
