"""vpatch rules -> Suricata 7 rules (the way out when a site outgrows one Python gateway).

What it does:
- `export_rule(rule)` writes one loaded vpatch Rule as one Suricata 7 rule line: raw patterns
  as contents or pcres, field conditions on the sticky buffer of their field, length
  comparisons as urilen/bsize, `equals` as `content; startswith; endswith`, the direction as
  `flow`, severity and default mode in `metadata` (so an import reads them back).
- `export_rules(rules)` writes a .rules file's lines; a rule that cannot be written becomes a
  `# vpatch: ... not exported: reason` comment.
- `items_from_content_regex(expr)` recovers the content sequence a compiled content match was
  built from, so it is written back as contents rather than as a pcre.
- `pcre_text(expr)`: a regex safe inside `pcre:"..."`.

What it guarantees: what `export_rule` writes means what the rule means (tests re-import it and
compare with gateway/match/suricata/compare.py, and check it with `suricata -T`); a condition
with no exact Suricata 7 form is not approximated: the rule is not exported, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from gateway.match.conditions import (
    All,
    Any_,
    Compare,
    ContentItem,
    FieldRef,
    Match,
    Not,
    content_regex,
)
from gateway.match.rules import Rule
from gateway.match.suricata.parse import format_content

__all__ = ["export_rule", "export_rules", "items_from_content_regex", "pcre_text"]

_EXPORT_ACTIONS: Final = {"alert": "alert", "drop": "drop", "reset": "reject"}
_SEVERITY_EXPORT: Final = {
    "critical": "Critical",
    "high": "Major",
    "medium": "Minor",
    "low": "Informational",
}
# Our field -> the Suricata 7 sticky buffer (the reverse of the importer's table).
_EXPORT_BUFFERS: Final = {
    "http.uri": "http.uri",
    "http.uri.raw": "http.uri.raw",
    "http.method": "http.method",
    "http.body": "http.request_body",
    "http.header.user-agent": "http.user_agent",
    "http.header.host": "http.host.raw",
    "http.header.cookie": "http.cookie",
    "http.header.referer": "http.referer",
    "http.header.content-type": "http.content_type",
    "http.header.content-length": "http.content_len",
    "http.header.accept": "http.accept",
    "http.header.accept-encoding": "http.accept_enc",
    "http.header.accept-language": "http.accept_lang",
    "http.header.connection": "http.connection",
    "http.version": "http.protocol",
    "dns.qname": "dns.query",
}
_LENGTH_SYMBOLS: Final = {"lt": "<", "gt": ">", "equals": "", "le": "<", "ge": ">"}
_LITERAL_RE: Final = re.compile(r"(?:[A-Za-z0-9_]|\\x[0-9a-f]{2}|\[([A-Z])([a-z])\])")
_GAP_RE: Final = re.compile(r"\.\*|\.\{(\d+)(?:(,)(\d*))?\}")

Gap = tuple[int, int | None]  # (least, most or None) bytes between two literals


class _NotExportable(Exception):
    """A condition with no Suricata 7 form; args[0] is the reason."""


# ------------------------------------------------------------ compiled content -> contents


def _gap(m: re.Match[str]) -> Gap:
    """A `_GAP_RE` match as (least, most): `.*`, `.{n}`, `.{n,}`, `.{n,m}`."""
    if m.group(0) == ".*":
        return (0, None)
    lo = int(m.group(1))
    return (lo, lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None))


def _literal_run(text: str, pos: int) -> tuple[bytes, bool, int] | None:
    """The literal starting at `pos`: (bytes, nocase, end), or None if it is empty or mixes
    caseless and case-sensitive letters."""
    data = bytearray()
    cases: list[bool] = []
    while pos < len(text):
        m = _LITERAL_RE.match(text, pos)
        if not m:
            break
        tok = m.group(0)
        if tok.startswith("\\x"):
            data.append(int(tok.removeprefix("\\x"), 16))
        elif tok.startswith("["):
            if m.group(1).lower() != m.group(2):
                return None
            data.append(ord(m.group(2)))
            cases.append(True)
        else:
            data.append(ord(tok))
            if tok.isalpha():
                cases.append(False)
        pos = m.end()
    nocase = bool(cases) and all(cases)
    if not data or (cases and any(cases) and not nocase):
        return None
    return bytes(data), nocase, pos


def _item(data: bytes, nocase: bool, first: bool, gap: Gap | None) -> ContentItem:
    """A content item placed by `gap`: for the first, from the start (None: anywhere); for a
    later one, after the previous item."""
    n = len(data)
    if first:
        if gap is None:
            return ContentItem(data, nocase)
        lo, hi = gap
        return ContentItem(data, nocase, lo, None if hi is None else hi - lo + n)
    assert gap is not None
    lo, hi = gap
    return ContentItem(data, nocase, None, None, lo, None if hi is None else hi + n)


def items_from_content_regex(expr: bytes) -> tuple[ContentItem, ...] | None:
    """The content sequence a `conditions.content_regex` expression was built from (one of
    the equivalent ones), or None if `expr` is not of that shape."""
    try:
        text = expr.decode("ascii")
    except UnicodeDecodeError:
        return None
    pos = 0
    gap: Gap | None = None  # before the first item: its offset/depth window
    if text.startswith("^"):
        m = _GAP_RE.match(text, 1)
        gap = _gap(m) if m and m.group(0) != ".*" else (0, 0)
        pos = m.end() if m and m.group(0) != ".*" else 1
    items: list[ContentItem] = []
    while pos < len(text):
        run = _literal_run(text, pos)
        if run is None:
            return None
        data, nocase, pos = run
        items.append(_item(data, nocase, not items, gap))
        if pos >= len(text):
            break
        m = _GAP_RE.match(text, pos)
        if not m:
            return None
        gap, pos = _gap(m), m.end()
        if pos >= len(text):
            return None
    if not items or content_regex(tuple(items)) != expr:
        return None
    return tuple(items)


# -------------------------------------------------------------------------- option text


def _escape_msg(text: str) -> str:
    return re.sub(r'([";\\])', r"\\\1", text)


def pcre_text(expr: str) -> str:
    """A regex safe inside pcre:"...": `"` and `;` as \\x escapes."""
    out: list[str] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr):
            nxt = expr[i + 1]
            out.append("\\x22" if nxt == '"' else "\\x3b" if nxt == ";" else c + nxt)
            i += 2
            continue
        out.append("\\x22" if c == '"' else "\\x3b" if c == ";" else c)
        i += 1
    return "".join(out)


def _content_opts(items: tuple[ContentItem, ...], negated: bool = False) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        out.append(f'content:{"!" if negated else ""}"{format_content(item.data)}"')
        if item.nocase:
            out.append("nocase")
        if i == 0:
            if item.offset:
                out.append(f"offset:{item.offset}")
            if item.depth is not None:
                out.append(f"depth:{item.depth}")
        else:
            out.append(f"distance:{item.distance or 0}")
            # within: ours counts from the previous end, Suricata's from the distance
            if item.within is not None:
                out.append(f"within:{item.within - (item.distance or 0)}")
    return out


def _match_opts(expr: bytes, nocase: bool, items: tuple[ContentItem, ...]) -> list[str]:
    if not items:
        found = None if nocase else items_from_content_regex(expr)
        if found is None:
            return [f'pcre:"/{pcre_text(expr.decode("utf-8"))}/s{"i" if nocase else ""}"']
        items = found
    return _content_opts(items)


# ----------------------------------------------------------------------------- conditions

FieldOpts = dict[str, list[str]]  # sticky buffer -> its options, in order


def _buffer(fieldname: str) -> str:
    buf = _EXPORT_BUFFERS.get(fieldname)
    if buf is None:
        raise _NotExportable(f"field {fieldname}: no Suricata 7 sticky buffer")
    return buf


def _export_match(c: Match, field_opts: FieldOpts, other: list[str]) -> None:
    field_opts.setdefault(_buffer(c.field), []).extend(_match_opts(c.expr, c.nocase, c.items))


def _export_not(c: Not, field_opts: FieldOpts, other: list[str]) -> None:
    if not isinstance(c.item, Match):
        raise _NotExportable("not: over a combinator")
    m = c.item
    buf = _buffer(m.field)
    if len(m.items) == 1 and m.items[0].offset is None and m.items[0].depth is None:
        field_opts.setdefault(buf, []).extend(_content_opts(m.items, negated=True))
        return
    if not m.items:
        flags = "si" if m.nocase else "s"
        text = pcre_text(m.regex.decode("utf-8"))
        field_opts.setdefault(buf, []).append(f'pcre:!"/{text}/{flags}"')
        return
    raise _NotExportable("not: a negated content with modifiers")


def _export_length(c: Compare, value: int, field_opts: FieldOpts, other: list[str]) -> None:
    """`length: true` comparisons: urilen on the URI, bsize on other buffers."""
    sym = _LENGTH_SYMBOLS.get(c.op)
    if sym is None:
        raise _NotExportable(f"field {c.field}: length {c.op}")
    bound = value + (1 if c.op == "le" else -1 if c.op == "ge" else 0)
    if c.field in ("http.uri", "http.uri.raw"):
        suffix = ",raw" if c.field == "http.uri.raw" else ""
        other.append(f"urilen:{sym}{bound}{suffix}")
        return
    field_opts.setdefault(_buffer(c.field), []).append(f"bsize:{sym}{bound}")


def _export_equals(c: Compare, value: bytes, field_opts: FieldOpts) -> None:
    """A whole byte-string field equal to a value: content, startswith, endswith."""
    buf = _buffer(c.field)
    if c.field == "dns.qname":
        if not value.endswith(b"."):
            raise _NotExportable("field dns.qname: equals a name without the root dot")
        value = value[:-1]
    opts = [f'content:"{format_content(value)}"']
    if c.nocase:
        opts.append("nocase")
    field_opts.setdefault(buf, []).extend([*opts, "startswith", "endswith"])


def _export_compare(c: Compare, field_opts: FieldOpts, other: list[str]) -> None:
    if isinstance(c.value, FieldRef):
        raise _NotExportable(f"field {c.field}: comparison with another field")
    if c.field == "dns.opcode" and c.op == "equals" and isinstance(c.value, int):
        other.append(f"dns.opcode:{c.value}")
    elif c.length and isinstance(c.value, int) and c.plus == 0:
        _export_length(c, c.value, field_opts, other)
    elif c.op == "equals" and isinstance(c.value, bytes) and not c.length:
        _export_equals(c, c.value, field_opts)
    else:
        raise _NotExportable(f"field {c.field}: `{c.op}` comparison has no Suricata 7 keyword")


def _export_any(c: Any_, field_opts: FieldOpts, other: list[str]) -> None:
    raise _NotExportable("any: alternatives have no single-rule Suricata equivalent")


def _export_all(c: All, field_opts: FieldOpts, other: list[str]) -> None:
    raise _NotExportable("all: nested `all` below the top level")


_EXPORTERS: Final[dict[type, Callable[..., None]]] = {
    Match: _export_match,
    Not: _export_not,
    Compare: _export_compare,
    Any_: _export_any,
    All: _export_all,
}


# ---------------------------------------------------------------------------- the rule


def _header(rule: Rule, header_proto: str) -> str:
    """`action proto src sport -> dst dport`: the server side carries the rule's ports."""
    ports = rule.ports_text
    ports = f"[{ports}]" if len(rule.ports) > 1 else ports
    if rule.direction == "to_client":
        head = f"any {ports} -> any any"
    elif rule.direction == "both":
        head = f"any any <> any {ports}"
    else:
        head = f"any any -> any {ports}"
    return f"{_EXPORT_ACTIONS[rule.action.value]} {header_proto} {head}"


