"""Benchmark of the app-layer decoders: microseconds per message / record, and MB/s.

Prints figures; asserts nothing. Each line feeds one whole stream (or datagram) to a fresh
decoder, best of --repeat runs, and reports time per decoded unit (request, record, PDU, command).
The RDP and DCE/RPC lines use streams from the corpora when found (--corpora), else built ones.
Run: .venv/bin/python bench/bench_decoders.py [--corpora DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "decode"))

from gateway.decode import dcerpc, dns, ftp, http, mssql, rdp, registry, smb, tls
from gateway.vocabulary import PROTO_TCP, Direction

REPO = Path(__file__).resolve().parents[1]


def best_us(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """(best microseconds per unit, units per run) for fn() returning its unit count."""
    best = float("inf")
    units = 1
    for _ in range(repeat):
        start = time.perf_counter()
        units = fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / max(units, 1), units


def http_run(stream: bytes) -> int:
    dec = http.HttpRequestDecoder()
    dec.receive_data(stream)
    n = 0
    while dec.next_event() is not http.NEED_DATA:
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from test_dcerpc import BLASTER_LIKE, bind, request  # built PDUs shared with the tests
    from test_rdp import BLUEKEEP

    rpc = bind([(0, "12345778-1234-abcd-ef00-0123456789ab", 1)])
    rpc += b"".join(request(0, 57, b"s" * 200, i) for i in range(2, 1002))
    rpc_frag = b"".join(
        request(0, 1, b"f" * 1000, 1, f)
        for f in [dcerpc.PFC_FIRST_FRAG] + [0] * 62 + [dcerpc.PFC_LAST_FRAG]
    )
    smb2_write = (
        struct.pack(
            "<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 1, 0, 9, 1, 0, 0, 9, 0, 5, 0x77, b"\0" * 16
        )
        + struct.pack("<HHIQ16sIIHHI", 49, 112, 200, 0, b"F" * 16, 0, 0, 0, 0, 0)
        + b"w" * 200
    )
    smb_stream = (b"\0" + len(smb2_write).to_bytes(3, "big") + smb2_write) * 1000
    tls_stream = (struct.pack("!BHH", 23, 0x0303, 1000) + b"a" * 1000) * 1000
    dns_msg = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    http_stream = b"GET /a/b%20c/../d.html?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: b\r\n\r\n" * 1000
    ftp_stream = b"USER anonymous\r\nPASS x@y\r\nCWD /pub\r\nRETR file.bin\r\n" * 250
    slammer = b"\x04" + b"\x01" * 375

    def feed(new: Callable[[], object], stream: bytes) -> Callable[[], int]:
        return lambda: len(new().receive_data(stream))  # type: ignore[attr-defined]

    lines: list[tuple[str, Callable[[], int], int]] = [
        ("http   1000 pipelined GETs (events)", lambda: http_run(http_stream), len(http_stream)),
        ("tls    1000 x 1 KB app-data records", feed(tls.TlsDecoder, tls_stream), len(tls_stream)),
        ("dns    one query datagram", lambda: len([dns.parse_message(dns_msg)]), len(dns_msg)),
        ("smb    1000 SMB2 WRITEs (nb+cmd)", feed(smb.SmbDecoder, smb_stream), len(smb_stream)),
        ("dcerpc bind + 1000 requests (pdu+req)", feed(dcerpc.DceRpcDecoder, rpc), len(rpc)),
        ("dcerpc 64-fragment call (pdus+req)", feed(dcerpc.DceRpcDecoder, rpc_frag), len(rpc_frag)),
        ("dcerpc MS03-026 shape", feed(dcerpc.DceRpcDecoder, BLASTER_LIKE), len(BLASTER_LIKE)),
        ("rdp    BlueKeep-shape sequence", feed(rdp.RdpDecoder, BLUEKEEP), len(BLUEKEEP)),
        ("mssql  Slammer datagram", lambda: len([mssql.parse_datagram(slammer)]), len(slammer)),
        (
            "ftp    1000 command lines",
            feed(lambda: ftp.FtpDecoder(True), ftp_stream),
            len(ftp_stream),
        ),
    ]
    bluekeep_pcap = args.corpora / "attacks" / "bluekeep-cve-2019-0708.pcap"
    if bluekeep_pcap.exists():
        from gateway.testing.streams import tcp_streams

        for key, data in tcp_streams(bluekeep_pcap).items():
            if key.sport == 3389 and len(data) > 50000:
                lines.append(
                    (
                        f"rdp    bluekeep.pcap server stream {len(data)} B",
                        feed(rdp.RdpDecoder, data),
                        len(data),
                    )
                )
    print(f"{'decoder / input':44} {'us/unit':>9} {'units':>6} {'MB/s':>8}")
    for name, fn, size in lines:
        us, units = best_us(fn, args.repeat)
        mbps = size / (us * units) if us else 0.0
        print(f"{name:44} {us:9.2f} {units:6d} {mbps:8.1f}")
    # The registry adapters (records with field dicts) cost on top of the decoders:
    proto = registry.get("dcerpc")
    if proto is None:
        return 1
    us, units = best_us(
        lambda: len(proto.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(rpc)), args.repeat
    )
    print(f"{'dcerpc adapter: bind + 1000 requests (records)':44} {us:9.2f} {units:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
