"""The matching state of one inspected flow (what the engine keeps on `Flow.inspection`).

What it does: `Inspection(matcher)` holds, per direction (`ways`, one `Way` each, indexed by
gateway.vocabulary Direction), the rule group covering it, its TCP reassembler, its Hyperscan
stream, its app session (gateway/decode/session.py), whether it is still inspected, its depth
(UDP) and when its stream last made progress (holes, gateway/engine.py); for the flow, the
rules that already raised their event, the server's limit policies and the limits whose event
was raised (gateway/flow/limits.py). A rule with both raw patterns and field conditions fires
only once both halves held in that direction, in either order (`combine`).

What it guarantees:
- The flow keeps the Matcher it started with: a swapped rule set leaves it finishing with the
  old rules (and the old matcher alive until then).
- A direction's Hyperscan stream is closed, and its reassembler's retransmission history
  dropped, as soon as it is no longer inspected (`close`: depth reached, app layer and raw
  patterns both done) or the flow is blocked or forgotten (`close_all`, `release`); closing
  twice is harmless.
- Memory: one slotted `Way` per direction; the rule-id sets and the re-arm list are shared
  empty ones until their first entry.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.decode.session import AppSession
from gateway.flow.limits import HostPolicies
from gateway.flow.reassembly import StreamReassembler
from gateway.match.matcher import Matcher, MatchGroup, StreamState
from gateway.match.rules import Rule
from gateway.vocabulary import DIRECTIONS, Direction

__all__ = ["Inspection", "Way"]

# The rule-id sets below start as this shared empty set and become sets of their own on their
# first entry: few flows ever fire or half-match a rule, and five empty sets were a fifth of
# an inspected flow's memory (about 1 KiB of 4.8, bench/README.md, "Many flows").
_NONE: frozenset[int] = frozenset()
# Likewise the re-arm list (gateway/verdict/judge.py): a list of its own only while in use.
_NO_REARM: tuple[()] = ()


class Way:
    """The inspection of one direction of a flow (`Inspection.ways[d]`). One slotted object per
    direction instead of a two-item list per field: twelve lists were a quarter of an
    inspected flow's memory (issue 16, bench/README.md "Many flows")."""

    __slots__ = (
        "active",
        "app",
        "cond_ok",
        "depth",
        "derived",
        "group",
        "hole_seen",
        "progress",
        "raw_done",
        "reasm",
        "records",
        "state",
    )

    def __init__(self, now: float) -> None:
        self.group: MatchGroup | None = None  # the rules covering it
        self.state: StreamState | None = None  # its Hyperscan stream (TCP, raw patterns)
        # the Hyperscan stream of what the app decoder derived for the raw patterns (h2c
        # requests as HTTP/1 text: gateway/decode/registry.py DerivingDecoder), opened on use
        self.derived: StreamState | None = None
        self.reasm: StreamReassembler | None = None  # TCP
        self.app: AppSession | None = None
        self.active = False  # still inspected
        self.depth = 0  # UDP: bytes inspected (set by the engine)
        self.progress = now  # packet time its stream last delivered bytes
        # packet time a segment behind a suspect hole was first held (gateway/engine.py)
        self.hole_seen: float | None = None
        # rules with both raw patterns and field conditions: which half is already satisfied
        self.raw_done: set[int] | frozenset[int] = _NONE
        self.cond_ok: set[int] | frozenset[int] = _NONE
        # rule id -> fields of the record that satisfied its conditions (only for rules whose
        # conditions held: at most one entry per rule), for the event's why and URI
        self.records: dict[int, Mapping[str, int | bytes]] | None = None


