"""Suricata match elements (contents, pcres, byte tests in one buffer) and the vpatch
conditions they become.

What it does:
- `Element`: one content / pcre / byte test with its Suricata modifiers, as the converter
  collects them from a rule's options; `pcre_element` and `byte_test_element` read the
  `pcre:` and `byte_test:` option values.
- `chain_condition(field, chain)`: a chain of relative elements in one buffer (the first
  absolute, each later one relative to the one before) -> one condition mapping of the rule
  language (docs/rules.md): a `content`, a `match:` list, an `equals`, or one regex when the
  chain holds a pcre, a byte class or an `isdataat`, so the relative positions are kept
  exactly (Suricata counts `within` from the distance, vpatch from the previous end).
- `header_content(e)`: a content on the whole-header buffer that names its header
  ("User-Agent: ...") -> the same content on that header's field.

What it guarantees: a construct with no exact vpatch equivalent raises `Unconvertible`,
whose `reason` names the keyword or construct (the text before the first colon is the key
the import report counts).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.errors import VpatchError
from gateway.match.suricata.parse import format_content, unquote

__all__ = [
    "Element",
    "Unconvertible",
    "byte_test_element",
    "chain_condition",
    "header_content",
    "number",
    "pcre_element",
]

# pcre buffer flags -> our field ("HEADER": the whole-header buffer).
_PCRE_BUFFERS: Final = {
    "U": "http.uri",
    "I": "http.uri.raw",
    "P": "http.body",
    "M": "http.method",
    "C": "http.header.cookie",
    "K": "http.header.cookie",
    "V": "http.header.user-agent",
    "W": "http.header.host",
    "Z": "http.header.host",
    "H": "HEADER",
    "D": "HEADER",
}
_HEADER_LINE_RE: Final = re.compile(
    rb"\A(?:\r\n)?([A-Za-z0-9!#$%&'*+.^_`|~-]+):[ \t]?(.*)\Z", re.DOTALL
)
_BYTE_TEST_FORMS: Final = frozenset({"string", "hex", "dec", "oct", "dce", "bitmask"})


class Unconvertible(VpatchError):
    """A construct that has no vpatch equivalent; `reason` names it (caught by the importer,
    which reports the rule as skipped for that reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Element:
    """One content / pcre / byte test in a buffer, with its Suricata modifiers (mutable: the
    modifiers that follow it in the rule are set on it one by one)."""

    kind: str  # "content" | "pcre" | "class" | "dotname" (content after dotprefix)
    buffer: str  # our field ("raw", "http.uri", "HEADER", "FILE", ...)
    data: bytes = b""  # content bytes
    regex: str = ""  # pcre text (already flag-wrapped) or class fragment
    nocase: bool = False
    negated: bool = False
    relative: bool = False  # pcre R, or a relative byte test / isdataat
    offset: int | None = None
    depth: int | None = None
    distance: int | None = None
    within: int | None = None
    startswith: bool = False
    endswith: bool = False
    pcre_anchored: bool = False  # relative pcre starting with ^
    min_after: int = 0  # isdataat N,relative on this element


def number(value: str | None, what: str) -> int:
    """An option's integer value (decimal, 0x.., 0o..); Unconvertible naming `what`."""
    if value is None:
        raise Unconvertible(f"{what}: needs a value")
    v = value.strip()
    try:
        return int(v, 0)
    except ValueError:
        raise Unconvertible(
            f"{what}: {v!r} is not a number (byte_extract variables do not map)"
        ) from None


# ------------------------------------------------------------------------ reading elements


def _pcre_flags(flags: str, expr: str, buffer: str) -> tuple[str, str, bool, bool, bool]:
    """(inline flags, buffer, dotall, relative, anchored) of a pcre's trailing flags."""
    inline = ""
    dotall = relative = anchored = False
    for f in flags:
        if f in "imx":
            inline += f
        elif f == "s":
            dotall = True
        elif f == "R":
            relative = True
        elif f in _PCRE_BUFFERS:
            buffer = _PCRE_BUFFERS[f]
        elif f == "A":
            anchored = True
        elif f in "OGE":  # match limit, ungreedy-by-default off, dollar-end: no effect on hits
            if f == "G":
                raise Unconvertible("pcre flag: G (ungreedy) is not supported")
        else:
            raise Unconvertible(f"pcre flag: {f} (sid pcre /{expr[:30]}.../{flags})")
    return inline, buffer, dotall, relative, anchored


def pcre_element(value: str, buffer: str) -> Element:
    """The `pcre:"/expr/flags"` option in `buffer` (a buffer flag may name another)."""
    text, negated = unquote(value)
    if not text.startswith("/"):
        raise Unconvertible(f"pcre: {text[:40]!r} does not start with /")
    end = text.rfind("/")
    if end <= 0:
        raise Unconvertible(f"pcre: {text[:40]!r} has no closing /")
    expr, flags = text[1:end], text[end + 1 :]
    inline, buffer, dotall, relative, anchored = _pcre_flags(flags, expr, buffer)
    if anchored and not expr.startswith("^"):
        expr = "^" + expr
    starts = expr.startswith("^")
    if relative and starts:
        expr = expr[1:]
    group = inline + ("" if dotall else "-s")
    wrapped = f"(?{group}:{expr})" if group else f"(?:{expr})"
    return Element(
        "pcre",
        buffer,
        regex=wrapped,
        negated=negated,
        relative=relative,
        pcre_anchored=relative and starts,
    )


def _placed(elem: Element, relative: bool, off: int, size: int) -> Element:
    """`elem` at byte `off` (from the start, or after the previous match when relative)."""
    if relative:
        elem.distance, elem.within = off, size
    else:
        elem.offset, elem.depth = off, size
    return elem


def byte_test_element(value: str, buffer: str) -> Element:
    """`byte_test` with `=` on 1, 2 or 4 bytes (-> a content) or a 1-byte comparison (-> a
    byte class); other forms are Unconvertible."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) < 4:
        raise Unconvertible(f"byte_test: {value!r} has fewer than 4 parts")
    count, op, target, offset_text = parts[:4]
    flags = set(parts[4:])
    if flags & _BYTE_TEST_FORMS or any(f.startswith("bitmask") for f in flags):
        raise Unconvertible(f"byte_test: string/dce/bitmask form ({value})")
    n = number(count, "byte_test")
    negate = op.startswith("!")
    op = op.lstrip("!")
    val = number(target, "byte_test")
    off = number(offset_text, "byte_test")
    relative = "relative" in flags
    if off < 0:
        raise Unconvertible(f"byte_test: negative offset {off}")
    endian: Literal["little", "big"] = "little" if "little" in flags else "big"
    if op == "=" and not negate and n in (1, 2, 4) and 0 <= val < 1 << (8 * n):
        data = val.to_bytes(n, endian)
        return _placed(Element("content", buffer, data=data, relative=relative), relative, off, n)
    if n == 1 and op in ("<", ">", "<=", ">=", "=") and 0 <= val <= 255:
        lo, hi = {"<": (0, val - 1), "<=": (0, val), ">": (val + 1, 255), ">=": (val, 255)}.get(
            op, (val, val)
        )
        if negate:
            raise Unconvertible(f"byte_test: negated comparison ({value})")
        if lo > hi:
            raise Unconvertible(f"byte_test: never true ({value})")
        elem = Element("class", buffer, regex=f"[\\x{lo:02x}-\\x{hi:02x}]", relative=relative)
        return _placed(elem, relative, off, 1)
    raise Unconvertible(f"byte_test: multi-byte {op} comparison ({value})")


def header_content(e: Element) -> tuple[str, Element]:
    """A content on the whole-header buffer that names its header -> (field, content)."""
    m = _HEADER_LINE_RE.match(e.data)
    if e.kind != "content" or m is None or not m.group(2):
        shown = e.data[:40] if e.kind == "content" else e.regex[:40]
        raise Unconvertible(f"http.header content not tied to one header name: {shown!r}")
    name, rest = m.group(1).decode("ascii").lower(), m.group(2)
    endswith = rest.endswith(b"\r\n")
    if endswith:
        rest = rest[:-2]
    if b"\r" in rest or b"\n" in rest or not rest:
        raise Unconvertible(f"http.header content spans header lines: {e.data[:40]!r}")
    new = Element("content", f"http.header.{name}", data=rest, nocase=e.nocase, negated=e.negated)
    new.endswith = endswith or e.endswith
    # "Name: value" anywhere in the header block: the value starts right after the colon,
    # unless the content does not start at the beginning of the name (no leading CRLF and an
    # offset/distance would say so; Suricata writes headers one per line).
    new.startswith = True
    return new.buffer, new


# --------------------------------------------------------------------- chains -> conditions


def _literal(data: bytes, nocase: bool) -> str:
    out = []
    for b in data:
        c = chr(b)
        if nocase and c.isascii() and c.isalpha():
            out.append(f"[{c.upper()}{c.lower()}]")
        elif c.isascii() and (c.isalnum() or c == "_"):
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def _gap(low: int, high: int | None) -> str:
    if high is None:
        return ".*" if low == 0 else f".{{{low},}}"
    if low == high:
        return "" if low == 0 else f".{{{low}}}"
    return f".{{{low},{high}}}"


def _elem_len(e: Element) -> int | None:
    return len(e.data) if e.kind == "content" else 1 if e.kind == "class" else None


def _lead(e: Element) -> str:
    """The regex before the chain's first element: a start anchor when it has offset/depth."""
    if e.offset is None and e.depth is None:
        return ""
    size = _elem_len(e)
    if size is None:
        raise Unconvertible("pcre: offset/depth on a pcre")
    low = e.offset or 0
    high = None if e.depth is None else low + e.depth - size
    return "^" + (_gap(low, high) if high is not None else f".{{{low},}}")


def _between(e: Element) -> str:
    """The regex between a later element of a chain and the one before it."""
    if e.kind == "pcre":
        return "" if e.pcre_anchored else ".*"
    size = _elem_len(e)
    assert size is not None
    low = e.distance or 0
    if low < 0:
        raise Unconvertible(f"negative distance: {low}")
    high = None if e.within is None else low + e.within - size
    if high is not None and high < low:
        raise Unconvertible(f"within shorter than the content: within {e.within}")
    return _gap(low, high)


def _chain_regex(chain: list[Element]) -> str:
    parts: list[str] = []
    for i, e in enumerate(chain):
        parts.append(_lead(e) if i == 0 else _between(e))
        parts.append(_literal(e.data, e.nocase) if e.kind == "content" else e.regex)
        if e.min_after:
            if i != len(chain) - 1:
                raise Unconvertible("isdataat: relative isdataat followed by more relative matches")
            parts.append(f".{{{e.min_after}}}")
        if e.endswith:
            parts.append("\\x2e\\z" if e.buffer == "dns.qname" else "\\z")
    return "".join(parts)


def _item_dict(e: Element, first: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"content": format_content(e.data)}
    if e.nocase:
        d["nocase"] = True
    if first:
        if e.startswith:
            d["offset"], d["depth"] = 0, len(e.data)
        if e.offset is not None:
            d["offset"] = e.offset
        if e.depth is not None:
            d["depth"] = e.depth
    else:
        if e.distance is not None:
            d["distance"] = e.distance
        if e.within is not None:  # Suricata counts within from the distance; we from the end
            d["within"] = (e.distance or 0) + e.within
    return d


def _negated(fieldname: str, chain: list[Element]) -> dict[str, Any]:
    if len(chain) != 1 or any(e.relative for e in chain):
        raise Unconvertible("negated relative match: a negated content/pcre inside a chain")
    if fieldname == "raw":
        raise Unconvertible("negated match on the raw stream: `not` applies to decoded fields only")
    return {"not": chain_condition(fieldname, [dataclasses.replace(chain[0], negated=False)])}


def _equals(fieldname: str, e: Element) -> dict[str, Any]:
    """`content; startswith; endswith` alone: the whole field equals the content."""
    if e.offset or e.depth is not None:
        raise Unconvertible("startswith/endswith with offset/depth")
    value = e.data + (b"." if fieldname == "dns.qname" else b"")
    d: dict[str, Any] = {"field": fieldname, "equals": format_content(value)}
    if e.nocase:
        d["nocase"] = True
    return d


def _contents(fieldname: str, chain: list[Element]) -> dict[str, Any]:
    """A chain of plain contents: one `content` leaf, or a `match:` list."""
    for e in chain:
        if e.distance is not None and e.distance < 0:
            raise Unconvertible(f"negative distance: {e.distance}")
        if e.offset is not None and e.offset < 0:
            raise Unconvertible(f"negative offset: {e.offset}")
    if len(chain) == 1:
        return {"field": fieldname, **_item_dict(chain[0], True)}
    return {"field": fieldname, "match": [_item_dict(e, i == 0) for i, e in enumerate(chain)]}


def _own_regex(fieldname: str, e: Element) -> dict[str, Any] | None:
    """A lone pcre with /s: a regex leaf with its own flags (None: it needs the chain form)."""
    if e.kind != "pcre" or e.min_after or e.endswith:
        return None
    m = re.fullmatch(r"\(\?(i?)(-s)?:(.*)\)", e.regex, re.DOTALL)
    if not m or m.group(2) is not None:
        return None
    d: dict[str, Any] = {"field": fieldname, "regex": m.group(3)}
    if m.group(1):
        d["nocase"] = True
    return d


def chain_condition(fieldname: str, chain: list[Element]) -> dict[str, Any]:
    """One chain of `fieldname` -> one condition mapping of the rule language."""
    first = chain[0]
    if first.negated or any(e.negated for e in chain[1:]):
        return _negated(fieldname, chain)
    for e in chain:
        if e.kind == "dotname":  # ".example.com" on a dot-prefixed name: label boundary
            e.regex = "(?:^|\\x2e)" + _literal(e.data[1:], e.nocase)
            e.kind = "pcre"
    if first.kind == "content" and first.startswith and first.endswith and len(chain) == 1:
        return _equals(fieldname, first)
    if all(e.kind == "content" and not e.endswith and not e.min_after for e in chain):
        return _contents(fieldname, chain)
    for e in chain:
        if e.kind == "content" and e.startswith:
            e.offset, e.depth = 0, len(e.data)
    if len(chain) == 1 and (own := _own_regex(fieldname, first)) is not None:
        return own
    return {"field": fieldname, "regex": _chain_regex(chain)}
