"""The matching state of one inspected flow (what the engine keeps on `Flow.inspection`).

What it does: `Inspection(matcher)` holds, per direction (indexed by gateway.vocabulary
Direction), the rule group covering it, its TCP reassembler, its Hyperscan stream, its app
session (gateway/decode/session.py), whether it is still inspected, its depth (UDP) and when
its stream last made progress (holes, gateway/engine.py); for the flow, the rules that already
raised their event, the server's limit policies and the limits whose event was raised
(gateway/flow/limits.py). A rule with both raw patterns and field conditions fires only
once both halves held in that direction, in either order (`combine`).

What it guarantees:
- The flow keeps the Matcher it started with: a swapped rule set leaves it finishing with the
  old rules (and the old matcher alive until then).
- A direction's Hyperscan stream is closed as soon as it is no longer inspected (`close`: depth
  reached, app layer and raw patterns both done) or the flow is blocked or forgotten
  (`close_all`, `release`); closing twice is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.decode.session import AppSession
from gateway.flow.limits import HostPolicies
from gateway.flow.reassembly import StreamReassembler
from gateway.match.matcher import Matcher, MatchGroup, StreamState
from gateway.match.rules import Rule
from gateway.vocabulary import Direction

__all__ = ["Inspection"]

# The rule-id sets below start as this shared empty set and become sets of their own on their
# first entry: few flows ever fire or half-match a rule, and five empty sets were a fifth of
# an inspected flow's memory (about 1 KiB of 4.8, bench/README.md, "Many flows").
_NONE: frozenset[int] = frozenset()


class Inspection:
    """Per-flow engine state (Flow.inspection)."""

    __slots__ = (
        "active",
        "apps",
        "cond_ok",
        "derived",
        "fired",
        "depth",
        "groups",
        "hole_seen",
        "limits",
        "limits_hit",
        "matcher",
        "progress",
        "raw_done",
        "rearm",
        "reasm",
        "records",
        "states",
    )

    def __init__(self, matcher: Matcher, limits: HostPolicies, now: float) -> None:
        self.matcher = matcher
        self.limits = limits  # the server's limit policies
        self.limits_hit = 0  # LIMIT_BITS of the limits whose event this flow raised
        self.depth = [0, 0]  # UDP: bytes inspected per direction (set by the engine)
        self.progress = [now, now]  # packet time the direction's stream last delivered bytes
        # packet time a segment behind a suspect hole was first held (gateway/engine.py)
        self.hole_seen: list[float | None] = [None, None]
        self.groups: list[MatchGroup | None] = [None, None]
        self.states: list[StreamState | None] = [None, None]
        # the Hyperscan stream of what the app decoder derived for the raw patterns (h2c
        # requests as HTTP/1 text: gateway/decode/registry.py DerivingDecoder), opened on use
        self.derived: list[StreamState | None] = [None, None]
        self.reasm: list[StreamReassembler | None] = [None, None]
        self.apps: list[AppSession | None] = [None, None]
        self.active = [False, False]
        self.fired: set[int] | frozenset[int] = _NONE  # rules whose event was raised (`fire`)
        # rules with both raw patterns and field conditions: which half is already satisfied
        self.raw_done: list[set[int] | frozenset[int]] = [_NONE, _NONE]
        self.cond_ok: list[set[int] | frozenset[int]] = [_NONE, _NONE]
        # rule id -> fields of the record that satisfied its conditions (only for rules whose
        # conditions held: at most one entry per rule), for the event's why and URI
        self.records: list[dict[int, Mapping[str, int | bytes]] | None] = [None, None]
        # raw stream rules whose firing a URI-scoped exception excused in the packet at hand:
        # (offset in its bytes where the match ended, rule), see gateway/verdict/judge.py
        self.rearm: list[tuple[int, Rule]] = []

    def combine(
        self, d: Direction, raw: tuple[Rule, ...], cond: tuple[Rule, ...]
    ) -> tuple[Rule, ...]:
        """Rules that fire now: raw patterns complete and (no conditions, or a record already
        satisfied them), or conditions satisfied and (no raw patterns, or they completed)."""
        out: list[Rule] = []
        cond_ok = self.cond_ok[d]
        for rule in raw:
            if rule.conditions is None or rule.id in cond_ok:
                out.append(rule)
            else:
                self.half_done(d, rule.id)
        raw_done = self.raw_done[d]
        for rule in cond:
            if not rule.patterns or rule.id in raw_done:
                out.append(rule)
            else:
                cond_ok = self.cond_ok[d]
                if isinstance(cond_ok, frozenset):
                    cond_ok = self.cond_ok[d] = set()
                cond_ok.add(rule.id)
        return tuple(out)

    def half_done(self, d: Direction, rule_id: int) -> None:
        """The raw patterns of rule `rule_id` completed in direction `d` (its conditions may
        still have to hold: `combine`)."""
        raw_done = self.raw_done[d]
        if isinstance(raw_done, frozenset):
            raw_done = self.raw_done[d] = set()
        raw_done.add(rule_id)

    def fire(self, rule_id: int) -> None:
        """Rule `rule_id` raised its event on this flow (it does not fire again here)."""
        fired = self.fired
        if isinstance(fired, frozenset):
            fired = self.fired = set()
        fired.add(rule_id)

    def scan_derived(self, d: Direction, data: bytes) -> tuple[Rule, ...]:
        """The raw-pattern rules that `data`, derived by the direction's app decoder, fires
        (combined as `combine` does); scanned as a stream of its own, so that a pattern is
        never matched across wire bytes and derived ones."""
        group = self.groups[d]
        if not data or group is None or group.database is None or not group.stream_mode:
            return ()
        state = self.derived[d]
        if state is None:
            state = self.derived[d] = self.matcher.open_stream(group)
        return self.combine(d, self.matcher.scan_stream(state, data), ())

    def close(self, d: Direction) -> None:
        """Stop inspecting direction `d` (its app session and Hyperscan stream freed)."""
        self.active[d] = False
        self.apps[d] = None
        for states in (self.states, self.derived):
            state = states[d]
            if state is not None:
                states[d] = None
                state.matcher.close_stream(state)

    def close_all(self) -> None:
        for d in Direction:
            self.close(d)

    def release(self) -> None:
        """The flow leaves the table: free its streams and reassembly buffers."""
        self.close_all()
        self.reasm[:] = [None, None]
