"""Benchmark of the pure packet path: decode, capture reading, flow lookup, reassembly.

Prints figures (microseconds per operation, records per second); asserts nothing.
Run: .venv/bin/python bench/bench_decode.py [--corpora DIR] [--repeat N]
The synthetic packets are built by hand with struct (no scapy on this path either).
"""

from __future__ import annotations

import argparse
import glob
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.decode.packet import (
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    DecodeError,
    parse_frame,
    parse_ip,
)
from gateway.flow.reassembly import StreamReassembler
from gateway.flow.table import FlowTable
from gateway.intake.pcap import read_capture
from gateway.vocabulary import Direction


def ipv4_tcp(payload: bytes, sport: int = 40000, dport: int = 80, seq: int = 1) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, TCP_PSH | TCP_ACK, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0,
        64,
        6,
        0,
        bytes([198, 18, 0, 10]),
        bytes([198, 18, 0, 20]),
    )
    return ip + tcp + payload


def per_op(fn: Callable[[], object], n: int) -> float:
    """Best of three runs of n calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--corpora", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpora")
    )
    ap.add_argument("--repeat", type=int, default=100_000)
    args = ap.parse_args()
    n = args.repeat

    small = ipv4_tcp(b"GET / HTTP/1.1\r\n\r\n")
    full = ipv4_tcp(b"x" * 1460)
    eth = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + full
    print("decode")
    print(f"  parse_ip   IPv4/TCP  18 B payload   {per_op(lambda: parse_ip(small), n):6.2f} us")
    print(f"  parse_ip   IPv4/TCP 1460 B payload  {per_op(lambda: parse_ip(full), n):6.2f} us")
    print(f"  parse_frame Ethernet/IPv4/TCP 1460  {per_op(lambda: parse_frame(eth, 1), n):6.2f} us")

    ft = FlowTable(65536, 600.0, 60.0)
    pkt = parse_ip(full)
    print("flow table")
    print(f"  lookup, existing flow              {per_op(lambda: ft.lookup(pkt, 1.0), n):6.2f} us")
    big = FlowTable(65536, 600.0, 60.0)
    pkts = [parse_ip(ipv4_tcp(b"", sport=1024 + i % 60000, dport=80)) for i in range(200_000)]
    t0 = time.perf_counter()
    for p in pkts:
        big.lookup(p, 1.0)
    dt = time.perf_counter() - t0
    print(
        f"  lookup, 200k packets over 60k flows {dt / len(pkts) * 1e6:6.2f} us (table {len(big)})"
    )
    churn = FlowTable(1000, 600.0, 60.0)
    t0 = time.perf_counter()
    for i, p in enumerate(pkts[:60_000]):
        churn.lookup(p, float(i))
    dt = time.perf_counter() - t0
    per_us = dt / 60_000 * 1e6
    print(f"  lookup with LRU eviction (1k cap)  {per_us:6.2f} us (evicted {churn.evicted})")

    print("reassembly")
    seg = b"y" * 1460

    def in_order() -> None:
        r = StreamReassembler(1 << 30, 1 << 20)
        r.receive(0, b"", syn=True)
        seq = 1
        for _ in range(100):
            r.receive(seq, seg)
            seq += 1460

    def reversed_pairs() -> None:
        r = StreamReassembler(1 << 30, 1 << 20)
        r.receive(0, b"", syn=True)
        seq = 1
        for _ in range(50):
            r.receive(seq + 1460, seg)
            r.receive(seq, seg)
            seq += 2920

    print(f"  in-order segment (1460 B)          {per_op(in_order, n // 100) / 100:6.2f} us")
    print(f"  swapped pairs, per segment         {per_op(reversed_pairs, n // 100) / 100:6.2f} us")

    files = sorted(glob.glob(os.path.join(args.corpora, "**", "*.pcap*"), recursive=True))
    if files:
        t0 = time.perf_counter()
        records = sum(1 for f in files for _ in read_capture(f))
        read_s = time.perf_counter() - t0
        depth = {Direction.TO_SERVER: 1 << 20, Direction.TO_CLIENT: 1 << 20}
        t0 = time.perf_counter()
        decoded = errors = delivered = 0
        for f in files:
            table = FlowTable(65536, 600.0, 60.0, stream_depth=depth)
            for rec in read_capture(f):
                try:
                    p = parse_frame(rec.data, rec.linktype)
                except DecodeError:
                    errors += 1
                    continue
                decoded += 1
                flow, d = table.lookup(p, rec.timestamp)
                stream = flow.streams[d]
                if stream is not None and (p.payload or p.flags & TCP_SYN):
                    delivered += len(stream.receive(p.seq, p.payload, bool(p.flags & TCP_SYN)))
        full_s = time.perf_counter() - t0
        print(f"corpora: {len(files)} files, {records} records")
        print(f"  read_capture only                  {records / read_s:10.0f} records/s")
        print(
            f"  read+decode+flow+reassembly        {records / full_s:10.0f} records/s "
            f"({full_s / records * 1e6:.2f} us/record; {errors} not IP; {delivered} B delivered)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
