"""Many concurrent TCP flows through the gateway: RSS, memory per flow, keep-alive req/s.

Figures, never assertions (bench/README.md, "Many flows"). Needs root. One run:

1. in-process (`--in-process-flows N`, 0 to skip): an Engine with the bundled rules takes N
   keep-alive HTTP flows (handshake, one request and its answer each); bytes per flow by
   component (bench/bench_flow_memory.py);
2. live: a bridge-mode namespace lab (gateway.lab, name `vpflows`), nginx on the server with
   room for the run (enough workers, `worker_connections` raised, `reuseport`,
   `keepalive_timeout` of an hour: this run's nginx.conf only), `vpatch run` with the lab's
   config (two queues, HMARK flow spreading), the packet plane alone: the bridge gets no
   address, so the lab proxies no HTTPS service (`--https-plane` keeps the lab's two
   mitmproxy processes, about 90-100 MB of RSS each, which hold none of these flows);
3. keep-alive req/s with only `--baseline-flows` (100) connections held open: `wrk -t2 -c32`
   from the client's own address, then gateway RSS (every process of `vpatch run`);
4. a generator in the client namespace (this script with `--hold`) opens `--flows` keep-alive
   connections (generator processes of at most 15,000 each, the VM's RLIMIT_NOFILE being
   20,000; nginx workers likewise, `reuseport`) from `--addresses` extra client addresses
   (198.18.0.100 and up, inside the lab's 198.18.0.0/24), sends one request on each and
   reads its answer, then holds them all open; the gateway's RSS, flows in its tables
   (control socket `status`) and conntrack's count;
5. the same wrk run while they stay open; the ratio to step 3.

    sudo .venv/bin/python bench/bench_flows.py --flows 100000 --duration 5
    sudo .venv/bin/python bench/bench_flows.py --flows 20000 --in-process-flows 0   # quicker

Traffic stays between the lab's client and server (198.18.0.0/15); the lab is removed at the
end, also on failure; the processes started here are stopped by PID.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.benchmark.parse import parse_wrk, process_tree  # noqa: E402
from gateway.control.server import control_request  # noqa: E402
from gateway.lab import LabSpec, lab_down, lab_up, netns  # noqa: E402
from gateway.lab import services as lab_services  # noqa: E402
from gateway.lab.netns import netns_popen, stop_pids  # noqa: E402

FIRST_EXTRA = ipaddress.ip_address("198.18.0.100")
REQUEST = b"GET /1k.bin HTTP/1.1\r\nHost: 198.18.0.20\r\n\r\n"
IN_FLIGHT = 500  # connections each generator has opening at once
# Without CAP_SYS_RESOURCE a process keeps the hard RLIMIT_NOFILE (20,000 on the test VM): the
# connections are spread over generator processes and nginx workers of this many each.
PER_PROCESS = 15_000


def log(text: str) -> None:
    print(f"[flows] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ the generator


def hold(server: str, flows: int, addresses: list[str], timeout: float, rate: float) -> int:
    """In the client namespace: open `flows` connections (round robin over `addresses`, at
    most `rate` a second), one request and its answer on each, print "ready <open>
    <failed>" and keep them all open until stdin closes."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    state: dict[int, int] = {}  # fd -> bytes of the answer still awaited (0: connecting)
    opened = failed = done = 0
    started = time.monotonic()
    deadline = started + timeout
    while done + failed < flows and time.monotonic() < deadline:
        allowed = min(flows, int((time.monotonic() - started) * rate) + 1)
        while opened < allowed and opened - done - failed < IN_FLIGHT:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
            s.bind((addresses[opened % len(addresses)], 0))
            s.setblocking(False)
            s.connect_ex((server, 80))
            socks[s.fileno()] = s
            state[s.fileno()] = 0
            ep.register(s.fileno(), select.EPOLLOUT)
            opened += 1
        for fd, ev in ep.poll(0.01):
            s = socks[fd]
            if ev & (select.EPOLLERR | select.EPOLLHUP):
                ep.unregister(fd)
                s.close()
                del socks[fd], state[fd]
                failed += 1
            elif state[fd] == 0:
                s.send(REQUEST)
                state[fd] = 1
                ep.modify(fd, select.EPOLLIN)
            else:
                data = s.recv(65536)
                if not data:
                    ep.unregister(fd)
                    s.close()
                    del socks[fd], state[fd]
                    failed += 1
                elif data.endswith(bytes(range(256))[-16:]):  # the end of /1k.bin
                    ep.unregister(fd)
                    done += 1
    print(f"ready {done} {failed + (flows - done - failed)}", flush=True)
    sys.stdin.read()  # hold until the bench closes our stdin
    return 0


