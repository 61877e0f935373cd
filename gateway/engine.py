"""The inspection engine: decode -> flow -> reassembly -> match -> Decision (sans-I/O).

What it does: `Engine(ruleset, config)` owns a FlowTable, one StreamReassembler and one
Hyperscan stream per inspected TCP flow direction, and a Matcher. For each packet
(`process_ip` for raw datagrams from NFQUEUE, `process_frame` for capture frames, `process`
for a decoded Packet) it returns a `Decision` (gateway.verdict). The clock is passed in (`now`),
so replaying a capture uses the capture's timestamps. Two collaborators take the protocol
knowledge and the consequences off the pipeline: each flow direction's `AppSession`
(gateway/decode/session.py: protocol identification, app decoding, the memo of whole units)
and the `Judge` (gateway/verdict/judge.py: modes, exceptions, events and their why, blocking);
the per-flow state is an `Inspection` (gateway/match/inspection.py).

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
  already inspected resets the flow (counted, `norm_*` in stats; an event under
  `limits.normalizer` alert or reset). These are three delimited hooks in `_process`; the
  logic lives in gateway/flow/.
- Limits (gateway/flow/limits.py, the `limits:` section, per server): every bound legal
  traffic can reach has a policy, applied by the `Limiter` (gateway/verdict/limiter.py): stream
  and UDP depth (`inspect-start`: a direction whose decoder still follows it is inspected
  past the depth), pending out-of-order bytes, holes in a stream (after `limits.hole_wait`
  without progress the segments behind a hole are dropped, then the hole is skipped and the
  app session and raw stream restart after it, `_resync`), a full flow table, decoder caps,
  normaliser refusals and defragmentation. Counted in `limit_*`; events per policy.
- A flow is inspected in a direction only when a rule covers (protocol, server port, direction)
  and that direction's stream depth (`EngineConfig.depth_to_server` / `depth_to_client`) is
  not 0. TCP bytes go through first-wins reassembly (gateway.flow.reassembly) and only the
  newly contiguous bytes are scanned, in Hyperscan stream mode, so a pattern split over any
  number of segments, or sent out of order, is found. UDP datagrams are scanned one by one
  (block mode) until the direction's depth in bytes is used up. Where the rules judge decoded
  fields, the same bytes feed the direction's AppSession and its records are evaluated.
- Out-of-order data: the packet that makes the matching bytes contiguous (the gap filler) is
  the one blocked. Inline, the receiver cannot deliver data past a gap either, so blocking the
  gap filler stops the attack.
- Whole connections: a TCP stream whose first bytes a `whole_connection` protocol recognises
  (HTTP keep-alive) is inspected for the whole life of the connection
  (`EngineConfig.http_whole_connection`), not up to the depth. Requests are small, the
  reassembler keeps nothing once delivered, so memory stays bounded; the cost is that such
  connections are never bypassed in the kernel.
- `Decision.final` is True once nothing more can be learnt from the flow: no rule covers it, or
  every inspected direction reached its depth. While only one direction is done (a bulk upload
  reached the request depth, but the few response bytes never reach the response depth), that
  direction's packets get `done_to_server` / `done_to_client`, so the kernel can stop queueing
  that direction alone. A blocked flow is never final.

What it guarantees:
- `process`, `process_ip` and `process_frame` never raise. An exception inside is counted in
  `stats.internal_errors`; an undecodable datagram in `stats.decode_errors`; both get the
  fail policy's decision: ACCEPT when `config.fail_open`, else DROP. Frames that carry no IP
  (ARP...) are counted in `stats.unsupported_frames` and accepted.
- Memory is bounded by `EngineConfig` (gateway/engine_config.py): max_flows flows (LRU
  eviction), max_pending out-of-order bytes, retransmit_history bytes and depth bytes per
  direction, http_memo_entries memoised units, and the defragmenter's bounds (incomplete
  datagrams, fragments each, seconds: gateway/flow/defrag.py); idle flows are expired from
  within `process` at most every `EXPIRE_INTERVAL` seconds of packet time (and by
  `expire(now)`).
- Per-flow Hyperscan streams are closed when a direction reaches depth, when the flow is
  blocked, and when it leaves the flow table (expiry, eviction, port reuse).
- Changing rules: `swap_rules(ruleset)` builds a new Matcher beside the old one and swaps it in;
  new flows use the new rules, flows already inspected finish with the old ones. Changing the
  policy (`set_policy`) applies to every later firing and empties the memo.
"""

