"""From a limit reached on a packet to what the packet gets: count, event, reset (sans-I/O).

What it does: the engine tells the `Limiter` when a packet reached one of the packet path's
limits (gateway.vocabulary `Limit`; policies per server from gateway/flow/limits.py
`LimitTable`, docs/architecture.md "Limits"), and gets back what that adds to the packet's
decision:
- `reached(flow, insp, pkt, d, limit, detail, now, policy=None)`: counted in
  `stats.limits`; PASS and INSPECT_START (the engine went on inspecting where it could) add
  nothing (None); ALERT an event naming the limit, at most once per flow and limit
  (`Inspection.limits_hit`); RESET an event and the flow reset (`Judge.refuse`).
- `defer(decision)` keeps a limit's decision for the end of the packet's processing, where the
  engine adds it to the packet's own with `take()` and `merged(decision, extra)`.
- `table_full(...)` (the flow table evicted a flow to make room for a new one) and
  `defrag_refused(...)` (the defragmenter dropped a fragment) have no flow state to remember
  an event in: their events are limited to one a second per limit (`LimitTable.flowless_due`).
- `norm_refusal(...)`: the TCP normaliser's refusals (gateway/flow/normalize.py) as limits;
  `depth(...)`: a direction that stopped at its depth; `hole(...)`: a segment held behind a
  hole in a TCP stream (when to skip it; the engine's `resync` starts the app session and raw
  stream again after it).

What it guarantees: a deferred decision never blocks unless the flow it names was blocked
(`Judge.refuse`, which blocks the flow itself); every event is counted in `stats.events`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from gateway.decode.packet import Packet
from gateway.events.eve import Event
from gateway.flow.limits import LIMIT_BITS, LimitTable, limit_event
from gateway.flow.normalize import Normalizer, Reason, Verdict
from gateway.flow.reassembly import StreamReassembler
from gateway.flow.table import Flow
from gateway.match.inspection import Inspection
from gateway.verdict import Decision
from gateway.verdict.judge import Judge
from gateway.vocabulary import Action, Direction, Limit, LimitPolicy

__all__ = ["HOLE_RETRY", "Limiter", "LimiterCounters", "merged"]

# Seconds a segment behind a suspect hole is held (and dropped) before the hole is skipped:
# Linux's minimum RTO, so the sender's retransmission of a segment really lost comes first.
HOLE_RETRY: Final = 0.2
_DROP: Final = Decision(Action.DROP)


class LimiterCounters(Protocol):
    """The counters a Limiter adds to (the engine's EngineStats)."""

    limits: dict[Limit, int]
    events: int
    flows_blocked: int
    blocked_packets: int


def merged(decision: Decision, extra: Decision | None) -> Decision:
    """`decision` with a limit's decision added: every event, the blocking action if either
    blocks, else ALERT (keeping `decision`'s final and done flags)."""
    if extra is None:
        return decision
    events = decision.events + extra.events
    if extra.action.blocks:
        return Decision(extra.action, False, events)
    if decision.action.blocks:
        return Decision(decision.action, False, events)
    return Decision(
        Action.ALERT, decision.final, events, decision.done_to_server, decision.done_to_client
    )


class Limiter:
    """The consequences of limits for one engine (see the module comment)."""

    __slots__ = ("judge", "normalizer", "pending", "resync", "stats", "table")

    def __init__(
        self,
        table: LimitTable,
        stats: LimiterCounters,
        judge: Judge,
        normalizer: Normalizer,
        resync: Callable[[Flow, Inspection, Direction], None],
    ) -> None:
        self.table = table
        self.stats = stats
        self.judge = judge
        self.normalizer = normalizer  # whose `last` refusal `norm_refusal` names
        self.resync = resync  # the engine's: the app session and raw stream after a hole
        self.pending: Decision | None = None  # deferred for the packet at hand

    def reached(
        self,
        flow: Flow,
        insp: Inspection,
        pkt: Packet,
        d: Direction,
        limit: Limit,
        detail: str,
        now: float,
        policy: LimitPolicy | None = None,
    ) -> Decision | None:
        """`limit` was reached on packet `pkt` (`detail`: what, in a few words); `policy`
        overrides the server's."""
        self.stats.limits[limit] += 1
        if policy is None:
            policy = insp.limits.of(limit)
        if policy is LimitPolicy.PASS or policy is LimitPolicy.INSPECT_START:
            return None
        blocked = policy is LimitPolicy.RESET
        bit = LIMIT_BITS[limit]
        if insp.limits_hit & bit and not blocked:
            return None
        insp.limits_hit |= bit
        port = flow.key.server_port
        event = limit_event(limit, detail, pkt, flow.flow_id, port, d, blocked, now)
        self.stats.events += 1
        if blocked:
            return self.judge.refuse(flow, insp, (event,))
        return Decision(Action.ALERT, False, (event,))

    def defer(self, decision: Decision | None) -> None:
        """Keep a limit's decision for the end of the packet at hand."""
        if decision is not None:
            pending = self.pending
            self.pending = decision if pending is None else merged(pending, decision)

    def take(self, decision: Decision) -> Decision:
        """The packet's `decision` with what was deferred for it."""
        pending = self.pending
        if pending is None:
            return decision
        self.pending = None
        return merged(decision, pending)

    def depth(
        self, flow: Flow, insp: Inspection, pkt: Packet, d: Direction, limit: Limit, depth: int,
        now: float,
    ) -> None:  # fmt: skip
        """A direction stopped at its depth (`limit`: STREAM_DEPTH or UDP_DEPTH)."""
        self.defer(self.reached(flow, insp, pkt, d, limit, f"{depth} bytes", now))

    def hole(
        self,
        flow: Flow,
        insp: Inspection,
        pkt: Packet,
        d: Direction,
        reasm: StreamReassembler,
        now: float,
    ) -> Decision | bytes:
        """A segment was held behind a hole. Until `limits.hole_wait` passes without progress
        it is an ordinary out-of-order segment (b"": it passes, the hole's retransmission
        fills it). After that the hole is suspect (a segment the kernel passed without
        queueing it): segments behind it are held and dropped, so nothing reaches the server
        uninspected, and at least HOLE_RETRY seconds later the hole is skipped (the bytes
        now contiguous are returned to be inspected, after `resync`) or, under policy
        `reset`, the flow is reset (`limits.stream_hole`)."""
        way = insp.ways[d]
        if now - way.progress < self.table.hole_wait:
            return b""
        seen = way.hole_seen
        if seen is None or seen < way.progress:
            way.hole_seen = now
            return _DROP
        if now - seen < HOLE_RETRY:
            return _DROP
        way.hole_seen = None
        detail = f"at stream offset {reasm.position}"
        decision = self.reached(flow, insp, pkt, d, Limit.STREAM_HOLE, detail, now)
        if decision is not None and decision.action.blocks:
            return decision
        self.defer(decision)
        data = reasm.skip_hole()
        way.progress = now
        self.resync(flow, insp, d)
        return data

    def norm_refusal(
        self, flow: Flow, insp: Inspection, pkt: Packet, d: Direction, now: float, verdict: Verdict
    ) -> Decision:
        """The normaliser's `verdict`: it dropped the segment (`limits.pending` when past the
        reassembly bound, else `limits.normalizer`) or reset the flow (RESET: bytes that
        differ from inspected ones, or bytes of a skipped hole, `limits.stream_hole`): always
        reset, with an event unless that limit's policy is `pass`."""
        reason = self.normalizer.last
        detail = reason.value if reason is not None else "refused"
        if verdict is Verdict.RESET:
            limit = Limit.STREAM_HOLE if reason is Reason.HOLE_LATE else Limit.NORMALIZER
            if insp.limits.of(limit) is LimitPolicy.PASS:  # reset, counted, no event
                self.stats.limits[limit] += 1
                return self.judge.refuse(flow, insp)
            refused = self.reached(flow, insp, pkt, d, limit, detail, now, LimitPolicy.RESET)
            return refused if refused is not None else self.judge.refuse(flow, insp)
        limit = Limit.PENDING if reason is Reason.PENDING_FULL else Limit.NORMALIZER
        return merged(_DROP, self.reached(flow, insp, pkt, d, limit, detail, now))

    def table_full(
        self, flow: Flow, pkt: Packet, d: Direction, now: float, max_flows: int
    ) -> Decision | None:
        """The flow table was full when `flow` was made (another flow was evicted, in the
        table's order): `limits.flow_table` of its server. RESET refuses the new flow (its
        returned decision); ALERT defers an event."""
        self.stats.limits[Limit.FLOW_TABLE] += 1
        policy = self.table.for_server(flow.key.server).flow_table
        if policy is LimitPolicy.PASS:
            return None
        blocked = policy is LimitPolicy.RESET
        events: tuple[Event, ...] = ()
        if self.table.flowless_due(Limit.FLOW_TABLE, now):
            detail = f"{max_flows} flows"
            port = flow.key.server_port
            event = limit_event(Limit.FLOW_TABLE, detail, pkt, flow.flow_id, port, d, blocked, now)
            events = (event,)
            self.stats.events += 1
        if blocked:
            flow.blocked = Action.RESET
            self.stats.flows_blocked += 1
            self.stats.blocked_packets += 1
            return Decision(Action.RESET, False, events)
        if events:
            self.defer(Decision(Action.ALERT, False, events))
        return None

    def defrag_refused(self, pkt: Packet, now: float) -> Decision:
        """The defragmenter dropped a fragment: `limits.defrag` of its destination."""
        self.stats.limits[Limit.DEFRAG] += 1
        policy = self.table.for_server(pkt.dst).defrag
        if policy is LimitPolicy.PASS or not self.table.flowless_due(Limit.DEFRAG, now):
            return _DROP
        detail = "fragment refused or datagram poisoned"
        event = limit_event(Limit.DEFRAG, detail, pkt, 0, pkt.dport, Direction.TO_SERVER, True, now)
        self.stats.events += 1
        return Decision(Action.DROP, False, (event,))
