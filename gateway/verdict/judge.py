"""From rules that fired on a packet to the packet's Decision: modes, exceptions, events, blocks.

What it does: the engine hands `Judge.decide(flow, insp, pkt, d, fired, now, data)` the rules a
packet completed (raw patterns and/or field conditions, gateway/match/inspection.py) and gets
the packet's `Decision` (gateway.verdict) with its events (gateway.events.eve `Event`).
- Modes (CompiledPolicy.mode, or each rule's default_mode without a policy): OFF ignores the
  rule; DETECT raises the event and lets the packet through (a blocking rule counts in
  `events_detect_only`, the event says `would_block`); PREVENT applies the rule's action.
- Rule actions: ALERT -> an event, the packet passes (Decision ALERT). DROP / RESET -> an event
  and the flow is blocked: this and every later packet of the flow, in both directions, get
  the same action (RESET wins over DROP when both fire). Each rule raises at most one event per
  flow.
- Exceptions (CompiledPolicy exception scopes, docs/webui.md "Exceptions"): when a rule fires
  in a mode other than OFF, an active exception for (rule, server, server port, request URI)
  makes the engine ignore that firing (counted in `events_excepted`, no event, no block). The
  URI is the decoded record's (gateway/decode/session.py `request_uri`) for field rules; for
  raw rules it is the target of the last request line in the bytes that completed the match
  (normalised the same way), and only looked for when a URI-scoped exception could apply.
  Unknown URI: URI-scoped exceptions do not apply. Expiry is judged on the packet time `now`.
- Re-arming: a Hyperscan stream reports each pattern once, so a raw stream match excused by a
  URI-scoped exception would leave its rule unable to fire again on the connection (a
  keep-alive request to another URI would pass unchecked). The direction's stream is restarted
  right after the excused match and the rest of the packet's bytes scanned again (`raw_rearms`).
- Why (gateway/match/explain.py): each event records the field ("raw" for stream content), the
  condition in short and an excerpt around the match end; computed only when a rule fires.

What it guarantees:
- A blocked flow is never final (the kernel must keep queueing it so its packets keep being
  dropped); blocking closes the flow's Hyperscan streams.
- Bounded work: at most MAX_REARM_ROUNDS restarts that fire again per packet; past them the
  packet's further firings are not excused (a pipeline of excused requests buys neither
  unbounded rescanning nor a way around the rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from gateway.decode.packet import Packet
from gateway.decode.session import record_target, request_uri
from gateway.events.eve import Event
from gateway.flow.table import Flow
from gateway.match.explain import MAX_TARGET, Why, explain_fields, explain_raw, request_target
from gateway.match.inspection import Inspection
from gateway.match.matcher import NO_RULES
from gateway.match.rules import Rule
from gateway.policy.compiled import CompiledPolicy
from gateway.verdict import ACCEPT, ACCEPT_FINAL, Decision
from gateway.vocabulary import Action, Direction, Mode

__all__ = ["MAX_REARM_ROUNDS", "Judge", "VerdictCounters", "merge_decisions"]

# Restarts of a raw stream after URI-excused matches that may fire again within one packet
MAX_REARM_ROUNDS: Final = 16


class VerdictCounters(Protocol):
    """The counters a Judge adds to (the engine's EngineStats)."""

    events: int
    events_detect_only: int  # events of rules in DETECT mode that would have blocked
    events_excepted: int  # firings ignored because an exception covered them
    raw_rearms: int  # raw streams restarted after a URI-excused match
    flows_blocked: int
    blocked_packets: int


def merge_decisions(first: Decision, second: Decision) -> Decision:
    """One packet's two decisions as one: the stronger verdict, every event."""
    events = first.events + second.events
    if second.action.blocks:
        return Decision(second.action, second.final, events)
    if first.action.blocks:
        return Decision(first.action, first.final, events)
    action = Action.ALERT if events else first.action
    return Decision(action, first.final or second.final, events)


class Judge:
    """Decides what a packet's firings mean (one per engine; `policy` follows set_policy)."""

    __slots__ = ("policy", "stats")

    def __init__(self, stats: VerdictCounters, policy: CompiledPolicy | None = None) -> None:
        self.stats = stats
        self.policy = policy

    def decide(
        self,
        flow: Flow,
        insp: Inspection,
        pkt: Packet,
        d: Direction,
        fired: tuple[Rule, ...],
        now: float,
        data: bytes,
    ) -> Decision:
        """The decision for packet `pkt` (direction `d`) whose bytes `data` fired `fired`."""
        decision = self._fire(flow, insp, pkt, d, fired, now, data, True)
        if insp.rearm:
            decision = self._rearm(flow, insp, pkt, d, now, data, decision)
        return decision

    def _fire(
        self,
        flow: Flow,
        insp: Inspection,
        pkt: Packet,
        d: Direction,
        fired: tuple[Rule, ...],
        now: float,
        data: bytes,
        exceptions: bool,
    ) -> Decision:
        block: Action | None = None
        events: list[Event] = []
        key = flow.key
        policy = self.policy
        records = insp.ways[d].records
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
            if (
                exceptions
                and policy is not None
                and policy.has_exceptions
                and self._excused(policy, flow, insp, d, rule, fields, url, end, now)
            ):
                continue  # not remembered in insp.fired: another request may still fire
            insp.fire(rule.id)
            action = rule.action
            would_block = False
            if mode is Mode.DETECT:
                would_block = action.blocks
                if would_block:
                    self.stats.events_detect_only += 1
            elif action is Action.RESET or (action is Action.DROP and block is None):
                block = action
            events.append(_event(flow, pkt, d, rule, now, why, url, would_block))
        self.stats.events += len(events)
        if block is not None:
            return self._block(flow, insp, block, tuple(events))
        if not events:
            return ACCEPT_FINAL if flow.final else ACCEPT
        return Decision(Action.ALERT, flow.final, tuple(events))

    def refuse(self, flow: Flow, insp: Inspection, events: tuple[Event, ...] = ()) -> Decision:
        """The engine refuses the flow (a limit's policy, gateway/flow/limits.py, e.g. the TCP
        normaliser's bytes that differ from inspected ones): it is reset like a blocking
        rule's, with `events` (the limit's event, counted by the engine)."""
        return self._block(flow, insp, Action.RESET, events)

    def _block(
        self, flow: Flow, insp: Inspection, action: Action, events: tuple[Event, ...]
    ) -> Decision:
        """Block the flow: this and every later packet of it get `action`; never final."""
        flow.blocked = action
        flow.final = False
        insp.close_all()
        self.stats.flows_blocked += 1
        self.stats.blocked_packets += 1
        return Decision(action, False, events)

    def _excused(
        self,
        policy: CompiledPolicy,
        flow: Flow,
        insp: Inspection,
        d: Direction,
        rule: Rule,
        fields: Mapping[str, int | bytes] | None,
        url: bytes | None,
        end: int | None,
        now: float,
    ) -> bool:
        """Whether an exception covers this firing (counted); a URI-excused raw stream match
        is queued for re-arming."""
        key = flow.key
        uri: str | None = None
        if url is not None and policy.wants_uri(key.server, rule.id, now):
            uri = request_uri(url, fields)
        scope = policy.exception(key.server, rule.id, key.server_port, uri, now)
        if scope is None:
            return False
        self.stats.events_excepted += 1
        if (
            scope.uri is not None
            and fields is None
            and end is not None
            and insp.ways[d].state is not None
            and rule.conditions is None
        ):
            insp.add_rearm(end, rule)  # its stream must look again
        return True

    @staticmethod
    def _why(
        insp: Inspection,
        d: Direction,
        rule: Rule,
        fields: Mapping[str, int | bytes] | None,
        data: bytes,
    ) -> tuple[Why, bytes | None, int | None]:
        """(why the rule fired, the request target if known, for raw patterns the offset in
        `data` where the completing match ended if known); only called on a firing."""
        if fields is not None:
            target = record_target(fields)
            url = target[:MAX_TARGET] if target is not None else None
            return explain_fields(rule, fields), url, None
        located: tuple[int, int] | None = None
        end: int | None = None
        way = insp.ways[d]
        state, group = way.state, way.group
        if state is not None and group is not None and state.ends:
            located = insp.matcher.raw_match_end(rule, state.ends)
            if located is not None:
                end = located[1] - (state.scanned - len(data))
        elif group is not None and data and state is None and not group.stream_mode:
            located = insp.matcher.locate_block(group, data, rule)
            end = located[1] if located is not None else None
        why = explain_raw(rule, located[0] if located is not None else None, data, end)
        url = request_target(data, end) if end is not None and end > 0 else None
        return why, url, end

    def _rearm(
        self,
        flow: Flow,
        insp: Inspection,
        pkt: Packet,
        d: Direction,
        now: float,
        data: bytes,
        decision: Decision,
    ) -> Decision:
        """A URI-scoped exception excused raw stream rules in `data`: restart the direction's
        stream right after the excused match (the other rules keep what they had matched) and
        scan the rest of `data` again; repeat while that excuses more. After MAX_REARM_ROUNDS
        in one packet the exceptions stop applying to it (fail safe)."""
        rounds = 0
        way = insp.ways[d]
        while insp.rearm and flow.blocked is None:
            state = way.state
            if state is None:
                break
            rearm = insp.take_rearm()
            start = min(end for end, _ in rearm)
            forget = [rule for _, rule in rearm]
            new, more = insp.matcher.restart_stream(state, data, start, forget)
            way.state = new
            self.stats.raw_rearms += 1
            more = insp.combine(d, more, NO_RULES)
            if not more:
                continue
            rounds += 1
            fired = self._fire(flow, insp, pkt, d, more, now, data, rounds < MAX_REARM_ROUNDS)
            decision = merge_decisions(decision, fired)
        insp.take_rearm()
        return decision


def _event(
    flow: Flow,
    pkt: Packet,
    d: Direction,
    rule: Rule,
    now: float,
    why: Why,
    url: bytes | None,
    would_block: bool,
) -> Event:
    """The event of `rule` firing on packet `pkt`."""
    action = rule.action
    return Event(
        timestamp=now,
        flow_id=flow.flow_id,
        src_ip=pkt.src,
        src_port=pkt.sport,
        dest_ip=pkt.dst,
        dest_port=pkt.dport,
        proto=pkt.proto,
        server_port=flow.key.server_port,
        direction=d,
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
