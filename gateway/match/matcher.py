"""Hyperscan matching of rule patterns over raw TCP streams (stream mode) and UDP datagrams.

What it does: compiles a RuleSet into Hyperscan databases and scans bytes with them.
- Grouping: for every (protocol, direction, server port) the rules that cover it form a group;
  groups with the same rule set share one database (so a port list like [139, 445] costs one
  database, not two). Port filtering is therefore exact and free at scan time: a flow only ever
  scans the patterns of rules covering its server port. (The alternative, one database per
  (protocol, direction) and filtering matches by port afterwards, scans every rule's patterns
  on every flow; with few distinct port sets per-group databases are never slower.)
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
from dataclasses import dataclass
from typing import Any, Final

import hyperscan

from gateway.errors import RuleError
from gateway.match.rules import Rule, RuleSet

__all__ = [
    "DIRECTION_NAMES",
    "TO_CLIENT",
    "TO_SERVER",
    "MatchGroup",
    "Matcher",
    "MatcherStats",
    "StreamState",
    "literal_flags",
    "literal_regex",
    "regex_flags",
]

TO_SERVER: Final = 0
TO_CLIENT: Final = 1
DIRECTION_NAMES: Final = ("to_server", "to_client")
NO_RULES: Final[tuple[Rule, ...]] = ()

_SAFE_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def regex_flags(nocase: bool) -> int:
    """Hyperscan flags for a rule regex."""
    flags = hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH
    return flags | hyperscan.HS_FLAG_CASELESS if nocase else flags


def literal_flags(nocase: bool) -> int:
    """Hyperscan flags for a content literal (escaped into a regex)."""
    flags = hyperscan.HS_FLAG_SINGLEMATCH
    return flags | hyperscan.HS_FLAG_CASELESS if nocase else flags


def literal_regex(data: bytes) -> bytes:
    """A regex matching exactly `data`: every byte outside [A-Za-z0-9_] becomes `\\xHH`."""
    return b"".join(bytes((b,)) if b in _SAFE_BYTES else b"\\x%02x" % b for b in data)


def _collect(pattern_id: int, start: int, end: int, flags: int, hits: Any) -> None:
    hits.append(pattern_id)


@dataclass(frozen=True, slots=True)
class MatcherStats:
    databases: int
    database_bytes: int
    patterns: int
    compile_seconds: float


class MatchGroup:
    """The rules covering one (protocol, direction, port set), compiled into one database."""

    __slots__ = ("database", "rule_indices", "scratch", "stream_bytes", "stream_mode")

    def __init__(
        self,
        rule_indices: tuple[int, ...],
        database: hyperscan.Database,
        stream_mode: bool,
    ) -> None:
        self.rule_indices = rule_indices
        self.database = database
        self.scratch = hyperscan.Scratch(database)
        self.stream_mode = stream_mode
        self.stream_bytes = 0


class StreamState:
    """Per flow direction: the open Hyperscan stream and which patterns have matched."""

    __slots__ = ("closed", "group", "hits", "masks", "matcher", "stream")

    def __init__(self, matcher: Matcher, group: MatchGroup) -> None:
        self.matcher = matcher
        self.group = group
        self.hits: list[int] = []
        self.masks: dict[int, int] = {}  # rule index -> bit mask of matched patterns
        stream = group.database.stream(match_event_handler=_collect, context=self.hits)
        stream.__enter__()
        self.stream = stream
        self.closed = False


class Matcher:
    """All enabled rules compiled for scanning. Build a new one to change rules."""

    __slots__ = (
        "_covered",
        "_full_mask",
        "_groups",
        "_pattern_bit",
        "_pattern_rule",
        "_rules",
        "ruleset",
        "stats",
        "streams_open",
    )

    def __init__(self, ruleset: RuleSet) -> None:
        started = time.perf_counter()
        self.ruleset = ruleset
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

        # (proto, direction, port) -> the rule indices covering it
        coverage: dict[tuple[int, int, int], list[int]] = {}
        for ri, rule in enumerate(self._rules):
            for d, name in enumerate(DIRECTION_NAMES):
                if not rule.inspects(name):
                    continue
                for port in rule.ports:
                    coverage.setdefault((rule.proto_number, d, port), []).append(ri)
        built: dict[tuple[int, tuple[int, ...]], MatchGroup] = {}
        self._groups: dict[tuple[int, int, int], MatchGroup] = {}
        self._covered: set[tuple[int, int]] = set()
        db_bytes = 0
        for key, indices in coverage.items():
            proto = key[0]
            ident = (proto, tuple(indices))
            group = built.get(ident)
            if group is None:
                stream_mode = proto == 6
                ids = [pid for ri in indices for pid in pattern_ids[ri]]
                db = hyperscan.Database(
                    mode=hyperscan.HS_MODE_STREAM if stream_mode else hyperscan.HS_MODE_BLOCK
                )
                try:
                    db.compile(
                        expressions=[exprs[i] for i in ids],
                        ids=ids,
                        flags=[flags[i] for i in ids],
                    )
                except hyperscan.error as err:
                    names = ", ".join(
                        f"{self._rules[ri].id} ({self._rules[ri].path})" for ri in indices
                    )
                    raise RuleError(f"Hyperscan could not compile rules {names}: {err}") from err
                group = MatchGroup(tuple(indices), db, stream_mode)
                db_bytes += db.size()
                built[ident] = group
            self._groups[key] = group
            self._covered.add((proto, key[2]))
        self.stats = MatcherStats(
            databases=len(built),
            database_bytes=db_bytes,
            patterns=len(exprs),
            compile_seconds=time.perf_counter() - started,
        )
        self.streams_open = 0

    def group(self, proto: int, direction: int, server_port: int) -> MatchGroup | None:
        """The compiled group for (proto, TO_SERVER|TO_CLIENT, server port), or None."""
        return self._groups.get((proto, direction, server_port))

    def covers(self, proto: int, server_port: int) -> bool:
        """True if any rule inspects (proto, server port) in either direction."""
        return (proto, server_port) in self._covered

    def open_stream(self, group: MatchGroup) -> StreamState:
        """A new Hyperscan stream for one flow direction (TCP groups only)."""
        if not group.stream_mode:
            raise ValueError("open_stream: group is block mode (UDP)")
        state = StreamState(self, group)
        self.streams_open += 1
        return state

    def scan_stream(self, state: StreamState, data: bytes) -> tuple[Rule, ...]:
        """Scan the next in-order bytes of a stream; return the rules completed by them."""
        if state.closed:
            return NO_RULES
        state.stream.scan(data, scratch=state.group.scratch)
        hits = state.hits
        if not hits:
            return NO_RULES
        fired = self._complete(hits, state.masks)
        hits.clear()
        return fired

    def close_stream(self, state: StreamState) -> None:
        """Free the stream's Hyperscan state; idempotent. Matches at close are ignored."""
        if state.closed:
            return
        state.closed = True
        self.streams_open -= 1
        state.stream.close()

    def scan_block(self, group: MatchGroup, data: bytes) -> tuple[Rule, ...]:
        """Scan one datagram (UDP groups); return the rules all of whose patterns matched."""
        hits: list[int] = []
        group.database.scan(data, match_event_handler=_collect, context=hits, scratch=group.scratch)
        if not hits:
            return NO_RULES
        return self._complete(hits, {})

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