from __future__ import annotations

from typing import Final

from gateway.applayer import AppLayer
from gateway.decode.packet import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    DecodeError,
    Packet,
    UnsupportedFrame,
    parse_frame,
    parse_ip,
)
from gateway.decode.session import UnitMemo, starts_whole_connection, whole_connection_probes
from gateway.engine_config import EngineConfig
from gateway.flow.defrag import Defragmenter
from gateway.flow.limits import LimitTable
from gateway.flow.normalize import Normalizer, Verdict
from gateway.flow.reassembly import StreamReassembler
from gateway.flow.table import NO_STREAMS, Flow, FlowKey, FlowTable
from gateway.match.inspection import Inspection
from gateway.match.matcher import NO_RULES, Matcher, MatchGroup
from gateway.match.rules import Rule, RuleSet
from gateway.policy.compiled import CompiledPolicy
from gateway.verdict import ACCEPT, ACCEPT_FINAL, Decision
from gateway.verdict.judge import Judge
from gateway.verdict.limiter import Limiter
from gateway.vocabulary import (
    DIRECTIONS,
    PROTO_TCP,
    PROTO_UDP,
    TO_SERVER,
    Action,
    Direction,
    Limit,
    LimitPolicy,
    Mode,
)

__all__ = ["EXPIRE_INTERVAL", "Engine", "EngineStats"]

EXPIRE_INTERVAL: Final = 1.0  # seconds of packet time between idle-flow sweeps
UNBOUNDED_DEPTH: Final = 1 << 62  # "no depth": a whole connection is inspected to its end

# A packet of a direction that finished inspecting while the other one has not (indexed by d).
_ACCEPT_DONE: Final = (
    Decision(Action.ACCEPT, done_to_server=True),
    Decision(Action.ACCEPT, done_to_client=True),
)
_BLOCKED: Final = {Action.DROP: Decision(Action.DROP), Action.RESET: Decision(Action.RESET)}
_DROP: Final = _BLOCKED[Action.DROP]
_CONTROL: Final = TCP_SYN | TCP_FIN | TCP_RST  # segments that open or close flows
_SYN_ACK: Final = TCP_SYN | TCP_ACK
_REOPENING: Final = Decision(Action.ACCEPT, reopening=True)  # see gateway/flow/table.py
_FAIL_OPEN: Final = Decision(Action.ACCEPT)
_FAIL_CLOSED: Final = Decision(Action.DROP)
_PASS: Final = Verdict.PASS  # a plain constant: Verdict.PASS costs an enum lookup (vocabulary.py)


