"""The gateway configuration: one YAML file, every key optional, each value declared once here.

Each value is one field of the frozen dataclasses below, declared once: its type (the
annotation), its default, its bounds and its help (`setting(...)`, like mitmproxy's options).
Everything else is built from these declarations: the parser's checks, the flat registry
`SETTINGS` ("engine.max_flows" -> `Declared`), the engine's bounds (gateway/engine_config.py)
and the key table and example of docs/configuration.md (`keys_table()`, `example_yaml()`).

`load_config(path)` returns a frozen `GatewayConfig`. Guarantees:
- every key has a default (`load_config(None)` gives a complete, valid configuration), and
  every default is within its declared bounds;
- an unknown key, a value of the wrong type or out of its bounds raises ConfigError naming the
  file, the dotted key path and the line of the offending value; nothing half-loaded escapes;
- every bound the gateway uses (flow table size, queue length, event queue, stream depth,
  restart budget) lives here, declared with its default.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, get_type_hints, runtime_checkable

import yaml

from gateway.errors import ConfigError

__all__ = [
    "BUNDLED_RULES",
    "SETTINGS",
    "Backend",
    "ConfigError",
    "Declared",
    "FailPolicy",
    "GatewayConfig",
    "Network",
    "Setting",
    "accepts",
    "check_value",
    "example_yaml",
    "keys_table",
    "load_config",
    "parse_config",
    "setting",
    "value_at",
]

# The bundled rule directory: <repo>/rules (the package sits at <repo>/gateway).
BUNDLED_RULES = Path(__file__).resolve().parent.parent / "rules"

# Bounds on the configuration itself.
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused
MAX_QUEUES = 64  # one worker process per queue; more makes no sense on one box
MAX_QUEUE_NUM = 65535  # NFQUEUE numbers are 16 bits
MAX_PROTECTED_HOSTS = 4096  # entries in protected_hosts (kernel side uses an ipset hash:net)
MAX_STREAM_DEPTH = 1 << 30  # bytes per direction; connbytes counts 64-bit but keep it sane
MAX_MARK = 0xFFFFFFFF
MAX_SECONDS = 86400  # idle timeouts and the restart window: one day

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")
_SETTING: Final = "vpatch.setting"  # the dataclass field metadata key of a declaration


class FailPolicy(enum.Enum):
    """What happens to a packet the gateway cannot inspect (no reader, queue full, bug)."""

    OPEN = "open"  # let it through uninspected
    CLOSED = "closed"  # drop it


class Backend(enum.Enum):
    """Which iptables flavour renders the kernel rules (both use the xtables NFQUEUE target)."""

    AUTO = "auto"
    LEGACY = "legacy"
    NFT = "nft"


# --------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True, slots=True)
class Setting:
    """What a declaration says besides its type (the annotation) and its default."""

    help: str  # what the value means (the docs' key table shows it)
    lo: float | None = None  # numbers: the smallest value; strings: the shortest length
    hi: float | None = None  # numbers: the largest value; strings: the longest; lists: entries
    chars: tuple[Callable[[str], bool], str] | None = None  # strings: a test and its name
    shown: str | None = None  # the default as the docs say it, where its value says it badly
    example: str | None = None  # the value in the docs' example, where not the default
    in_hex: bool = False  # numbers shown in hexadecimal (mark bits)


def setting(
    default: T,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    chars: tuple[Callable[[str], bool], str] | None = None,
    shown: str | None = None,
    example: str | None = None,
    in_hex: bool = False,
) -> T:
    """A dataclass field declaring one configuration value: default, bounds and help."""
    spec = Setting(help, lo, hi, chars, shown, example, in_hex)
    return field(default=default, metadata={_SETTING: spec})


@dataclass(frozen=True, slots=True)
class Declared:
    """One declared value as the registry lists it: where it sits, its type, default and bounds."""

    key: tuple[str, ...]  # ("engine", "max_flows")
    kind: Any  # the field's annotation: int, float, bool, str, Path, Path | None, an Enum...
    default: Any
    setting: Setting

    @property
    def name(self) -> str:
        """The dotted key: "engine.max_flows"."""
        return ".".join(self.key)


@runtime_checkable
class _SelfChecking(Protocol):
    def problem(self) -> tuple[str, str] | None:
        """Why the section's values do not fit together, as (key or "", reason), or None."""


