"""Memory per keep-alive HTTP flow in one Engine, by component (issue 16; figures, never
assertions; bench/README.md, "Many flows").

An Engine with the bundled rules and the inline path's settings (checksums verified, SYNs and
TCP windows checked by the kernel) takes `--flows` keep-alive flows (gateway/testing/flowload.py:
handshake, one HTTP request, its 1 KiB answer and the client's ACK; the connection stays open),
after `--warmup` flows that fill the engine's shared caches, then `--flows` more under
tracemalloc. Printed, per flow held:
- Python objects (tracemalloc), by component: each allocation still alive is charged to the
  innermost gateway frame that made it, and that frame to a component by the class built on
  its line (Flow, StreamReassembler, ...) or else by its module;
- Hyperscan stream state (C, not seen by tracemalloc): `hs_stream_size` of each open stream;
- the process's RSS growth over the first `--flows` (everything, allocator overhead included),
  for comparison with the live figure of bench/bench_flows.py.

    PYTHONPATH=. .venv/bin/python bench/bench_flow_memory.py [--flows 20000] [--top 15]

The figures depend on the rule set (stream state size) and on Python's allocator; the machine
being loaded does not change them, but the RSS growth moves with the allocator's arenas.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import sys
import tracemalloc
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.engine import Engine  # noqa: E402
from gateway.engine_config import EngineConfig  # noqa: E402
from gateway.flow.normalize import ChecksumMode  # noqa: E402
from gateway.match.inspection import Inspection  # noqa: E402
from gateway.match.rules import default_rule_dir, load_rules  # noqa: E402
from gateway.testing.flowload import keepalive_flow  # noqa: E402

GATEWAY = str(REPO / "gateway")

# The class built on an allocating line names its component; else the module does.
BY_CLASS = {
    "Flow(": "flow table",
    "FlowKey(": "flow table",
    "StreamReassembler(": "reassembly",
    "TcpState(": "normaliser",
    "_Side(": "normaliser",
    "Inspection(": "inspection",
    "StreamState(": "hyperscan stream (Python objects)",
    "AppSession(": "app session + HTTP decoder",
    "HttpAdapter(": "app session + HTTP decoder",
    "HttpRequestDecoder(": "app session + HTTP decoder",
}
BY_MODULE = {
    "flow/table.py": "flow table",
    "flow/reassembly.py": "reassembly",
    "flow/normalize.py": "normaliser",
    "match/inspection.py": "inspection",
    "match/matcher.py": "hyperscan stream (Python objects)",
    "decode/session.py": "app session + HTTP decoder",
    "decode/app.py": "app session + HTTP decoder",
    "decode/http.py": "app session + HTTP decoder",
    "decode/registry.py": "app session + HTTP decoder",
}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def charge(trace: tracemalloc.Traceback) -> tuple[str, str]:
    """(component, file:line) of the innermost gateway frame of an allocation."""
    for frame in reversed(trace):  # oldest first: walk back from the most recent
        if frame.filename.startswith(GATEWAY):
            rel = frame.filename[len(GATEWAY) + 1 :]
            text = linecache.getline(frame.filename, frame.lineno)
            where = f"{rel}:{frame.lineno}"
            for name, component in BY_CLASS.items():
                if name in text:
                    return component, where
            return BY_MODULE.get(rel, f"other ({rel})"), where
    return "outside gateway/ (the bench's own)", "-"


def measure(flows: int, warmup: int, top: int) -> dict[str, Any]:
    config = replace(
        EngineConfig(max_flows=2 * flows + warmup + 1),
        checksums=ChecksumMode.VERIFY,
        kernel_checked_syn=True,
        kernel_checked_tcp=True,
    )
    engine = Engine(load_rules([default_rule_dir()]), config)
    clock = 1.0

    def run(first: int, count: int) -> None:
        nonlocal clock
        for n in range(first, first + count):
            for datagram in keepalive_flow(n):
                clock += 1e-5
                engine.process_ip(datagram, clock)

    run(0, warmup)
    gc.collect()
    rss0 = rss_bytes()
    run(warmup, flows)  # RSS first: tracemalloc's own records would count in it
    gc.collect()
    rss1 = rss_bytes()
    tracemalloc.start(25)
    before = tracemalloc.take_snapshot()
    run(warmup + flows, flows)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    by_component: dict[str, int] = defaultdict(int)
    by_line: dict[str, int] = defaultdict(int)
    for stat in after.compare_to(before, "traceback"):
        component, where = charge(stat.traceback)
        by_component[component] += stat.size_diff
        by_line[f"{component}: {where}"] += stat.size_diff
    python = sum(by_component.values())
    streams = [
        state
        for flow in engine.table
        if isinstance(flow.inspection, Inspection)
        for way in flow.inspection.ways
        for state in (way.state, way.derived)
        if state is not None and not state.closed
    ]
    hs_bytes = sum(len(state.stream) for state in streams)
    held = len(engine.table)
    return {
        "flows_measured": flows,
        "flows_held": held,
        "streams_open": engine.stats.streams_open,
        "http_requests_decoded": engine.stats.app_records,
        "bytes_per_flow": {
            "python_objects": round(python / flows),
            "by_component": {
                k: round(v / flows) for k, v in sorted(by_component.items(), key=lambda i: -i[1])
            },
            "hyperscan_stream_state_c": round(hs_bytes / held),
            "python_plus_hyperscan": round(python / flows + hs_bytes / held),
            "rss_growth": round((rss1 - rss0) / flows),
        },
        "top_lines": {
            k: round(v / flows)
            for k, v in sorted(by_line.items(), key=lambda i: -i[1])[:top]
            if abs(v) >= flows  # at least a byte a flow
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--top", type=int, default=15, help="allocating lines listed")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    report = measure(args.flows, args.warmup, args.top)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
