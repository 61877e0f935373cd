"""The engine's app-layer step: app records -> the rules whose field conditions hold (sans-I/O).

What it does: `AppLayer` is the part of the inspection engine (gateway/engine.py) that turns
the bytes an inspected direction delivers into app-layer verdicts: `rules(...)` feeds them to
the direction's `AppSession` (gateway/decode/session.py), switches a direction identified as
a protocol that brings rules of its own to their group (`rebind`, gateway/match/follow.py),
evaluates each record against the rules of its protocol (gateway/match/matcher.py) and leaves
out the rules switched off for the server; `session(...)` makes a direction's AppSession. It
was the engine's own code until the Engine class outgrew the house's size (issue 16); it
shares the engine's counters, memo, limiter and policy.

What it guarantees:
- `rules` never raises: a failing app layer ends app-layer inspection of that direction
  (counted by the session); when it ended for its own bounds or a bug, `limits.decoder`
  applies (deferred through the limiter); a field cut by its bound applies `limits.field`.
- A direction of a port no rule lists whose protocol was not found, and that has no raw
  patterns, is handed back to the engine as done (`direction_done`), so the kernel may
  bypass it.
- Records that fired no rule are remembered in the memo when they were one whole unit, so the
  very same unit costs no decoding next time (`AppSession.remember`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

from gateway.decode.packet import Packet
from gateway.decode.registry import cut_field
from gateway.decode.session import AppCounters, AppSession, UnitMemo
from gateway.flow.table import Flow, FlowKey
from gateway.match.inspection import Inspection
from gateway.match.matcher import NO_RULES, MatchGroup
from gateway.match.rules import Rule
from gateway.policy.compiled import CompiledPolicy
from gateway.verdict.limiter import Limiter
from gateway.vocabulary import Direction, Limit, Mode

__all__ = ["AppLayer", "AppLayerCounters"]

_OFF: Final = Mode.OFF  # a plain constant (gateway/vocabulary.py, DIRECTIONS)


class AppLayerCounters(AppCounters, Protocol):
    """The counters the app-layer step adds to (the engine's EngineStats)."""

    app_rebinds: int  # directions switched to the rules of the protocol found there


class AppLayer:
    """The app-layer step of one engine. `policy` is the engine's (set with it). Not slotted:
    one per engine, and `vpatch bench --breakdown` wraps its `rules` on the instance
    (gateway/intake/breakdown.py)."""

    def __init__(
        self,
        stats: AppLayerCounters,
        memo: UnitMemo,
        limiter: Limiter,
        policy: CompiledPolicy | None,
        direction_done: Callable[[Flow, Inspection, Direction], None],
    ) -> None:
        self._stats = stats
        self._memo = memo
        self._limiter = limiter
        self.policy = policy
        self._direction_done = direction_done

    def rules(
        self,
        insp: Inspection,
        app: AppSession,
        d: Direction,
        data: bytes,
        flow: Flow,
        pkt: Packet,
        now: float,
    ) -> tuple[Rule, ...]:
        """The rules whose field conditions the app records `data` completes hold on (rules
        off for the server left out); never raises (see the module comment)."""
        records = app.feed(data)
        probed = app.probed
        if probed is None and records is not None and not records:
            return NO_RULES  # undecided yet, or answered by the memo: the common case
        way = insp.ways[d]
        rebound: list[Rule] = []
        if probed is not None:  # identified now (or found to be none of the candidates)
            app.probed = None
            rebound = self.rebind(insp, d, app.protocol, probed)
        if not records:
            if records is None:
                way.app = None
                if app.capped:
                    limiter = self._limiter
                    over = "app layer over"
                    limiter.defer(limiter.reached(flow, insp, pkt, d, Limit.DECODER, over, now))
                group = way.group
                if group is insp.matcher.unlisted(d) and group.database is None:
                    # a port no rule lists, and no protocol with rules found: nothing to
                    # look for in this direction (the kernel may bypass it)
                    self._direction_done(flow, insp, d)
            return tuple(rebound)
        group = way.group
        assert group is not None
        apps = group.apps
        matcher = insp.matcher
        policy = self.policy
        server = flow.key.server
        port = flow.key.server_port
        out: list[Rule] = rebound
        for record in records:
            cut = record.fields.get(cut_field(record.app))
            if cut is not None:  # padding pushed part of a derived field past its bound
                limiter = self._limiter
                why = bytes(cut).split(b"\n", 1)[0].decode("latin-1") if cut else "field"
                limiter.defer(limiter.reached(flow, insp, pkt, d, Limit.FIELD, why, now))
            app_group = apps.get(record.app)
            if app_group is not None:
                found = matcher.evaluate(app_group, record.fields)
                if found:  # a rule switched off for this server is ignored here already
                    found = tuple(
                        rule
                        for rule in found
                        if (policy.mode(server, rule, port) if policy else rule.default_mode)
                        is not _OFF
                    )
                if found:
                    out.extend(found)
                    seen = way.records
                    if seen is None:
                        seen = way.records = {}
                    for rule in found:
                        seen[rule.id] = record.fields
        if not out:
            if app.pending is not None:
                app.remember()  # the memo may answer these very bytes next time
            return NO_RULES
        return tuple(out)

    def rebind(self, insp: Inspection, d: Direction, name: str, probed: bytes) -> list[Rule]:
        """Direction `d` was just identified as `name` from its first bytes `probed`: switch
        it to the group of its rules plus the rules that follow `name` (match/follow.py),
        unless they are all in its group already. The new group's raw stream rescans `probed`
        carrying over what already matched (so nothing fires twice); returns the rules
        without field conditions that the rescan completed (with the raw half of the others
        recorded in `raw_done`), to fire like condition rules (`combine`: a rule whose id is
        in raw_done fires)."""
        way = insp.ways[d]
        group = way.group
        assert group is not None
        target = group.follow[d].get(name)
        if target is None:
            return []
        way.group = target
        state, fired = insp.matcher.rebind_stream(way.state, target, probed)
        way.state = state
        self._stats.app_rebinds += 1
        out: list[Rule] = []
        for rule in fired:
            insp.half_done(d, rule.id)
            if rule.conditions is None:
                out.append(rule)
        return out

    def session(
        self,
        key: FlowKey,
        d: Direction,
        group: MatchGroup,
        candidates: Sequence[str] | None = None,
    ) -> AppSession:
        """A new app session for direction `d` of the flow keyed `key`, identifying among
        `candidates` (default: the group's)."""
        return AppSession(
            group.app_candidates if candidates is None else candidates,
            key.proto,
            d,
            key.server,
            key.server_port,
            self._stats,
            self._memo,
            group,
        )
