"""Why a rule fired: the field, the condition in short and an excerpt of the matching bytes.

What it does: the engine calls these only when a rule fires (never on the per-packet path), to
fill the event's `field`, `condition` and `excerpt` (EVE `vpatch.field`, `vpatch.condition`,
`vpatch.excerpt`; shown by the UI's event detail, docs/webui.md):
- `explain_raw(rule, pattern_index, data, end)`: a raw stream/datagram match. `field` is
  "raw", `condition` the pattern that completed the rule (content or regex, shortened), the
  excerpt the bytes of `data` around the match end (EXCERPT_BEFORE before, EXCERPT_AFTER after).
- `explain_fields(rule, fields)`: a field-condition rule on a decoded record. The first leaf of
  the condition tree that holds on the record names the field; the excerpt is that field's
  value (or the variant's that matched, gateway/decode/registry.py) around the match (content
  leaves: located with the content semantics of gateway.match.conditions `reference_match`;
  regex leaves with Python `re` when the expression compiles there), else its first
  MAX_EXCERPT bytes; integers are shown in decimal.
- `request_target(data, end)`: the request target of the last HTTP/1.x request line (RFC 9112
  section 3) that starts before `end` in `data`: the URI of a raw rule's match on an HTTP
  stream, when it lies in the bytes at hand.
Bytes in condition texts are escaped as the events write excerpts (gateway.events.eve
`escape_bytes`).

What it guarantees: nothing here raises on any rule or input (bad regexes, odd fields, offsets
outside `data`); every excerpt is at most MAX_EXCERPT bytes, every condition text at most
MAX_CONDITION_TEXT characters, every target at most MAX_TARGET bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.decode.registry import MAX_VARIANTS, variant_key
from gateway.events.eve import escape_bytes
from gateway.match.conditions import (
    RAW,
    All,
    Any_,
    Compare,
    Condition,
    ContentItem,
    FieldRef,
    Match,
    Not,
    evaluate,
    reference_match,
)
from gateway.match.rules import Rule

__all__ = [
    "EXCERPT_AFTER",
    "EXCERPT_BEFORE",
    "MAX_CONDITION_TEXT",
    "MAX_EXCERPT",
    "MAX_TARGET",
    "Why",
    "explain_fields",
    "explain_raw",
    "request_target",
]

MAX_EXCERPT: Final = 64  # bytes of matching data kept in an event
EXCERPT_BEFORE: Final = 48  # of which before the match end
EXCERPT_AFTER: Final = MAX_EXCERPT - EXCERPT_BEFORE
MAX_CONDITION_TEXT: Final = 120  # characters of the condition's short form
MAX_TARGET: Final = 1024  # bytes of a request target kept (URI exceptions, EVE http.url)
MAX_REQUEST_SEARCH: Final = 16384  # bytes before the match end searched for a request line
# the match starts where the request line does (not at the newline before it)
_REQUEST_LINE: Final = re.compile(rb"(?:^|(?<=\n))[A-Z][A-Z_-]{2,15} ([^\s]+) HTTP/\d")


@dataclass(frozen=True, slots=True)
class Why:
    """What matched: field name ("raw" for stream content), condition, excerpt (raw bytes)."""

    field: str
    condition: str
    excerpt: bytes


def _short(text: str) -> str:
    return text if len(text) <= MAX_CONDITION_TEXT else text[: MAX_CONDITION_TEXT - 3] + "..."


def _content_text(data: bytes) -> str:
    """Suricata-style content: printable text, other bytes as |hh hh|."""
    parts: list[str] = []
    hexrun: list[str] = []
    for b in data[:MAX_CONDITION_TEXT]:
        if 0x20 <= b < 0x7F and b not in b'|";\\':
            if hexrun:
                parts.append("|" + " ".join(hexrun) + "|")
                hexrun = []
            parts.append(chr(b))
        else:
            hexrun.append(f"{b:02X}")
    if hexrun:
        parts.append("|" + " ".join(hexrun) + "|")
    return "".join(parts)


def _window(value: bytes, end: int | None) -> bytes:
    if end is None:
        return value[:MAX_EXCERPT]
    end = max(0, min(end, len(value)))
    start = max(0, end - EXCERPT_BEFORE)
    return value[start : min(len(value), start + MAX_EXCERPT, end + EXCERPT_AFTER)]


def explain_raw(rule: Rule, pattern_index: int | None, data: bytes, end: int | None) -> Why:
    """A raw match: `end` is the match end as an offset into `data` (None: unknown)."""
    condition = ""
    if pattern_index is not None and 0 <= pattern_index < len(rule.patterns):
        p = rule.patterns[pattern_index]
        if p.kind == "content":
            condition = f'content "{_content_text(p.expr)}"'
        else:
            condition = "regex /" + escape_bytes(p.expr) + "/"
        if p.nocase:
            condition += " nocase"
    elif rule.patterns:
        condition = f"{len(rule.patterns)} raw patterns"
    if end is None or not 0 < end <= len(data):
        excerpt = data[-MAX_EXCERPT:] if end is None else b""
    else:
        excerpt = _window(data, end)
    return Why(RAW, _short(condition), excerpt)


def _leaf_text(leaf: Match | Compare) -> str:
    if isinstance(leaf, Match):
        if leaf.items:
            text = " then ".join(
                f'content "{_content_text(i.data)}"' + (" nocase" if i.nocase else "")
                for i in leaf.items
            )
        else:
            text = "regex /" + escape_bytes(leaf.regex or leaf.expr) + "/"
            if leaf.nocase:
                text += " nocase"
        return text
    left = f"length({leaf.field})" if leaf.length else leaf.field
    if leaf.plus:
        left += f" + {leaf.plus}"
    value = leaf.value
    shown: str
    if isinstance(value, FieldRef):
        shown = value.field + (f" + {value.plus}" if value.plus else "")
    elif isinstance(value, frozenset):
        members = sorted(
            (escape_bytes(v) if isinstance(v, bytes) else str(v) for v in value), key=str
        )
        shown = "[" + ", ".join(members[:8]) + (", ..." if len(members) > 8 else "") + "]"
    elif isinstance(value, bytes):
        shown = '"' + escape_bytes(value) + '"'
    else:
        shown = str(value)
    return f"{left} {leaf.op} {shown}" + (" nocase" if leaf.nocase else "")


def _content_end(items: tuple[ContentItem, ...], value: bytes) -> int | None:
    """End offset of the first occurrence of the content sequence's first item that starts a
    full match (reference semantics), or None."""
    first = items[0]
    hay = value.lower() if first.nocase else value
    needle = first.data.lower() if first.nocase else first.data
    start = first.offset or 0
    limit = len(value) if first.depth is None else min(len(value), start + first.depth)
    pos = hay.find(needle, start, limit)
    tries = 0
    while pos >= 0 and tries < 64:
        tries += 1
        tail = value[pos:]
        head = ContentItem(first.data, first.nocase, depth=len(first.data))  # at pos, no later
        if reference_match((head, *items[1:]), tail):
            return pos + len(first.data)
        pos = hay.find(needle, pos + 1, limit)
    return None


def _regex_end(leaf: Match, value: bytes) -> int | None:
    try:
        flags = re.DOTALL | (re.IGNORECASE if leaf.nocase else 0)
        found = re.search(leaf.regex or leaf.expr, value, flags)
    except (re.error, ValueError, TypeError, OverflowError):
        return None
    return found.end() if found is not None else None


def _forms(fields: Mapping[str, int | bytes], name: str) -> list[bytes]:
    """The byte-string value of field `name` and its variants (registry `variant_key`)."""
    out: list[bytes] = []
    for key in (name, *(variant_key(name, n) for n in range(1, MAX_VARIANTS + 1))):
        value = fields.get(key)
        if not isinstance(value, bytes):
            break
        out.append(value)
    return out


def _holds(
    leaf: Match | Compare, fields: Mapping[str, int | bytes]
) -> tuple[bool, int | None, bytes | None]:
    """(does the leaf hold on the record, match end when known, the value it matched: the
    field's own or one of its variants)."""
    if isinstance(leaf, Compare):
        return evaluate(leaf, fields, frozenset()), None, None
    forms = _forms(fields, leaf.field)
    if not forms:
        return False, None, None
    for value in forms:
        end = _content_end(leaf.items, value) if leaf.items else _regex_end(leaf, value)
        if end is not None:
            return True, end, value
    if leaf.items:
        return False, None, None
    return True, None, forms[0]  # Hyperscan said it matched; Python re may not speak the syntax


def _leaves(cond: Condition, negated: bool, out: list[Match | Compare]) -> None:
    if isinstance(cond, Match | Compare):
        if not negated and cond.field != RAW:
            out.append(cond)
    elif isinstance(cond, All | Any_):
        for item in cond.items:
            _leaves(item, negated, out)
    elif isinstance(cond, Not):
        _leaves(cond.item, not negated, out)


def explain_fields(rule: Rule, fields: Mapping[str, int | bytes]) -> Why:
    """A field-condition match on one decoded record (see the module comment)."""
    leaves: list[Match | Compare] = []
    if rule.conditions is not None:
        _leaves(rule.conditions, False, leaves)
    chosen: Match | Compare | None = None
    chosen_end: int | None = None
    chosen_value: bytes | None = None
    for leaf in leaves:  # pattern leaves first: they say most about the bytes
        if isinstance(leaf, Match):
            ok, end, matched = _holds(leaf, fields)
            if ok:
                chosen, chosen_end, chosen_value = leaf, end, matched
                break
    if chosen is None:
        for leaf in leaves:
            if isinstance(leaf, Compare) and _holds(leaf, fields)[0]:
                chosen = leaf
                break
    if chosen is None and leaves:
        chosen = leaves[0]
    if chosen is None:
        return Why(rule.app, "", b"")
    value = chosen_value if chosen_value is not None else fields.get(chosen.field)
    if isinstance(value, bytes):
        excerpt = _window(value, chosen_end)
    elif isinstance(value, int):
        excerpt = str(value).encode()
    else:
        excerpt = b""
    return Why(chosen.field, _short(_leaf_text(chosen)), excerpt)


def request_target(data: bytes, end: int) -> bytes | None:
    """The target of the last HTTP/1.x request line starting before `end` in `data` (at most
    MAX_REQUEST_SEARCH bytes back), or None."""
    end = max(0, min(end, len(data)))
    lo = max(0, end - MAX_REQUEST_SEARCH)
    found = None
    for m in _REQUEST_LINE.finditer(data, lo, len(data)):
        if m.start() >= end:
            break
        found = m
    if found is None:
        return None
    return found.group(1)[:MAX_TARGET]