# --------------------------------------------------------------------------------------------
# The configuration, declared


@dataclass(frozen=True, slots=True)
class QueueConfig:
    first: int = setting(0, "First NFQUEUE number.", lo=0, hi=MAX_QUEUE_NUM)
    count: int = setting(
        2,
        "Number of queues, `first`..`first+count-1` (the last at most "
        f"{MAX_QUEUE_NUM}); one worker process each. More than one: `--queue-balance`.",
        lo=1,
        hi=MAX_QUEUES,
    )
    max_len: int = setting(
        1024,
        "Packets the kernel holds per queue. When full: accepted uninspected (fail_policy "
        "open, the queue's `NFQA_CFG_F_FAIL_OPEN` flag) or dropped (closed).",
        lo=1,
        hi=1 << 20,
    )

    @property
    def numbers(self) -> range:
        return range(self.first, self.first + self.count)

    def problem(self) -> tuple[str, str] | None:
        """The queue numbers must stay 16-bit numbers."""
        last = self.first + self.count - 1
        if last > MAX_QUEUE_NUM:
            return "count", f"queues {self.first}..{last} exceed {MAX_QUEUE_NUM}"
        return None


@dataclass(frozen=True, slots=True)
class StreamDepth:
    to_server: int = setting(
        1048576,
        "Payload bytes of each client→server stream inspected. Beyond it the engine declares "
        "the flow final and the kernel stops queueing it (connmark). 0: that direction is "
        "never queued.",
        lo=0,
        hi=MAX_STREAM_DEPTH,
    )
    to_client: int = setting(
        65536,
        "The same for server→client. Only queued where an enabled rule inspects responses "
        "(`direction: to_client` or `both`); 0 turns response inspection off.",
        lo=0,
        hi=MAX_STREAM_DEPTH,
    )


