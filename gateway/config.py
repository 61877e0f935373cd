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
from gateway.forwarding import BypassPolicy, ForwardingMode
from gateway.tls.service import MAX_SERVICES, TlsService, parse_services
from gateway.vocabulary import Limit, LimitPolicy

__all__ = [
    "BUNDLED_RULES",
    "SETTINGS",
    "Backend",
    "ConfigError",
    "Declared",
    "FailPolicy",
    "GatewayConfig",
    "HostLimits",
    "LIMIT_CHOICES",
    "LimitsConfig",
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
MAX_LIMIT_OVERRIDES = 256  # entries in limits.hosts

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")
_SETTING: Final = "vpatch.setting"  # the dataclass field metadata key of a declaration


class FailPolicy(enum.Enum):
    """What happens to a packet the gateway cannot inspect (no reader, queue full, bug)."""

    OPEN = "open"  # let it through uninspected
    CLOSED = "closed"  # drop it


class QueueBalance(enum.Enum):
    """How packets are spread over several queues (both directions of a flow share one)."""

    FLOW = "flow"  # by the flow's 5-tuple (xt_HMARK, symmetric): one address's flows spread
    ADDRESS = "address"  # by the address pair (NFQUEUE --queue-balance): one address, one queue


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
        f"{MAX_QUEUE_NUM}); one worker process each, flows spread over them (`balance`).",
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
    verdict_batch: int = setting(
        16,
        "Accept verdicts a worker writes to the kernel in one netlink message: the packets "
        "of one receive burst are inspected first, then released together (at most this "
        "many at a time). 1 gives each verdict on its own, at once.",
        lo=1,
        hi=1024,
    )

    balance: QueueBalance = setting(
        QueueBalance.FLOW,
        "With several queues, how flows are spread over them. `flow`: by a symmetric hash of "
        "addresses, ports and protocol (xt_HMARK), so the flows of one client land on "
        "different queues and a flood from one address fills only its share; the hash "
        "overwrites the packet mark of the packets queued, which leave with vpatch's bits "
        "only (connmarks keep every other bit). `address`: the kernel's `--queue-balance` "
        "hash of the address pair, other packet-mark bits left alone.",
    )

    @property
    def hashed(self) -> bool:
        """Packets are spread by the flow hash (xt_HMARK), which takes the whole packet mark."""
        return self.count > 1 and self.balance is QueueBalance.FLOW

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
        0x7C000000,
        "The mark bits vpatch owns; other bits of connmarks are left alone (packet marks: "
        "see `queues.balance`).",
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
    blocked: int = setting(
        0x08000000,
        'The bit meaning "this connection was reset by a block": put on the reset that '
        "replaces the blocked packet and kept in the connmark, so the kernel queues the next "
        "SYN on the same addresses and ports (a reused client port) for the engine to see.",
        lo=1,
        hi=MAX_MARK,
        in_hex=True,
    )
    queued: int = setting(
        0x04000000,
        'The packet-mark bit meaning "sent to a queue, no verdict yet": set just before the '
        "NFQUEUE rule, cleared by the worker's verdict; a packet still carrying it after the "
        "queue passed it uninspected (queue full with fail-open, or no reader) and is counted.",
        lo=1,
        hi=MAX_MARK,
        in_hex=True,
    )

    def problem(self) -> tuple[str, str] | None:
        """Every bit lies within the mask, and no two share a bit."""
        bits = {
            "bypass": self.bypass,
            "bypass_to_server": self.bypass_to_server,
            "bypass_to_client": self.bypass_to_client,
            "blocked": self.blocked,
            "queued": self.queued,
        }
        for key, bit in bits.items():
            if bit & ~self.mask:
                return key, f"{bit:#x} has bits outside mask {self.mask:#x}"
        values = list(bits.values())
        if any(a & b for i, a in enumerate(values) for b in values[i + 1 :]):
            return "", f"{', '.join(bits)} must not share bits"
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
    identify_any_port: bool = setting(
        True,
        "Protocols are identified by content on every TCP port of the protected hosts (HTTP, "
        "TLS, SMB, DCE/RPC, RDP, DNS): a rule applies to its protocol wherever it is found, "
        "not only on the ports it lists (an HTTP rule written for port 80 catches the exploit "
        "sent to port 8081 or 8888; Zerologon on the dynamic Netlogon port). The kernel queues "
        "the first payload of connections to ports no rule lists, and bypasses them once the "
        "engine finds no protocol with rules there (docs/architecture.md, 'Protocols on any "
        "port'). Off: only the ports rules list are inspected.",
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
    defrag_datagrams: int = setting(
        4096,
        "Incomplete IP datagrams the defragmenter holds (captures and in-process use; inline, "
        "conntrack reassembles before the queue). A fragment of a new datagram past it is "
        "dropped (`frag_refused`, policy `limits.defrag`).",
        lo=1,
        hi=1 << 20,
    )
    defrag_fragments: int = setting(
        1024,
        "Fragments kept per datagram; a datagram in more pieces is poisoned (all its fragments "
        "dropped; `frag_poisoned`, policy `limits.defrag`). Receivers keep fewer (Linux: 64).",
        lo=1,
        hi=65535,
    )
    defrag_timeout: float = setting(
        90.0,
        "Seconds an incomplete datagram is remembered after its first fragment: longer than "
        "receivers wait (Linux 30 s, Windows 60 s), so a fragment the gateway forgot cannot "
        "complete a datagram at the server either.",
        lo=1,
        hi=MAX_SECONDS,
    )


# Which policies each limit takes (the first is its default, docs/architecture.md "Limits").
LIMIT_CHOICES: Final[Mapping[Limit, tuple[LimitPolicy, ...]]] = {
    Limit.STREAM_DEPTH: (
        LimitPolicy.INSPECT_START, LimitPolicy.ALERT, LimitPolicy.RESET, LimitPolicy.PASS
    ),
    Limit.UDP_DEPTH: (
        LimitPolicy.INSPECT_START, LimitPolicy.ALERT, LimitPolicy.RESET, LimitPolicy.PASS
    ),
    Limit.PENDING: (LimitPolicy.PASS, LimitPolicy.ALERT, LimitPolicy.RESET),
    Limit.STREAM_HOLE: (LimitPolicy.PASS, LimitPolicy.ALERT, LimitPolicy.RESET),
    Limit.FLOW_TABLE: (LimitPolicy.ALERT, LimitPolicy.RESET, LimitPolicy.PASS),
    Limit.DECODER: (LimitPolicy.ALERT, LimitPolicy.RESET, LimitPolicy.PASS),
    Limit.FIELD: (LimitPolicy.ALERT, LimitPolicy.RESET, LimitPolicy.PASS),
    Limit.NORMALIZER: (LimitPolicy.PASS, LimitPolicy.ALERT, LimitPolicy.RESET),
    Limit.DEFRAG: (LimitPolicy.PASS, LimitPolicy.ALERT),
}  # fmt: skip


def _choices(limit: Limit) -> str:
    return ", ".join(f"`{p.value}`" for p in LIMIT_CHOICES[limit])


def _limit_problem(limit: Limit, policy: LimitPolicy) -> str | None:
    if policy in LIMIT_CHOICES[limit]:
        return None
    return f"{policy.value!r} is not a policy of {limit.value} (one of {_choices(limit)})"


@dataclass(frozen=True, slots=True)
class HostLimits:
    """A `limits.hosts` entry: policies for the servers in `hosts` (the others keep the
    section's own)."""

    hosts: tuple[Network, ...]
    policies: tuple[tuple[Limit, LimitPolicy], ...]


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    stream_depth: LimitPolicy = setting(
        LimitPolicy.INSPECT_START,
        "A TCP direction reached its `stream_depth`. `inspect-start` (default): a stream whose "
        "app decoder follows its units (HTTP requests, SMB and DCE/RPC messages, TLS records, "
        "...) is inspected to its end, so a unit after any amount of padding is still checked "
        "(such connections are never bypassed in the kernel); a stream no decoder follows "
        "stops at the depth and is counted (`limit_stream_depth`). `alert`: stop at the depth "
        "with an event; `reset`: event and reset; `pass`: stop, counted.",
    )
    udp_depth: LimitPolicy = setting(
        LimitPolicy.INSPECT_START,
        "A UDP flow direction reached its depth in bytes. `inspect-start` (default): a flow "
        "whose app decoder (DNS, ...) reads its datagrams keeps being inspected, datagram by "
        "datagram; otherwise as `pass`.",
    )
    pending: LimitPolicy = setting(
        LimitPolicy.PASS,
        "An out-of-order segment past `engine.max_pending`: it is dropped and its sender "
        "retransmits it once the hole is filled, so nothing escapes inspection; `pass` "
        "(default) only counts it.",
    )
    stream_hole: LimitPolicy = setting(
        LimitPolicy.PASS,
        "A hole in a TCP stream that nothing fills (a segment the kernel passed uninspected "
        "while the queue was full, under fail_policy open): after `hole_wait` it is skipped, "
        "the bytes after it inspected and the app decoder resynchronised (HTTP: the next "
        "request line; others: identified again, raw patterns go on). A later copy of skipped "
        "bytes resets the flow (with an event unless `pass`). `pass` (default): counted "
        "(`limit_stream_hole`, in `status`); "
        "`alert`: an event names the hole as well; `reset`: the flow is reset instead of "
        "skipping.",
    )
    hole_wait: float = setting(
        1.0,
        "Seconds without progress after which a hole in a TCP stream is suspect: a segment "
        "after it is held and dropped (not passed on uninspected), and the hole is skipped "
        "with the first segment at least 0.2 s later (the sender's retransmission: Linux's "
        "minimum RTO). A hole a retransmission fills in time is never skipped.",
        lo=0.2,
        hi=MAX_SECONDS,
    )
    flow_table: LimitPolicy = setting(
        LimitPolicy.ALERT,
        "The flow table (`engine.max_flows`) was full when a new flow came. `alert` (default) "
        "and `pass`: the new flow is inspected and room made by evicting, in this order, a "
        "closed TCP flow, a non-TCP flow, an open TCP flow, each the least recently seen "
        "first (an evicted flow that comes back is picked up mid-stream and inspected again); "
        "`reset`: the new flow is refused (reset) instead. Events: at most one a second.",
    )
    decoder: LimitPolicy = setting(
        LimitPolicy.ALERT,
        "An app decoder stopped for its own bounds (more than 16 refusals in one segment) or "
        "failed (a bug): its direction's fields are no longer decoded, raw patterns go on. A "
        "decoder that refuses bytes raises an anomaly record, judged by the anomaly rules "
        "9300001-9300004, instead.",
    )
    field: LimitPolicy = setting(
        LimitPolicy.ALERT,
        "A derived HTTP field was cut at its bound: 64 KiB of `http.query`, "
        "`http.body_params` or `http.lookups`, 1 MiB of `http.header_lines`, 1024 "
        "parameters (PHP's and ASP.NET's own default is 1000). What padding pushed past it is "
        "not in the field, though the raw `http.uri`, header and `http.body` fields still "
        "hold it. `alert` (default): an event names the field, once per flow; `reset`: event "
        "and reset; `pass`: counted (`limit_field`).",
    )
    normalizer: LimitPolicy = setting(
        LimitPolicy.PASS,
        "The TCP normaliser dropped a segment the receiver would drop (checksum, window, "
        "PAWS, data without ACK, data on a SYN). `pass` (default): counted (`norm_*`); the "
        "receiver drops such segments too. A segment whose bytes differ from inspected ones "
        "always resets the flow; `alert` and `reset` add an event.",
    )
    defrag: LimitPolicy = setting(
        LimitPolicy.PASS,
        "The defragmenter refused a fragment (table full, bad header checksum) or poisoned a "
        "datagram (overlapping fragments that differ, too large, too many pieces): its "
        "fragments are dropped, which stops what they carried. `pass` (default): counted "
        "(`limit_defrag`, `frag_*`); `alert`: events as well, at most one a second.",
    )
    hosts: tuple[HostLimits, ...] = setting(
        (),
        "Per-host overrides: a list of mappings, each with `hosts` (addresses or CIDRs) and "
        "any of the policies above; the most specific entry holding a server's address "
        "applies, limit by limit.",
        hi=MAX_LIMIT_OVERRIDES,
    )

    def policy(self, limit: Limit) -> LimitPolicy:
        """The section's own policy for `limit`."""
        value: LimitPolicy = getattr(self, limit.value)
        return value

    def problem(self) -> tuple[str, str] | None:
        """Every policy is one its limit takes."""
        for limit in Limit:
            reason = _limit_problem(limit, self.policy(limit))
            if reason is not None:
                return limit.value, reason
        return None


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


def _database_url(value: str) -> bool:
    return value == "" or value.startswith(("postgresql://", "postgres://"))


def _node_name(value: str) -> bool:
    return all(c.isalnum() or c in ".-_" for c in value)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = setting(
        "",
        "A PostgreSQL URL (`postgresql://user:password@host/db`, or over a Unix socket "
        "`postgresql:///db?host=/run/postgresql`) shared by several gateways and UIs: it holds "
        "the policy (then `policy.database` is not used) and every gateway's events, tagged "
        "with `gateway.name` (the local `events.sqlite` is then the spool they are forwarded "
        "from, kept while the database is away). Empty: the SQLite files. "
        "docs/multi-gateway.md.",
        lo=0,
        hi=4096,
        chars=(_database_url, "empty or a postgresql:// URL"),
        shown='"" (SQLite)',
        example='""',
    )
    poll_interval: float = setting(
        0.5,
        "Seconds between a gateway's reads of the shared policy version (a change made in any "
        "UI is applied within this plus the reload) and forwards of its spooled events.",
        lo=0.1,
        hi=60,
    )
    heartbeat: float = setting(
        2.0,
        "Seconds between a gateway's status rows in the shared store (the UI's gateways list).",
        lo=0.5,
        hi=600,
    )


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str = setting(
        "",
        "This gateway's name: its events' `gateway` tag and its row in the UI's gateways "
        "list. Empty: the host name.",
        lo=0,
        hi=128,
        chars=(_node_name, "letters, digits, '.', '-' or '_'"),
        shown="the host name",
        example='""',
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
        "engine then leaves those checks to the kernel (docs/architecture.md). The kernel does "
        "them only while `net.netfilter.nf_conntrack_checksum` is 1 and "
        "`nf_conntrack_tcp_be_liberal` is 0 in the gateway's namespace; otherwise, or with "
        "false, the engine checks checksums and windows itself (slower).",
    )


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """How traffic reaches the gateway (gateway/forwarding.py, docs/install.md)."""

    mode: ForwardingMode = setting(
        ForwardingMode.AUTO,
        "`bridge` (transparent bridge: `vpatch run` requires br_netfilter and "
        "`net.bridge.bridge-nf-call-iptables`/`ip6tables` = 1), `routed` (requires "
        "`net.ipv4.ip_forward` = 1) or `auto` (bridge when a bridge exists at start, else "
        "routed when forwarding is on). `vpatch install-network` sets `bridge` or `routed`.",
    )
    on_bypass: BypassPolicy = setting(
        BypassPolicy.REFUSE,
        "When traffic could cross the gateway without passing netfilter (a sysctl above is "
        "off): `refuse` to start, naming the sysctl to fix, or `warn`: start anyway, log a "
        "warning and report it in `status` (`forwarding.ok` false, re-checked on each request).",
    )


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """How `vpatch run` resolves setup-protection update sources given by host name
    (gateway/lifecycle/names.py, docs/lifecycle.md)."""

    servers: tuple[Network, ...] = setting(
        (),
        "DNS servers the gateway asks for update-source names (real queries, TTLs kept). "
        "Empty: the `nameserver` lines of /etc/resolv.conf where `vpatch run` runs. A host in "
        "setup mode with named update sources may query these as well (udp and tcp 53), so "
        "it gets the answers the gateway allows.",
        hi=8,
    )
    min_ttl: float = setting(
        5.0, "Seconds: a name is asked again at most this often (shorter TTLs).", lo=1, hi=3600
    )
    max_ttl: float = setting(
        3600.0, "Seconds: a name is asked again at least this often (longer TTLs).", lo=1, hi=86400
    )
    timeout: float = setting(2.0, "Seconds a DNS server gets to answer one query.", lo=0.1, hi=30)

    def problem(self) -> tuple[str, str] | None:
        """Servers are single addresses (a max_ttl below min_ttl counts as min_ttl)."""
        for i, net in enumerate(self.servers):
            if net.num_addresses != 1:
                return f"servers.{i}", f"{net} is a network, not a DNS server's address"
        return None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    standby: bool = setting(
        True,
        "Keep a standby worker per queue, its rules loaded, that binds the queue the moment "
        "the active one dies (milliseconds instead of the seconds a new process takes to "
        "load the rules); a new standby is then started. Costs one idle process per queue.",
    )
    max_restarts: int = setting(
        5,
        "A dead worker is restarted at most this many times per `restart_window` (per "
        "queue); past that `vpatch run` exits (and removes its rules).",
        lo=0,
        hi=1000,
    )
    restart_window: float = setting(60.0, "Seconds.", lo=1, hi=MAX_SECONDS)
    bind_timeout: float = setting(
        60.0,
        "Seconds each worker may take at start-up to load the rules and bind its queue before "
        "`vpatch run` gives up; raise it on slow machines (an emulated VM: docs/lab.md).",
        lo=5,
        hi=MAX_SECONDS,
    )
    stop_timeout: float = setting(
        5.0, "Seconds a worker gets to exit after SIGTERM before it is killed.", lo=0.1, hi=600
    )
    restart_delay: float = setting(
        0.0,
        "Seconds between a worker's death (noticed at once) and its restart; its queue "
        "follows `fail_policy` until the new worker has bound it. `max_restarts` bounds a "
        "crash loop.",
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
    tls_cert: Path | None = setting(
        None,
        "PEM certificate (with its chain) the UI serves HTTPS with. `null`: a self-signed "
        "certificate made on the first start, `ui-tls.crt` beside the policy database (its key "
        "`ui-tls.key`, mode 0600), kept for later starts.",
    )
    tls_key: Path | None = setting(None, "PEM private key of `tls_cert` (required with it).")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """System-health alerts (`vpatch health check`, run by vpatch-health.timer outside the
    gateway; gateway/health/, docs/operations.md): where it keeps its state, its thresholds."""

    state: Path = setting(
        Path("/var/lib/vpatch/health-state.json"),
        "The health check's own state: the counters and conditions it saw last, so it alerts "
        "on changes (and sends a `resolved` message) rather than at every run.",
    )
    queue_drops: int = setting(
        100,
        "Packets the kernel dropped from full queues (`queue_drops` in `status`) since the "
        "previous check above which a health alert is raised.",
        lo=0,
        hi=1 << 40,
    )
    uninspected: int = setting(
        0,
        "Packets passed without a worker's verdict (`uninspected_packets`: fail-open on a full "
        "queue or with no reader, a worker's catch-all) since the previous check above which "
        "a health alert is raised.",
        lo=0,
        hi=1 << 40,
    )
    disk_min_free: float = setting(
        10.0,
        "Percent of free space below which the filesystem of the event store, the EVE log, "
        "the policy store or this state raises a `disk_low` alert.",
        lo=0,
        hi=99,
    )
    control_timeout: float = setting(
        5.0,
        "Seconds the running gateway gets to answer `status` before it counts as unreachable.",
        lo=0.5,
        hi=120,
    )


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint of `vpatch run` (gateway/metrics.py, docs/operations.md)."""

    address: str = setting(
        "127.0.0.1",
        "Address `vpatch run` serves `/metrics` on (an IP address; the counters carry no "
        "secret, but keep it on loopback or a management network).",
        lo=2,
        hi=64,
        chars=(_is_ip_address, "characters forming an IP address"),
    )
    port: int = setting(
        9467,
        "TCP port of `/metrics` (Prometheus text format); 0: no endpoint. A port that cannot "
        "be bound is logged and the gateway runs on without it.",
        lo=0,
        hi=65535,
    )


@dataclass(frozen=True, slots=True)
class TlsProxyConfig:
    """The HTTPS inspection plane (gateway/tls/, docs/https.md)."""

    services: tuple[TlsService, ...] = setting(
        (),
        "Web services terminated by the HTTPS proxy plane (mitmproxy with the vpatch addon) "
        "instead of the packet plane: a list of mappings, each with `host` (the server's "
        "address), `port` (443), `cert` and `key` (the server's own certificate and key, PEM; "
        "a key that does not match is an error, an expired certificate a warning), "
        "`client_min` (`TLS1_2`: the lowest version offered to clients), `server_min` "
        "(`TLS1`: the lowest spoken to the server, `SSL3` where OpenSSL can), "
        "`server_ciphers` (OpenSSL list, empty: mitmproxy's), `blocked` (`page` or `reset`), "
        "`block_page` (HTML file, null: built in), `depth` (body bytes inspected, 1048576), "
        "`max_header_bytes` (65536) and `max_headers` (100) (a request over them: event and "
        "refusal), `forwarded` (false: add X-Forwarded-For and Forwarded toward the "
        "server) and `processes` (1: proxy processes, each one CPU). Services can also be "
        "added on the admin UI's HTTPS page and the API (stored in the policy database, "
        "applied live; a host and port in this list cannot be stored there: docs/https.md).",
        hi=MAX_SERVICES,
        shown="`[]` (none: every flow stays on the packet plane)",
        example="[]",
    )
    listen_port: int = setting(
        18443,
        "First local port of the proxy processes (the kernel redirect sends each proxied "
        "service's connections to its own ports, numbered from here).",
        lo=1024,
        hi=65000,
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
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    gateway: NodeConfig = field(default_factory=NodeConfig)
    rule_pack: RulePackConfig = field(default_factory=RulePackConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    workers: WorkerConfig = field(default_factory=WorkerConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls_proxy: TlsProxyConfig = field(default_factory=TlsProxyConfig)
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


def _host_limits(ctx: _Ctx, d: Declared, value: object) -> tuple[HostLimits, ...]:
    """`limits.hosts`: a list of {hosts: [...], <limit>: <policy>, ...} mappings."""
    out: list[HostLimits] = []
    allowed = {"hosts"} | {limit.value for limit in Limit}
    for i, item in enumerate(_list(ctx, d, value)):
        path = (*d.key, str(i))
        entry = _mapping(ctx, path, item, allowed)
        if "hosts" not in entry:
            raise ctx.fail(path, "an override needs `hosts` (addresses or CIDRs)")
        nets: list[Network] = []
        for j, host in enumerate(_list(ctx, d, entry.pop("hosts"))):
            try:
                nets.append(ipaddress.ip_network(str(host), strict=False))
            except ValueError as err:
                where = (*path, "hosts", str(j))
                raise ctx.fail(where, f"{host!r} is not an address or CIDR") from err
        policies: list[tuple[Limit, LimitPolicy]] = []
        for name, raw in entry.items():
            limit = Limit(name)
            try:
                policy = LimitPolicy(raw)
            except ValueError as err:
                raise ctx.fail((*path, name), f"{raw!r} is not one of {_choices(limit)}") from err
            reason = _limit_problem(limit, policy)
            if reason is not None:
                raise ctx.fail((*path, name), reason)
            policies.append((limit, policy))
        out.append(HostLimits(tuple(nets), tuple(policies)))
    return tuple(out)


def _tls_services(ctx: _Ctx, d: Declared, value: object) -> tuple[TlsService, ...]:
    """`tls_proxy.services`: checked in gateway/tls/service.py (certificates and keys too)."""
    return parse_services(
        _list(ctx, d, value),
        lambda path, reason: ctx.fail((*d.key, *path), reason),
        lambda path, raw: _one_path(ctx, (*d.key, *path), raw),
    )


def _range_text(d: Declared) -> str:
    lo, hi = d.setting.lo, d.setting.hi
    return f"{lo:#x}..{hi:#x}" if d.setting.in_hex else f"{lo}..{hi}"


def _accepts_str(d: Declared) -> str:
    chars = d.setting.chars
    return f"{_range_text(d)} {chars[1] if chars is not None else 'characters'}"


def _accepts_enum(d: Declared) -> str:
    members = d.kind
    if d.kind is LimitPolicy:  # each limit takes some of the policies
        members = LIMIT_CHOICES[Limit(d.key[-1])]
    names = [f"`{m.value}`" for m in members]
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
    tuple[HostLimits, ...]: _Kind(
        _host_limits,
        lambda d: f"a list of at most {d.setting.hi} mappings (`hosts` and policies)",
    ),
    tuple[TlsService, ...]: _Kind(
        _tls_services, lambda d: f"a list of at most {d.setting.hi} mappings (see meaning)"
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
