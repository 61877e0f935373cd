"""Rule conditions: the condition tree of the rule language, its parsing and its evaluation.

What it does: `parse_condition(node, problem)` turns the YAML node under a rule's `conditions:`
into a tree of frozen records (docs/rules.md has the language with examples):
- `Match` leaves: `content` (Suricata content syntax, with nocase/offset/depth), a `match:` list
  of contents where each later one is relative to the previous (distance/within), or `regex`,
  on a byte-string field or on `raw` (the direction's reassembled stream, or the datagram);
- `Compare` leaves on a field: equals/in/ne/lt/le/gt/ge against a literal or against another
  field (`{field: NAME, plus: N}`), with `plus: N` added to the left side and `length: true`
  comparing a byte string's length;
- `All`, `Any`, `Not` combinators.
Every `Match` is compiled to ONE Hyperscan expression (`Match.expr`), so content modifiers are
exact at scan time: offset/depth become a start anchor with a bounded gap (`^.{o,o+d-len}`),
distance/within become a bounded gap between two literals (`A.{d,w-len(B)}B`), nocase makes
each letter a two-letter class. `reference_match` is the same semantics written directly in
Python (used by the tests to check the compiled form).

What it guarantees:
- Parsing reports every problem through `problem(node, reason)` (the caller turns that into
  file:line: reason) and returns None if any was found; it never raises on any YAML input.
- Conditions on `raw` may only appear as members of the top-level `all` (raw matches are
  accumulated over a stream, where "not yet seen" has no meaning); that is checked here.
- `evaluate(cond, fields, matched)` never raises: a missing field makes a leaf false; a
  comparison between values of different kinds is false.
- Bounds: MAX_CONDITION_NODES per rule, MAX_CONDITION_DEPTH nesting, MAX_MODIFIER (offsets,
  depths, distances, withins), MAX_IN_VALUES per `in` list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "COMPARE_OPS",
    "MAX_CONDITION_DEPTH",
    "MAX_CONDITION_NODES",
    "MAX_IN_VALUES",
    "MAX_MODIFIER",
    "RAW",
    "All",
    "Any_",
    "Compare",
    "Condition",
    "ContentItem",
    "FieldRef",
    "Match",
    "Not",
    "content_regex",
    "evaluate",
    "fields_of",
    "matches_of",
    "parse_condition",
    "reference_match",
]

RAW: Final = "raw"
MAX_CONDITION_NODES: Final = 256
MAX_CONDITION_DEPTH: Final = 16
MAX_MODIFIER: Final = 65535
MAX_IN_VALUES: Final = 1024
COMPARE_OPS: Final = ("equals", "ne", "in", "lt", "le", "gt", "ge")
_SAFE: Final = frozenset(b"0123456789_")

FieldValue = int | bytes
Problem = Callable[[Node | None, str], None]


@dataclass(frozen=True, slots=True)
class ContentItem:
    """One literal of a content match with its Suricata modifiers (None: not given)."""

    data: bytes
    nocase: bool = False
    offset: int | None = None
    depth: int | None = None
    distance: int | None = None
    within: int | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """A pattern leaf on a byte-string field (or `raw`). `index` is unique within its rule."""

    field: str
    index: int
    expr: bytes  # the Hyperscan expression (content items compiled; regex as written)
    nocase: bool  # regex only: compile caseless (content items carry their own nocase)
    items: tuple[ContentItem, ...] = ()  # content form; empty for a regex
    regex: bytes = b""  # regex form


@dataclass(frozen=True, slots=True)
class FieldRef:
    """The value of another field of the same record, plus a constant."""

    field: str
    plus: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """`field (+ plus) OP value`; `length` compares len() of a byte string."""

    field: str
    op: str  # one of COMPARE_OPS
    value: int | bytes | frozenset[int | bytes] | FieldRef
    plus: int = 0
    length: bool = False
    nocase: bool = False  # equals/ne/in on byte strings: ASCII case-insensitive


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Any_:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


Condition = Match | Compare | All | Any_ | Not


# ------------------------------------------------------------------------- compilation


def _literal(data: bytes, nocase: bool) -> bytes:
    out = []
    for b in data:
        if nocase and (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A):
            lo, up = b | 0x20, b & ~0x20
            out.append(b"[" + bytes((up, lo)) + b"]")
        elif (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A) or b in _SAFE:
            out.append(bytes((b,)))
        else:
            out.append(b"\\x%02x" % b)
    return b"".join(out)


def _gap(low: int, high: int | None) -> bytes:
    if high is None:
        return b"" if low == 0 else b".{%d,}" % low
    if low == high:
        return b"" if low == 0 else b".{%d}" % low
    return b".{%d,%d}" % (low, high)


def content_regex(items: tuple[ContentItem, ...]) -> bytes:
    """The Hyperscan expression (flags: DOTALL) matching exactly when the content sequence
    does (see reference_match); items must be valid (as parse_condition checks)."""
    first = items[0]
    parts: list[bytes] = []
    if first.offset or first.depth is not None:
        low = first.offset or 0
        high = None if first.depth is None else low + first.depth - len(first.data)
        parts.append(b"^" + _gap(low, high))
    parts.append(_literal(first.data, first.nocase))
    for item in items[1:]:
        low = item.distance or 0
        high = None if item.within is None else item.within - len(item.data)
        parts.append(_gap(low, high) if high is not None or low else b".*")
        parts.append(_literal(item.data, item.nocase))
    return b"".join(parts)


def _find_all(data: bytes, needle: bytes, nocase: bool, start: int, end: int) -> list[int]:
    hay = data.lower() if nocase else data
    pat = needle.lower() if nocase else needle
    out = []
    pos = hay.find(pat, start, end)
    while pos >= 0:
        out.append(pos)
        pos = hay.find(pat, pos + 1, end)
    return out


def reference_match(items: tuple[ContentItem, ...], data: bytes) -> bool:
    """Content-sequence semantics written directly (slow, for tests): the first item lies in
    [offset, offset+depth) of `data`; each next item starts at least `distance` bytes after the
    end of the previous one and ends at most `within` bytes after it."""

    def rest(i: int, prev_end: int) -> bool:
        if i == len(items):
            return True
        item = items[i]
        n = len(item.data)
        start = prev_end + (item.distance or 0)
        end = len(data) if item.within is None else min(len(data), prev_end + item.within)
        return any(rest(i + 1, p + n) for p in _find_all(data, item.data, item.nocase, start, end))

    first = items[0]
    start = first.offset or 0
    end = len(data) if first.depth is None else min(len(data), start + first.depth)
    n = len(first.data)
    return any(rest(1, p + n) for p in _find_all(data, first.data, first.nocase, start, end))


# ------------------------------------------------------------------------- evaluation


def _compare(op: str, left: FieldValue, right: FieldValue) -> bool:
    if type(left) is not type(right):
        return False
    if op == "equals":
        return left == right
    if op == "ne":
        return left != right
    if op == "lt":
        return left < right  # type: ignore[operator]
    if op == "le":
        return left <= right  # type: ignore[operator]
    if op == "gt":
        return left > right  # type: ignore[operator]
    return left >= right  # type: ignore[operator]


def evaluate(cond: Condition, fields: Mapping[str, FieldValue], matched: frozenset[int]) -> bool:
    """True if `cond` holds for a record with `fields`; `matched` holds the indices of the
    Match leaves whose pattern was found in their field (the Hyperscan scan's result)."""
    if isinstance(cond, Match):
        return cond.index in matched
    if isinstance(cond, Compare):
        value = fields.get(cond.field)
        if value is None:
            return False
        left: FieldValue
        if cond.length:
            if not isinstance(value, bytes):
                return False
            left = len(value) + cond.plus
        elif isinstance(value, int):
            left = value + cond.plus
        else:
            left = value.lower() if cond.nocase else value
        right = cond.value
        if isinstance(right, FieldRef):
            other = fields.get(right.field)
            if not isinstance(other, int):
                if isinstance(other, bytes) and right.plus == 0:
                    return _compare(cond.op, left, other)
                return False
            return _compare(cond.op, left, other + right.plus)
        if isinstance(right, frozenset):
            return left in right
        return _compare(cond.op, left, right)
    if isinstance(cond, All):
        return all(evaluate(c, fields, matched) for c in cond.items)
    if isinstance(cond, Any_):
        return any(evaluate(c, fields, matched) for c in cond.items)
    return not evaluate(cond.item, fields, matched)


def matches_of(cond: Condition | None) -> list[Match]:
    """Every Match leaf of a tree, in index order."""
    out: list[Match] = []

    def walk(c: Condition) -> None:
        if isinstance(c, Match):
            out.append(c)
        elif isinstance(c, Compare):
            return
        elif isinstance(c, All | Any_):
            for item in c.items:
                walk(item)
        else:
            walk(c.item)

    if cond is not None:
        walk(cond)
    return sorted(out, key=lambda m: m.index)


def fields_of(cond: Condition | None) -> set[str]:
    """Every field name a tree references (both sides of comparisons)."""
    out: set[str] = set()

    def walk(c: Condition) -> None:
        if isinstance(c, Match):
            out.add(c.field)
        elif isinstance(c, Compare):
            out.add(c.field)
            if isinstance(c.value, FieldRef):
                out.add(c.value.field)
        elif isinstance(c, All | Any_):
            for item in c.items:
                walk(item)
        else:
            walk(c.item)

    if cond is not None:
        walk(cond)
    return out


def required_match(cond: Condition | None) -> Match | None:
    """A Match leaf that must have matched for `cond` to hold (a prefilter), or None."""
    if isinstance(cond, Match):
        return cond
    if isinstance(cond, All):
        for item in cond.items:
            found = required_match(item)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------- parsing

_LEAF_MODS: Final = ("nocase", "offset", "depth", "distance", "within")
_FIELD_KEYS: Final = frozenset(
    {"field", "content", "match", "regex", "plus", "length", *COMPARE_OPS, *_LEAF_MODS}
)


def _value(node: Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()


def _show(node: Node) -> str:
    return repr(node.value) if isinstance(node, ScalarNode) else f"<{type(node).__name__}>"


class _Parser:
    """Builds one rule's condition tree; `field_ok(name)` says whether a field exists and
    returns its kind ("int" | "bytes" | None)."""

    def __init__(
        self,
        problem: Problem,
        field_kind: Callable[[str], str | None],
        parse_content: Callable[[str], bytes],
        check_regex: Callable[[bytes, bool], str | None],
    ) -> None:
        self.problem = problem
        self.field_kind = field_kind
        self.parse_content = parse_content
        self.check_regex = check_regex
        self.nodes = 0
        self.matches = 0
        self.bad = False

    def fail(self, node: Node | None, reason: str) -> None:
        self.bad = True
        self.problem(node, reason)

    def parse(self, node: Node, depth: int, top: bool) -> Condition | None:
        self.nodes += 1
        if self.nodes > MAX_CONDITION_NODES:
            if self.nodes == MAX_CONDITION_NODES + 1:
                self.fail(node, f"more than {MAX_CONDITION_NODES} condition nodes in one rule")
            return None
        if depth > MAX_CONDITION_DEPTH:
            self.fail(node, f"conditions nested deeper than {MAX_CONDITION_DEPTH}")
            return None
        if isinstance(node, SequenceNode):  # a bare list means all
            return self._combinator("all", node, depth, top)
        if not isinstance(node, MappingNode):
            self.fail(node, f"a condition must be a mapping, not {_show(node)}")
            return None
        keys: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, ScalarNode) else None
            if not isinstance(name, str):
                self.fail(knode, f"condition key {_show(knode)} is not a string")
                return None
            if name in keys:
                self.fail(knode, f"duplicate condition key {name!r}")
                return None
            keys[name] = (knode, vnode)
        combinators = [k for k in ("all", "any", "not") if k in keys]
        if combinators:
            if len(keys) != 1:
                self.fail(node, f"`{combinators[0]}` must be the only key of its mapping")
                return None
            name = combinators[0]
            return self._combinator(name, keys[name][1], depth, top)
        if "field" not in keys:
            self.fail(node, "a condition needs `field` (or is `all`, `any` or `not`)")
            return None
        return self._leaf(node, keys, top)

    def _combinator(self, name: str, vnode: Node, depth: int, top: bool) -> Condition | None:
        if name == "not":
            inner = self.parse(vnode, depth + 1, False)
            return None if inner is None else Not(inner)
        if not isinstance(vnode, SequenceNode) or not vnode.value:
            self.fail(vnode, f"`{name}` must be a non-empty list of conditions")
            return None
        items = []
        for item in vnode.value:
            parsed = self.parse(item, depth + 1, top and name == "all")
            if parsed is not None:
                items.append(parsed)
        if len(items) != len(vnode.value):
            return None
        return All(tuple(items)) if name == "all" else Any_(tuple(items))

    def _int(self, vnode: Node, what: str, low: int, high: int) -> int | None:
        value = _value(vnode) if isinstance(vnode, ScalarNode) else None
        if type(value) is not int or not low <= value <= high:
            self.fail(vnode, f"{what} {_show(vnode)} must be an integer {low}..{high}")
            return None
        return value

    def _bool(self, keys: dict[str, tuple[Node, Node]], name: str) -> bool:
        if name not in keys:
            return False
        vnode = keys[name][1]
        value = _value(vnode) if isinstance(vnode, ScalarNode) else None
        if not isinstance(value, bool):
            self.fail(vnode, f"{name} {_show(vnode)} must be true or false")
            return False
        return value

    def _leaf(self, node: Node, keys: dict[str, tuple[Node, Node]], top: bool) -> Condition | None:
        for name, (knode, _) in keys.items():
            if name not in _FIELD_KEYS:
                allowed = ", ".join(sorted(_FIELD_KEYS))
                self.fail(knode, f"unknown condition key {name!r} (allowed: {allowed})")
        fnode = keys["field"][1]
        fname = _value(fnode) if isinstance(fnode, ScalarNode) else None
        if not isinstance(fname, str) or not fname:
            self.fail(fnode, f"field {_show(fnode)} must be a field name")
            return None
        kind = "bytes" if fname == RAW else self.field_kind(fname)
        if kind is None:
            self.fail(fnode, f"unknown field {fname!r} for this rule's app")
            return None
        patterns = [k for k in ("content", "match", "regex") if k in keys]
        ops = [k for k in COMPARE_OPS if k in keys]
        if len(patterns) + len(ops) != 1:
            self.fail(
                node,
                "a field condition needs exactly one of content, match, regex, "
                + ", ".join(COMPARE_OPS),
            )
            return None
        if fname == RAW and not top:
            self.fail(node, "conditions on `raw` may only be members of the top-level `all`")
            return None
        if patterns:
            if kind != "bytes":
                self.fail(
                    fnode, f"field {fname!r} is a number: use a comparison, not {patterns[0]}"
                )
                return None
            for extra in ("plus", "length"):
                if extra in keys:
                    self.fail(keys[extra][0], f"`{extra}` applies to comparisons only")
            return self._pattern(patterns[0], keys, fname)
        if fname == RAW:
            self.fail(fnode, "`raw` takes content, match or regex, not comparisons")
            return None
        return self._compare(ops[0], keys, fname, kind)

    def _content_item(
        self, keys: dict[str, tuple[Node, Node]], first: bool, in_list: bool
    ) -> ContentItem | None:
        cnode = keys["content"][1]
        text = _value(cnode) if isinstance(cnode, ScalarNode) else None
        if not isinstance(text, str) or not text:
            self.fail(cnode, f"content {_show(cnode)} must be a non-empty string")
            return None
        try:
            data = self.parse_content(text)
        except ValueError as err:
            self.fail(cnode, f"content {text!r}: {err}")
            return None
        if not data:
            self.fail(cnode, f"content {text!r} is empty")
            return None
        mods: dict[str, int | None] = {}
        for name in ("offset", "depth", "distance", "within"):
            if name in keys:
                mods[name] = self._int(keys[name][1], name, 0, MAX_MODIFIER)
        if first and ("distance" in keys or "within" in keys):
            where = "the first item of `match`" if in_list else "a single content"
            name = "distance" if "distance" in keys else "within"
            self.fail(keys[name][0], f"distance/within on {where}")
            return None
        if not first and ("offset" in keys or "depth" in keys):
            self.fail(
                keys["offset" if "offset" in keys else "depth"][0],
                "offset/depth only on the first item of `match` (later ones use distance/within)",
            )
            return None
        item = ContentItem(
            data,
            self._bool(keys, "nocase"),
            mods.get("offset"),
            mods.get("depth"),
            mods.get("distance"),
            mods.get("within"),
        )
        if item.depth is not None and item.depth < len(data):
            self.fail(keys["depth"][1], f"depth {item.depth} is shorter than the content")
            return None
        if item.within is not None and item.within < (item.distance or 0) + len(data):
            self.fail(
                keys["within"][1],
                f"within {item.within} is shorter than distance + content length "
                f"({(item.distance or 0) + len(data)})",
            )
            return None
        return item

    def _pattern(self, kind: str, keys: dict[str, tuple[Node, Node]], fname: str) -> Match | None:
        index = self.matches
        self.matches += 1
        if kind == "regex":
            for name in ("offset", "depth", "distance", "within"):
                if name in keys:
                    self.fail(keys[name][0], f"{name} applies to content, not regex")
            rnode = keys["regex"][1]
            text = _value(rnode) if isinstance(rnode, ScalarNode) else None
            if not isinstance(text, str) or not text:
                self.fail(rnode, f"regex {_show(rnode)} must be a non-empty string")
                return None
            nocase = self._bool(keys, "nocase")
            expr = text.encode("utf-8")
            reason = self.check_regex(expr, nocase)
            if reason:
                self.fail(rnode, f"regex {text!r} rejected by Hyperscan: {reason}")
                return None
            return Match(fname, index, expr, nocase, (), expr)
        items: tuple[ContentItem, ...] | None
        if kind == "content":
            item = self._content_item(keys, True, False)
            items = (item,) if item is not None else None
        else:
            for name in _LEAF_MODS:
                if name in keys:
                    self.fail(keys[name][0], f"`{name}` goes on the items of `match`")
            mnode = keys["match"][1]
            if not isinstance(mnode, SequenceNode) or not mnode.value:
                self.fail(mnode, "`match` must be a non-empty list of {content, modifiers}")
                return None
            parsed: list[ContentItem] = []
            for i, inode in enumerate(mnode.value):
                if not isinstance(inode, MappingNode):
                    self.fail(inode, "a `match` item must be a mapping with `content`")
                    continue
                ikeys: dict[str, tuple[Node, Node]] = {
                    str(k.value): (k, v) for k, v in inode.value if isinstance(k, ScalarNode)
                }
                bad = [k for k in ikeys if k not in ("content", *_LEAF_MODS)]
                for k in bad:
                    self.fail(ikeys[k][0], f"unknown `match` item key {k!r}")
                if "content" not in ikeys:
                    self.fail(inode, "a `match` item needs `content`")
                    continue
                got = self._content_item(ikeys, i == 0, True)
                if got is not None:
                    parsed.append(got)
            items = tuple(parsed) if len(parsed) == len(mnode.value) else None
        if items is None or self.bad:
            return None
        expr = content_regex(items)
        reason = self.check_regex(expr, False)
        if reason:
            self.fail(keys[kind][1], f"content too complex for Hyperscan: {reason}")
            return None
        return Match(fname, index, expr, False, items, b"")

    def _literal_value(
        self, vnode: Node, kind: str, fname: str, op: str
    ) -> int | bytes | FieldRef | None:
        if isinstance(vnode, MappingNode):
            rkeys = {k.value: v for k, v in vnode.value if isinstance(k, ScalarNode)}
            if set(rkeys) - {"field", "plus"} or "field" not in rkeys:
                self.fail(vnode, f"{op}: a field reference is {{field: NAME, plus: N}}")
                return None
            other = _value(rkeys["field"]) if isinstance(rkeys["field"], ScalarNode) else None
            if not isinstance(other, str) or self.field_kind(other) is None:
                self.fail(rkeys["field"], f"unknown field {_show(rkeys['field'])} in {op}")
                return None
            plus = 0
            if "plus" in rkeys:
                got = self._int(rkeys["plus"], "plus", -(2**32), 2**32)
                if got is None:
                    return None
                plus = got
            return FieldRef(other, plus)
        value = _value(vnode) if isinstance(vnode, ScalarNode) else None
        if kind == "int":
            if type(value) is not int:
                self.fail(vnode, f"{op} {_show(vnode)}: field {fname!r} is a number")
                return None
            return int(value)
        if not isinstance(value, str):
            self.fail(vnode, f"{op} {_show(vnode)}: field {fname!r} is a string")
            return None
        try:
            return self.parse_content(value)
        except ValueError as err:
            self.fail(vnode, f"{op} {value!r}: {err}")
            return None

    def _compare(
        self, op: str, keys: dict[str, tuple[Node, Node]], fname: str, kind: str
    ) -> Compare | None:
        length = self._bool(keys, "length")
        nocase = self._bool(keys, "nocase")
        for name in ("offset", "depth", "distance", "within"):
            if name in keys:
                self.fail(keys[name][0], f"{name} applies to content, not {op}")
        if length and kind != "bytes":
            self.fail(keys["length"][1], f"length: field {fname!r} is already a number")
            return None
        effective = "int" if length else kind
        plus = 0
        if "plus" in keys:
            if effective != "int":
                self.fail(keys["plus"][0], f"plus: field {fname!r} is not a number")
                return None
            got = self._int(keys["plus"][1], "plus", -(2**32), 2**32)
            if got is None:
                return None
            plus = got
        if nocase and effective != "bytes":
            self.fail(keys["nocase"][0], f"nocase: field {fname!r} is a number")
            return None
        if effective == "bytes" and op in ("lt", "le", "gt", "ge"):
            self.fail(keys[op][0], f"{op} on the string field {fname!r} (use length: true)")
            return None
        vnode = keys[op][1]
        value: int | bytes | frozenset[int | bytes] | FieldRef
        if op == "in":
            if not isinstance(vnode, SequenceNode) or not vnode.value:
                self.fail(vnode, "in must be a non-empty list")
                return None
            if len(vnode.value) > MAX_IN_VALUES:
                self.fail(vnode, f"in has {len(vnode.value)} values, more than {MAX_IN_VALUES}")
                return None
            values: set[int | bytes] = set()
            for item in vnode.value:
                lit = self._literal_value(item, effective, fname, op)
                if isinstance(lit, FieldRef):
                    self.fail(item, "in takes literal values, not field references")
                    return None
                if lit is None:
                    return None
                values.add(lit.lower() if nocase and isinstance(lit, bytes) else lit)
            value = frozenset(values)
        else:
            one = self._literal_value(vnode, effective, fname, op)
            if one is None:
                return None
            if isinstance(one, FieldRef):
                other_kind = self.field_kind(one.field)
                if other_kind != effective:
                    self.fail(vnode, f"{op}: {fname!r} and {one.field!r} are of different kinds")
                    return None
            value = one.lower() if nocase and isinstance(one, bytes) else one
        return Compare(fname, op, value, plus, length, nocase)


def parse_condition(
    node: Node,
    problem: Problem,
    field_kind: Callable[[str], str | None],
    parse_content: Callable[[str], bytes],
    check_regex: Callable[[bytes, bool], str | None],
) -> Condition | None:
    """Parse a rule's `conditions:` node; None if any problem was reported."""
    parser = _Parser(problem, field_kind, parse_content, check_regex)
    cond = parser.parse(node, 0, True)
    if parser.bad:
        return None
    return cond