@dataclass(frozen=True, slots=True)
class MarkConfig:
    bypass: int = setting(
        0x10000000,
        'Packet-mark and connmark bit(s) meaning "stop queueing this connection". Must lie '
        "within `mask`.",
        lo=1,
        hi=MAX_MARK,
        in_hex=True,
    )
    mask: int = setting(
        0x70000000,
        "The mark bits vpatch owns; other bits of packet marks and connmarks are left alone.",
        lo=1,
        hi=MAX_MARK,
        in_hex=True,
    )
    bypass_to_server: int = setting(
        0x20000000,
        'The bit meaning "stop queueing this connection\'s client-to-server packets" (that '
        "direction reached its depth while responses are still inspected).",
        lo=1,
        hi=MAX_MARK,
        in_hex=True,
    )
    bypass_to_client: int = setting(
        0x40000000,
        "The same for server-to-client packets. The three bypass bits must not overlap.",
        lo=1,
        hi=MAX_MARK,
        in_hex=True,
    )

    def problem(self) -> tuple[str, str] | None:
        """Every bypass bit lies within the mask, and no two share a bit."""
        bits = {
            "bypass": self.bypass,
            "bypass_to_server": self.bypass_to_server,
            "bypass_to_client": self.bypass_to_client,
        }
        for key, bit in bits.items():
            if bit & ~self.mask:
                return key, f"{bit:#x} has bits outside mask {self.mask:#x}"
        values = list(bits.values())
        if any(a & b for i, a in enumerate(values) for b in values[i + 1 :]):
            return "", "bypass, bypass_to_server and bypass_to_client must not share bits"
        return None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    max_flows: int = setting(
        65536,
        "Flow table bound per worker; when full the least recently seen flow is evicted.",
        lo=1,
        hi=1 << 24,
    )
    tcp_idle: float = setting(
        600.0, "Seconds before an idle TCP flow is forgotten.", lo=1, hi=MAX_SECONDS
    )
    udp_idle: float = setting(
        60.0, "Seconds before an idle UDP flow is forgotten.", lo=1, hi=MAX_SECONDS
    )
    max_pending: int = setting(
        262144,
        "Out-of-order bytes held per direction. Inline, an out-of-order segment past it (or "
        "past 1024 held pieces) is dropped, and its sender retransmits it once the hole before "
        "it is filled (gateway/flow/normalize.py); nothing is skipped uninspected.",
        lo=0,
        hi=1 << 26,
    )
    http_whole_connection: bool = setting(
        True,
        "A client stream that starts with an HTTP/1.x request line is inspected for the whole "
        "connection, not just `stream_depth.to_server` bytes, so every request on a keep-alive "
        "connection is checked. Such connections are never bypassed in the kernel.",
    )
    http_memo_entries: int = setting(
        1024,
        "How many body-less HTTP requests (at most 2 KiB each) that matched no rule are "
        "remembered, exactly, per rule set, so that the very same request again skips decoding "
        "and field evaluation (raw stream patterns are still scanned). Rule changes start an "
        "empty memo; 0 turns it off. Measured: 32 µs per request decoded and evaluated, 7.6 µs "
        "when remembered.",
        lo=0,
        hi=1 << 20,
    )
    retransmit_history: int = setting(
        8192,
        "Delivered bytes kept per inspected TCP direction (up to twice that, at most) to compare "
        "with retransmissions: a copy whose bytes differ from the inspected ones resets the flow. "
        "Older retransmitted bytes are not compared (counted as `unverified` by the "
        "reassembler). 0: only bytes still held out of order are compared.",
        lo=0,
        hi=1 << 24,
    )


@dataclass(frozen=True, slots=True)
class EventsConfig:
    sqlite: Path | None = setting(
        Path("/var/lib/vpatch/events.db"),
        "SQLite (WAL) event store; `null` to disable (and with it the alert channels). Each "
        "worker writes through its own sink. The alert dispatcher keeps its undelivered alerts "
        "and read position beside it, in `<stem>.alert-state.db` (`events.alert-state.db`).",
    )
    jsonl: Path | None = setting(
        Path("/var/log/vpatch/eve.json"), "EVE JSON lines; `null` to disable."
    )
    max_queue: int = setting(
        10000,
        "Events waiting for the writer thread; beyond it a new event is counted into its "
        "aggregation window, or dropped and counted when aggregation is off (the packet path "
        "never blocks). Also the bound of rows kept for retry while the store fails.",
        lo=1,
        hi=1 << 22,
    )
    aggregate_window: float = setting(
        1.0,
        "Seconds of an aggregation window: the first event of a (rule, source, destination, "
        "blocked) key is written at once, the others of its window as one record with their "
        "`count` (`vpatch.count` in EVE; gateway/events/aggregate.py). 0: every event "
        "written on its own.",
        lo=0,
        hi=3600,
    )
    aggregate_keys: int = setting(
        10000,
        "Aggregation windows open at once per level; past it events are counted per (rule, "
        "destination), then per rule (`vpatch.folded`).",
        lo=1,
        hi=1 << 20,
    )


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path = setting(
        Path("/run/vpatch/control.sock"),
        "Unix socket of the running gateway (`status` command: per-queue counters).",
    )


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    database: Path = setting(
        Path("/var/lib/vpatch/vpatch.db"),
        "The policy store (SQLite, WAL; `gateway/policy/store.py`): hosts, groups, rule "
        "assignments, exceptions, UI accounts, API tokens, audit trail. Read by `vpatch run` at "
        "start and on the control socket's `reload`; written by `vpatch ui`. The UI keeps its "
        "session secret (`ui-secret.key`, mode 0600) in the same directory.",
    )


