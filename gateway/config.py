"""The gateway configuration: one YAML file, every key optional, defaults embedded here.

`load_config(path)` returns a frozen `GatewayConfig`. Guarantees:
- every key has a default (`load_config(None)` gives a complete, valid configuration);
- an unknown key, a value of the wrong type or out of range raises ConfigError naming the
  file, the dotted key path and the line of the offending value; nothing half-loaded escapes;
- every bound the gateway uses (flow table size, queue length, event queue, stream depth,
  restart budget) lives here, with the default next to its name.
Every key is documented in docs/configuration.md.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.errors import ConfigError

# The bundled rule directory: <repo>/rules (the package sits at <repo>/gateway).
BUNDLED_RULES = Path(__file__).resolve().parent.parent / "rules"

# Bounds on the configuration itself.
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused
MAX_QUEUES = 64  # one worker process per queue; more makes no sense on one box
MAX_QUEUE_NUM = 65535  # NFQUEUE numbers are 16 bits
MAX_PROTECTED_HOSTS = 4096  # entries in protected_hosts (kernel side uses an ipset hash:net)
MAX_STREAM_DEPTH = 1 << 30  # bytes per direction; connbytes counts 64-bit but keep it sane
MAX_MARK = 0xFFFFFFFF

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FailPolicy(enum.Enum):
    """What happens to a packet the gateway cannot inspect (no reader, queue full, bug)."""

    OPEN = "open"  # let it through uninspected
    CLOSED = "closed"  # drop it


class Backend(enum.Enum):
    """Which iptables flavour renders the kernel rules (both use the xtables NFQUEUE target)."""

    AUTO = "auto"
    LEGACY = "legacy"
    NFT = "nft"


@dataclass(frozen=True, slots=True)
class QueueConfig:
    first: int = 0  # first NFQUEUE number
    count: int = 2  # queues first..first+count-1, one worker process each
    max_len: int = 1024  # packets the kernel holds per queue before fail policy applies

    @property
    def numbers(self) -> range:
        return range(self.first, self.first + self.count)


@dataclass(frozen=True, slots=True)
class StreamDepth:
    to_server: int = 1048576  # bytes inspected client -> server (0: never queued)
    to_client: int = 65536  # bytes inspected server -> client, where a rule looks (0: never)


@dataclass(frozen=True, slots=True)
class MarkConfig:
    bypass: int = 0x10000000  # packet mark / connmark bit(s) meaning "stop queueing this flow"
    mask: int = 0x70000000  # the mark bits vpatch owns; other bits are left alone
    bypass_to_server: int = 0x20000000  # "stop queueing this flow's client -> server packets"
    bypass_to_client: int = 0x40000000  # "stop queueing this flow's server -> client packets"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    max_flows: int = 65536  # flow table bound per worker
    tcp_idle: float = 600.0  # seconds before an idle TCP flow is forgotten
    udp_idle: float = 60.0  # seconds before an idle UDP flow is forgotten
    max_pending: int = 262144  # out-of-order bytes held per direction before a gap is skipped
    http_whole_connection: bool = True  # HTTP keep-alive streams: inspect every request
    http_memo_entries: int = 1024  # body-less requests that matched nothing, remembered exactly
    retransmit_history: int = 8192  # delivered bytes kept per TCP direction to check resends


@dataclass(frozen=True, slots=True)
class EventsConfig:
    sqlite: Path | None = Path("/var/lib/vpatch/events.db")  # null: no SQLite store
    jsonl: Path | None = Path("/var/log/vpatch/eve.json")  # null: no EVE JSON lines
    max_queue: int = 10000  # events held for the writer thread before new ones are dropped


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path = Path("/run/vpatch/control.sock")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    database: Path = Path("/var/lib/vpatch/vpatch.db")  # policy store (gateway/policy/store.py)


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    backend: Backend = Backend.AUTO  # auto: iptables-nft if it works here, else legacy
    chain_prefix: str = "VPATCH"  # our chains are PREFIX-*; our ipsets are prefix-lowercased
    queue_udp: bool = True  # queue UDP datagrams to covered ports (depth still applies)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_restarts: int = 5  # restarts of one queue's worker within restart_window
    restart_window: float = 60.0  # seconds
    stop_timeout: float = 5.0  # seconds a worker gets to exit on SIGTERM before SIGKILL
    restart_delay: float = 1.0  # seconds between a worker's death and its restart


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    protected_hosts: tuple[Network, ...] = ()
    rules: tuple[Path, ...] = (BUNDLED_RULES,)
    queues: QueueConfig = field(default_factory=QueueConfig)
    fail_policy: FailPolicy = FailPolicy.OPEN
    stream_depth: StreamDepth = field(default_factory=StreamDepth)
    marks: MarkConfig = field(default_factory=MarkConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    events: EventsConfig = field(default_factory=EventsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    workers: WorkerConfig = field(default_factory=WorkerConfig)
    source: str = "<defaults>"  # the file this came from (for messages)


# --------------------------------------------------------------------------------------------
# Loading


class _Ctx:
    """Where values came from: file name and the line of every key path."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines

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


