"""Application control: per-host policy on protocols identified by content, not by port.

What it does: an app-control rule is one of these texts (stored per host in the policy store's
`app_controls` table, written by `vpatch hosts app-control`):
  refuse-smb1                          SMB1 NEGOTIATE offering no SMB2 dialect -> reset
  min-tls 1.0|1.1|1.2|1.3              ClientHello offering nothing at or above the floor, or a
                                       ServerHello choosing a version below it -> reset
  refuse-cleartext ftp[,telnet]        FTP commands other than AUTH / Telnet negotiation -> reset
  refuse-http-port-other-than P[,P..]  an HTTP request on any other TCP port -> reset
Each maps to built-in virtual rules (APP_CONTROL_RULES, ids 9200000-9200099, `default_mode
off`) that the engine evaluates like any rule on the fields of the app decoders
(gateway/decode/registry.py: smb.negotiate.dialects, tls.handshake.effective_version, ftp.command,
raw);
`CompiledPolicy.mode(server, rule, server_port)` turns them on (PREVENT) only for the hosts
whose policy names them, so the events name the cause ("app-control: SMB1 negotiation
refused") and a reload changes the policy without restarting workers.

Guarantees: `parse_control` accepts exactly the forms above and raises ConfigError naming the
text and where it came from; `rule_paths(config)` is the configured rule paths plus
APP_CONTROL_RULES, so the kernel queue plan covers the watched ports (listed in the YAML).
The HTTP-port rule has `ports: any`: it is left out of the plan (`plan_rules`), and only the
hosts whose policy names it (`any_port_hosts`) have every TCP port queued, through the
prefix-anyport4/6 sets that `vpatch run` fills at start and refills on every reload.
A TLS floor is checked on both hellos: the client's highest offered version (a client that
cannot reach the floor is reset at once) and the server's choice (a modern client downgraded by
an old server, the usual case in front of legacy hosts, is reset at the ServerHello, before any
application data). Both read supported_versions, so a 1.3 floor is enforceable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.database import db_errors
from gateway.errors import ConfigError
from gateway.match.rules import RuleSet
from gateway.policy.compiled import APP_CONTROL_FIRST, APP_CONTROL_LAST
from gateway.rulepack import effective_rule_paths

if TYPE_CHECKING:
    from gateway.config import GatewayConfig, Network
    from gateway.policy.store import Store

APP_CONTROL_RULES: Final = Path(__file__).with_name("appcontrol.yaml")
SID_SMB1: Final = 9200001
# min-tls floor -> (ClientHello rule, ServerHello rule)
SID_TLS_MIN: Final = {
    "1.0": (9200010, 9200015),
    "1.1": (9200011, 9200016),
    "1.2": (9200012, 9200017),
    "1.3": (9200013, 9200018),
}
SID_FTP: Final = 9200021
SID_TELNET: Final = 9200022
SID_HTTP_PORT: Final = 9200031
SID_RANGE: Final = range(APP_CONTROL_FIRST, APP_CONTROL_LAST + 1)
# Virtual rules with `ports: any`: a host whose policy names one has every TCP port queued
# (render.any_port_hosts) instead of every protected host (the plan leaves them out).
ANY_PORT_SIDS: Final = frozenset({SID_HTTP_PORT})
CLEARTEXT: Final = {"ftp": SID_FTP, "telnet": SID_TELNET}
MAX_CONTROL_TEXT: Final = 200


@dataclass(frozen=True, slots=True)
class AppControl:
    """One parsed app-control rule: the virtual rule ids it enables."""

    text: str  # normalised text, as stored
    rule_ids: frozenset[int]
    http_ports: frozenset[int] = frozenset()  # refuse-http-port-other-than: allowed ports

    @property
    def every_port(self) -> bool:
        """The host's every TCP port must be seen (a `ports: any` virtual rule)."""
        return bool(self.rule_ids & ANY_PORT_SIDS)


def parse_control(text: str, source: str) -> AppControl:
    words = text.strip().split(None, 1)
    if not words or len(text) > MAX_CONTROL_TEXT:
        raise ConfigError(f"{source}: app-control rule {text!r} is empty or too long")
    kind, arg = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
    if kind == "refuse-smb1" and not arg:
        return AppControl("refuse-smb1", frozenset({SID_SMB1}))
    if kind == "min-tls" and arg in SID_TLS_MIN:
        return AppControl(f"min-tls {arg}", frozenset(SID_TLS_MIN[arg]))
    items = [x.strip().lower() for x in arg.split(",") if x.strip()]
    if kind == "refuse-cleartext" and items and all(x in CLEARTEXT for x in items):
        names = sorted(set(items))
        return AppControl(
            f"refuse-cleartext {','.join(names)}", frozenset(CLEARTEXT[x] for x in names)
        )
    if kind == "refuse-http-port-other-than" and items:
        try:
            ports = sorted({int(x) for x in items})
        except ValueError:
            ports = []
        if ports and all(0 < p < 65536 for p in ports):
            return AppControl(
                f"refuse-http-port-other-than {','.join(map(str, ports))}",
                frozenset({SID_HTTP_PORT}),
                frozenset(ports),
            )
    raise ConfigError(
        f"{source}: app-control rule {text!r} is not one of: refuse-smb1 | min-tls "
        f"{'|'.join(SID_TLS_MIN)} | refuse-cleartext ftp,telnet | "
        "refuse-http-port-other-than PORT[,PORT...]"
    )


def rule_paths(config: GatewayConfig) -> list[Path]:
    """The configured rule paths (the installed rule pack in force in place of the bundled
    one, gateway/rulepack.py) plus the built-in app-control rules."""
    return [*effective_rule_paths(config.rules, config.rule_pack.dir), APP_CONTROL_RULES]


def plan_rules(ruleset: RuleSet) -> RuleSet:
    """The rules whose ports every protected host has queued: all but the `ports: any`
    app-control rules (those queue only the hosts of any_port_hosts)."""
    return RuleSet(r for r in ruleset if r.id not in ANY_PORT_SIDS)


def any_port_hosts(store: Store) -> list[Network]:
    """The hosts whose stored app control needs every TCP port seen. A stored text that no
    longer parses is skipped here (CompiledPolicy reports it)."""
    out: list[Network] = []
    for address, text in stored_controls(store):
        try:
            control = parse_control(text, "app_controls")
            network = ipaddress.ip_network(address, strict=False)
        except (ConfigError, ValueError):
            continue
        if control.every_port and network not in out:
            out.append(network)
    return out


def parse_host_controls(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, AppControl]]:
    """(host address, parsed control) of (host address, rule text) pairs, as CompiledPolicy
    takes them; ConfigError naming the text and the host for one that does not parse."""
    return [
        (address, parse_control(text, f"policy app control of {address}"))
        for address, text in pairs
    ]


def stored_controls(store: Store) -> list[tuple[str, str]]:
    """(host address, rule text) of every stored app-control rule."""
    try:
        rows = store.db.execute(
            "SELECT h.address, a.rule FROM app_controls a JOIN hosts h ON h.id = a.host_id "
            "ORDER BY a.id"
        ).fetchall()
    except db_errors() as err:
        raise ConfigError(f"policy database {store.path}: app_controls: {err}") from err
    return [(str(r[0]), str(r[1])) for r in rows]