class EngineStats:
    """Counters of one engine (one worker). Plain ints; read them any time."""

    __slots__ = (
        "_engine",
        "_table",
        "app_decode_errors",
        "app_handovers",
        "app_rebinds",
        "app_recoveries",
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
        "limits",
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
        self.raw_rearms = 0  # raw streams restarted after a URI-excused match (verdict/judge.py)
        self.app_records = 0  # decoded app-layer records evaluated
        self.http_memo_hits = 0  # requests answered from the HTTP memo (no decode, no evaluate)
        self.app_decode_errors = 0  # times a decoder refused the bytes (anomaly records)
        self.app_recoveries = 0  # ... after which it resynchronised and decoding went on
        self.app_internal_errors = 0  # directions whose decoder failed otherwise (bugs)
        self.app_unidentified = 0  # directions where no expected app protocol was recognised
        self.app_rebinds = 0  # directions switched to the rules of the protocol found there
        self.app_handovers = 0  # directions handed over to another protocol (STARTTLS)
        self.limits = dict.fromkeys(Limit, 0)  # limits reached (gateway/flow/limits.py)
        self._table = table
        self._engine = engine

    @property
    def flows_active(self) -> int:
        return len(self._table)

    @property
    def streams_open(self) -> int:
        return self._engine.matcher.streams_open

    def as_dict(self) -> dict[str, int]:
        out = {
            name: getattr(self, name)
            for name in self.__slots__
            if not name.startswith("_") and name != "limits"
        }
        out.update({f"limit_{k.value}": v for k, v in self.limits.items()})
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
        follow = self.config.identify_any_port  # rules follow their protocol (match/follow.py)
        self.matcher = (
            matcher
            if matcher is not None and matcher.ruleset is ruleset and matcher.follow == follow
            else Matcher(ruleset, follow)
        )
        self.normalizer = Normalizer(
            self.config.checksums, self.config.kernel_checked_tcp
        )  # gateway/flow/normalize.py
        # checksums to verify here (Normalizer.intact is always True when the kernel did)
        self._sums = not self.config.kernel_checked_tcp
        self.defrag = Defragmenter(  # IP fragments (gateway/flow/defrag.py)
            self.config.defrag_datagrams, self.config.defrag_timeout, self.config.defrag_fragments
        )
        self.limits = LimitTable(self.config.limits)  # per-server limit policies
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
        self._judge = Judge(self.stats, policy)
        # the consequences of limits (gateway/verdict/limiter.py)
        self._limiter = Limiter(self.limits, self.stats, self._judge, self.normalizer, self._resync)
        self._memo = UnitMemo(self.config.http_memo_entries)
        # app records -> rules (gateway/applayer.py)
        self._app = AppLayer(self.stats, self._memo, self._limiter, policy, self._direction_done)
        self._depth = (self.config.depth_to_server, self.config.depth_to_client)
        self._fail = _FAIL_OPEN if self.config.fail_open else _FAIL_CLOSED
        self._next_expire: float | None = None
        # per direction: probes of the protocols inspected for the whole connection
        self._whole = whole_connection_probes() if self.config.http_whole_connection else ((), ())
        # TCP protocols identified by content on any port (gateway/match/follow.py)
        self._identify_any = self.config.identify_any_port

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
            return ACCEPT_FINAL
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

    def swap_rules(self, ruleset: RuleSet, matcher: Matcher | None = None) -> None:
        """Use `ruleset` for new flows, with `matcher` if it was built for it (and for this
        engine's `identify_any_port`), else a Matcher built here (raises RuleError if it
        cannot compile; the old matcher then stays in place). Flows in progress finish with
        the matcher they started with."""
        follow = self.config.identify_any_port
        if matcher is None or matcher.ruleset is not ruleset or matcher.follow != follow:
            matcher = Matcher(ruleset, follow)
        self.ruleset = ruleset
        self.matcher = matcher

    def set_policy(self, policy: CompiledPolicy | None) -> None:
        """Use `policy` for every match from now on (None: each rule's default_mode)."""
        self.policy = policy
        self._judge.policy = policy
        self._app.policy = policy
        self._memo.clear()  # what is "off" for a server may have changed

    # ----------------------------------------------------------------- the pipeline

    def _process(self, pkt: Packet, now: float) -> Decision:
        stats = self.stats
        stats.packets += 1
        payload = pkt.payload
        stats.bytes += len(payload)
        # ---- normalisation hook 1 of 3 (gateway/flow/defrag.py, gateway/flow/normalize.py)
        # (before the protocol test: an IPv6 fragment's next header may be an extension header)
        if pkt.fragment or pkt.first_fragment:
            whole = self._defragment(pkt, now)
            if isinstance(whole, Decision):
                return whole
            pkt, payload = whole, whole.payload
        if (
            pkt.proto == PROTO_TCP
            and (not payload or pkt.flags & _CONTROL)  # data: checked if inspected (hook 2)
            and self._sums
            and not self.normalizer.intact(pkt)
        ):
            return _DROP
        # ---- end of hook 1
        proto = pkt.proto
        if proto != PROTO_TCP and proto != PROTO_UDP:
            stats.not_inspected += 1
            return ACCEPT_FINAL
        if (
            self._next_expire is None
            or now >= self._next_expire
            or now < self._next_expire - 2 * EXPIRE_INTERVAL
        ):
            self._next_expire = now + EXPIRE_INTERVAL
            self.table.expire(now)
        table = self.table
        evicted = table.evicted
        flow, d = table.lookup(pkt, now)
        if table.evicted != evicted and (  # the table was full: limits.flow_table
            refused := self._limiter.table_full(flow, pkt, d, now, table.max_flows)
        ):
            return refused
        blocked = flow.blocked
        if blocked is not None:
            return self._on_blocked(flow, blocked, pkt, d)
        if flow.final:
            return ACCEPT_FINAL
        insp = flow.inspection
        if insp is None:
            insp = self._start(flow)
            if insp is None:
                return ACCEPT_FINAL
        assert isinstance(insp, Inspection)
        way = insp.ways[d]
        # ---- normalisation hook 2 of 3: segments the receiver would drop
        if proto == PROTO_TCP and (
            (payload and self._sums and way.active and not self.normalizer.intact(pkt))
            or not self.normalizer.admit(flow, pkt, d, way.reasm)
        ):
            return self._limiter.norm_refusal(flow, insp, pkt, d, now, Verdict.DROP)
        # ---- end of hook 2
        if not way.active:
            return _ACCEPT_DONE[d]
        if proto == PROTO_TCP:
            syn = pkt.flags & TCP_SYN
            if not payload and not syn:
                return ACCEPT
            reasm = way.reasm
            assert reasm is not None
            if payload and (
                reasm.position == 0 or reasm.position + len(payload) >= reasm.max_depth
            ):
                self._stream_depth(insp, d, reasm, payload)
            # ---- normalisation hook 3 of 3: reassembly; differing bytes reset the flow
            verdict, data = self.normalizer.receive(flow, pkt, d, reasm)
            if verdict is not _PASS:
                return self._limiter.norm_refusal(flow, insp, pkt, d, now, verdict)
            # ---- end of hook 3
            if data:
                way.progress = now
            elif payload and reasm.hole:  # held behind a hole: limits.stream_hole
                held = self._limiter.hole(flow, insp, pkt, d, reasm, now)
                if isinstance(held, Decision):
                    return held
                data = held
            fired = NO_RULES
            if data:
                state = way.state
                if state is not None:
                    fired = state.matcher.scan_stream(state, data)
                app = way.app
                if app is not None:
                    rules = self._app.rules(insp, app, d, data, flow, pkt, now)
                    if fired or rules:
                        fired = insp.combine(d, fired, rules)
                    # h2c: raw patterns see its requests as HTTP/1
                    if state is not None and (derived := app.take_derived()):
                        fired += insp.scan_derived(d, derived)
                elif fired:
                    fired = insp.combine(d, fired, NO_RULES)
            if reasm.depth_reached:
                self._direction_done(flow, insp, d)
                self._limiter.depth(flow, insp, pkt, d, Limit.STREAM_DEPTH, reasm.max_depth, now)
            # A direction whose decoder gave up and that has no raw patterns scans nothing more,
            # but stays queued up to its depth: a retransmission whose bytes differ from those
            # the decoder rejected must still be refused (normalisation hook 3), or bytes that
            # were made to fail the decoder would buy the real ones a bypass.
        else:
            if not payload:
                return ACCEPT
            data = payload
            fired = self._datagram(flow, insp, pkt, d, now)
        if fired:
            decision = self._judge.decide(flow, insp, pkt, d, fired, now, data)
        elif flow.final:
            decision = ACCEPT_FINAL
        else:
            decision = ACCEPT if way.active else _ACCEPT_DONE[d]
        return decision if self._limiter.pending is None else self._limiter.take(decision)

    def _on_blocked(self, flow: Flow, blocked: Action, pkt: Packet, d: Direction) -> Decision:
        """A packet of a flow the engine blocked: blocked too, unless it is the client's
        payload-less SYN that may open a new connection on these ports (flow/table.py)."""
        if (
            pkt.seq == flow.reuse_syn
            and pkt.flags & _SYN_ACK == TCP_SYN
            and not pkt.payload
            and d is TO_SERVER
        ):
            return _REOPENING  # a new connection on these ports if the server agrees
        self.stats.blocked_packets += 1
        return _BLOCKED[blocked]

    def _stream_depth(
        self, insp: Inspection, d: Direction, reasm: StreamReassembler, payload: bytes
    ) -> None:
        """A TCP segment with payload at the start of its stream or reaching its depth: a
        stream that starts like a `whole_connection` protocol is inspected to its end,
        otherwise `_reaching_depth` applies when the segment reaches the depth."""
        if (
            reasm.position == 0
            and self._whole[d]
            and starts_whole_connection(self._whole[d], payload, d)
        ):
            reasm.max_depth = UNBOUNDED_DEPTH
        elif reasm.position + len(payload) >= reasm.max_depth:
            self._reaching_depth(insp, d, reasm)

    def _datagram(
        self, flow: Flow, insp: Inspection, pkt: Packet, d: Direction, now: float
    ) -> tuple[Rule, ...]:
        """A UDP datagram with payload on an inspected direction: the rules it fires (scanned
        in block mode, its app records evaluated); the direction's depth applied."""
        way = insp.ways[d]
        group = way.group
        assert group is not None
        fired = insp.matcher.scan_block(group, pkt.payload)
        app = way.app
        if app is not None:
            rules = self._app.rules(insp, app, d, pkt.payload, flow, pkt, now)
            fired = insp.combine(d, fired, rules)
        elif fired:
            fired = insp.combine(d, fired, NO_RULES)
        seen = (flow.bytes_to_server, flow.bytes_to_client)[d]
        if seen >= way.depth:
            self._udp_depth(flow, insp, pkt, d, now)
        return fired

    def _defragment(self, pkt: Packet, now: float) -> Packet | Decision:
        """Hook 1's fragment step (gateway/flow/defrag.py): the whole datagram once `pkt`
        completes it, else the fragment's decision (held: ACCEPT; refused: DROP)."""
        self.stats.fragments += 1
        action, whole = self.defrag.add(pkt, now)
        if whole is None:
            return ACCEPT if action is Action.ACCEPT else self._limiter.defrag_refused(pkt, now)
        try:
            return parse_ip(whole)
        except DecodeError:
            self.stats.decode_errors += 1
            return self._fail

    def _start(self, flow: Flow) -> Inspection | None:
        """Set up inspection of a new flow, or mark it final when nothing covers it."""
        key = flow.key
        matcher = self.matcher
        unlisted = not matcher.covers(key.proto, key.server_port)
        identify = self._identify_any and key.proto == PROTO_TCP
        if unlisted and not identify and not self._any_port_wanted(key):
            flow.final = True
            self.stats.flows_final += 1
            return None
        insp = Inspection(matcher, self.limits.for_server(key.server), flow.last_seen)
        tcp = key.proto == PROTO_TCP
        for d, way in zip(DIRECTIONS, insp.ways, strict=True):
            depth = self._depth[d]
            if depth == 0:
                continue
            if unlisted and identify:
                group: MatchGroup | None = matcher.unlisted(d)  # until identified (follow.py)
            else:
                group = matcher.group(key.proto, d, key.server_port)
            if group is None:
                continue
            candidates = group.identify[d] if identify else None
            if candidates is None:
                candidates = group.app_candidates
            if not candidates and group.database is None and not group.apps:
                continue  # an unlisted port's group with nothing to identify
            way.group = group
            way.active = True
            way.depth = depth
            if tcp:
                way.reasm = StreamReassembler(
                    depth, self.config.max_pending, self.config.retransmit_history, True
                )
                if group.database is not None:
                    way.state = matcher.open_stream(group)
            if candidates:
                way.app = self._app.session(key, d, group, candidates)
        to_server, to_client = insp.ways
        if not (to_server.active or to_client.active):
            flow.final = True
            self.stats.flows_final += 1
            return None
        if tcp:
            flow.streams = (to_server.reasm, to_client.reasm)
        flow.inspection = insp
        self.stats.flows_inspected += 1
        return insp

    def _any_port_wanted(self, key: FlowKey) -> bool:
        """A flow on a port no rule names is inspected only if a `ports: any` rule is on for
        its server (app control, e.g. HTTP on a port other than the allowed ones)."""
        policy = self.policy
        for d in DIRECTIONS:
            for rule in self.matcher.any_port_rules(key.proto, d):
                mode = (
                    policy.mode(key.server, rule, key.server_port)
                    if policy is not None
                    else rule.default_mode
                )
                if mode is not Mode.OFF:
                    return True
        return False

    def _direction_done(self, flow: Flow, insp: Inspection, d: Direction) -> None:
        insp.close(d)
        if not (insp.ways[0].active or insp.ways[1].active) and flow.blocked is None:
            flow.final = True
            self.stats.flows_final += 1

    def _release(self, flow: Flow) -> None:
        """FlowTable.on_evict: free the flow's Hyperscan streams and reassembly buffers."""
        insp = flow.inspection
        if isinstance(insp, Inspection):
            insp.release()
        flow.inspection = None
        flow.streams = NO_STREAMS

    # ----------------------------------------------------------------- limits

    def _reaching_depth(self, insp: Inspection, d: Direction, reasm: StreamReassembler) -> None:
        """A TCP segment reaches the direction's stream depth: under `inspect-start`, a stream
        whose app decoder follows its units is inspected to its end (counted)."""
        app = insp.ways[d].app
        inspect_start = insp.limits.stream_depth is LimitPolicy.INSPECT_START
        if inspect_start and app is not None and app.decoding:
            reasm.max_depth = UNBOUNDED_DEPTH
            self.stats.limits[Limit.STREAM_DEPTH] += 1

    def _udp_depth(
        self, flow: Flow, insp: Inspection, pkt: Packet, d: Direction, now: float
    ) -> None:
        """A UDP direction reached its depth: under `inspect-start`, one whose app decoder
        reads its datagrams goes on; otherwise it is done (limits.udp_depth)."""
        way = insp.ways[d]
        app = way.app
        if insp.limits.udp_depth is LimitPolicy.INSPECT_START and app is not None and app.decoding:
            way.depth = UNBOUNDED_DEPTH
        else:
            self._direction_done(flow, insp, d)
        self._limiter.depth(flow, insp, pkt, d, Limit.UDP_DEPTH, self._depth[d], now)

    def _resync(self, flow: Flow, insp: Inspection, d: Direction) -> None:
        """After a skipped hole: the app session starts a new decoder (HTTP: at the next
        request line; one whose app layer was over identifies the protocol again) and the
        raw stream starts again."""
        way = insp.ways[d]
        group = way.group
        if group is None:
            return
        app = way.app
        if app is not None:
            app.restart()
        elif group.apps:
            way.app = self._app.session(flow.key, d, group)
        state = way.state
        if state is not None:
            state.matcher.close_stream(state)
            way.state = state.matcher.open_stream(group)