T = TypeVar("T")


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


def _int(ctx: _Ctx, path: tuple[str, ...], value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.fail(path, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ctx.fail(path, f"{value} is out of range {lo}..{hi}")
    return value


def _float(ctx: _Ctx, path: tuple[str, ...], value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.fail(path, f"expected a number, got {value!r}")
    if not lo <= float(value) <= hi:
        raise ctx.fail(path, f"{value} is out of range {lo}..{hi}")
    return float(value)


def _bool(ctx: _Ctx, path: tuple[str, ...], value: object) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(path, f"expected true or false, got {value!r}")
    return value


def _enum(ctx: _Ctx, path: tuple[str, ...], value: object, kind: type[enum.Enum]) -> Any:
    choices = [m.value for m in kind]
    if value not in choices:
        raise ctx.fail(path, f"{value!r} is not one of {', '.join(map(str, choices))}")
    return kind(value)


def _path(ctx: _Ctx, path: tuple[str, ...], value: object, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ctx.fail(path, f"expected a path, got {value!r}")
    p = Path(value)
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def _opt_path(ctx: _Ctx, path: tuple[str, ...], value: object, base: Path | None) -> Path | None:
    return None if value is None else _path(ctx, path, value, base)


def _list(ctx: _Ctx, path: tuple[str, ...], value: object) -> list[object]:
    if isinstance(value, (str, int)):
        return [value]
    if not isinstance(value, list):
        raise ctx.fail(path, f"expected a list, got {value!r}")
    return value


def _section(
    ctx: _Ctx,
    data: dict[str, Any],
    name: str,
    default: T,
    build: Callable[[dict[str, Any], T], T],
    allowed: set[str],
) -> T:
    if name not in data:
        return default
    return build(_mapping(ctx, (name,), data[name], allowed), default)


def _parse(data_in: object, ctx: _Ctx, base: Path | None) -> GatewayConfig:
    top = {
        "protected_hosts", "rules", "queues", "fail_policy", "stream_depth", "marks",
        "engine", "events", "control", "firewall", "workers", "policy",
    }  # fmt: skip
    data = _mapping(ctx, (), data_in, top)
    d = GatewayConfig(source=ctx.source)
    kw: dict[str, Any] = {"source": ctx.source}

    if "protected_hosts" in data:
        hosts: list[Network] = []
        items = _list(ctx, ("protected_hosts",), data["protected_hosts"])
        if len(items) > MAX_PROTECTED_HOSTS:
            raise ctx.fail(
                ("protected_hosts",), f"{len(items)} entries, at most {MAX_PROTECTED_HOSTS}"
            )
        for i, item in enumerate(items):
            try:
                hosts.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError as err:
                raise ctx.fail(
                    ("protected_hosts", str(i)), f"{item!r} is not an address or CIDR"
                ) from err
        kw["protected_hosts"] = tuple(hosts)

    if "rules" in data:
        items = _list(ctx, ("rules",), data["rules"])
        kw["rules"] = tuple(_path(ctx, ("rules", str(i)), v, base) for i, v in enumerate(items))

    if "fail_policy" in data:
        kw["fail_policy"] = _enum(ctx, ("fail_policy",), data["fail_policy"], FailPolicy)

    def queues(m: dict[str, Any], df: QueueConfig) -> QueueConfig:
        first = _int(ctx, ("queues", "first"), m.get("first", df.first), 0, MAX_QUEUE_NUM)
        count = _int(ctx, ("queues", "count"), m.get("count", df.count), 1, MAX_QUEUES)
        if first + count - 1 > MAX_QUEUE_NUM:
            raise ctx.fail(
                ("queues", "count"), f"queues {first}..{first + count - 1} exceed {MAX_QUEUE_NUM}"
            )
        max_len = _int(ctx, ("queues", "max_len"), m.get("max_len", df.max_len), 1, 1 << 20)
        return QueueConfig(first, count, max_len)

    kw["queues"] = _section(ctx, data, "queues", d.queues, queues, {"first", "count", "max_len"})

    def depth(m: dict[str, Any], df: StreamDepth) -> StreamDepth:
        return StreamDepth(
            _int(
                ctx,
                ("stream_depth", "to_server"),
                m.get("to_server", df.to_server),
                0,
                MAX_STREAM_DEPTH,
            ),
            _int(
                ctx,
                ("stream_depth", "to_client"),
                m.get("to_client", df.to_client),
                0,
                MAX_STREAM_DEPTH,
            ),
        )

    kw["stream_depth"] = _section(
        ctx, data, "stream_depth", d.stream_depth, depth, {"to_server", "to_client"}
    )

    def marks(m: dict[str, Any], df: MarkConfig) -> MarkConfig:
        mask = _int(ctx, ("marks", "mask"), m.get("mask", df.mask), 1, MAX_MARK)
        bits = {}
        for key in ("bypass", "bypass_to_server", "bypass_to_client"):
            bits[key] = _int(ctx, ("marks", key), m.get(key, getattr(df, key)), 1, MAX_MARK)
            if bits[key] & ~mask:
                raise ctx.fail(("marks", key), f"{bits[key]:#x} has bits outside mask {mask:#x}")
        values = list(bits.values())
        if any(a & b for i, a in enumerate(values) for b in values[i + 1 :]):
            raise ctx.fail(
                ("marks",), "bypass, bypass_to_server and bypass_to_client must not share bits"
            )
        return MarkConfig(bits["bypass"], mask, bits["bypass_to_server"], bits["bypass_to_client"])

    kw["marks"] = _section(
        ctx,
        data,
        "marks",
        d.marks,
        marks,
        {"bypass", "mask", "bypass_to_server", "bypass_to_client"},
    )

    def engine(m: dict[str, Any], df: EngineSettings) -> EngineSettings:
        p = ("engine",)
        return EngineSettings(
            _int(ctx, (*p, "max_flows"), m.get("max_flows", df.max_flows), 1, 1 << 24),
            _float(ctx, (*p, "tcp_idle"), m.get("tcp_idle", df.tcp_idle), 1, 86400),
            _float(ctx, (*p, "udp_idle"), m.get("udp_idle", df.udp_idle), 1, 86400),
            _int(ctx, (*p, "max_pending"), m.get("max_pending", df.max_pending), 0, 1 << 26),
            _bool(
                ctx,
                (*p, "http_whole_connection"),
                m.get("http_whole_connection", df.http_whole_connection),
            ),
            _int(
                ctx,
                (*p, "http_memo_entries"),
                m.get("http_memo_entries", df.http_memo_entries),
                0,
                1 << 20,
            ),
            _int(
                ctx,
                (*p, "retransmit_history"),
                m.get("retransmit_history", df.retransmit_history),
                0,
                1 << 24,
            ),
        )

    engine_keys = {
        "max_flows", "tcp_idle", "udp_idle", "max_pending", "http_whole_connection",
        "http_memo_entries", "retransmit_history",
    }  # fmt: skip
    kw["engine"] = _section(ctx, data, "engine", d.engine, engine, engine_keys)

    def events(m: dict[str, Any], df: EventsConfig) -> EventsConfig:
        p = ("events",)
        return EventsConfig(
            _opt_path(ctx, (*p, "sqlite"), m["sqlite"], base) if "sqlite" in m else df.sqlite,
            _opt_path(ctx, (*p, "jsonl"), m["jsonl"], base) if "jsonl" in m else df.jsonl,
            _int(ctx, (*p, "max_queue"), m.get("max_queue", df.max_queue), 1, 1 << 22),
        )

    kw["events"] = _section(ctx, data, "events", d.events, events, {"sqlite", "jsonl", "max_queue"})

    def control(m: dict[str, Any], df: ControlConfig) -> ControlConfig:
        if "socket" not in m:
            return df
        return ControlConfig(_path(ctx, ("control", "socket"), m["socket"], base))

    kw["control"] = _section(ctx, data, "control", d.control, control, {"socket"})

    def policy(m: dict[str, Any], df: PolicyConfig) -> PolicyConfig:
        if "database" not in m:
            return df
        return PolicyConfig(_path(ctx, ("policy", "database"), m["database"], base))

    kw["policy"] = _section(ctx, data, "policy", d.policy, policy, {"database"})

    def firewall(m: dict[str, Any], df: FirewallConfig) -> FirewallConfig:
        p = ("firewall",)
        prefix = m.get("chain_prefix", df.chain_prefix)
        if not isinstance(prefix, str) or not prefix.isalnum() or not 1 <= len(prefix) <= 12:
            raise ctx.fail((*p, "chain_prefix"), f"{prefix!r} must be 1..12 letters or digits")
        return FirewallConfig(
            _enum(ctx, (*p, "backend"), m["backend"], Backend) if "backend" in m else df.backend,
            prefix,
            _bool(ctx, (*p, "queue_udp"), m.get("queue_udp", df.queue_udp)),
        )

    kw["firewall"] = _section(
        ctx, data, "firewall", d.firewall, firewall, {"backend", "chain_prefix", "queue_udp"}
    )

    def workers(m: dict[str, Any], df: WorkerConfig) -> WorkerConfig:
        p = ("workers",)
        return WorkerConfig(
            _int(ctx, (*p, "max_restarts"), m.get("max_restarts", df.max_restarts), 0, 1000),
            _float(
                ctx, (*p, "restart_window"), m.get("restart_window", df.restart_window), 1, 86400
            ),
            _float(ctx, (*p, "stop_timeout"), m.get("stop_timeout", df.stop_timeout), 0.1, 600),
            _float(ctx, (*p, "restart_delay"), m.get("restart_delay", df.restart_delay), 0, 3600),
        )

    kw["workers"] = _section(
        ctx,
        data,
        "workers",
        d.workers,
        workers,
        {"max_restarts", "restart_window", "stop_timeout", "restart_delay"},
    )
    return GatewayConfig(**kw)


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
    return _parse(data, _Ctx(source, lines), base)


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