# ------------------------------------------------------------------------ measurements


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def pss_kib(pids: list[int]) -> int:
    """Proportional set size: shared pages (libraries, the spawn parent's) counted once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def gateway_rss(root: int) -> dict[str, int]:
    pids = process_tree(root)
    return {"processes": len(pids), "rss_kib": rss_kib(pids), "pss_kib": pss_kib(pids)}


def wrk(spec: LabSpec, duration: int, runs: int) -> dict[str, Any]:
    """`runs` keep-alive wrk runs from the client's own address: the median run's figures."""
    results = []
    for _ in range(runs):
        argv = ["wrk", "-t2", "-c32", f"-d{duration}s", "--latency"]
        argv.append(f"http://{spec.server_addr}/1k.bin")
        out = netns.netns_exec(spec.client_ns, argv, timeout=duration + 60).stdout
        results.append(parse_wrk(out, "wrk keep-alive"))
    results.sort(key=lambda r: r.requests_per_s)
    mid = results[len(results) // 2]
    return {
        "rps": round(mid.requests_per_s, 1),
        "p50_ms": round(mid.latency_p50_ms, 3),
        "p99_ms": round(mid.latency_p99_ms, 3),
        "errors": sum(r.errors for r in results),
        "runs_rps": [round(r.requests_per_s) for r in results],
    }


def gateway_flows(spec: LabSpec) -> dict[str, Any]:
    """Flows in the engines' tables, and what the kernel passed without a verdict (a full
    queue with fail-open: those SYNs never made a flow)."""
    status = control_request(lab_services.control_socket_path(spec), "status")
    queues = status["queues"].values()
    return {
        "flows_active": sum(int(q.get("flows_active") or 0) for q in queues),
        "per_queue": [int(q.get("flows_active") or 0) for q in queues],
        "uninspected_packets": status.get("uninspected_packets"),
        "evicted_limit_flow_table": status.get("limits", {}).get("flow_table"),
    }


def conntrack_count(spec: LabSpec) -> int | None:
    proc = netns.netns_exec(spec.gw_ns, ["conntrack", "-C"], check=False)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None


def in_process(flows: int) -> dict[str, Any]:
    """Memory per keep-alive HTTP flow in an Engine (bundled rules), by component
    (bench/bench_flow_memory.py, this script's directory; imported here, so that the
    generator processes do not load the engine)."""
    import bench_flow_memory

    return bench_flow_memory.measure(flows, warmup=500, top=10)


# ------------------------------------------------------------------------ the lab


def start_nginx(spec: LabSpec, flows: int) -> int:
    """nginx with room for `flows` connections (this run's config only): workers of at most
    PER_PROCESS + 4096 connections each, spread by the kernel (`reuseport`)."""
    d = lab_services.write_nginx(spec)
    conf = spec.state_dir / "nginx" / "nginx.conf"
    workers = flows // PER_PROCESS + 2
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    room = min(PER_PROCESS + 4096, hard - 100)
    text = conf.read_text()
    sized = f"worker_processes {workers};\nworker_rlimit_nofile {hard};"
    text = text.replace("worker_processes auto;", sized)
    text = text.replace("worker_connections 1024;", f"worker_connections {room};")
    text = text.replace("listen 80 default_server;", "listen 80 default_server reuseport;")
    text = text.replace(
        "keepalive_requests 100000;", "keepalive_requests 100000;\n    keepalive_timeout 3600s;"
    )
    conf.write_text(text)
    pid = lab_services.start_background(spec, spec.server_ns, "nginx", d.argv)
    deadline = time.monotonic() + 30
    while 80 not in lab_services.listening(spec.server_ns)[0]:
        if time.monotonic() > deadline:
            tail = lab_services.log_tail(lab_services.log_file(spec, "nginx"))
            raise RuntimeError(f"nginx did not listen: {tail}")
        time.sleep(0.2)
    return pid


def _shares(count: int) -> list[int]:
    """`count` connections split over generator processes of at most PER_PROCESS each."""
    procs = max(1, -(-count // PER_PROCESS))
    return [count // procs + (1 if i < count % procs else 0) for i in range(procs)]


def _release(holders: list[subprocess.Popen[bytes]]) -> None:
    """Close the generators' stdin: they close their connections and exit."""
    for holder in holders:
        assert holder.stdin is not None
        holder.stdin.close()
    for holder in holders:
        holder.wait(timeout=120)


def live(args: argparse.Namespace) -> dict[str, Any]:
    spec = (
        LabSpec(name=args.lab_name)
        if args.https_plane
        else LabSpec(name=args.lab_name, bridge_ip="-", bridge_ip6="-")
    )
    out: dict[str, Any] = {"https_plane": args.https_plane}
    lab_up(spec, services=False, gateway=False)
    pids: list[int] = []
    holders: list[subprocess.Popen[bytes]] = []
    try:
        netns.sysctl(spec.server_ns, "net.core.somaxconn", "65535")
        netns.sysctl(spec.server_ns, "net.ipv4.tcp_max_syn_backlog", "65535")
        addresses = [str(FIRST_EXTRA + i) for i in range(args.addresses)]
        for addr in addresses:
            netns.netns_exec(spec.client_ns, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
        pids.append(start_nginx(spec, args.flows + args.baseline_flows))
        gw = lab_services.start_gateway(spec, timeout=180.0)  # slow on a loaded VM
        pids.append(gw)
        time.sleep(2)
        out["gateway_rss_idle"] = gateway_rss(gw)
        for label, count in (("baseline", args.baseline_flows), ("many", args.flows)):
            log(f"{label}: opening {count} keep-alive connections")
            started = time.monotonic()
            holders = [
                netns_popen(
                    spec.client_ns,
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--hold",
                        str(share),
                        "--addresses",
                        str(args.addresses),
                        "--server",
                        spec.server_addr,
                        "--rate",
                        str(args.rate / len(_shares(count))),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                for share in _shares(count)
            ]
            held = failed = 0
            for holder in holders:
                assert holder.stdout is not None
                ready = holder.stdout.readline().decode().split()
                held += int(ready[1]) if len(ready) > 1 else 0
                failed += int(ready[2]) if len(ready) > 2 else 0
            took = time.monotonic() - started
            log(f"{label}: {held} held, {failed} failed, in {took:.1f}s")
            time.sleep(1.5)  # the workers publish their counters once a second
            figures: dict[str, Any] = {
                "held": held,
                "failed": failed,
                "open_seconds": round(took, 1),
                "gateway": gateway_rss(gw),
                "engine": gateway_flows(spec),
                "conntrack": conntrack_count(spec),
            }
            figures["wrk"] = wrk(spec, args.duration, args.wrk_runs)
            figures["gateway_after_wrk"] = gateway_rss(gw)
            out[label] = figures
            log(f"{label}: {json.dumps(figures)}")
            _release(holders)
            holders = []
            time.sleep(2)
        base, many = out["baseline"], out["many"]
        grown = many["gateway"]["rss_kib"] - base["gateway"]["rss_kib"]
        extra = max(1, many["held"] - base["held"])
        out["rss_growth_kib"] = grown
        out["bytes_per_flow_rss"] = round(grown * 1024 / extra)
        pss = many["gateway"]["pss_kib"] - base["gateway"]["pss_kib"]
        out["bytes_per_flow_pss"] = round(pss * 1024 / extra)
        out["rps_ratio_many_to_baseline"] = round(many["wrk"]["rps"] / base["wrk"]["rps"], 3)
    finally:
        for holder in holders:
            holder.kill()
        stop_pids(pids)
        lab_down(spec.name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--baseline-flows", type=int, default=100)
    parser.add_argument("--addresses", type=int, default=100, help="extra client addresses")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="new connections a second while opening them (1000: the workers keep up on a "
        "loaded 2-core VM, so no SYN passes uninspected by the fail-open queue)",
    )
    parser.add_argument("--wrk-runs", type=int, default=3, help="wrk runs, median reported")
    parser.add_argument("--in-process-flows", type=int, default=20_000)
    parser.add_argument("--lab-name", default="vpflows")
    parser.add_argument(
        "--https-plane", action="store_true", help="keep the lab's HTTPS proxies running too"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--hold", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--server", default="198.18.0.20", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold is not None:
        addrs = [str(FIRST_EXTRA + i) for i in range(args.addresses)]
        return hold(args.server, args.hold, addrs, timeout=1200.0, rate=args.rate)
    if not 1 <= args.addresses <= 120:
        parser.error("--addresses must be 1..120 (198.18.0.100-219 in the lab's /24)")
    report: dict[str, Any] = {"flows": args.flows, "addresses": args.addresses}
    if args.in_process_flows:
        log(f"in-process: {args.in_process_flows} flows")
        report["in_process"] = in_process(args.in_process_flows)
        log(f"in-process: {report['in_process']}")
    report["live"] = live(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