@dataclass(frozen=True, slots=True)
class RulePackConfig:
    dir: Path = setting(
        Path("/var/lib/vpatch/rule-packs"),
        "Where `vpatch rules update` keeps the packs it installed (`<version>/`), the one in "
        "force (`current`) and their history. While `current` exists it takes the place of "
        "the bundled pack in `rules` (gateway/rulepack.py).",
    )
    keep: int = setting(3, "Installed packs kept for `vpatch rules rollback`.", lo=2, hi=100)


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    backend: Backend = setting(
        Backend.AUTO,
        "Which iptables flavour installs the rules. `auto` takes the one `iptables` points at, "
        "unless only the other one already holds rules. Both use the xtables NFQUEUE target "
        "(nft's native `queue` needs CONFIG_NFT_QUEUE, often missing). `vpatch run` prints "
        "which one is in use.",
    )
    chain_prefix: str = setting(
        "VPATCH",
        "Our chains are `VPATCH-*` (mangle table), our ipsets `vpatch-*`.",
        lo=1,
        hi=12,
        chars=(str.isalnum, "letters or digits"),
    )
    queue_udp: bool = setting(True, "Queue UDP datagrams to ports covered by UDP rules.")
    drop_invalid: bool = setting(
        True,
        "Drop TCP segments to and from protected hosts that conntrack finds INVALID (a wrong "
        "TCP checksum, a sequence or acknowledgment number outside the tracked window, "
        "impossible flags) before they are queued: the receiver would drop them too, and the "
        "engine then leaves those checks to the kernel (docs/evasion.md). The kernel does them "
        "only while `net.netfilter.nf_conntrack_checksum` is 1 and "
        "`nf_conntrack_tcp_be_liberal` is 0 in the gateway's namespace; otherwise, or with "
        "false, the engine checks checksums and windows itself (slower).",
    )


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_restarts: int = setting(
        5,
        "A dead worker is restarted at most this many times per `restart_window` (per "
        "queue); past that `vpatch run` exits (and removes its rules).",
        lo=0,
        hi=1000,
    )
    restart_window: float = setting(60.0, "Seconds.", lo=1, hi=MAX_SECONDS)
    stop_timeout: float = setting(
        5.0, "Seconds a worker gets to exit after SIGTERM before it is killed.", lo=0.1, hi=600
    )
    restart_delay: float = setting(
        1.0,
        "Seconds between a worker's death and its restart (its queue follows `fail_policy` "
        "meanwhile).",
        lo=0,
        hi=3600,
    )


