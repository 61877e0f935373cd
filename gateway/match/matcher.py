"""Hyperscan matching of rule patterns over raw TCP streams (stream mode) and UDP datagrams.

What it does: compiles a RuleSet into Hyperscan databases and scans bytes with them.
- Grouping: for every (protocol, direction, server port) the rules that cover it form a group;
  groups with the same rule set share one database (so a port list like [139, 445] costs one
  database, not two). Port filtering is therefore exact and free at scan time: a flow only ever
  scans the patterns of rules covering its server port. (The alternative, one database per
  (protocol, direction) and filtering matches by port afterwards, scans every rule's patterns
  on every flow; with few distinct port sets per-group databases are never slower.)
- Rules follow their protocol (gateway/match/follow.py, unless built with follow=False): a
  listed TCP port's group also holds the followers of the protocols expected there, and each
  TCP group knows, per direction, the group to switch to when another protocol is identified
  (`MatchGroup.follow`, `MatchGroup.identify`; `unlisted(d)`: the group of a port no rule
  lists). `rebind_stream` moves a flow direction's stream to such a group.
- TCP: HS_MODE_STREAM; one Hyperscan stream per flow direction (`StreamState`), so a pattern
  split across any number of segments is found without buffering. Every pattern is compiled
  with HS_FLAG_SINGLEMATCH; a rule fires once per stream, when ALL its patterns have matched in
  that stream (a bit mask per rule in the stream state).
- UDP: HS_MODE_BLOCK; a rule fires when all its patterns match within one datagram.
- Content patterns become escaped literals (`\\xHH`), with HS_FLAG_CASELESS when `nocase`.
  Regexes get HS_FLAG_DOTALL (and CASELESS when `nocase`).

What it guarantees:
- A Matcher is immutable once built; changing rules means building a new Matcher and swapping
  the reference (flows opened on the old one keep scanning with it until they end).
- Each database has its own scratch (the Python binding cannot grow a scratch for several
  databases); one Matcher must be used from one thread at a time.
- `close_stream` frees a stream's Hyperscan state and is idempotent; a closed stream is never
  scanned again (the binding would crash).
- Compilation problems raise RuleError naming the rules involved.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import hyperscan

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode import registry as app_registry
from gateway.errors import RuleError
from gateway.match.conditions import evaluate, fields_of, matches_of, required_match
from gateway.match.expressions import literal_flags, literal_regex, regex_flags
from gateway.match.follow import expected_protocols, follow_sets, relocatable
from gateway.match.rules import ANY_PORT, Rule, RuleSet
from gateway.vocabulary import PROTO_TCP, Direction

__all__ = [
    "AppGroup",
    "MatchGroup",
    "Matcher",
    "MatcherStats",
    "StreamState",
]

NO_RULES: Final[tuple[Rule, ...]] = ()


def _collect(pattern_id: int, start: int, end: int, flags: int, hits: Any) -> None:
    hits.append(pattern_id)


def _collect_end(pattern_id: int, start: int, end: int, flags: int, state: Any) -> None:
    # stream mode: also where each pattern's match ended (stream offset), for the event's
    # "why" (gateway/match/explain.py); SINGLEMATCH keeps this one dict store per pattern.
    # The list and the dict are made on a stream's first match (StreamState).
    hits, ends = state.hits, state.ends
    if hits is None:
        state.hits = [pattern_id]
    else:
        hits.append(pattern_id)
    if ends is None:
        state.ends = {pattern_id: state.base + end}
    else:
        ends[pattern_id] = state.base + end


def _collect_ends(pattern_id: int, start: int, end: int, flags: int, ends: Any) -> None:
    ends.setdefault(pattern_id, end)


@dataclass(frozen=True, slots=True)
class MatcherStats:
    databases: int
    database_bytes: int
    patterns: int
    compile_seconds: float


class AppGroup:
    """The rules of one app covering one (protocol, direction, port): one Hyperscan BLOCK-mode
    database per byte-string field their patterns look at (with the record keys of that
    field's variants, gateway/decode/registry.py `variant_key`), and the condition trees."""

    __slots__ = ("always", "always_set", "app", "field_dbs", "late", "leaf_owner", "rule_indices")

    def __init__(self, app: str, rules: tuple[Rule, ...], rule_indices: tuple[int, ...]) -> None:
        self.app = app
        self.rule_indices = rule_indices
        self.leaf_owner: list[tuple[int, int]] = []  # pattern id -> (rule index, leaf index)
        per_field: dict[str, tuple[list[bytes], list[int], list[int]]] = {}
        always: list[int] = []
        self.late: dict[int, tuple[str, ...]] = {}
        proto = app_registry.get(app)
        late_fields = proto.late_fields if proto is not None else frozenset()
        for ri in rule_indices:
            rule = rules[ri]
            cond = rule.conditions
            if required_match(cond) is None:
                always.append(ri)
            used_late = tuple(sorted(fields_of(cond) & late_fields))
            if used_late:
                self.late[ri] = used_late
            for leaf in matches_of(cond):
                exprs, ids, flags = per_field.setdefault(leaf.field, ([], [], []))
                ids.append(len(self.leaf_owner))
                self.leaf_owner.append((ri, leaf.index))
                exprs.append(leaf.expr)
                flags.append(regex_flags(leaf.nocase))
        self.always = tuple(always)
        self.always_set = frozenset(always)
        dbs: list[tuple[str, hyperscan.Database, hyperscan.Scratch, tuple[str, ...]]] = []
        for name, (exprs, ids, flags) in sorted(per_field.items()):
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            try:
                db.compile(expressions=exprs, ids=ids, flags=flags)
            except hyperscan.error as err:
                names = ", ".join(f"{rules[ri].id} ({rules[ri].path})" for ri in rule_indices)
                raise RuleError(
                    f"Hyperscan could not compile field {name!r} of rules {names}: {err}"
                ) from err
            variants = tuple(
                app_registry.variant_key(name, n) for n in range(1, app_registry.MAX_VARIANTS + 1)
            )
            dbs.append((name, db, hyperscan.Scratch(db), variants))
        self.field_dbs = tuple(dbs)

    def database_bytes(self) -> int:
        return sum(db.size() for _, db, _, _ in self.field_dbs)


class MatchGroup:
    """The rules covering one (protocol, direction, port set): their raw patterns compiled
    into one database (None when no rule there has raw patterns), and per app the rules with
    field conditions (`apps`) plus the decoders to try on such a flow (`app_candidates`)."""

    __slots__ = (
        "app_candidates",
        "apps",
        "database",
        "follow",
        "identify",
        "rule_indices",
        "scratch",
        "stream_bytes",
        "stream_mode",
    )

    def __init__(
        self,
        rule_indices: tuple[int, ...],
        database: hyperscan.Database | None,
        stream_mode: bool,
        apps: dict[str, AppGroup] | None = None,
    ) -> None:
        self.rule_indices = rule_indices
        self.database = database
        self.scratch = hyperscan.Scratch(database) if database is not None else None
        self.stream_mode = stream_mode
        self.stream_bytes = 0
        self.apps: dict[str, AppGroup] = apps or {}
        candidates: list[str] = []
        for name in sorted(self.apps):
            proto = app_registry.get(name)
            for cand in (name, *sorted(proto.carried_by if proto else ())):
                if cand not in candidates:
                    candidates.append(cand)
        self.app_candidates = tuple(candidates)
        # per direction (TCP, filled by the Matcher): relocatable protocol -> the group a flow
        # direction switches to once it is identified as that protocol (gateway/match/
        # follow.py), and the protocols to try identifying (own apps first)
        self.follow: list[dict[str, MatchGroup]] = [{}, {}]
        self.identify: list[tuple[str, ...] | None] = [None, None]


class StreamState:
    """Per flow direction: the open Hyperscan stream and which patterns have matched
    (`ends`: pattern id -> stream offset where its match ended; `scanned`: stream offset after
    the bytes scanned; `base`: the stream offset where this Hyperscan stream began, 0 unless
    it was restarted by `Matcher.restart_stream`). `hits`, `masks` and `ends` are None until
    the stream's first match: most streams never match, and three empty containers were
    about 180 bytes of every inspected direction (issue 16)."""

    __slots__ = (
        "base", "closed", "ends", "group", "hits", "masks", "matcher", "scanned", "stream",
    )  # fmt: skip

    def __init__(self, matcher: Matcher, group: MatchGroup) -> None:
        self.matcher = matcher
        self.group = group
        self.hits: list[int] | None = None  # pattern ids the scan under way matched
        self.masks: dict[int, int] | None = None  # rule index -> bit mask of matched patterns
        self.ends: dict[int, int] | None = None  # at most one entry per pattern (SINGLEMATCH)
        self.scanned = 0
        self.base = 0
        assert group.database is not None
        stream = group.database.stream(match_event_handler=_collect_end, context=self)
        stream.__enter__()
        self.stream = stream
        self.closed = False


class Matcher:
    """All enabled rules compiled for scanning. Build a new one to change rules."""

    __slots__ = (
        "_any_port_rules",
        "_app_built",
        "_built",
        "_covered",
        "_db_bytes",
        "_field_dbs",
        "_full_mask",
        "_groups",
        "_pattern_bit",
        "_pattern_rule",
        "_rule_pids",
        "_rules",
        "_unlisted",
        "follow",
        "ruleset",
        "stats",
        "streams_open",
    )

    def __init__(self, ruleset: RuleSet, follow: bool = True) -> None:
        """`follow`: rules follow their protocol (gateway/match/follow.py; the engine's
        `identify_any_port`); False: a rule applies on the ports it lists only."""
        started = time.perf_counter()
        self.ruleset = ruleset
        self.follow = follow
        self._rules: tuple[Rule, ...] = ruleset.rules
        self._pattern_rule: list[int] = []
        self._pattern_bit: list[int] = []
        self._full_mask: list[int] = []
        exprs: list[bytes] = []
        flags: list[int] = []
        for ri, rule in enumerate(self._rules):
            self._full_mask.append((1 << len(rule.patterns)) - 1)
            for bit, pattern in enumerate(rule.patterns):
                self._pattern_rule.append(ri)
                self._pattern_bit.append(1 << bit)
                if pattern.kind == "content":
                    exprs.append(literal_regex(pattern.expr))
                    flags.append(literal_flags(pattern.nocase))
                else:
                    exprs.append(pattern.expr)
                    flags.append(regex_flags(pattern.nocase))
        pattern_ids: list[list[int]] = [[] for _ in self._rules]
        for pid, ri in enumerate(self._pattern_rule):
            pattern_ids[ri].append(pid)
        self._rule_pids = {rule.id: tuple(pattern_ids[ri]) for ri, rule in enumerate(self._rules)}

        # (proto, direction, port) -> the rule indices covering it; `ports: any` rules join
        # every port's group and alone make the ANY_PORT group, used for every other port
        coverage: dict[tuple[int, Direction, int], list[int]] = {}
        any_port: dict[tuple[int, Direction], list[int]] = {}
        for ri, rule in enumerate(self._rules):
            for d in Direction:
                if not rule.inspects(d):
                    continue
                if rule.any_port:
                    any_port.setdefault((rule.proto_number, d), []).append(ri)
                for port in rule.ports:
                    coverage.setdefault((rule.proto_number, d, port), []).append(ri)
        # rules follow their protocol (gateway/match/follow.py): on a listed TCP port, the
        # followers of the protocols expected there join the port's group
        followers = follow_sets(self._rules) if follow else {}
        for (proto, d, port), indices in coverage.items():
            if proto != PROTO_TCP or not followers:
                continue
            listing = (self._rules[ri] for ri in indices)
            extra: set[int] = set()
            for name in expected_protocols(port, listing):
                extra |= followers.get((name, d), frozenset())
            if extra:
                indices[:] = sorted(set(indices) | extra)
        for (proto, d, _port), indices in coverage.items():
            more = any_port.get((proto, d))
            if more:
                indices[:] = sorted(set(indices) | set(more))
        for (proto, d), indices in any_port.items():
            coverage[(proto, d, ANY_PORT)] = indices
        self._any_port_rules = {
            key: tuple(self._rules[i] for i in indices) for key, indices in any_port.items()
        }
        self._built: dict[tuple[int, tuple[int, ...]], MatchGroup] = {}
        self._app_built: dict[tuple[str, tuple[int, ...]], AppGroup] = {}
        self._db_bytes = 0
        self._field_dbs = 0
        self._groups: dict[tuple[int, Direction, int], MatchGroup] = {}
        self._covered: set[tuple[int, int]] = set()
        for key, indices in coverage.items():
            proto = key[0]
            self._groups[key] = self._group_of(proto, tuple(indices), pattern_ids, exprs, flags)
            if key[2] != ANY_PORT:
                self._covered.add((proto, key[2]))
        # a TCP port no rule lists: the `ports: any` rules, else no rule, until identified
        self._unlisted = tuple(
            self._groups.get((PROTO_TCP, d, ANY_PORT))
            or self._group_of(PROTO_TCP, (), pattern_ids, exprs, flags)
            for d in Direction
        )
        for (proto, d, _port), group in [*self._groups.items()] if follow else []:
            if proto == PROTO_TCP:
                self._link(group, d, followers, pattern_ids, exprs, flags)
        for d in Direction if follow else ():
            self._link(self._unlisted[d], d, followers, pattern_ids, exprs, flags)
        self.stats = MatcherStats(
            databases=sum(1 for g in self._built.values() if g.database is not None)
            + self._field_dbs,
            database_bytes=self._db_bytes,
            patterns=len(exprs),
            compile_seconds=time.perf_counter() - started,
        )
        self.streams_open = 0

    def _group_of(
        self,
        proto: int,
        indices: tuple[int, ...],
        pattern_ids: list[list[int]],
        exprs: list[bytes],
        flags: list[int],
    ) -> MatchGroup:
        """The group of rules `indices` (built once per (proto, indices), then shared)."""
        ident = (proto, indices)
        group = self._built.get(ident)
        if group is not None:
            return group
        stream_mode = proto == PROTO_TCP
        ids = [pid for ri in indices for pid in pattern_ids[ri]]
        db: hyperscan.Database | None = None
        if ids:
            db = hyperscan.Database(
                mode=hyperscan.HS_MODE_STREAM if stream_mode else hyperscan.HS_MODE_BLOCK
            )
            try:
                db.compile(
                    expressions=[exprs[i] for i in ids], ids=ids, flags=[flags[i] for i in ids]
                )
            except hyperscan.error as err:
                names = ", ".join(
                    f"{self._rules[ri].id} ({self._rules[ri].path})" for ri in indices
                )
                raise RuleError(f"Hyperscan could not compile rules {names}: {err}") from err
            self._db_bytes += db.size()
        by_app: dict[str, list[int]] = {}
        for ri in indices:
            if self._rules[ri].conditions is not None:
                by_app.setdefault(self._rules[ri].app, []).append(ri)
        apps = {}
        for name, app_indices in by_app.items():
            app_ident = (name, tuple(app_indices))
            app_group = self._app_built.get(app_ident)
            if app_group is None:
                app_group = AppGroup(name, self._rules, tuple(app_indices))
                self._app_built[app_ident] = app_group
                self._db_bytes += app_group.database_bytes()
                self._field_dbs += len(app_group.field_dbs)
            apps[name] = app_group
        group = MatchGroup(indices, db, stream_mode, apps)
        self._built[ident] = group
        return group

    def _link(
        self,
        group: MatchGroup,
        d: Direction,
        follow: dict[tuple[str, Direction], frozenset[int]],
        pattern_ids: list[list[int]],
        exprs: list[bytes],
        flags: list[int],
    ) -> None:
        """Fill `group.follow[d]` and `group.identify[d]`: for each relocatable protocol
        whose followers are not all in the group already, the group it switches to once
        identified; the candidates are the group's own apps, then those protocols."""
        if group.identify[d] is not None:
            return  # linked already (groups are shared between ports and directions)
        switch: dict[str, MatchGroup] = {}
        have = set(group.rule_indices)
        for name in relocatable(d):
            extra = follow.get((name, d), frozenset())
            if extra <= have:
                continue
            indices = tuple(sorted(have | extra))
            switch[name] = self._group_of(PROTO_TCP, indices, pattern_ids, exprs, flags)
        group.follow[d] = switch
        group.identify[d] = (
            *group.app_candidates,
            *(name for name in switch if name not in group.app_candidates),
        )

    def unlisted(self, direction: Direction) -> MatchGroup:
        """The group of a TCP port no rule lists (the `ports: any` rules, or none): its flows
        are inspected only until identification finds a protocol with rules (`follow`)."""
        return self._unlisted[direction]

    def group(self, proto: int, direction: Direction, server_port: int) -> MatchGroup | None:
        """The compiled group for (proto, direction, server port): the port's own,
        else that of the `ports: any` rules, or None."""
        groups = self._groups
        found = groups.get((proto, direction, server_port))
        return found if found is not None else groups.get((proto, direction, ANY_PORT))

    def any_port_rules(self, proto: int, direction: Direction) -> tuple[Rule, ...]:
        """The `ports: any` rules of (proto, direction)."""
        return self._any_port_rules.get((proto, direction), ())

    def covers(self, proto: int, server_port: int) -> bool:
        """True if a rule names (proto, server port) in either direction (`ports: any` rules
        do not count: this orients flows picked up mid-stream by their well-known port)."""
        return (proto, server_port) in self._covered

    def open_stream(self, group: MatchGroup) -> StreamState:
        """A new Hyperscan stream for one flow direction (TCP groups with raw patterns only)."""
        if not group.stream_mode or group.database is None:
            raise ValueError("open_stream: group is block mode (UDP)")
        state = StreamState(self, group)
        self.streams_open += 1
        return state

    def scan_stream(self, state: StreamState, data: bytes) -> tuple[Rule, ...]:
        """Scan the next in-order bytes of a stream; return the rules completed by them."""
        if state.closed:
            return NO_RULES
        state.scanned += len(data)
        state.stream.scan(data, scratch=state.group.scratch)
        hits = state.hits
        if hits is None:
            return NO_RULES
        state.hits = None
        masks = state.masks
        if masks is None:
            masks = state.masks = {}
        return self._complete(hits, masks)

    def restart_stream(
        self, state: StreamState, data: bytes, start: int, forget: Iterable[Rule]
    ) -> tuple[StreamState, tuple[Rule, ...]]:
        """Replace `state`, whose last scan was `data`, by a new stream that begins at
        `data[start:]` and in which the rules `forget` can match again (a stream reports each
        pattern once: SINGLEMATCH). Every other rule keeps the patterns it had matched. Scans
        `data[start:]` and returns (the new state, the rules completed by that scan)."""
        chunk_start = state.scanned - len(data)
        begin = chunk_start + start
        dropped: set[int] = set()
        for rule in forget:
            for pid in self._rule_pids.get(rule.id, ()):
                dropped.add(self._pattern_rule[pid])
        new = self.open_stream(state.group)
        new.base = new.scanned = begin
        masks, ends = state.masks or {}, state.ends or {}
        new.masks = {ri: m for ri, m in masks.items() if ri not in dropped} or None
        pattern_rule = self._pattern_rule
        new.ends = {p: e for p, e in ends.items() if pattern_rule[p] not in dropped} or None
        self.close_stream(state)
        return new, self.scan_stream(new, data[start:])

    def rebind_stream(
        self, state: StreamState | None, group: MatchGroup, data: bytes
    ) -> tuple[StreamState | None, tuple[Rule, ...]]:
        """Move a flow direction whose stream so far is `data` (all of it, from offset 0)
        to `group`, a superset of its group's rules (gateway/match/follow.py): a new stream
        of `group` scans `data` again, keeping the patterns `state` had matched, so a rule
        already fired does not fire again. Returns (the new state, or None when `group` has
        no raw patterns; the rules the rescan completed); `state` is closed."""
        if group.database is None:
            if state is not None:
                self.close_stream(state)
            return None, NO_RULES
        new = self.open_stream(group)
        if state is not None:
            new.masks = dict(state.masks) if state.masks else None
            new.ends = dict(state.ends) if state.ends else None
            self.close_stream(state)
        return new, self.scan_stream(new, data)

    def close_stream(self, state: StreamState) -> None:
        """Free the stream's Hyperscan state; idempotent. Matches at close are ignored."""
        if state.closed:
            return
        state.closed = True
        self.streams_open -= 1
        state.stream.close()

    def scan_block(self, group: MatchGroup, data: bytes) -> tuple[Rule, ...]:
        """Scan one datagram (UDP groups); return the rules all of whose patterns matched."""
        if group.database is None:
            return NO_RULES
        hits: list[int] = []
        group.database.scan(data, match_event_handler=_collect, context=hits, scratch=group.scratch)
        if not hits:
            return NO_RULES
        return self._complete(hits, {})

    def raw_match_end(self, rule: Rule, ends: dict[int, int]) -> tuple[int, int] | None:
        """(index in rule.patterns, end offset) of the rule's raw pattern whose match ended
        last (the one that completed it), from a pattern id -> end map; None if none."""
        best: tuple[int, int] | None = None
        for i, pid in enumerate(self._rule_pids.get(rule.id, ())):
            end = ends.get(pid)
            if end is not None and (best is None or end > best[1]):
                best = (i, end)
        return best

    def locate_block(self, group: MatchGroup, data: bytes, rule: Rule) -> tuple[int, int] | None:
        """Scan one datagram again (only when a rule fired) for where `rule`'s patterns
        matched: as raw_match_end, offsets within `data`."""
        if group.database is None:
            return None
        ends: dict[int, int] = {}
        group.database.scan(
            data, match_event_handler=_collect_ends, context=ends, scratch=group.scratch
        )
        return self.raw_match_end(rule, ends)

    def evaluate(self, group: AppGroup, fields: dict[str, int | bytes]) -> tuple[Rule, ...]:
        """The rules of `group` whose field conditions hold for one decoded record: pattern
        leaves are found by one block-mode scan per field, the rest checked in Python on the
        candidate rules only (rules whose required pattern matched, or that need none). A
        pattern leaf on a field also holds when it matches one of the field's variants."""
        matched: dict[int, set[int]] = {}
        owner = group.leaf_owner
        for name, db, scratch, variants in group.field_dbs:
            value = fields.get(name)
            if type(value) is not bytes:
                continue
            hits: list[int] = []
            db.scan(value, match_event_handler=_collect, context=hits, scratch=scratch)
            if variants[0] in fields:
                for key in variants:
                    other = fields.get(key)
                    if type(other) is not bytes:
                        break
                    db.scan(other, match_event_handler=_collect, context=hits, scratch=scratch)
            for pid in hits:
                ri, leaf = owner[pid]
                got = matched.get(ri)
                if got is None:
                    matched[ri] = {leaf}
                else:
                    got.add(leaf)
        always = group.always
        if matched:
            candidates = (*always, *(ri for ri in matched if ri not in group.always_set))
        else:
            candidates = always
        if not candidates:
            return NO_RULES
        rules = self._rules
        late = group.late
        out: list[Rule] = []
        empty: frozenset[int] = frozenset()
        for ri in candidates:
            need = late.get(ri)
            if need is not None and not all(f in fields for f in need):
                continue
            rule = rules[ri]
            cond = rule.conditions
            leaves = matched.get(ri)
            if cond is not None and evaluate(cond, fields, frozenset(leaves) if leaves else empty):
                out.append(rule)
        return tuple(out)

    def _complete(self, hits: list[int], masks: dict[int, int]) -> tuple[Rule, ...]:
        fired: list[Rule] = []
        pattern_rule = self._pattern_rule
        pattern_bit = self._pattern_bit
        full = self._full_mask
        for pid in hits:
            ri = pattern_rule[pid]
            before = masks.get(ri, 0)
            mask = before | pattern_bit[pid]
            if mask != before:
                masks[ri] = mask
                if mask == full[ri]:
                    fired.append(self._rules[ri])
        return tuple(fired)
