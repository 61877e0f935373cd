"""The kernel redirect of the HTTPS plane: a proxied service's new connections to the local proxy.

Pure: configuration in, `iptables-restore --noflush` text out (gateway/tls/plane.py applies
it). Shape, per family (IPv4 services in iptables, IPv6 ones in ip6tables), in the nat table:
    -A PREROUTING -j PREFIX-TLS
    -A PREFIX-TLS -j PREFIX-TLS<i>                       (one chain per service i)
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

from collections.abc import Sequence

from gateway.config import GatewayConfig
from gateway.tls.service import TlsService

__all__ = ["plane_ports", "redirect_text", "service_chain", "service_chain_text", "top_chain"]


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


def redirect_text(
    config: GatewayConfig, family: int, live: Sequence[Sequence[int]] | None = None
) -> str:
    """The nat rules of one family ("" when no service of that family is proxied);
    `live[i]`: the ports service i redirects to (default: all of them)."""
    prefix = config.firewall.chain_prefix
    ports = plane_ports(config) if live is None else live
    chains: list[str] = []
    rules: list[str] = []
    top = top_chain(prefix)
    for i, service in enumerate(config.tls_proxy.services):
        if service.family != family:
            continue
        chain = service_chain(prefix, i)
        chains.append(f":{chain} - [0:0]")
        rules.append(f"-A {top} -j {chain}")
        rules.extend(_redirects(chain, service, ports[i]))
    if not chains:
        return ""
    lines = ["*nat", f":{top} - [0:0]", *chains, f"-A PREROUTING -j {top}", *rules, "COMMIT"]
    return "\n".join(lines) + "\n"