@dataclass(frozen=True, slots=True)
class UiConfig:
    """The admin web UI (`vpatch ui`, docs/webui.md): sessions, clients, connection limits."""

    trusted_proxies: tuple[Network, ...] = setting(
        (),
        "Reverse proxies in front of the UI. Only when the connecting peer is one of them is "
        "`X-Forwarded-For` read, and the client is its right-most address that is not a trusted "
        "proxy (login throttling counts per client). Empty: the connecting address is the client.",
        hi=64,
    )
    session_idle: float = setting(
        1800.0, "Seconds without a request after which a UI session ends.", lo=60, hi=MAX_SECONDS
    )
    session_lifetime: float = setting(
        28800.0,
        "Seconds after login at which a UI session ends, however active (absolute lifetime).",
        lo=300,
        hi=30 * MAX_SECONDS,
    )
    connection_limit: int = setting(
        500,
        "Open connections waitress serves at once; beyond it new ones wait in the listen "
        "backlog. Slow clients are cut by `request_timeout`, so they cannot hold them all.",
        lo=10,
        hi=10000,
    )
    request_timeout: float = setting(
        15.0,
        "Seconds a client gets to send one whole request (head and body) once it has started; "
        "slower ones (slowloris) are disconnected.",
        lo=1,
        hi=600,
    )
    idle_timeout: float = setting(
        30.0, "Seconds an idle keep-alive connection stays open.", lo=1, hi=3600
    )


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    protected_hosts: tuple[Network, ...] = setting(
        (),
        "Addresses or CIDRs (IPv4 and IPv6) whose traffic is inspected: the seed. The hosts "
        "of the policy store (`vpatch hosts add|remove`, the UI's and the API's hosts) are "
        "protected as well, and a `reload` (which those commands trigger) refills the "
        "kernel's ipsets (`hash:net`) with both, without a restart. None in either: nothing "
        "is queued, the gateway forwards everything uninspected.",
        hi=MAX_PROTECTED_HOSTS,
        example='[198.18.0.20, "2001:2::20", 198.18.5.0/24]',
    )
    rules: tuple[Path, ...] = setting(
        (BUNDLED_RULES,),
        "Rule files or directories, e.g. the pack plus a local directory such as "
        "`/etc/vpatch/rules.d`. One bad rule stops start-up (file:line and reason). Only "
        "ports covered by these rules are queued. `vpatch rules reload` loads them again "
        "into the running gateway (no restart; a bad rule refuses the reload).",
        shown="the bundled `rules/` directory",
        example="[/etc/vpatch/rules]",
    )
    queues: QueueConfig = field(default_factory=QueueConfig)
    fail_policy: FailPolicy = setting(
        FailPolicy.OPEN,
        "`open`: a packet that cannot be inspected passes (no worker: `--queue-bypass`; queue "
        "full: kernel fail-open flag; error while inspecting: accept). `closed`: it is dropped.",
    )
    stream_depth: StreamDepth = field(default_factory=StreamDepth)
    marks: MarkConfig = field(default_factory=MarkConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    events: EventsConfig = field(default_factory=EventsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rule_pack: RulePackConfig = field(default_factory=RulePackConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    workers: WorkerConfig = field(default_factory=WorkerConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    source: str = "<defaults>"  # the file this came from (for messages); not a key


def _members(section: type, key: tuple[str, ...]) -> dict[str, Declared | type]:
    """The keys of a section dataclass: each a declared value or a nested section's class."""
    hints = get_type_hints(section)
    out: dict[str, Declared | type] = {}
    for f in fields(section):
        kind = hints[f.name]
        if _SETTING in f.metadata:
            out[f.name] = Declared((*key, f.name), kind, f.default, f.metadata[_SETTING])
        elif isinstance(kind, type) and is_dataclass(kind):
            out[f.name] = kind
    return out


def _flatten(section: type, key: tuple[str, ...]) -> Iterator[Declared]:
    for name, member in _members(section, key).items():
        if isinstance(member, Declared):
            yield member
        else:
            yield from _flatten(member, (*key, name))


# Every declared value by dotted key, in the order of the declarations.
SETTINGS: Final[Mapping[str, Declared]] = {d.name: d for d in _flatten(GatewayConfig, ())}


def value_at(config: GatewayConfig, key: str) -> Any:
    """The value of the dotted key `key` ("engine.max_flows") in `config`."""
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


# --------------------------------------------------------------------------------------------
# Checking values against their declarations


class _Ctx:
    """Where values came from: file name, the line of every key path, the directory that
    relative paths are relative to."""

    def __init__(
        self, source: str, lines: dict[tuple[str, ...], int], base: Path | None = None
    ) -> None:
        self.source = source
        self.lines = lines
        self.base = base

    def fail(self, path: tuple[str, ...], reason: str) -> ConfigError:
        line = self.lines.get(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        key = ".".join(path) or "<top level>"
        return ConfigError(f"{where}: {key}: {reason}")


def _collect_lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            _collect_lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, (*path, str(i)), out)


def _mapping(ctx: _Ctx, path: tuple[str, ...], value: object, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.fail(path, f"expected a mapping, got {type(value).__name__} {value!r}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ctx.fail(path, f"keys must be strings, got {key!r}")
        if key not in allowed:
            raise ctx.fail((*path, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        out[key] = item
    return out


def _in_range(ctx: _Ctx, d: Declared, value: float) -> None:
    lo, hi = d.setting.lo, d.setting.hi
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ctx.fail(d.key, f"{value} is out of range {lo}..{hi}")


def _int(ctx: _Ctx, d: Declared, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.fail(d.key, f"expected an integer, got {value!r}")
    _in_range(ctx, d, value)
    return value


def _float(ctx: _Ctx, d: Declared, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.fail(d.key, f"expected a number, got {value!r}")
    _in_range(ctx, d, value)
    return float(value)


def _bool(ctx: _Ctx, d: Declared, value: object) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(d.key, f"expected true or false, got {value!r}")
    return value


def _str(ctx: _Ctx, d: Declared, value: object) -> str:
    s = d.setting
    if (
        not isinstance(value, str)
        or (s.lo is not None and len(value) < s.lo)
        or (s.hi is not None and len(value) > s.hi)
        or (s.chars is not None and not s.chars[0](value))
    ):
        raise ctx.fail(d.key, f"{value!r} must be {_accepts_str(d)}")
    return value


def _enum(ctx: _Ctx, d: Declared, value: object) -> Any:
    choices = [m.value for m in d.kind]
    if value not in choices:
        raise ctx.fail(d.key, f"{value!r} is not one of {', '.join(map(str, choices))}")
    return d.kind(value)


def _one_path(ctx: _Ctx, path: tuple[str, ...], value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ctx.fail(path, f"expected a path, got {value!r}")
    p = Path(value)
    if not p.is_absolute() and ctx.base is not None:
        p = ctx.base / p
    return p


def _path(ctx: _Ctx, d: Declared, value: object) -> Path:
    return _one_path(ctx, d.key, value)


def _opt_path(ctx: _Ctx, d: Declared, value: object) -> Path | None:
    return None if value is None else _one_path(ctx, d.key, value)


def _list(ctx: _Ctx, d: Declared, value: object) -> list[object]:
    """A list value; one scalar stands for a list of one. At most `hi` entries."""
    items = [value] if isinstance(value, (str, int)) else value
    if not isinstance(items, list):
        raise ctx.fail(d.key, f"expected a list, got {value!r}")
    hi = d.setting.hi
    if hi is not None and len(items) > hi:
        raise ctx.fail(d.key, f"{len(items)} entries, at most {hi}")
    return items


def _paths(ctx: _Ctx, d: Declared, value: object) -> tuple[Path, ...]:
    items = _list(ctx, d, value)
    return tuple(_one_path(ctx, (*d.key, str(i)), v) for i, v in enumerate(items))


def _networks(ctx: _Ctx, d: Declared, value: object) -> tuple[Network, ...]:
    hosts: list[Network] = []
    for i, item in enumerate(_list(ctx, d, value)):
        try:
            hosts.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError as err:
            raise ctx.fail((*d.key, str(i)), f"{item!r} is not an address or CIDR") from err
    return tuple(hosts)


def _range_text(d: Declared) -> str:
    lo, hi = d.setting.lo, d.setting.hi
    return f"{lo:#x}..{hi:#x}" if d.setting.in_hex else f"{lo}..{hi}"


def _accepts_str(d: Declared) -> str:
    chars = d.setting.chars
    return f"{_range_text(d)} {chars[1] if chars is not None else 'characters'}"


def _accepts_enum(d: Declared) -> str:
    names = [f"`{m.value}`" for m in d.kind]
    return ", ".join(names[:-1]) + " or " + names[-1]


@dataclass(frozen=True, slots=True)
class _Kind:
    """How a declared type is read from YAML and what the docs say it accepts."""

    parse: Callable[[_Ctx, Declared, object], Any]
    accepts: Callable[[Declared], str]


_KINDS: Final[Mapping[object, _Kind]] = {
    int: _Kind(_int, _range_text),
    float: _Kind(_float, _range_text),
    bool: _Kind(_bool, lambda d: "`true` or `false`"),
    str: _Kind(_str, _accepts_str),
    Path: _Kind(_path, lambda d: "a path"),
    Path | None: _Kind(_opt_path, lambda d: "a path or `null`"),
    tuple[Path, ...]: _Kind(_paths, lambda d: "a list of paths"),
    tuple[Network, ...]: _Kind(
        _networks, lambda d: f"a list of at most {d.setting.hi} addresses or CIDRs"
    ),
}
_ENUM_KIND: Final = _Kind(_enum, _accepts_enum)


def _kind(d: Declared) -> _Kind:
    if isinstance(d.kind, type) and issubclass(d.kind, enum.Enum):
        return _ENUM_KIND
    return _KINDS[d.kind]


def accepts(d: Declared) -> str:
    """What a declared value accepts, in words (Markdown): its type and bounds."""
    return _kind(d).accepts(d)


def check_value(key: str, value: object, source: str) -> None:
    """Hold `value` to the declaration of configuration key `key`; ConfigError naming
    `source`, the key and the value when it is refused."""
    d = SETTINGS[key]
    _kind(d).parse(_Ctx(source, {}), d, value)


# --------------------------------------------------------------------------------------------
# Loading


def _values(ctx: _Ctx, section: type, key: tuple[str, ...], raw: object) -> dict[str, Any]:
    """The keyword arguments of `section` for the keys `raw` sets, each checked."""
    members = _members(section, key)
    out: dict[str, Any] = {}
    for name, value in _mapping(ctx, key, raw, set(members)).items():
        member = members[name]
        if isinstance(member, Declared):
            out[name] = _kind(member).parse(ctx, member, value)
        else:
            out[name] = _section(ctx, member, (*key, name), value)
    return out


def _section(ctx: _Ctx, section: type, key: tuple[str, ...], raw: object) -> Any:
    built = section(**_values(ctx, section, key, raw))
    problem = built.problem() if isinstance(built, _SelfChecking) else None
    if problem is not None:
        where, reason = problem
        raise ctx.fail((*key, where) if where else key, reason)
    return built


def parse_config(text: str, source: str = "<string>", base: Path | None = None) -> GatewayConfig:
    """Parse configuration text; relative paths are resolved against `base` when given."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {err}") from err
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    ctx = _Ctx(source, lines, base)
    return GatewayConfig(**_values(ctx, GatewayConfig, (), data), source=source)


def load_config(path: Path | None) -> GatewayConfig:
    """Load the gateway configuration from `path`, or the embedded defaults when None."""
    if path is None:
        return GatewayConfig()
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read configuration: {err.strerror}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(raw)} bytes, larger than the {MAX_CONFIG_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 at byte {err.start}") from err
    return parse_config(text, str(path), path.resolve().parent)


# --------------------------------------------------------------------------------------------
# The documentation, built from the declarations (docs/configuration.md holds both)


def _yaml(d: Declared, value: object) -> str:
    """`value` written as YAML that reads back as `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, int) and d.setting.in_hex:
        return f"{value:#x}"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml(d, v) for v in value) + "]"
    return str(value)


def _example(d: Declared) -> str:
    return d.setting.example or _yaml(d, d.default)


def example_yaml() -> str:
    """A configuration that sets every key, each to its default except where an example
    says more (the docs' example)."""
    lines = []
    for name, member in _members(GatewayConfig, ()).items():
        if isinstance(member, Declared):
            lines.append(f"{name}: {_example(member)}")
            continue
        inner = [d for d in _members(member, (name,)).values() if isinstance(d, Declared)]
        lines.append(f"{name}: {{{', '.join(f'{d.key[-1]}: {_example(d)}' for d in inner)}}}")
    return "\n".join(lines) + "\n"


def keys_table() -> str:
    """The Markdown table of every key: default, what it accepts, what it means."""
    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for d in SETTINGS.values():
        default = d.setting.shown or f"`{_yaml(d, d.default)}`"
        rows.append(f"| `{d.name}` | {default} | {accepts(d)} | {d.setting.help} |")
    return "\n".join(rows) + "\n"
