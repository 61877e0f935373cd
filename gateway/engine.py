"""The inspection engine: decode -> flow -> reassembly -> match -> Decision (sans-I/O).

What it does: `Engine(ruleset, config)` owns a FlowTable, one StreamReassembler and one
Hyperscan stream per inspected TCP flow direction, and a Matcher. For each packet
(`process_ip` for raw datagrams from NFQUEUE, `process_frame` for capture frames, `process`
for a decoded Packet) it returns a `Decision` (gateway.verdict). The clock is passed in (`now`),
so replaying a capture uses the capture's timestamps.

Pipeline and policy:
- Only TCP and UDP are inspected; other protocols are accepted. IP fragments are reassembled
  first (gateway/flow/defrag.py) and the whole datagram inspected, its verdict given to the
  fragment that completes it; the others pass, and a fragment that contradicts one already
  received is dropped with the rest of its datagram (the live path sees reassembled
  datagrams anyway: conntrack defragments before NFQUEUE).
- TCP normalisation (gateway/flow/normalize.py): a TCP datagram whose IPv4 header or TCP
  checksum is wrong is dropped: a SYN, FIN, RST or payload-less one before the flow table sees
  it, one with data when its direction is inspected (the checksum costs about as much as the
  decoding, so it is not computed for data nobody inspects); on an inspected flow, segments
  the receiver would drop (data on a SYN, data without ACK, PAWS, bytes before the stream or
  beyond any window, out-of-order data past the reassembly bounds) are dropped, the urgent
  byte is taken out of the inspected bytes, and a segment whose bytes differ from bytes
  already inspected resets the flow (no event: the counters say why, `norm_*` in stats).
- A flow is inspected in a direction only when a rule covers (protocol, server port, direction)
  and that direction's stream depth (`EngineConfig.depth_to_server` / `depth_to_client`) is
  not 0. TCP bytes go through first-wins reassembly (gateway.flow.reassembly) and only the
  newly contiguous bytes are scanned, in Hyperscan stream mode, so a pattern split over any
  number of segments, or sent out of order, is found. UDP datagrams are scanned one by one
  (block mode) until the direction's depth in bytes is used up.
- Out-of-order data: the packet that makes the matching bytes contiguous (the gap filler) is
  the one blocked. Inline, the receiver cannot deliver data past a gap either, so blocking the
  gap filler stops the attack.
- Rule actions: ALERT -> an event, the packet passes (Decision ALERT). DROP / RESET -> an event
  and the flow is blocked: this and every later packet of the flow, in both directions, get
  the same action (RESET wins over DROP when both fire). Each rule raises at most one event per
  flow.
- HTTP keep-alive: a client-to-server stream that starts with an HTTP/1.x request line is
  inspected for the whole life of the connection (`EngineConfig.http_whole_connection`), not
  up to the depth: one connection carries any number of requests, and a depth bound would
  leave the later ones unchecked (the weakness of Suricata's stream bypass on keep-alive
  connections). Requests are small, the reassembler keeps nothing once delivered, so memory
  stays bounded; the cost is that such connections are never bypassed in the kernel.
- Exceptions (CompiledPolicy exception scopes, docs/webui.md "Exceptions"): when a rule fires
  in a mode other than OFF, an active exception for (rule, server, server port, request URI)
  makes the engine ignore that firing (counted in `events_excepted`, no event, no block). The
  URI is the decoded record's `http.uri` for http rules; for raw rules it is the target of the
  last HTTP request line in the bytes that completed the match (normalised the same way), and
  only looked for when a URI-scoped exception could apply. Unknown URI: URI-scoped exceptions
  do not apply. Expiry is judged on the packet time `now`. A raw stream match excused by a
  URI-scoped exception restarts that direction's Hyperscan stream right after the match
  (`Engine._rearm`), or the rule could never fire again on the connection.
- Why (gateway/match/explain.py): each event records the field ("raw" for stream content), the
  condition in short and an excerpt around the match end; computed only when a rule fires.
- HTTP memo: a body-less request (one complete head, at most MAX_MEMO_REQUEST bytes, the
  decoder between requests) that fired no rule is remembered exactly, per rule group; the very
  same bytes again skip decoding and field evaluation, which are pure functions of those bytes
  and that group (health checks, polling and repeated asset requests cost 7.6 instead of 32 µs).
  Raw stream patterns are still scanned; a swapped rule set has new groups, so an empty memo.
- `Decision.final` is True once nothing more can be learnt from the flow: no rule covers it, or
  every inspected direction reached its depth. While only one direction is done (a bulk upload
  reached the request depth, but the few response bytes never reach the response depth), that
  direction's packets get `done_to_server` / `done_to_client`, so the kernel can stop queueing
  that direction alone. A blocked flow is never final (the kernel must
  keep queueing it so its packets keep being dropped).
- Per-flow Hyperscan streams are closed when a direction reaches depth, when the flow is
  blocked, and when it leaves the flow table (expiry, eviction, port reuse).

What it guarantees:
- `process`, `process_ip` and `process_frame` never raise. An exception inside is counted in
  `stats.internal_errors`; an undecodable datagram in `stats.decode_errors`; both get the
  fail policy's decision: ACCEPT when `config.fail_open`, else DROP. Frames that carry no IP
  (ARP...) are counted in `stats.unsupported_frames` and accepted.
- Memory is bounded by `EngineConfig`: max_flows flows (LRU eviction), max_pending out-of-order
  bytes and depth bytes per direction; idle flows are expired from within `process` at most
  every `EXPIRE_INTERVAL` seconds of packet time (and by `expire(now)`).
- Changing rules: `swap_rules(ruleset)` builds a new Matcher beside the old one and swaps it in;
  new flows use the new rules, flows already inspected finish with the old ones.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.decode import app as app_registry
from gateway.decode.packet import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    DecodeError,
    Packet,
    UnsupportedFrame,
    parse_frame,
    parse_ip,
)
from gateway.errors import DecodeError as AppDecodeError
from gateway.events.eve import Event
from gateway.flow.defrag import Defragmenter
from gateway.flow.normalize import ChecksumMode, Normalizer, Verdict
from gateway.flow.reassembly import StreamReassembler
from gateway.flow.table import DEFAULT_TCP_CLOSED_IDLE, Direction, Flow, FlowKey, FlowTable
from gateway.match.explain import MAX_TARGET, Why, explain_fields, explain_raw, request_target
from gateway.match.matcher import (
    DIRECTION_NAMES,
    NO_RULES,
    TO_CLIENT,
    TO_SERVER,
    Matcher,
    MatchGroup,
    StreamState,
)
from gateway.match.rules import Rule, RuleSet
from gateway.policy.compiled import CompiledPolicy, Mode
from gateway.verdict import Action, Decision

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = ["EXPIRE_INTERVAL", "Engine", "EngineConfig", "EngineStats"]


def _normalized_uri(url: bytes, fields: Mapping[str, int | bytes] | None) -> str:
    """The normalised request URI (what `http.uri` holds) for exception matching."""
    if fields is not None:
        uri = fields.get("http.uri")
        if isinstance(uri, bytes):
            return uri.decode("latin-1")
    from gateway.decode.http import normalize_uri

    return normalize_uri(url.decode("latin-1"))


EXPIRE_INTERVAL: Final = 1.0  # seconds of packet time between idle-flow sweeps
UNBOUNDED_DEPTH: Final = 1 << 62  # "no depth": an HTTP connection is inspected to its end
MAX_MEMO_REQUEST: Final = 2048  # bytes: longer requests are never memoised
# Restarts of a raw stream after URI-excused matches that may fire again within one packet;
# past it the packet's further firings are not excused (a pipeline of excused requests must
# not buy unbounded rescanning, nor a way around the rule).
MAX_REARM_ROUNDS: Final = 16
# One complete request head without a body (no Content-Length, no Transfer-Encoding).
_BODY_HEADERS: Final = re.compile(rb"(?i)\r\n(?:content-length|transfer-encoding)\s*:")
# An HTTP/1.x request line at the start of a client stream (RFC 9112 section 3): method token,
# one space, then a request target; enough to tell HTTP from SMB, TLS, RDP or DNS.
_HTTP_REQUEST_START: Final = re.compile(rb"[A-Z][A-Z_-]{2,15} [^\s]")

_ACCEPT: Final = Decision(Action.ACCEPT)
_ACCEPT_FINAL: Final = Decision(Action.ACCEPT, final=True)
# A packet of a direction that finished inspecting while the other one has not (indexed by d).
_ACCEPT_DONE: Final = (
    Decision(Action.ACCEPT, done_to_server=True),
    Decision(Action.ACCEPT, done_to_client=True),
)
_BLOCKED: Final = {Action.DROP: Decision(Action.DROP), Action.RESET: Decision(Action.RESET)}
_DROP: Final = _BLOCKED[Action.DROP]
_CONTROL: Final = TCP_SYN | TCP_FIN | TCP_RST  # segments that open or close flows
_FAIL_OPEN: Final = Decision(Action.ACCEPT)
_FAIL_CLOSED: Final = Decision(Action.DROP)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Every bound of the engine, with its default.

    depth_to_server: bytes of each client->server stream inspected (1 MiB: far beyond where
        the exploits of the target vulnerabilities sit, small enough that a bulk transfer
        stops costing CPU quickly). 0: never inspect that direction.
    depth_to_client: bytes of each server->client stream inspected, used only where a rule
        looks at responses (64 KiB: response headers and first records).
    max_pending: out-of-order bytes held per direction before a gap is skipped.
    http_whole_connection: inspect a client stream that starts like an HTTP request for the
        whole connection instead of up to depth_to_server (see the module comment).
    http_memo_entries: how many body-less HTTP requests that matched no rule are remembered
        (exact bytes, per rule group) so that the same request again skips decoding and field
        evaluation; 0 turns the memo off.
    kernel_checked_syn: the packets come from the inline queue, whose kernel rule passes on
        only the SYNs conntrack found to open a new connection: a client port reused for a
        new connection then starts a new flow at its SYN (gateway/flow/table.py).
    checksums: which TCP datagrams with a wrong checksum are dropped (gateway/flow/
        normalize.py): AUTO (captures, the default: unless most of them are wrong, as in
        captures whose addresses were rewritten) or VERIFY (every one: the inline queue).
    retransmit_history: delivered bytes kept per inspected TCP direction to compare with
        retransmissions (a copy that differs resets the flow, gateway/flow/normalize.py);
        older retransmitted bytes are not compared (counted in the reassembler's
        `unverified`).
    """

    max_flows: int = 65536
    tcp_idle: float = 600.0
    udp_idle: float = 60.0
    tcp_closed_idle: float = DEFAULT_TCP_CLOSED_IDLE
    depth_to_server: int = 1 << 20
    depth_to_client: int = 64 << 10
    max_pending: int = 262144
    fail_open: bool = True
    http_whole_connection: bool = True
    http_memo_entries: int = 1024
    kernel_checked_syn: bool = False
    retransmit_history: int = 8192
    checksums: ChecksumMode = ChecksumMode.AUTO

    def __post_init__(self) -> None:
        for name in (
            "max_flows", "depth_to_server", "depth_to_client", "max_pending", "retransmit_history",
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "max_flows" else 0):
                raise ValueError(f"EngineConfig.{name} out of range: {value!r}")
        for name in ("tcp_idle", "udp_idle", "tcp_closed_idle"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EngineConfig.{name} must be > 0: {getattr(self, name)!r}")

    @classmethod
    def from_gateway(cls, config: GatewayConfig) -> EngineConfig:
        """The engine bounds from a loaded gateway configuration (gateway.config)."""
        from gateway.config import FailPolicy

        return cls(
            max_flows=config.engine.max_flows,
            tcp_idle=config.engine.tcp_idle,
            udp_idle=config.engine.udp_idle,
            depth_to_server=config.stream_depth.to_server,
            depth_to_client=config.stream_depth.to_client,
            max_pending=config.engine.max_pending,
            fail_open=config.fail_policy is FailPolicy.OPEN,
            http_whole_connection=config.engine.http_whole_connection,
            http_memo_entries=config.engine.http_memo_entries,
            retransmit_history=config.engine.retransmit_history,
        )


def _merge_decisions(first: Decision, second: Decision) -> Decision:
    """One packet's two decisions as one: the stronger verdict, every event."""
    events = first.events + second.events
    if second.action.blocks:
        return Decision(second.action, second.final, events)
    if first.action.blocks:
        return Decision(first.action, first.final, events)
    action = Action.ALERT if events else first.action
    return Decision(action, first.final or second.final, events)


class EngineStats:
    """Counters of one engine (one worker). Plain ints; read them any time."""

    __slots__ = (
        "_engine",
        "_table",
        "app_decode_errors",
        "app_internal_errors",
        "app_records",
        "app_unidentified",
        "blocked_packets",
        "bytes",
        "decode_errors",
        "events",
        "events_detect_only",
        "events_excepted",
        "flows_blocked",
        "flows_final",
        "flows_inspected",
        "fragments",
        "http_memo_hits",
        "internal_errors",
        "not_inspected",
        "packets",
        "raw_rearms",
        "unsupported_frames",
    )

    def __init__(self, table: FlowTable, engine: Engine) -> None:
        self.packets = 0  # packets given to process*
        self.bytes = 0  # L4 payload bytes of decoded packets
        self.decode_errors = 0  # datagrams that did not decode
        self.unsupported_frames = 0  # frames carrying no IP (ARP, STP...)
        self.internal_errors = 0  # exceptions caught on the packet path (bugs)
        self.not_inspected = 0  # packets of protocols no rule can cover (ICMP...)
        self.fragments = 0  # IP fragments (reassembled, gateway/flow/defrag.py)
        self.flows_inspected = 0  # flows some rule covers
        self.flows_final = 0  # flows that reached "final"
        self.flows_blocked = 0
        self.blocked_packets = 0  # packets dropped/reset
        self.events = 0
        self.events_detect_only = 0  # events of rules in DETECT mode that would have blocked
        self.events_excepted = 0  # firings ignored because an exception covered them
        self.raw_rearms = 0  # raw streams restarted after a URI-excused match (Engine._rearm)
        self.app_records = 0  # decoded app-layer records evaluated
        self.http_memo_hits = 0  # requests answered from the HTTP memo (no decode, no evaluate)
        self.app_decode_errors = 0  # directions whose decoder rejected the bytes (anomalies)
        self.app_internal_errors = 0  # directions whose decoder failed otherwise (bugs)
        self.app_unidentified = 0  # directions where no expected app protocol was recognised
        self._table = table
        self._engine = engine

    @property
    def flows_active(self) -> int:
        return len(self._table)

    @property
    def streams_open(self) -> int:
        return self._engine.matcher.streams_open

    def as_dict(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in self.__slots__ if not name.startswith("_")}
        out["flows_active"] = self.flows_active
        out["streams_open"] = self.streams_open
        engine = self._engine
        out.update({f"norm_{k}": v for k, v in engine.normalizer.counts.items()})
        defrag = engine.defrag
        out.update(
            frag_held=defrag.held,
            frag_completed=defrag.completed,
            frag_poisoned=defrag.poisoned,
            frag_refused=defrag.refused,
        )
        return out


UDP_PROBE_ATTEMPTS: Final = 4  # datagrams a UDP direction may take to be identified


class _AppState:
    """Per flow direction: protocol identification, then the app decoder feeding records."""

    __slots__ = ("attempts", "buf", "decoder", "failed", "group", "name")

    def __init__(self, group: MatchGroup) -> None:
        self.group = group
        self.buf = b""  # bytes seen while the protocol is undecided (< MAX_PROBE_BYTES + 1 chunk)
        self.decoder: app_registry.AppDecoder | None = None
        self.name: str | None = None
        self.failed = False
        self.attempts = 0


class _Inspection:
    """Per-flow engine state (Flow.inspection)."""

    __slots__ = (
        "active",
        "apps",
        "cond_ok",
        "fired",
        "groups",
        "matcher",
        "raw_done",
        "rearm",
        "reasm",
        "records",
        "states",
    )

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self.groups: list[MatchGroup | None] = [None, None]
        self.states: list[StreamState | None] = [None, None]
        self.reasm: list[StreamReassembler | None] = [None, None]
        self.apps: list[_AppState | None] = [None, None]
        self.active = [False, False]
        self.fired: set[int] = set()
        # rules with both raw patterns and field conditions: which half is already satisfied
        self.raw_done: list[set[int]] = [set(), set()]
        self.cond_ok: list[set[int]] = [set(), set()]
        # rule id -> fields of the record that satisfied its conditions (only for rules whose
        # conditions held: at most one entry per rule), for the event's why and URI
        self.records: list[dict[int, Mapping[str, int | bytes]] | None] = [None, None]
        # raw stream rules whose firing a URI-scoped exception excused in the packet at hand:
        # (offset in its bytes where the match ended, rule), see Engine._rearm
        self.rearm: list[tuple[int, Rule]] = []

    def close(self, d: int) -> None:
        self.active[d] = False
        self.apps[d] = None
        state = self.states[d]
        if state is not None:
            self.states[d] = None
            state.matcher.close_stream(state)

    def close_all(self) -> None:
        self.close(TO_SERVER)
        self.close(TO_CLIENT)


class Engine:
    """One inspection pipeline (one per worker process; not thread-safe)."""

    def __init__(
        self,
        ruleset: RuleSet,
        config: EngineConfig | None = None,
        matcher: Matcher | None = None,
        policy: CompiledPolicy | None = None,
    ) -> None:
        self.config = config if config is not None else EngineConfig()
        self.policy = policy
        self.ruleset = ruleset
        self.matcher = (
            matcher if matcher is not None and matcher.ruleset is ruleset else Matcher(ruleset)
        )
        self.normalizer = Normalizer(self.config.checksums)  # gateway/flow/normalize.py
        self.defrag = Defragmenter()  # IP fragments (gateway/flow/defrag.py)
        self.table = FlowTable(
            self.config.max_flows,
            self.config.tcp_idle,
            self.config.udp_idle,
            tcp_closed_idle=self.config.tcp_closed_idle,
            on_evict=self._release,
            server_ports=self._is_service_port,
            kernel_checked_syn=self.config.kernel_checked_syn,
            close_check=self.normalizer.closes,
        )
        self.stats = EngineStats(self.table, self)
        self._depth = (self.config.depth_to_server, self.config.depth_to_client)
        self._fail = _FAIL_OPEN if self.config.fail_open else _FAIL_CLOSED
        self._next_expire: float | None = None
        # (id of the rule group, exact request bytes) of body-less HTTP requests that fired no
        # rule -> that group (held, so its id cannot be reused while the entry exists)
        self._http_memo: OrderedDict[tuple[int, str, int, bytes], object] = OrderedDict()

    # ----------------------------------------------------------------- entry points

    def process_ip(self, data: bytes, now: float) -> Decision:
        """A raw IPv4/IPv6 datagram (NFQUEUE). Never raises."""
        try:
            pkt = parse_ip(data)
        except DecodeError:
            self.stats.packets += 1
            self.stats.decode_errors += 1
            return self._fail
        except Exception:  # noqa: BLE001 (the packet path never raises; counted)
            self.stats.packets += 1
            self.stats.internal_errors += 1
            return self._fail
        return self.process(pkt, now)

    def process_frame(self, data: bytes, linktype: int, now: float) -> Decision:
        """A captured frame of a pcap link type. Never raises."""
        try:
            pkt = parse_frame(data, linktype)
        except UnsupportedFrame:
            self.stats.packets += 1
            self.stats.unsupported_frames += 1
            return _ACCEPT_FINAL
        except DecodeError:
            self.stats.packets += 1
            self.stats.decode_errors += 1
            return self._fail
        except Exception:  # noqa: BLE001 (the packet path never raises; counted)
            self.stats.packets += 1
            self.stats.internal_errors += 1
            return self._fail
        return self.process(pkt, now)

    def process(self, pkt: Packet, now: float) -> Decision:
        """A decoded packet. Never raises."""
        try:
            return self._process(pkt, now)
        except Exception:  # noqa: BLE001 (the packet path never raises; counted)
            self.stats.internal_errors += 1
            return self._fail

    def expire(self, now: float) -> None:
        """Forget flows idle past their timeout (their state is freed by on_evict)."""
        self.table.expire(now)

    def close(self) -> None:
        """Free every flow's Hyperscan streams and buffers (the flows stay in the table, no
        longer inspected). Call when the engine is dropped, e.g. at the end of a capture."""
        for flow in self.table:
            self._release(flow)
            if flow.blocked is None:
                flow.final = True

    def _is_service_port(self, proto: int, port: int) -> bool:
        """FlowTable's hint for orienting flows picked up mid-stream: a port a rule covers."""
        return self.matcher.covers(proto, port)

    def swap_rules(self, ruleset: RuleSet) -> None:
        """Build a Matcher for `ruleset` and use it for new flows (raises RuleError if it
        cannot compile; the old matcher then stays in place)."""
        matcher = Matcher(ruleset)
        self.ruleset = ruleset
        self.matcher = matcher

    def set_policy(self, policy: CompiledPolicy | None) -> None:
        """Use `policy` for every match from now on (None: each rule's default_mode)."""
        self.policy = policy
        self._http_memo.clear()  # what is "off" for a server may have changed

    # ----------------------------------------------------------------- the pipeline

    def _process(self, pkt: Packet, now: float) -> Decision:
        stats = self.stats
        stats.packets += 1
        payload = pkt.payload
        stats.bytes += len(payload)
        # ---- normalisation hook 1 of 3 (gateway/flow/defrag.py, gateway/flow/normalize.py)
        # (before the protocol test: an IPv6 fragment's next header may be an extension header)
        if pkt.fragment or pkt.first_fragment:
            stats.fragments += 1
            action, whole = self.defrag.add(pkt, now)
            if whole is None:
                return _ACCEPT if action is Action.ACCEPT else _DROP
            try:
                pkt = parse_ip(whole)
            except DecodeError:
                stats.decode_errors += 1
                return self._fail
            payload = pkt.payload
        if (
            pkt.proto == PROTO_TCP
            and (not payload or pkt.flags & _CONTROL)  # data: checked if inspected (hook 2)
            and not self.normalizer.intact(pkt)
        ):
            return _DROP
        # ---- end of hook 1
        proto = pkt.proto
        if proto != PROTO_TCP and proto != PROTO_UDP:
            stats.not_inspected += 1
            return _ACCEPT_FINAL
        if (
            self._next_expire is None
            or now >= self._next_expire
            or now < self._next_expire - 2 * EXPIRE_INTERVAL
        ):
            self._next_expire = now + EXPIRE_INTERVAL
            self.table.expire(now)
        flow, direction = self.table.lookup(pkt, now)
        blocked = flow.blocked
        if blocked is not None:
            stats.blocked_packets += 1
            return _BLOCKED[blocked]
        if flow.final:
            return _ACCEPT_FINAL
        insp = flow.inspection
        if insp is None:
            insp = self._start(flow)
            if insp is None:
                return _ACCEPT_FINAL
        assert isinstance(insp, _Inspection)
        d = TO_SERVER if direction is Direction.TO_SERVER else TO_CLIENT
        # ---- normalisation hook 2 of 3: segments the receiver would drop
        if proto == PROTO_TCP and (
            (payload and insp.active[d] and not self.normalizer.intact(pkt))
            or not self.normalizer.admit(flow, pkt, d, insp.reasm[d])
        ):
            return _DROP
        # ---- end of hook 2
        if not insp.active[d]:
            return _ACCEPT_DONE[d]
        if proto == PROTO_TCP:
            syn = pkt.flags & TCP_SYN
            if not payload and not syn:
                return _ACCEPT
            reasm = insp.reasm[d]
            assert reasm is not None
            if (
                d == TO_SERVER
                and reasm.position == 0
                and payload
                and self.config.http_whole_connection
                and _HTTP_REQUEST_START.match(payload)
            ):
                reasm.max_depth = UNBOUNDED_DEPTH
            # ---- normalisation hook 3 of 3: reassembly; differing bytes reset the flow
            verdict, data = self.normalizer.receive(flow, pkt, d, reasm)
            if verdict is Verdict.RESET:
                return self._refuse(flow, insp)
            if verdict is Verdict.DROP:
                return _DROP
            # ---- end of hook 3
            fired = NO_RULES
            if data:
                state = insp.states[d]
                if state is not None:
                    fired = state.matcher.scan_stream(state, data)
                app = insp.apps[d]
                if app is not None:
                    found = self._app_feed(
                        insp, app, d, data, PROTO_TCP, flow.key.server_port, flow.key.server
                    )
                    fired = self._combine(insp, d, fired, found)
                elif fired:
                    fired = self._combine(insp, d, fired, NO_RULES)
            if reasm.depth_reached:
                self._direction_done(flow, insp, d)
            # A direction whose decoder gave up and that has no raw patterns scans nothing more,
            # but stays queued up to its depth: a retransmission whose bytes differ from those
            # the decoder rejected must still be refused (normalisation hook 3), or bytes that
            # were made to fail the decoder would buy the real ones a bypass.
        else:
            if not payload:
                return _ACCEPT
            data = payload
            group = insp.groups[d]
            assert group is not None
            fired = insp.matcher.scan_block(group, payload)
            app = insp.apps[d]
            if app is not None:
                found = self._app_feed(
                    insp, app, d, payload, PROTO_UDP, flow.key.server_port, flow.key.server
                )
                fired = self._combine(insp, d, fired, found)
            elif fired:
                fired = self._combine(insp, d, fired, NO_RULES)
            seen = flow.bytes_to_server if d == TO_SERVER else flow.bytes_to_client
            if seen >= self._depth[d]:
                self._direction_done(flow, insp, d)
        if fired:
            decision = self._fire(flow, insp, pkt, d, fired, now, data)
            if insp.rearm:
                decision = self._rearm(flow, insp, pkt, d, now, data, decision)
            return decision
        if flow.final:
            return _ACCEPT_FINAL
        return _ACCEPT if insp.active[d] else _ACCEPT_DONE[d]

    def _app_feed(
        self,
        insp: _Inspection,
        app: _AppState,
        d: int,
        data: bytes,
        proto: int,
        port: int,
        server: str,
    ) -> tuple[Rule, ...]:
        """Identify (first bytes), decode and evaluate the field conditions; never raises
        (a failing decoder ends app-layer inspection of this direction, counted)."""
        stats = self.stats
        decoder = app.decoder
        if decoder is None:
            if proto == PROTO_TCP:
                app.buf += data
                head = app.buf
            else:
                head = data
                app.attempts += 1
            name, decided = app_registry.identify(app.group.app_candidates, proto, port, d, head)
            if not decided:
                if (
                    proto == PROTO_UDP
                    and app.attempts >= UDP_PROBE_ATTEMPTS
                    or proto == PROTO_TCP
                    and len(head) >= app_registry.MAX_PROBE_BYTES
                ):
                    name = None
                else:
                    return NO_RULES
            protocol = app_registry.get(name) if name is not None else None
            if protocol is None:
                stats.app_unidentified += 1
                insp.apps[d] = None
                return NO_RULES
            decoder = protocol.new_decoder(proto, d)
            app.decoder = decoder
            app.name = name
            data = head
            app.buf = b""
        memo_key = self._memo_key(app, data, server, port)
        if memo_key is not None and self._http_memo.get(memo_key) is app.group:
            # The very same body-less request fired nothing before: decoding it again would
            # give the same fields and the same (empty) answer. The decoder is at a request
            # boundary before and after it, so skipping it leaves its state as it would be.
            self._http_memo.move_to_end(memo_key)
            stats.app_records += 1
            stats.http_memo_hits += 1
            return NO_RULES
        try:
            records = decoder.feed(data)
        except AppDecodeError:
            stats.app_decode_errors += 1
            insp.apps[d] = None
            return NO_RULES
        except Exception:  # noqa: BLE001 (a decoder bug must not stop raw inspection)
            stats.app_internal_errors += 1
            insp.apps[d] = None
            return NO_RULES
        if not records:
            return NO_RULES
        stats.app_records += len(records)
        if memo_key is not None and len(records) != 1:
            memo_key = None
        apps = app.group.apps
        matcher = insp.matcher
        out: list[Rule] = []
        policy = self.policy
        for record in records:
            group = apps.get(record.app)
            if group is not None:
                found = matcher.evaluate(group, record.fields)
                if found:  # a rule switched off for this server is ignored here already
                    found = tuple(
                        rule
                        for rule in found
                        if (policy.mode(server, rule, port) if policy else rule.default_mode)
                        is not Mode.OFF
                    )
                if found:
                    out.extend(found)
                    seen = insp.records[d]
                    if seen is None:
                        seen = insp.records[d] = {}
                    for rule in found:
                        seen[rule.id] = record.fields
        if (
            not out
            and memo_key is not None
            and isinstance(decoder, app_registry.HttpAdapter)
            and decoder.at_boundary()
        ):
            memo = self._http_memo
            memo[memo_key] = app.group
            if len(memo) > self.config.http_memo_entries:
                memo.popitem(last=False)
        return tuple(out)

    def _memo_key(
        self, app: _AppState, data: bytes, server: str, port: int
    ) -> tuple[int, str, int, bytes] | None:
        """The memo key of `data` if it is exactly one complete HTTP request head without a body
        and the decoder sits at a request boundary, else None. The server is part of the key:
        which rules are off (ignored) depends on the policy for that server."""
        if (
            app.name != "http"
            or not self.config.http_memo_entries
            or len(data) > MAX_MEMO_REQUEST
            or not data.endswith(b"\r\n\r\n")
            or data.find(b"\r\n\r\n") != len(data) - 4
            or _BODY_HEADERS.search(data)
        ):
            return None
        decoder = app.decoder
        if not isinstance(decoder, app_registry.HttpAdapter) or not decoder.at_boundary():
            return None
        return (id(app.group), server, port, data)

    @staticmethod
    def _combine(
        insp: _Inspection, d: int, raw: tuple[Rule, ...], cond: tuple[Rule, ...]
    ) -> tuple[Rule, ...]:
        """Rules that fire now: raw patterns complete and (no conditions, or a record already
        satisfied them), or conditions satisfied and (no raw patterns, or they completed)."""
        out: list[Rule] = []
        raw_done = insp.raw_done[d]
        cond_ok = insp.cond_ok[d]
        for rule in raw:
            if rule.conditions is None or rule.id in cond_ok:
                out.append(rule)
            else:
                raw_done.add(rule.id)
        for rule in cond:
            if not rule.patterns or rule.id in raw_done:
                out.append(rule)
            else:
                cond_ok.add(rule.id)
        return tuple(out)

    def _start(self, flow: Flow) -> _Inspection | None:
        """Set up inspection of a new flow, or mark it final when nothing covers it."""
        key = flow.key
        matcher = self.matcher
        if not matcher.covers(key.proto, key.server_port) and not self._any_port_wanted(key):
            flow.final = True
            self.stats.flows_final += 1
            return None
        insp = _Inspection(matcher)
        for d in (TO_SERVER, TO_CLIENT):
            depth = self._depth[d]
            group = matcher.group(key.proto, d, key.server_port)
            if group is None or depth == 0:
                continue
            insp.groups[d] = group
            insp.active[d] = True
            if key.proto == PROTO_TCP:
                reasm = StreamReassembler(
                    depth, self.config.max_pending, self.config.retransmit_history, True
                )
                insp.reasm[d] = reasm
                flow.streams[Direction.TO_SERVER if d == TO_SERVER else Direction.TO_CLIENT] = reasm
                if group.database is not None:
                    insp.states[d] = matcher.open_stream(group)
            if group.apps:
                insp.apps[d] = _AppState(group)
        if not (insp.active[TO_SERVER] or insp.active[TO_CLIENT]):
            flow.final = True
            self.stats.flows_final += 1
            return None
        flow.inspection = insp
        self.stats.flows_inspected += 1
        return insp

    def _refuse(self, flow: Flow, insp: _Inspection) -> Decision:
        """The normaliser refused the flow (gateway/flow/normalize.py): reset it."""
        flow.blocked = Action.RESET
        flow.final = False
        insp.close_all()
        self.stats.flows_blocked += 1
        self.stats.blocked_packets += 1
        return _BLOCKED[Action.RESET]

    def _any_port_wanted(self, key: FlowKey) -> bool:
        """A flow on a port no rule names is inspected only if a `ports: any` rule is on for
        its server (app control, e.g. HTTP on a port other than the allowed ones)."""
        policy = self.policy
        for d in (TO_SERVER, TO_CLIENT):
            for rule in self.matcher.any_port_rules(key.proto, d):
                mode = (
                    policy.mode(key.server, rule, key.server_port)
                    if policy is not None
                    else rule.default_mode
                )
                if mode is not Mode.OFF:
                    return True
        return False

    def _direction_done(self, flow: Flow, insp: _Inspection, d: int) -> None:
        insp.close(d)
        if not (insp.active[TO_SERVER] or insp.active[TO_CLIENT]) and flow.blocked is None:
            flow.final = True
            self.stats.flows_final += 1

    def _fire(
        self,
        flow: Flow,
        insp: _Inspection,
        pkt: Packet,
        d: int,
        fired: tuple[Rule, ...],
        now: float,
        data: bytes = b"",
        exceptions: bool = True,
    ) -> Decision:
        block: Action | None = None
        events: list[Event] = []
        key = flow.key
        policy = self.policy
        records = insp.records[d]
        handled: set[int] = set()  # a rule may come twice (head and end-of-request records)
        for rule in fired:
            if rule.id in insp.fired or rule.id in handled:
                continue
            handled.add(rule.id)
            mode = (
                policy.mode(key.server, rule, key.server_port)
                if policy is not None
                else rule.default_mode
            )
            if mode is Mode.OFF:
                continue
            fields = records.pop(rule.id, None) if records is not None else None
            why, url, end = self._why(insp, d, rule, fields, data)
            if exceptions and policy is not None and policy.has_exceptions:
                uri: str | None = None
                if url is not None and policy.wants_uri(key.server, rule.id, now):
                    uri = _normalized_uri(url, fields)
                scope = policy.exception(key.server, rule.id, key.server_port, uri, now)
                if scope is not None:
                    self.stats.events_excepted += 1
                    if (
                        scope.uri is not None
                        and fields is None
                        and end is not None
                        and insp.states[d] is not None
                        and rule.conditions is None
                    ):
                        insp.rearm.append((end, rule))  # its stream must look again
                    continue  # not remembered in insp.fired: another request may still fire
            insp.fired.add(rule.id)
            action = rule.action
            would_block = False
            if mode is Mode.DETECT:
                would_block = action.blocks
                if would_block:
                    self.stats.events_detect_only += 1
            elif action is Action.RESET or (action is Action.DROP and block is None):
                block = action
            events.append(
                Event(
                    timestamp=now,
                    flow_id=flow.flow_id,
                    src_ip=pkt.src,
                    src_port=pkt.sport,
                    dest_ip=pkt.dst,
                    dest_port=pkt.dport,
                    proto=pkt.proto,
                    server_port=key.server_port,
                    direction=DIRECTION_NAMES[d],
                    signature_id=rule.id,
                    signature=rule.title,
                    severity=rule.severity,
                    cves=rule.cves,
                    rule_action=action,
                    blocked=action.blocks and not would_block,
                    would_block=would_block,
                    field=why.field,
                    condition=why.condition,
                    excerpt=why.excerpt,
                    http_url=url or b"",
                )
            )
        self.stats.events += len(events)
        if block is not None:
            flow.blocked = block
            flow.final = False
            insp.close_all()
            self.stats.flows_blocked += 1
            self.stats.blocked_packets += 1
            return Decision(block, False, tuple(events))
        if not events:
            return _ACCEPT_FINAL if flow.final else _ACCEPT
        return Decision(Action.ALERT, flow.final, tuple(events))

    def _why(
        self,
        insp: _Inspection,
        d: int,
        rule: Rule,
        fields: Mapping[str, int | bytes] | None,
        data: bytes,
    ) -> tuple[Why, bytes | None, int | None]:
        """(why the rule fired, the HTTP request target if known, for raw patterns the offset in
        `data` where the completing match ended if known); only called on a firing."""
        if fields is not None:
            target = fields.get("http.uri.raw")
            url = target[:MAX_TARGET] if isinstance(target, bytes) else None
            return explain_fields(rule, fields), url, None
        located: tuple[int, int] | None = None
        end: int | None = None
        state = insp.states[d]
        if state is not None and insp.groups[d] is not None and state.ends:
            located = insp.matcher.raw_match_end(rule, state.ends)
            if located is not None:
                end = located[1] - (state.scanned - len(data))
        elif insp.groups[d] is not None and data and state is None:
            group = insp.groups[d]
            assert group is not None
            if not group.stream_mode:
                located = insp.matcher.locate_block(group, data, rule)
                end = located[1] if located is not None else None
        why = explain_raw(rule, located[0] if located is not None else None, data, end)
        url = request_target(data, end) if end is not None and end > 0 else None
        return why, url, end

    def _rearm(
        self,
        flow: Flow,
        insp: _Inspection,
        pkt: Packet,
        d: int,
        now: float,
        data: bytes,
        decision: Decision,
    ) -> Decision:
        """A URI-scoped exception excused raw stream rules in `data`. A Hyperscan stream
        reports each pattern once, so left alone those rules would never fire again on this
        connection: a keep-alive request to another URI would pass unchecked. Restart the
        direction's stream right after the excused match (the other rules keep what they had
        matched) and scan the rest of `data` again; repeat while that excuses more. After
        MAX_REARM_ROUNDS in one packet the exceptions stop applying to it (fail safe)."""
        rounds = 0
        while insp.rearm and flow.blocked is None:
            state = insp.states[d]
            if state is None:
                break
            start = min(end for end, _ in insp.rearm)
            forget = [rule for _, rule in insp.rearm]
            insp.rearm.clear()
            new, more = insp.matcher.restart_stream(state, data, start, forget)
            insp.states[d] = new
            self.stats.raw_rearms += 1
            more = self._combine(insp, d, more, NO_RULES)
            if not more:
                continue
            rounds += 1
            fired = self._fire(
                flow, insp, pkt, d, more, now, data, exceptions=rounds < MAX_REARM_ROUNDS
            )
            decision = _merge_decisions(decision, fired)
        insp.rearm.clear()
        return decision

    def _release(self, flow: Flow) -> None:
        """FlowTable.on_evict: free the flow's Hyperscan streams and reassembly buffers."""
        insp = flow.inspection
        if isinstance(insp, _Inspection):
            insp.close_all()
            insp.reasm[TO_SERVER] = insp.reasm[TO_CLIENT] = None
        flow.inspection = None
        flow.streams.clear()
