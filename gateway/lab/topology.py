"""The lab's shape (LabSpec) and the network plumbing: veth pairs between three namespaces, the
gateway's transparent bridge or router, addresses and routes.

`configure_bridge()` and `configure_router()` are the one place a gateway's forwarding is set
up: the namespace lab calls them with ns=<gateway namespace>, the Vagrant gateway VM calls them
through `vpatch lab bridge` / `vpatch lab router` with ns=None (its own root namespace).

Guarantees:
- bridge mode: br0's ports carry no IP address (IPv6 disabled on them, so not even a
  link-local one appears), br0 only the addresses of the HTTPS plane's proxy inside the
  protected subnets (`bridge_ip`, default 198.18.0.2/24, and `bridge_ip6`, default
  2001:2::2/64; "-": none) and, with the IPv6 one, the link-local address neighbour discovery
  needs (no router advertisements accepted); br_netfilter is on (bridge-nf-call-iptables/
  ip6tables=1)
  so bridged IPv4 and IPv6 traverse the iptables FORWARD chain (the sysctls are set in the
  gateway's namespace only);
- routed mode: the gateway has an address on each side, IPv4 and IPv6 forwarding on in its
  namespace; client and server route everything via it;
- IPv6 addresses are added with `nodad` so they are usable at once;
- veth offloads stay at the kernel defaults unless spec.offloads_off (the kernel segments GSO
  packets before they reach an NFQUEUE reader, so the reader sees wire-sized packets anyway);
- nothing is ever added to the root namespace: veth ends are created directly inside the
  lab's namespaces.
Addresses are all inside 198.18.0.0/15 (RFC 2544 benchmarking) and 2001:2::/48 (RFC 5180).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import LabError
from gateway.lab.netns import netns_exec, run

STATE_ROOT = Path("/run/vpatch-lab")
BRIDGE = "br0"
# Interface names (at most 15 characters, IFNAMSIZ - 1).
GW_CLIENT_PORT = "gw-client"
GW_SERVER_PORT = "gw-server"
HOST_PORT = "eth0"  # the client's and the server's only interface
MAX_NAME_LEN = 40  # lab names end up in namespace names and paths; keep them short
# Offload features turned off on the lab veths with LabSpec(offloads_off=True). Off is NOT the
# default: measured slower both bridged and through NFQUEUE (docs/lab.md, "Offloads").
OFFLOAD_FEATURES = ("tso", "gso", "gro", "tx-checksumming", "rx-checksumming")

_BRIDGE_DEFAULTS = {
    "client_ip": "198.18.0.10/24",
    "server_ip": "198.18.0.20/24",
    "client_ip6": "2001:2::10/64",
    "server_ip6": "2001:2::20/64",
    "client_gw_ip": "",
    "server_gw_ip": "",
    "client_gw_ip6": "",
    "server_gw_ip6": "",
    "bridge_ip": "198.18.0.2/24",
    "bridge_ip6": "2001:2::2/64",
}
_ROUTED_DEFAULTS = {
    "client_ip": "198.18.1.10/24",
    "server_ip": "198.19.0.20/24",
    "client_ip6": "2001:2:0:1::10/64",
    "server_ip6": "2001:2:0:2::20/64",
    "client_gw_ip": "198.18.1.1/24",
    "server_gw_ip": "198.19.0.1/24",
    "client_gw_ip6": "2001:2:0:1::1/64",
    "server_gw_ip6": "2001:2:0:2::1/64",
    "bridge_ip": "",
    "bridge_ip6": "",
}


@dataclass(frozen=True, slots=True)
class LabSpec:
    """Everything about one lab, derived from its name and mode.

    Empty address fields (and an empty state_dir) are filled with the mode's defaults, so
    `LabSpec(name="vpt123", routed=True)` is a complete routed lab. Addresses carry their prefix
    length ("198.18.0.20/24"); the *_addr properties give the bare address.
    """

    name: str = "vpatch"
    routed: bool = False
    client_ip: str = ""
    server_ip: str = ""
    client_ip6: str = ""
    server_ip6: str = ""
    client_gw_ip: str = ""  # routed only: the gateway's address on the client side
    server_gw_ip: str = ""  # routed only: the gateway's address on the server side
    client_gw_ip6: str = ""
    server_gw_ip6: str = ""
    # bridge only: br0's addresses for the HTTPS plane's proxy (docs/https.md), inside the
    # protected subnets; "-": none (and the services of that family are not proxied)
    bridge_ip: str = ""
    bridge_ip6: str = ""
    state_dir: Path = Path("")  # empty: /run/vpatch-lab/<name>
    offloads_off: bool = False  # True: ethtool -K off (measured slower: docs/lab.md)
    rules: tuple[str, ...] = ()  # rule files/dirs for the lab gateway (empty: bundled rules)

    def __post_init__(self) -> None:
        if (
            not self.name
            or len(self.name) > MAX_NAME_LEN
            or not all(ch.isalnum() or ch in "-_" for ch in self.name)
        ):
            raise LabError(
                f"invalid lab name {self.name!r}: use 1 to {MAX_NAME_LEN} letters, "
                "digits, '-' or '_'"
            )
        defaults = _ROUTED_DEFAULTS if self.routed else _BRIDGE_DEFAULTS
        for key, value in defaults.items():
            if not getattr(self, key):
                object.__setattr__(self, key, value)
        if self.state_dir == Path(""):
            object.__setattr__(self, "state_dir", STATE_ROOT / self.name)

    @property
    def client_ns(self) -> str:
        return f"{self.name}-client"

    @property
    def gw_ns(self) -> str:
        return f"{self.name}-gw"

    @property
    def server_ns(self) -> str:
        return f"{self.name}-server"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.gw_ns, self.server_ns)

    @property
    def mode(self) -> str:
        return "routed" if self.routed else "bridge"

    @property
    def client_addr(self) -> str:
        return self.client_ip.split("/")[0]

    @property
    def server_addr(self) -> str:
        return self.server_ip.split("/")[0]

    @property
    def client_addr6(self) -> str:
        return self.client_ip6.split("/")[0]

    @property
    def server_addr6(self) -> str:
        return self.server_ip6.split("/")[0]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (written to <state_dir>/lab.json)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str) -> LabSpec:
        """Inverse of to_dict(); LabError names source when a key is missing or wrong."""
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "state_dir":
                value = Path(str(value))
            elif f.name == "rules" and isinstance(value, list):
                value = tuple(str(v) for v in value)
            kwargs[f.name] = value
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except TypeError as err:
            raise LabError(f"{source}: bad lab description: {err}") from err


def check_address(value: str, where: str) -> None:
    """Raise LabError unless value is an interface address with prefix ("198.18.0.20/24")."""
    try:
        ipaddress.ip_interface(value)
    except ValueError as err:
        raise LabError(f"{where}: invalid interface address {value!r}") from err
    if "/" not in value:
        raise LabError(f"{where}: address {value!r} needs a prefix length")


def _ip(ns: str | None, *args: str) -> None:
    run(["ip", *(["-n", ns] if ns else []), *args])


def _sysctl(ns: str | None, key: str, value: str) -> None:
    argv = ["sysctl", "-q", "-w", f"{key}={value}"]
    if ns:
        netns_exec(ns, argv)
    else:
        run(argv)


def _proc_exists(ns: str | None, path: str) -> bool:
    argv = ["test", "-e", path]
    proc = netns_exec(ns, argv, check=False) if ns else run(argv, check=False)
    return proc.returncode == 0


def create_veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """Create a veth pair with one end in each namespace (never in the root namespace)."""
    _ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)


def disable_offloads(ns: str | None, iface: str) -> None:
    """Turn off segmentation/checksum offloads on iface (ns None: the current namespace)."""
    argv = ["ethtool", "-K", iface]
    for feature in OFFLOAD_FEATURES:
        argv += [feature, "off"]
    if ns:
        netns_exec(ns, argv)
    else:
        run(argv)


def configure_bridge(ports: Sequence[str], bridge: str = BRIDGE, ns: str | None = None) -> None:
    """Bridge ports into `bridge` with no addresses, and send bridged traffic through iptables.

    ns=None configures the current namespace (the Vagrant gateway VM). Idempotent.
    """
    if len(ports) < 2:
        raise LabError(f"a bridge needs two ports, got {list(ports)!r}")
    if not _proc_exists(ns, "/proc/sys/net/bridge"):
        # Loadable on stock Debian kernels; built in on the development VMs.
        run(["modprobe", "br_netfilter"], check=False)
        if not _proc_exists(ns, "/proc/sys/net/bridge"):
            raise LabError(
                "br_netfilter is not available (/proc/sys/net/bridge missing"
                f"{' in ' + ns if ns else ''}); load it with `modprobe br_netfilter`"
            )
    if not _proc_exists(ns, f"/sys/class/net/{bridge}"):
        _ip(ns, "link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    for iface in (bridge, *ports):
        # No address of any kind on the bridge or its ports: the gateway is invisible.
        _sysctl(ns, f"net.ipv6.conf.{iface}.disable_ipv6", "1")
        _ip(ns, "addr", "flush", "dev", iface)
    for port in ports:
        _ip(ns, "link", "set", port, "master", bridge)
        _ip(ns, "link", "set", port, "up")
    _ip(ns, "link", "set", bridge, "up")
    _sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1")
    _sysctl(ns, "net.bridge.bridge-nf-call-ip6tables", "1")
    _sysctl(ns, "net.bridge.bridge-nf-call-arptables", "0")


def bridge_address(addr: str, bridge: str = BRIDGE, ns: str | None = None) -> None:
    """Give the bridge one address (IPv4 or IPv6) inside the protected subnet of its family:
    the HTTPS plane's local proxy answers the redirected connections and opens the upstream
    ones from it (with none the kernel's REDIRECT has nowhere to send them, docs/https.md).
    IPv6 is turned on on the bridge for it, with no duplicate address detection and no router
    advertisements accepted; the bridge then has a link-local address too, which Linux needs:
    it sends a neighbour solicitation from a link-local address when the packet's source is
    not one of the interface's own (the proxy's replies carry the server's address), and
    with none it sends nothing and the redirected connection hangs. Idempotent."""
    check_address(addr, "bridge address")
    if ipaddress.ip_interface(addr).version == 4:
        _ip(ns, "addr", "replace", addr, "dev", bridge)
        return
    for key in ("accept_dad", "accept_ra"):
        _sysctl(ns, f"net.ipv6.conf.{bridge}.{key}", "0")
    _sysctl(ns, f"net.ipv6.conf.{bridge}.disable_ipv6", "0")
    _ip(ns, "-6", "addr", "replace", addr, "dev", bridge, "nodad")


def configure_router(ns: str | None = None) -> None:
    """Turn on IPv4 and IPv6 forwarding in ns (None: the current namespace). Idempotent."""
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    _sysctl(ns, "net.ipv6.conf.all.forwarding", "1")


def _add_addr(ns: str, iface: str, addr: str) -> None:
    if ipaddress.ip_interface(addr).version == 6:
        _ip(ns, "-6", "addr", "add", addr, "dev", iface, "nodad")
    else:
        _ip(ns, "addr", "add", addr, "dev", iface)


def _host_setup(ns: str, addr4: str, addr6: str) -> None:
    # accept_dad=0 as well as nodad: no link-local DAD wait either.
    netns_exec(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{HOST_PORT}.accept_dad=0"])
    _add_addr(ns, HOST_PORT, addr4)
    _add_addr(ns, HOST_PORT, addr6)
    _ip(ns, "link", "set", HOST_PORT, "up")


def build_links(spec: LabSpec) -> None:
    """Join client - gateway - server with veth pairs (the namespaces exist already)."""
    create_veth(spec.gw_ns, GW_CLIENT_PORT, spec.client_ns, HOST_PORT)
    create_veth(spec.gw_ns, GW_SERVER_PORT, spec.server_ns, HOST_PORT)
    if spec.offloads_off:
        for ns, iface in (
            (spec.gw_ns, GW_CLIENT_PORT),
            (spec.gw_ns, GW_SERVER_PORT),
            (spec.client_ns, HOST_PORT),
            (spec.server_ns, HOST_PORT),
        ):
            disable_offloads(ns, iface)


def configure_addresses(spec: LabSpec) -> None:
    """Addresses, forwarding and routes for the spec's mode."""
    for key in ("client_ip", "server_ip", "client_ip6", "server_ip6"):
        check_address(getattr(spec, key), f"lab {spec.name} {key}")
    if spec.routed:
        for key in ("client_gw_ip", "server_gw_ip", "client_gw_ip6", "server_gw_ip6"):
            check_address(getattr(spec, key), f"lab {spec.name} {key}")
    _host_setup(spec.client_ns, spec.client_ip, spec.client_ip6)
    _host_setup(spec.server_ns, spec.server_ip, spec.server_ip6)
    if not spec.routed:
        configure_bridge([GW_CLIENT_PORT, GW_SERVER_PORT], BRIDGE, ns=spec.gw_ns)
        for addr in (spec.bridge_ip, spec.bridge_ip6):
            if addr not in ("", "-"):
                bridge_address(addr, BRIDGE, ns=spec.gw_ns)
        return
    gw = spec.gw_ns
    for port, addr4, addr6 in (
        (GW_CLIENT_PORT, spec.client_gw_ip, spec.client_gw_ip6),
        (GW_SERVER_PORT, spec.server_gw_ip, spec.server_gw_ip6),
    ):
        netns_exec(gw, ["sysctl", "-q", "-w", f"net.ipv6.conf.{port}.accept_dad=0"])
        _add_addr(gw, port, addr4)
        _add_addr(gw, port, addr6)
        _ip(gw, "link", "set", port, "up")
    configure_router(gw)
    for ns, via4, via6 in (
        (spec.client_ns, spec.client_gw_ip, spec.client_gw_ip6),
        (spec.server_ns, spec.server_gw_ip, spec.server_gw_ip6),
    ):
        _ip(ns, "route", "add", "default", "via", via4.split("/")[0])
        _ip(ns, "-6", "route", "add", "default", "via", via6.split("/")[0])


def addresses(ns: str) -> list[dict[str, str]]:
    """Global addresses in ns as [{"iface", "addr"}] (for `vpatch lab status`)."""
    proc = netns_exec(ns, ["ip", "-o", "addr", "show", "scope", "global"], check=False)
    out: list[dict[str, str]] = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append({"iface": parts[1], "addr": parts[3]})
    return out
