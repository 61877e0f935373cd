"""Scan one host: TCP connect scan of the chosen ports, then protocol probes on each open port
and on the UDP services (DNS, MSSQL resolution). Produces a `ScanResult`.

Guarantees: only `host` is contacted; each socket operation is bounded by `timeout`, so a scan
takes at most about (ports + probes) x timeout; progress is reported through a callback (the
CLI draws a bar on a TTY) and never affects the result; at most MAX_PORTS ports per scan.
A `cancelled` callback is asked before each connect and each probe: once it says True the
scan stops there (a probe under way finishes within its timeout) and the result is marked
`cancelled`, holding what the probes done so far found.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.errors import VpatchError
from gateway.scan import probes
from gateway.scan.probes import Evidence, Finding

MAX_PORTS = 1024  # ports one scan may name
CONNECT_WORKERS = 16  # parallel connect() calls during the port scan

Progress = Callable[[int, int, str], None]  # (done, total, what)
Cancelled = Callable[[], bool]  # asked between probes: True stops the scan


class ScanError(VpatchError):
    """A scan request that cannot be carried out (bad host or port list)."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    host: str
    started: float
    finished: float
    open_tcp: tuple[int, ...]
    findings: tuple[Finding, ...]
    unidentified: tuple[int, ...]  # open TCP ports no probe recognised
    cancelled: bool = False  # stopped before the end: findings are those of the probes done
    probes_done: int = 0
    probes_total: int = 0

    def products(self) -> set[str]:
        return {f.product for f in self.findings if f.product}


def parse_ports(text: str, source: str = "--ports") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'80,443,1000-1010,u53' -> (tcp ports, udp ports); a 'u' prefix means UDP."""
    tcp: set[int] = set()
    udp: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        target = udp if item.startswith("u") else tcp
        item = item.lstrip("ut:")
        lo, sep, hi = item.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError as err:
            raise ScanError(f"{source}: {raw.strip()!r} is not a port or range") from err
        if not (1 <= a <= b <= 65535):
            raise ScanError(f"{source}: {raw.strip()!r} is outside 1-65535")
        target.update(range(a, b + 1))
    if len(tcp) + len(udp) > MAX_PORTS:
        raise ScanError(f"{source}: {len(tcp) + len(udp)} ports, at most {MAX_PORTS} per scan")
    return tuple(sorted(tcp)), tuple(sorted(udp))


def check_host(host: str) -> str:
    """The host as an address literal; ScanError for names (we scan only what the operator
    names, literally)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError as err:
        raise ScanError(f"scan target {host!r} is not an IP address") from err


def scan_host(
    host: str,
    tcp_ports: Iterable[int] = probes.DEFAULT_TCP_PORTS,
    udp_ports: Iterable[int] = probes.DEFAULT_UDP_PORTS,
    timeout: float = probes.DEFAULT_TIMEOUT_S,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
) -> ScanResult:
    host = check_host(host)
    tcp = sorted(set(tcp_ports))
    udp = sorted(set(udp_ports))
    started = time.time()
    total = len(tcp) + len(tcp) + len(udp)  # connect, probe (estimated), udp probes
    done = 0
    stop = cancelled or (lambda: False)

    def tick(what: str, step: int = 1) -> None:
        nonlocal done
        done += step
        if progress is not None:
            progress(min(done, total), total, what)

    def connect(port: int) -> bool | None:
        return None if stop() else probes.tcp_open(host, port, timeout)

    with ThreadPoolExecutor(max_workers=CONNECT_WORKERS) as pool:
        states = list(pool.map(connect, tcp))
    open_tcp = [p for p, is_open in zip(tcp, states, strict=True) if is_open]
    tested = sum(1 for s in states if s is not None)
    tick(f"{host}: {len(open_tcp)} open TCP ports", tested + tested - len(open_tcp))
    findings: list[Finding] = []
    unidentified: list[int] = []
    for port in open_tcp:
        if stop():
            break
        finding = probes.probe_tcp_port(host, port, timeout, stop)
        if finding is not None:
            findings.append(finding)
        elif stop():
            break  # cut short: not known to be unidentifiable
        else:
            unidentified.append(port)
        tick(f"{host}:{port}/tcp {finding.service if finding else '?'}")
    for port in udp:
        if stop():
            break
        probe = probes.UDP_PROBES.get(port, probes.probe_dns)
        finding = probe(host, port, timeout)
        if finding is not None:
            findings.append(finding)
        tick(f"{host}:{port}/udp {finding.service if finding else '-'}")
    return ScanResult(
        host, started, time.time(), tuple(open_tcp), tuple(findings), tuple(unidentified),
        cancelled=done < total and stop(), probes_done=done, probes_total=total,
    )  # fmt: skip


def result_to_dict(result: ScanResult) -> dict[str, object]:
    """JSON-ready form of a scan result (the `--json` report and the stored history)."""

    def ev(e: Evidence) -> dict[str, str]:
        return {"probe": e.probe, "saw": e.saw}

    return {
        "host": result.host,
        "started": result.started,
        "finished": result.finished,
        "open_tcp": list(result.open_tcp),
        "unidentified_tcp": list(result.unidentified),
        "cancelled": result.cancelled,
        "probes_done": result.probes_done,
        "probes_total": result.probes_total,
        "findings": [
            {
                "port": f.port,
                "transport": f.transport,
                "service": f.service,
                "product": f.product,
                "version": f.version,
                "features": {c.feature: c.present for c in f.features},
                "evidence": [ev(e) for e in f.evidence] + [ev(c.evidence) for c in f.features],
            }
            for f in result.findings
        ],
    }