def _lead(rule: Rule) -> list[str]:
    """msg and flow."""
    flow = []
    if rule.protocol == "tcp":
        flow.append("established")
    if rule.direction != "both":
        flow.append(rule.direction)
    lead = [f'msg:"{_escape_msg(rule.title)}"']
    if flow:
        lead.append("flow:" + ",".join(flow))
    return lead


def _tail(rule: Rule, uses_fields: bool) -> list[str]:
    """references, metadata, sid, rev."""
    tail = [f"reference:cve,{c[4:]}" for c in rule.cves]
    meta = [
        f"signature_severity {_SEVERITY_EXPORT[rule.severity]}",
        f"vpatch_default_mode {rule.default_mode.value}",
    ]
    if rule.app != "raw" and not uses_fields:
        meta.append(f"vpatch_app {rule.app}")
    tail.append("metadata:" + ", ".join(meta))
    return [*tail, f"sid:{rule.id}", "rev:1"]


def export_rule(rule: Rule) -> tuple[str | None, str]:
    """(Suricata 7 rule text, "") or (None, why it cannot be written)."""
    opts: list[str] = []
    for p in rule.patterns:
        if p.kind == "content":
            opts.extend(_content_opts((ContentItem(p.expr, p.nocase),)))
        else:
            opts.extend(_match_opts(p.expr, p.nocase, ()))
    field_opts: FieldOpts = {}
    other: list[str] = []
    cond = rule.conditions
    members = cond.items if isinstance(cond, All) else (cond,) if cond is not None else ()
    for c in members:
        try:
            _EXPORTERS[type(c)](c, field_opts, other)
        except _NotExportable as err:
            return None, str(err.args[0])
    uses_fields = bool(field_opts or other)
    header_proto = rule.app if uses_fields and rule.app in ("http", "dns") else rule.protocol
    for buf, bopts in field_opts.items():  # after the raw ones: each buffer resets the buffer
        opts.append(buf)
        opts.extend(bopts)
    opts.extend(other)
    if not opts:
        return None, "no condition that Suricata can express"
    body = "; ".join(_lead(rule) + opts + _tail(rule, uses_fields))
    return f"{_header(rule, header_proto)} ({body};)", ""


def export_rules(rules: Iterable[Rule]) -> tuple[list[str], int, int]:
    """Lines of a .rules file (skipped rules as `# vpatch: ...` comments), written, skipped."""
    lines: list[str] = []
    written = skipped = 0
    for rule in rules:
        text, why = export_rule(rule)
        if text is None:
            lines.append(f"# vpatch: rule {rule.id} ({rule.title}) not exported: {why}")
            skipped += 1
        else:
            lines.append(text)
            written += 1
    return lines, written, skipped
