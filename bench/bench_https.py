"""Benchmark of the HTTPS plane: requests/s and latency through the proxy vs straight to nginx.

Prints figures; asserts nothing. Builds a bridge-mode namespace lab (nginx on 198.18.0.20:443,
TLS 1.0 only, its 1 KiB /1k.bin), then measures from the client namespace with
`wrk -t1 -cC -dDs --latency https://198.18.0.20/1k.bin`, keep-alive and with
`Connection: close` (a new TLS connection per request):
1. straight: no gateway process (the bridge alone), wrk speaking the server's TLS 1.0 (an
   OpenSSL configuration with SECLEVEL=0 and MinProtocol TLSv1);
2. mitmproxy alone: `mitmdump` with the same options as the plane's proxy (transparent, the
   lab certificate, client TLS 1.2+, server TLS 1.0+, lazy upstream) and no addon, behind the
   same nat REDIRECT (the addon's share of the cost is the difference with 3);
3. through the HTTPS plane: `vpatch run` with the lab's configuration (one queue, the bundled
   rules; the service proxied by one mitmproxy process with the vpatch addon), wrk speaking
   TLS 1.3 to the proxy, which speaks TLS 1.0 to nginx.
With `--processes N` both mitmproxy alone and the plane run N proxy processes (the plane's
`processes` setting; mitmdump behind N REDIRECT rules spread with `statistic --mode nth`, as
gateway/tls/redirect.py renders them) and wrk runs N threads: one process is one CPU.
Run (root): .venv/bin/python bench/bench_https.py [--duration 5] [--connections 1,10]
[--processes 1]
Figures on a shared 2-core VM are noisy: compare them with each other, not across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.benchmark.parse import parse_wrk
from gateway.lab import LabSpec, lab_down, lab_up
from gateway.lab.services import gateway_config, lab_cert
from gateway.testing.tls_lab import LabGateway

OPENSSL_LEGACY = """openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = legacy
[legacy]
MinProtocol = TLSv1
CipherString = DEFAULT@SECLEVEL=0
"""


def wrk(
    spec: LabSpec, connections: int, args: argparse.Namespace, close: bool, env: dict[str, str]
) -> Any:
    duration = args.duration
    threads = max(1, min(args.processes, connections))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"https://{spec.server_addr}/1k.bin")
    proc = subprocess.run(
        ["ip", "netns", "exec", spec.client_ns, "env", *[f"{k}={v}" for k, v in env.items()],
         *argv], capture_output=True, text=True, timeout=duration + 60, check=True,
    )  # fmt: skip
    return parse_wrk(proc.stdout)


def measure(spec: LabSpec, label: str, args: argparse.Namespace, env: dict[str, str]) -> list[Any]:
    rows = []
    for connections in args.connections:
        for close in (False, True):
            r = wrk(spec, connections, args, close, env)
            row = {
                "path": label,
                "processes": args.processes,
                "connections": connections,
                "mode": "new connection" if close else "keep-alive",
                "req_per_s": round(r.requests_per_s, 1),
                "p50_ms": r.latency_p50_ms,
                "p99_ms": r.latency_p99_ms,
                "errors": r.errors_connect + r.errors_read + r.errors_timeout,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def measure_mitmdump(spec: LabSpec, args: argparse.Namespace, tmp: Path) -> list[Any]:
    """mitmproxy with no addon behind the same kernel redirect as the plane's."""
    cert, key = lab_cert(spec)
    pem = tmp / "combined.pem"
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    ports = range(18443, 18443 + args.processes)
    rules = []
    for i, port in enumerate(ports):  # as gateway/tls/redirect.py spreads connections
        left = args.processes - i
        spread = ["-m", "statistic", "--mode", "nth", "--every", str(left), "--packet", "0"]
        match = ["PREROUTING", "-d", spec.server_addr, "-p", "tcp", "--dport", "443"]
        if left > 1:
            match += spread
        rules.append([*match, "-j", "REDIRECT", "--to-ports", str(port)])
    nat = ["ip", "netns", "exec", spec.gw_ns, "iptables", "-t", "nat"]
    mitmdump = Path(sys.executable).with_name("mitmdump")
    procs = []
    try:
        for port in ports:
            argv = [str(mitmdump), "-q", "--mode", f"transparent@{port}", "--certs", f"*={pem}",
                    "--set", f"confdir={tmp}", "--set", "tls_version_client_min=TLS1_2",
                    "--set", "tls_version_server_min=TLS1", "--ssl-insecure",
                    "--set", "connection_strategy=lazy"]  # fmt: skip
            procs.append(subprocess.Popen(["ip", "netns", "exec", spec.gw_ns, *argv]))
        time.sleep(5)  # mitmdump starts in about a second; the host is loaded
        for rule in rules:
            subprocess.run([*nat, "-A", *rule], check=True)
        try:
            return measure(spec, "mitmproxy alone, no addon", args, {})
        finally:
            for rule in rules:
                subprocess.run([*nat, "-D", *rule], check=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument(
        "--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10]
    )
    parser.add_argument("--processes", type=int, default=1, help="proxy processes")
    args = parser.parse_args()
    spec = LabSpec(name=f"vphb{os.getpid()}")
    lab_down(spec.name)
    with tempfile.TemporaryDirectory(prefix="vpatch-bench-https-") as tmp:
        conf = Path(tmp) / "openssl-legacy.cnf"
        conf.write_text(OPENSSL_LEGACY)
        try:
            lab_up(spec, services=True, gateway=False)
            straight = measure(spec, "straight (TLS 1.0)", args, {"OPENSSL_CONF": str(conf)})
            bare = measure_mitmdump(spec, args, Path(tmp))
            service = {**gateway_config(spec)["tls_proxy"]["services"][0],
                       "processes": args.processes}  # fmt: skip
            gateway = LabGateway(spec, Path(tmp) / "gw", tls_proxy={"services": [service]})
            try:
                gateway.wait(True)
                proxied = measure(spec, "HTTPS plane (TLS 1.3 -> 1.0)", args, {})
            finally:
                gateway.stop()
        finally:
            lab_down(spec.name)
    print("\n| path | processes | connections | mode | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for row in straight + bare + proxied:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
