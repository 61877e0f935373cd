"""The kernel redirect of the HTTPS plane: a proxied service's new connections to the local proxy.

Pure: services in, `iptables-restore --noflush` text out (gateway/tls/plane.py applies it:
`plane_text` for the whole plane at start and at each reconfiguration, `service_chain_text`
for one service's chain). Shape, per family (IPv4 services in iptables, IPv6 ones in
ip6tables), in the nat table:
    -A PREROUTING -j PREFIX-TLS
    -A PREFIX-TLS -j PREFIX-TLS<i>                       (one chain per service, numbered)
    -A PREFIX-TLS<i> -d HOST -p tcp --dport PORT [-m statistic --mode nth ...]
        -j REDIRECT --to-ports P                           (one rule per proxy port)
REDIRECT rewrites the destination to the gateway's own address on the incoming interface; on
the transparent bridge, br_netfilter runs nat PREROUTING for bridged frames and hands the
redirected ones up to the local proxy (the bridge needs an IPv4 address inside the protected
subnet, docs/https.md); routed, the same rule works on the inbound interface. mitmproxy reads
the original destination back (SO_ORIGINAL_DST). Only a connection's first packet meets the
nat table, so `statistic --mode nth` spreads connections, not packets, over the processes.

Guarantees: only our own chains (PREFIX-TLS*) and one jump from PREROUTING; the removal of
the gateway's rules (gateway/firewall/apply.py remove_rules: the nat table is searched) takes
them away; `service_chain_text` refills one service's chain in place (fail-open bypass and
recovery) without touching the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.config import GatewayConfig
from gateway.tls.service import TlsService

__all__ = [
    "plane_ports",
    "plane_text",
    "redirect_text",
    "service_chain",
    "service_chain_text",
    "top_chain",
]


def plane_ports(config: GatewayConfig) -> list[list[int]]:
    """The local ports of each service's proxy processes, numbered from `listen_port`."""
    out: list[list[int]] = []
    port = config.tls_proxy.listen_port
    for service in config.tls_proxy.services:
        out.append(list(range(port, port + service.processes)))
        port += service.processes
    return out


def top_chain(prefix: str) -> str:
    return f"{prefix}-TLS"


def service_chain(prefix: str, index: int) -> str:
    return f"{prefix}-TLS{index}"


def _redirects(chain: str, service: TlsService, ports: Sequence[int]) -> list[str]:
    """One REDIRECT per port; connection n goes to port n mod len(ports)."""
    lines: list[str] = []
    match = f"-A {chain} -d {service.host} -p tcp -m tcp --dport {service.port}"
    for i, port in enumerate(ports):
        left = len(ports) - i
        spread = f" -m statistic --mode nth --every {left} --packet 0" if left > 1 else ""
        lines.append(f"{match}{spread} -j REDIRECT --to-ports {port}")
    return lines


def service_chain_text(prefix: str, index: int, service: TlsService, ports: Sequence[int]) -> str:
    """Restore text replacing service `index`'s chain by redirects to `ports` (none: the
    service's connections pass the gateway as any other flow: the packet plane's)."""
    chain = service_chain(prefix, index)
    lines = ["*nat", f"-F {chain}", *_redirects(chain, service, ports), "COMMIT"]
    return "\n".join(lines) + "\n"


def plane_text(
    prefix: str,
    family: int,
    entries: Sequence[tuple[int, TlsService, Sequence[int]]],
    hook: bool,
    flush: Iterable[int] = (),
) -> str:
    """The nat rules of one family for the plane's services: `entries` are (chain number,
    service, ports it redirects to); services of the other family are skipped. Every chain is
    declared, which creates it or, under `--noflush`, empties it: so the text replaces the
    plane's rules as a whole, atomically; `flush` names chains of services gone (emptied, left
    for the exit's removal); `hook`: add PREROUTING's jump (only the first time: it would be
    doubled)."""
    top = top_chain(prefix)
    chains: list[str] = []
    rules: list[str] = []
    for number, service, ports in entries:
        if service.family != family:
            continue
        chain = service_chain(prefix, number)
        chains.append(f":{chain} - [0:0]")
        rules.append(f"-A {top} -j {chain}")
        rules.extend(_redirects(chain, service, ports))
    emptied = [f":{service_chain(prefix, n)} - [0:0]" for n in sorted(set(flush))]
    jump = [f"-A PREROUTING -j {top}"] if hook else []
    lines = ["*nat", f":{top} - [0:0]", *chains, *emptied, *jump, *rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def redirect_text(
    config: GatewayConfig, family: int, live: Sequence[Sequence[int]] | None = None
) -> str:
    """The nat rules of one family for the configuration's services ("" when none of that
    family is proxied); `live[i]`: the ports service i redirects to (default: all of them)."""
    services = config.tls_proxy.services
    ports = plane_ports(config) if live is None else live
    entries = [(i, s, ports[i]) for i, s in enumerate(services) if s.family == family]
    if not entries:
        return ""
    return plane_text(config.firewall.chain_prefix, family, entries, hook=True)
