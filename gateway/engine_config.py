"""The engine's bounds (`EngineConfig`), built from the configuration's declarations.

Every field that a configuration key sets (gateway/config.py) takes that key's declared default
and is held to its declared bounds: `EngineConfig()` is the engine of an empty configuration,
`EngineConfig.from_gateway(config)` the engine of a loaded one, and a value out of its key's
bounds raises ConfigError naming the field, the key and the value. The fields no key sets
(`tcp_closed_idle`, `kernel_checked_syn`, `kernel_checked_tcp`, `checksums`) are the caller's
to choose; `limits` is the configuration's `limits:` section whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final

from gateway.config import (
    SETTINGS,
    FailPolicy,
    GatewayConfig,
    LimitsConfig,
    check_value,
    value_at,
)
from gateway.errors import ConfigError
from gateway.flow.normalize import ChecksumMode
from gateway.flow.table import DEFAULT_TCP_CLOSED_IDLE

__all__ = ["EngineConfig"]

_KEY: Final = "vpatch.config_key"  # field metadata: the configuration key that sets the field


def _from_key(key: str) -> Any:
    """A field set by configuration key `key`, defaulting to that key's declared default."""
    return field(default=SETTINGS[key].default, metadata={_KEY: key})


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Every bound of the engine, with its default.

    depth_to_server: bytes of each client->server stream inspected (1 MiB: far beyond where
        the exploits of the target vulnerabilities sit, small enough that a bulk transfer
        stops costing CPU quickly). 0: never inspect that direction.
    depth_to_client: bytes of each server->client stream inspected, used only where a rule
        looks at responses (64 KiB: response headers and first records).
    max_pending: out-of-order bytes held per direction; an out-of-order segment past it is
        dropped (gateway/flow/normalize.py), its sender retransmits it once the hole is filled.
    http_whole_connection: inspect a client stream that starts like an HTTP request for the
        whole connection instead of up to depth_to_server (gateway/decode/session.py).
    http_memo_entries: how many body-less HTTP requests that matched no rule are remembered
        (exact bytes, per rule group) so that the same request again skips decoding and field
        evaluation; 0 turns the memo off.
    identify_any_port: identify TCP protocols by content on every port and apply the rules
        that follow them there (gateway/match/follow.py); flows on ports no rule lists are
        inspected until identified.
    fail_open: what a packet the engine fails on gets (fail_policy open: ACCEPT, else DROP).
    tcp_closed_idle: seconds a TCP flow is kept after FIN both ways or RST (no key sets it).
    kernel_checked_syn: the packets come from the inline queue, whose kernel rule passes on
        only the SYNs conntrack found to open a new connection: a client port reused for a
        new connection then starts a new flow at its SYN (gateway/flow/table.py).
    kernel_checked_tcp: the packets come from the inline queue, and the kernel rules dropped
        the TCP segments conntrack found INVALID (wrong checksum, outside the tracked window:
        `firewall.drop_invalid`, gateway/firewall/render.py): the normaliser leaves the
        checksum test and its window tracking to the kernel (gateway/flow/normalize.py).
    checksums: which TCP datagrams with a wrong checksum are dropped (gateway/flow/
        normalize.py): AUTO (captures, the default: unless most of them are wrong, as in
        captures whose addresses were rewritten) or VERIFY (every one: the inline queue).
    retransmit_history: delivered bytes kept per inspected TCP direction to compare with
        retransmissions (a copy that differs resets the flow, gateway/flow/normalize.py);
        older retransmitted bytes are not compared (counted in the reassembler's
        `unverified`).
    defrag_datagrams, defrag_fragments, defrag_timeout: the defragmenter's bounds
        (gateway/flow/defrag.py).
    limits: the policy of every limit, per server (the `limits:` section, gateway/flow/
        limits.py).
    """

    max_flows: int = _from_key("engine.max_flows")
    tcp_idle: float = _from_key("engine.tcp_idle")
    udp_idle: float = _from_key("engine.udp_idle")
    tcp_closed_idle: float = DEFAULT_TCP_CLOSED_IDLE
    depth_to_server: int = _from_key("stream_depth.to_server")
    depth_to_client: int = _from_key("stream_depth.to_client")
    max_pending: int = _from_key("engine.max_pending")
    fail_open: bool = SETTINGS["fail_policy"].default is FailPolicy.OPEN
    http_whole_connection: bool = _from_key("engine.http_whole_connection")
    http_memo_entries: int = _from_key("engine.http_memo_entries")
    identify_any_port: bool = _from_key("engine.identify_any_port")
    kernel_checked_syn: bool = False
    kernel_checked_tcp: bool = False
    retransmit_history: int = _from_key("engine.retransmit_history")
    checksums: ChecksumMode = ChecksumMode.AUTO
    defrag_datagrams: int = _from_key("engine.defrag_datagrams")
    defrag_fragments: int = _from_key("engine.defrag_fragments")
    defrag_timeout: float = _from_key("engine.defrag_timeout")
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            if _KEY in f.metadata:
                check_value(f.metadata[_KEY], getattr(self, f.name), f"EngineConfig.{f.name}")
        if not self.tcp_closed_idle > 0:
            raise ConfigError(f"EngineConfig.tcp_closed_idle must be > 0: {self.tcp_closed_idle!r}")

    @classmethod
    def from_gateway(cls, config: GatewayConfig) -> EngineConfig:
        """The engine bounds from a loaded gateway configuration (gateway.config)."""
        keyed = {
            f.name: value_at(config, f.metadata[_KEY]) for f in fields(cls) if _KEY in f.metadata
        }
        return cls(fail_open=config.fail_policy is FailPolicy.OPEN, limits=config.limits, **keyed)
