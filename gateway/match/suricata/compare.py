"""Two vpatch rules compared by meaning: what the export/import round trip must keep.

What it does: `rule_differences(a, b)` lists what differs between two loaded Rules in what
they match and do (id, title, CVEs, severity, action, protocol, ports, direction, default mode,
app, raw patterns, conditions), ignoring how it is written: the order of `all` members, a
content written as a content or as its compiled regex, `le N` versus `lt N+1`, and `;` or `"`
written as \\x escapes (as the export writes them).

What it guarantees: an empty list means the rules are equivalent for the matcher; each entry
names the attribute and both values.
"""

from __future__ import annotations

from typing import Any

from gateway.match.conditions import (
    All,
    Any_,
    Compare,
    Condition,
    ContentItem,
    Match,
    content_regex,
)
from gateway.match.rules import Rule
from gateway.match.suricata.export import pcre_text

__all__ = ["rule_differences"]

_SAME_ATTRIBUTES = ("id", "title", "cves", "severity", "action", "protocol", "ports",
                    "direction", "default_mode")  # fmt: skip


def _canon_regex(expr: bytes) -> bytes:
    """`;` and `"` written as \\x escapes (as export writes them): same meaning."""
    try:
        return pcre_text(expr.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:
        return expr


def _canon_cond(c: Condition | None) -> Any:
    if c is None:
        return None
    if isinstance(c, Match):
        return ("match", c.field, _canon_regex(c.expr), c.nocase)
    if isinstance(c, Compare):
        op, value = c.op, c.value
        if isinstance(value, int) and op == "le":
            op, value = "lt", value + 1
        elif isinstance(value, int) and op == "ge":
            op, value = "gt", value - 1
        return ("cmp", c.field, op, value, c.plus, c.length, c.nocase)
    if isinstance(c, All):
        return ("all", frozenset(_canon_cond(i) for i in c.items))
    if isinstance(c, Any_):
        return ("any", frozenset(_canon_cond(i) for i in c.items))
    return ("not", _canon_cond(c.item))


def _canon_top(c: Condition | None) -> Any:
    """A rule's conditions as an `all` (one condition is an `all` of one)."""
    canon = _canon_cond(c)
    if isinstance(canon, tuple) and canon[0] != "all":
        return ("all", frozenset({canon}))
    return canon


def _canon_patterns(rule: Rule) -> frozenset[tuple[bytes, bool]]:
    out = set()
    for p in rule.patterns:
        if p.kind == "content":
            out.add((content_regex((ContentItem(p.expr, p.nocase),)), False))
        else:
            out.add((_canon_regex(p.expr), p.nocase))
    return frozenset(out)


def rule_differences(a: Rule, b: Rule) -> list[str]:
    """What differs in meaning between two rules (empty: equivalent)."""
    diffs = []
    for name in _SAME_ATTRIBUTES:
        if getattr(a, name) != getattr(b, name):
            diffs.append(f"{name}: {getattr(a, name)!r} != {getattr(b, name)!r}")
    if a.conditions is not None and a.app != b.app:
        diffs.append(f"app: {a.app!r} != {b.app!r}")
    if _canon_patterns(a) != _canon_patterns(b):
        diffs.append(f"raw patterns: {sorted(_canon_patterns(a))} != {sorted(_canon_patterns(b))}")
    ca, cb = _canon_top(a.conditions), _canon_top(b.conditions)
    if ca != cb:
        diffs.append(f"conditions: {ca!r} != {cb!r}")
    return diffs
