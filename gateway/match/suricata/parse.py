"""The Suricata/Snort rule language as text: rule lines -> `SuricataRule` records, and the
quoting both ways (option values in, content bytes out).

What it does:
- `parse_rules_text(text, source)` splits a .rules file into `SuricataRule` records: header
  (action, protocol, addresses, ports, direction) and the option list, with Suricata's quoting
  (`"..."`, `\\"`, `\\;`, `\\\\`), line continuations and `#`-disabled rules.
- `parse_rule(text)` parses one (joined) rule line.
- `unquote`, `unescape`: an option value's inner text; `format_content`: bytes written in
  content syntax that both Suricata and vpatch read back.

What it guarantees: `parse_rules_text` never raises on a malformed rule line: the line is
reported (`ParseProblem`, with source and line) and skipped; `parse_rule` raises ValueError
naming what is malformed. Option values are kept as written (quotes and escapes included).
Bound: `MAX_RULE_LINE_BYTES`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_RULE_LINE_BYTES",
    "ParseProblem",
    "SuricataOption",
    "SuricataRule",
    "format_content",
    "parse_rule",
    "parse_rules_text",
    "unescape",
    "unquote",
]

MAX_RULE_LINE_BYTES: Final = 65536  # one (joined) rule line

_RULE_START_RE: Final = re.compile(r"\A(alert|drop|reject|rejectsrc|rejectdst|rejectboth|pass)\s")
_OPTION_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True, slots=True)
class SuricataOption:
    """One `name[:value];` option; `value` as written (quotes and escapes kept), None if bare."""

    name: str
    value: str | None


@dataclass(frozen=True, slots=True)
class SuricataRule:
    """One parsed rule: its header words and options, and where it was read."""

    action: str
    protocol: str
    src: str
    src_ports: str
    bidirectional: bool
    dst: str
    dst_ports: str
    options: tuple[SuricataOption, ...]
    source: str
    line: int
    enabled: bool = True

    def get(self, name: str) -> str | None:
        """The first value of option `name` (None: absent or bare)."""
        for opt in self.options:
            if opt.name == name:
                return opt.value
        return None

    @property
    def sid(self) -> int | None:
        value = self.get("sid")
        return int(value) if value is not None and value.strip().isdigit() else None


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """A rule line that does not parse: where, and why."""

    source: str
    line: int
    reason: str


def _split_header(text: str) -> list[str]:
    """Header words, keeping bracketed lists ([80, 443]) together."""
    words: list[str] = []
    cur = ""
    depth = 0
    for c in text:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        if c.isspace() and depth == 0:
            if cur:
                words.append(cur)
                cur = ""
        else:
            cur += c
    if cur:
        words.append(cur)
    return words


def _option_value(body: str, start: int, name: str) -> tuple[str, int]:
    """The value starting at `start` (after the colon) up to the `;` outside quotes that ends
    it: (value stripped, index of that `;`). A backslash keeps the next character."""
    n = len(body)
    k = start
    in_quote = False
    chars: list[str] = []
    while k < n:
        c = body[k]
        if c == "\\" and k + 1 < n:
            chars.append(body[k : k + 2])
            k += 2
            continue
        if c == '"':
            in_quote = not in_quote
        elif c == ";" and not in_quote:
            return "".join(chars).strip(), k
        chars.append(c)
        k += 1
    raise ValueError(f"option {name!r} is not terminated by ';'")


def _parse_options(body: str) -> list[SuricataOption]:
    """`name:value; name; ...` with quotes and backslash escapes; ValueError if malformed."""
    out: list[SuricataOption] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i].isspace():
            i += 1
        if i >= n:
            break
        j = i
        while j < n and body[j] not in ":;":
            j += 1
        name = body[i:j].strip()
        if not name or not _OPTION_NAME_RE.fullmatch(name):
            raise ValueError(f"bad option name {body[i:j]!r} at column {i}")
        if j >= n:
            raise ValueError(f"option {name!r} is not terminated by ';'")
        if body[j] == ";":
            out.append(SuricataOption(name, None))
            i = j + 1
            continue
        value, end = _option_value(body, j + 1, name)
        out.append(SuricataOption(name, value))
        i = end + 1
    return out


def parse_rule(
    text: str, source: str = "<rule>", line: int = 0, enabled: bool = True
) -> SuricataRule:
    """Parse one rule line; ValueError naming what is malformed."""
    if len(text) > MAX_RULE_LINE_BYTES:
        raise ValueError(f"rule is {len(text)} characters, over {MAX_RULE_LINE_BYTES}")
    open_at = text.find("(")
    if open_at < 0 or not text.rstrip().endswith(")"):
        raise ValueError("no (options) part")
    words = _split_header(text[:open_at])
    if len(words) != 7:
        raise ValueError(f"header has {len(words)} words, expected 7: {text[:open_at].strip()!r}")
    action, proto, src, sport, arrow, dst, dport = words
    if arrow not in ("->", "<>"):
        raise ValueError(f"direction {arrow!r} is not -> or <>")
    options = _parse_options(text[open_at + 1 : text.rstrip().rfind(")")])
    return SuricataRule(
        action.lower(),
        proto.lower(),
        src,
        sport,
        arrow == "<>",
        dst,
        dport,
        tuple(options),
        source,
        line,
        enabled,
    )


def parse_rules_text(
    text: str, source: str = "<rules>"
) -> tuple[list[SuricataRule], list[ParseProblem]]:
    """Every rule of a .rules file; `#`-commented rules come back with enabled=False."""
    rules: list[SuricataRule] = []
    problems: list[ParseProblem] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        whole = (pending + raw).strip()
        pending = ""
        enabled = True
        if whole.startswith("#"):
            whole = whole.lstrip("#").strip()
            enabled = False
            if not (_RULE_START_RE.match(whole) and "sid:" in whole):
                continue  # a plain comment
        if not whole:
            continue
        try:
            rules.append(parse_rule(whole, source, start, enabled))
        except ValueError as err:
            problems.append(ParseProblem(source, start, str(err)))
    return rules, problems


def unquote(value: str) -> tuple[str, bool]:
    """(inner text, negated) of `"..."` or `!"..."`; escapes kept."""
    v = value.strip()
    negated = v.startswith("!")
    if negated:
        v = v[1:].strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v, negated


def unescape(text: str) -> str:
    """Backslash escapes removed (`\\"` -> `"`)."""
    return re.sub(r"\\(.)", r"\1", text)


def format_content(data: bytes) -> str:
    """Bytes in Suricata content syntax that both Suricata and vpatch accept: printable ASCII
    as text, and `"`, `;`, `\\`, `|`, `:` and the rest as |hex|."""
    out: list[str] = []
    in_hex = False
    for b in data:
        if 0x20 <= b < 0x7F and b not in b'"|;\\:':
            if in_hex:
                out.append("|")
                in_hex = False
            out.append(chr(b))
        else:
            out.append(f" {b:02X}" if in_hex else f"|{b:02X}")
            in_hex = True
    if in_hex:
        out.append("|")
    return "".join(out)