class Inspection:
    """Per-flow engine state (Flow.inspection); `ways` indexed by Direction."""

    __slots__ = ("fired", "limits", "limits_hit", "matcher", "rearm", "ways")

    def __init__(self, matcher: Matcher, limits: HostPolicies, now: float) -> None:
        self.matcher = matcher
        self.limits = limits  # the server's limit policies
        self.limits_hit = 0  # LIMIT_BITS of the limits whose event this flow raised
        self.ways = (Way(now), Way(now))
        self.fired: set[int] | frozenset[int] = _NONE  # rules whose event was raised (`fire`)
        # raw stream rules whose firing a URI-scoped exception excused in the packet at hand:
        # (offset in its bytes where the match ended, rule), see gateway/verdict/judge.py
        self.rearm: list[tuple[int, Rule]] | tuple[()] = _NO_REARM

    def combine(
        self, d: Direction, raw: tuple[Rule, ...], cond: tuple[Rule, ...]
    ) -> tuple[Rule, ...]:
        """Rules that fire now: raw patterns complete and (no conditions, or a record already
        satisfied them), or conditions satisfied and (no raw patterns, or they completed)."""
        out: list[Rule] = []
        way = self.ways[d]
        cond_ok = way.cond_ok
        for rule in raw:
            if rule.conditions is None or rule.id in cond_ok:
                out.append(rule)
            else:
                self.half_done(d, rule.id)
        raw_done = way.raw_done
        for rule in cond:
            if not rule.patterns or rule.id in raw_done:
                out.append(rule)
            else:
                cond_ok = way.cond_ok
                if isinstance(cond_ok, frozenset):
                    cond_ok = way.cond_ok = set()
                cond_ok.add(rule.id)
        return tuple(out)

    def half_done(self, d: Direction, rule_id: int) -> None:
        """The raw patterns of rule `rule_id` completed in direction `d` (its conditions may
        still have to hold: `combine`)."""
        way = self.ways[d]
        raw_done = way.raw_done
        if isinstance(raw_done, frozenset):
            raw_done = way.raw_done = set()
        raw_done.add(rule_id)

    def fire(self, rule_id: int) -> None:
        """Rule `rule_id` raised its event on this flow (it does not fire again here)."""
        fired = self.fired
        if isinstance(fired, frozenset):
            fired = self.fired = set()
        fired.add(rule_id)

    def add_rearm(self, end: int, rule: Rule) -> None:
        """Queue a URI-excused raw stream rule for re-arming (gateway/verdict/judge.py)."""
        rearm = self.rearm
        if not isinstance(rearm, list):
            rearm = self.rearm = []
        rearm.append((end, rule))

    def take_rearm(self) -> list[tuple[int, Rule]] | tuple[()]:
        """The queued re-arms, leaving none."""
        rearm, self.rearm = self.rearm, _NO_REARM
        return rearm

    def scan_derived(self, d: Direction, data: bytes) -> tuple[Rule, ...]:
        """The raw-pattern rules that `data`, derived by the direction's app decoder, fires
        (combined as `combine` does); scanned as a stream of its own, so that a pattern is
        never matched across wire bytes and derived ones."""
        way = self.ways[d]
        group = way.group
        if not data or group is None or group.database is None or not group.stream_mode:
            return ()
        state = way.derived
        if state is None:
            state = way.derived = self.matcher.open_stream(group)
        return self.combine(d, self.matcher.scan_stream(state, data), ())

    def close(self, d: Direction) -> None:
        """Stop inspecting direction `d` (its app session, Hyperscan stream and its
        reassembler's retransmission history freed; the reassembler itself stays, the
        normaliser still follows the direction's sequence numbers)."""
        way = self.ways[d]
        way.active = False
        way.app = None
        if way.reasm is not None:
            way.reasm.drop_history()
        for state in (way.state, way.derived):
            if state is not None:
                state.matcher.close_stream(state)
        way.state = way.derived = None

    def close_all(self) -> None:
        for d in DIRECTIONS:
            self.close(d)

    def release(self) -> None:
        """The flow leaves the table: free its streams and reassembly buffers."""
        self.close_all()
        for way in self.ways:
            way.reasm = None
