"""Suricata/Snort rule import and export: the subset of the Suricata 7 rule language that maps
onto vpatch rules (docs/rules.md), in both directions. docs/suricata.md lists what maps.

What it does:
- `parse_rules_text(text, source)` splits a .rules file into `SuricataRule` records: header
  (action, protocol, addresses, ports, direction) and the option list, with Suricata's quoting
  (`"..."`, `\\"`, `\\;`, `\\\\`), line continuations and `#`-disabled rules.
- `convert(rule)` turns one parsed rule into a vpatch rule as plain data (the YAML mapping of
  docs/rules.md) or a list of reasons why it cannot, each naming the keyword or construct.
  Contents and their modifiers (offset, depth, distance, within, nocase, startswith, endswith,
  negation on decoded fields), pcre (flags i s m x, R relative, U I P M C K V W Z buffers),
  sticky buffers and the older http_* modifiers, flow direction, 1-byte and equality
  byte_test, isdataat at the end of a chain, urilen/bsize, dns.opcode, sid/msg/reference/
  classtype/metadata (cve, signature_severity) and the header's ports are converted. A chain
  of relative matches becomes one `match:` list, or one regex when it holds a pcre or a byte
  test, so the relative positions are kept exactly.
- `import_rules(rules)` converts many, drops duplicate sids, and checks every result with the
  real loader (`gateway.match.rules.load_rules`), so what it returns validates.
- `export_rule(rule)` writes one vpatch Rule as a Suricata 7 rule, or says why it cannot.
- `rule_differences(a, b)` compares two loaded Rules by meaning (used for the round trip).

What it guarantees: nothing here raises on a malformed rule line: a line that does not parse is
reported (`ParseProblem`, with source and line) and skipped. Bounds: `MAX_RULE_LINE_BYTES`,
`MAX_PORT_RANGE` (a port range wider than this is refused rather than expanded).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode import registry as app_registry
from gateway.errors import RuleError
from gateway.match.conditions import (
    All,
    Any_,
    Compare,
    Condition,
    ContentItem,
    FieldRef,
    Match,
    Not,
    content_regex,
)
from gateway.match.rules import Rule, direction_text, load_rules, parse_content
from gateway.vocabulary import Action, Direction, Mode

__all__ = [
    "MAX_PORT_RANGE",
    "MAX_RULE_LINE_BYTES",
    "Conversion",
    "ImportReport",
    "ParseProblem",
    "SuricataOption",
    "SuricataRule",
    "convert",
    "export_rule",
    "export_rules",
    "format_content",
    "import_rules",
    "items_from_content_regex",
    "parse_rules_text",
    "rule_differences",
]

MAX_RULE_LINE_BYTES: Final = 65536  # one (joined) rule line
MAX_PORT_RANGE: Final = 1024  # a port range is expanded only up to this many ports

_ACTIONS: Final = {
    "alert": Action.ALERT,
    "drop": Action.DROP,
    "reject": Action.RESET,
    "rejectsrc": Action.RESET,
    "rejectdst": Action.RESET,
    "rejectboth": Action.RESET,
}
_EXPORT_ACTIONS: Final = {Action.ALERT: "alert", Action.DROP: "drop", Action.RESET: "reject"}
_MODES: Final = {m.value: m for m in Mode}

# Header protocol -> (our transport, app that gives default ports when the header says `any`).
_HEADER_PROTOS: Final[dict[str, tuple[str, str | None]]] = {
    "tcp": ("tcp", None),
    "tcp-pkt": ("tcp", None),
    "tcp-stream": ("tcp", None),
    "udp": ("udp", None),
    "http": ("tcp", "http"),
    "http1": ("tcp", "http"),
    "smb": ("tcp", "smb"),
    "tls": ("tcp", "tls"),
    "ssl": ("tcp", "tls"),
    "dns": ("udp", "dns"),
    "dcerpc": ("tcp", "dcerpc"),
    "rdp": ("tcp", "rdp"),
    "ftp": ("tcp", "ftp"),
}

# Suricata's default port variables (suricata.yaml); $HTTP_PORTS is the http app's ports.
_PORT_VARS: Final[dict[str, str]] = {
    "ORACLE_PORTS": "1521",
    "SSH_PORTS": "22",
    "DNP3_PORTS": "20000",
    "MODBUS_PORTS": "502",
    "FTP_PORTS": "21",
    "FILE_DATA_PORTS": "[$HTTP_PORTS,110,143]",
    "GENEVE_PORTS": "6081",
    "VXLAN_PORTS": "4789",
    "TEREDO_PORTS": "3544",
}

# Sticky buffers and content modifiers -> our field. "HEADER": the whole-header buffer, which
# maps only when the content names its header ("User-Agent: ...").
_BUFFERS: Final[dict[str, str]] = {
    "http.uri": "http.uri",
    "http_uri": "http.uri",
    "http.uri.raw": "http.uri.raw",
    "http_raw_uri": "http.uri.raw",
    "http.method": "http.method",
    "http_method": "http.method",
    "http.request_body": "http.body",
    "http_client_body": "http.body",
    "client_body": "http.body",
    "http.user_agent": "http.header.user-agent",
    "http_user_agent": "http.header.user-agent",
    "http.host": "http.header.host",
    "http_host": "http.header.host",
    "http.host.raw": "http.header.host",
    "http_raw_host": "http.header.host",
    "http.cookie": "http.header.cookie",
    "http_cookie": "http.header.cookie",
    "http.referer": "http.header.referer",
    "http.content_type": "http.header.content-type",
    "http.content_len": "http.header.content-length",
    "http.accept": "http.header.accept",
    "http.accept_enc": "http.header.accept-encoding",
    "http.accept_lang": "http.header.accept-language",
    "http.connection": "http.header.connection",
    "http.protocol": "http.version",
    "http.header": "HEADER",
    "http_header": "HEADER",
    "http.header.raw": "HEADER",
    "http_raw_header": "HEADER",
    "dns.query": "dns.qname",
    "dns_query": "dns.qname",
    "pkt_data": "raw",
    "file_data": "FILE",
    "file.data": "FILE",
}
_CONTENT_MODIFIERS: Final = frozenset(
    k for k in _BUFFERS if "_" in k and "." not in k and k not in ("pkt_data", "file_data")
)
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
# Options that do not change what matches (or only how it is reported or prefiltered).
_IGNORED: Final = frozenset(
    {
        "rev",
        "gid",
        "priority",
        "fast_pattern",
        "rawbytes",
        "target",
        "tag",
        "noalert_never",
        "prefilter",
    }
)
_SEVERITY_META: Final = {
    "critical": "critical",
    "major": "high",
    "minor": "medium",
    "informational": "low",
    "audit": "low",
}
_SEVERITY_EXPORT: Final = {
    "critical": "Critical",
    "high": "Major",
    "medium": "Minor",
    "low": "Informational",
}
_CLASSTYPE_SEVERITY: Final = {
    "attempted-admin": "high",
    "successful-admin": "critical",
    "attempted-user": "high",
    "successful-user": "high",
    "shellcode-detect": "high",
    "trojan-activity": "high",
    "web-application-attack": "high",
    "attempted-dos": "medium",
    "misc-attack": "medium",
    "bad-unknown": "medium",
    "attempted-recon": "low",
    "policy-violation": "low",
    "misc-activity": "low",
    "protocol-command-decode": "low",
}
# Our field -> the Suricata 7 sticky buffer for export (the reverse of _BUFFERS).
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
_HEADER_LINE_RE: Final = re.compile(
    rb"\A(?:\r\n)?([A-Za-z0-9!#$%&'*+.^_`|~-]+):[ \t]?(.*)\Z", re.DOTALL
)
_RULE_START_RE: Final = re.compile(r"\A(alert|drop|reject|rejectsrc|rejectdst|rejectboth|pass)\s")
_CVE_RE: Final = re.compile(r"(?:CVE[-_])?(\d{4})[-_](\d{4,})\Z", re.IGNORECASE)


# --------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class SuricataOption:
    """One `name[:value];` option; `value` as written (quotes and escapes kept), None if bare."""

    name: str
    value: str | None


@dataclass(frozen=True, slots=True)
class SuricataRule:
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
        if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"bad option name {body[i:j]!r} at column {i}")
        if j >= n:
            raise ValueError(f"option {name!r} is not terminated by ';'")
        if body[j] == ";":
            out.append(SuricataOption(name, None))
            i = j + 1
            continue
        k = j + 1
        in_quote = False
        value_chars: list[str] = []
        while k < n:
            c = body[k]
            if c == "\\" and k + 1 < n:
                value_chars.append(body[k : k + 2])
                k += 2
                continue
            if c == '"':
                in_quote = not in_quote
            elif c == ";" and not in_quote:
                break
            value_chars.append(c)
            k += 1
        if k >= n:
            raise ValueError(f"option {name!r} is not terminated by ';'")
        out.append(SuricataOption(name, "".join(value_chars).strip()))
        i = k + 1
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


# ------------------------------------------------------------------------------ conversion


class _Skip(Exception):
    """A construct that has no vpatch equivalent; args[0] is the reason."""


@dataclass(slots=True)
class _Elem:
    """One content / pcre / byte test in a buffer, with its Suricata modifiers."""

    kind: str  # "content" | "pcre" | "class"
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


@dataclass(frozen=True, slots=True)
class Conversion:
    """The result for one Suricata rule: `rule` (YAML-ready mapping) or `reasons`."""

    sid: int | None
    source: str
    line: int
    rule: dict[str, Any] | None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass
class ImportReport:
    total: int = 0
    disabled_seen: int = 0
    converted: list[Conversion] = field(default_factory=list)
    skipped: list[Conversion] = field(default_factory=list)
    parse_problems: list[ParseProblem] = field(default_factory=list)

    def histogram(self) -> list[tuple[str, int]]:
        """Skip reasons (keyword or construct, without the rule-specific detail) by count;
        a rule with several reasons counts once in each."""
        counts: dict[str, int] = {}
        for conv in self.skipped:
            for key in {r.split(":", 1)[0] for r in conv.reasons}:
                counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def warning_histogram(self) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for conv in self.converted:
            for key in {w.split(":", 1)[0] for w in conv.warnings}:
                counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _unquote(value: str) -> tuple[str, bool]:
    """(inner text, negated) of `"..."` or `!"..."`; escapes kept."""
    v = value.strip()
    negated = v.startswith("!")
    if negated:
        v = v[1:].strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v, negated


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _int(value: str | None, what: str) -> int:
    if value is None:
        raise _Skip(f"{what}: needs a value")
    v = value.strip()
    try:
        return int(v, 0)
    except ValueError:
        raise _Skip(f"{what}: {v!r} is not a number (byte_extract variables do not map)") from None


def _ports(spec: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Port list of a header word; `any` -> `default` (empty: no server port known)."""
    spec = spec.strip()
    if spec.startswith("$"):
        name = spec[1:]
        if name == "HTTP_PORTS":
            proto = app_registry.get("http")
            return tuple(sorted(proto.ports)) if proto else (80,)
        if name not in _PORT_VARS:
            raise _Skip(f"port variable: ${name} is not one of Suricata's defaults")
        return _ports(_PORT_VARS[name], default)
    if spec == "any":
        return default
    if spec.startswith("!"):
        raise _Skip(f"negated ports: {spec}")
    if spec.startswith("["):
        if not spec.endswith("]"):
            raise _Skip(f"port list: {spec} is not closed")
        out: set[int] = set()
        depth = 0
        cur = ""
        parts: list[str] = []
        for c in spec[1:-1]:
            if c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            if c == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += c
        parts.append(cur)
        for part in parts:
            got = _ports(part, ())
            if not got:
                raise _Skip(f"port list: {spec} holds `any`")
            out.update(got)
        return tuple(sorted(out))
    if ":" in spec:
        lo_text, hi_text = spec.split(":", 1)
        lo = int(lo_text) if lo_text else 1
        hi = int(hi_text) if hi_text else 65535
        if hi - lo + 1 > MAX_PORT_RANGE:
            raise _Skip(f"port range too wide: {spec} (more than {MAX_PORT_RANGE} ports)")
        return tuple(range(max(lo, 1), hi + 1))
    if not spec.isdigit() or not 1 <= int(spec) <= 65535:
        raise _Skip(f"port: {spec!r} is not a port number")
    return (int(spec),)


def _pcre(value: str, elem_buffer: str) -> _Elem:
    text, negated = _unquote(value)
    if not text.startswith("/"):
        raise _Skip(f"pcre: {text[:40]!r} does not start with /")
    end = text.rfind("/")
    if end <= 0:
        raise _Skip(f"pcre: {text[:40]!r} has no closing /")
    expr, flags = text[1:end], text[end + 1 :]
    buffer = elem_buffer
    inline = ""
    dotall = False
    relative = False
    anchored = False
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
                raise _Skip("pcre flag: G (ungreedy) is not supported")
        else:
            raise _Skip(f"pcre flag: {f} (sid pcre /{expr[:30]}.../{flags})")
    if anchored and not expr.startswith("^"):
        expr = "^" + expr
    starts = expr.startswith("^")
    if relative and starts:
        expr = expr[1:]
    group = inline + ("" if dotall else "-s")
    wrapped = f"(?{group}:{expr})" if group else f"(?:{expr})"
    return _Elem(
        "pcre",
        buffer,
        regex=wrapped,
        negated=negated,
        relative=relative,
        pcre_anchored=relative and starts,
    )


def _byte_test(value: str, buffer: str) -> _Elem:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) < 4:
        raise _Skip(f"byte_test: {value!r} has fewer than 4 parts")
    count, op, target, offset_text = parts[:4]
    flags = set(parts[4:])
    if flags & {"string", "hex", "dec", "oct", "dce", "bitmask"} or any(
        f.startswith("bitmask") for f in flags
    ):
        raise _Skip(f"byte_test: string/dce/bitmask form ({value})")
    n = _int(count, "byte_test")
    negate = op.startswith("!")
    op = op.lstrip("!")
    val = _int(target, "byte_test")
    off = _int(offset_text, "byte_test")
    relative = "relative" in flags
    if off < 0:
        raise _Skip(f"byte_test: negative offset {off}")
    endian: Literal["little", "big"] = "little" if "little" in flags else "big"
    if op == "=" and not negate and n in (1, 2, 4) and 0 <= val < 1 << (8 * n):
        data = val.to_bytes(n, endian)
        elem = _Elem("content", buffer, data=data, relative=relative)
        if relative:
            elem.distance, elem.within = off, n
        else:
            elem.offset, elem.depth = off, n
        return elem
    if n == 1 and op in ("<", ">", "<=", ">=", "=") and 0 <= val <= 255:
        lo, hi = {"<": (0, val - 1), "<=": (0, val), ">": (val + 1, 255), ">=": (val, 255)}.get(
            op, (val, val)
        )
        if negate:
            raise _Skip(f"byte_test: negated comparison ({value})")
        if lo > hi:
            raise _Skip(f"byte_test: never true ({value})")
        elem = _Elem("class", buffer, regex=f"[\\x{lo:02x}-\\x{hi:02x}]", relative=relative)
        if relative:
            elem.distance, elem.within = off, 1
        else:
            elem.offset, elem.depth = off, 1
        return elem
    raise _Skip(f"byte_test: multi-byte {op} comparison ({value})")


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


def _elem_len(e: _Elem) -> int | None:
    return len(e.data) if e.kind == "content" else 1 if e.kind == "class" else None


def _chain_regex(chain: list[_Elem]) -> str:
    parts: list[str] = []
    for i, e in enumerate(chain):
        size = _elem_len(e)
        frag = _literal(e.data, e.nocase) if e.kind == "content" else e.regex
        if i == 0:
            if e.offset is not None or e.depth is not None:
                if size is None:
                    raise _Skip("pcre: offset/depth on a pcre")
                low = e.offset or 0
                high = None if e.depth is None else low + e.depth - size
                parts.append("^" + (_gap(low, high) if high is not None else f".{{{low},}}"))
        else:
            if e.kind == "pcre":
                parts.append("" if e.pcre_anchored else ".*")
            else:
                assert size is not None
                low = e.distance or 0
                if low < 0:
                    raise _Skip(f"negative distance: {low}")
                high = None if e.within is None else low + e.within - size
                if high is not None and high < low:
                    raise _Skip(f"within shorter than the content: within {e.within}")
                parts.append(_gap(low, high))
        parts.append(frag)
        if e.min_after:
            if i != len(chain) - 1:
                raise _Skip("isdataat: relative isdataat followed by more relative matches")
            parts.append(f".{{{e.min_after}}}")
        if e.endswith:
            parts.append("\\x2e\\z" if e.buffer == "dns.qname" else "\\z")
    return "".join(parts)


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


def _item_dict(e: _Elem, first: bool) -> dict[str, Any]:
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


def _chain_condition(fieldname: str, chain: list[_Elem]) -> dict[str, Any]:
    first = chain[0]
    if first.negated or any(e.negated for e in chain[1:]):
        if len(chain) != 1 or any(e.relative for e in chain):
            raise _Skip("negated relative match: a negated content/pcre inside a chain")
        if fieldname == "raw":
            raise _Skip("negated match on the raw stream: `not` applies to decoded fields only")
        pos = dataclasses.replace(first, negated=False)
        return {"not": _chain_condition(fieldname, [pos])}
    for e in chain:
        if e.kind == "dotname":  # ".example.com" on a dot-prefixed name: label boundary
            e.regex = "(?:^|\\x2e)" + _literal(e.data[1:], e.nocase)
            e.kind = "pcre"
    if first.kind == "content" and first.startswith and first.endswith and len(chain) == 1:
        if first.offset or first.depth is not None:
            raise _Skip("startswith/endswith with offset/depth")
        value = first.data + (b"." if fieldname == "dns.qname" else b"")
        d: dict[str, Any] = {"field": fieldname, "equals": format_content(value)}
        if first.nocase:
            d["nocase"] = True
        return d
    plain = all(e.kind == "content" and not e.endswith and not e.min_after for e in chain)
    if plain:
        for e in chain:
            if e.distance is not None and e.distance < 0:
                raise _Skip(f"negative distance: {e.distance}")
            if e.offset is not None and e.offset < 0:
                raise _Skip(f"negative offset: {e.offset}")
        if len(chain) == 1:
            return {"field": fieldname, **_item_dict(first, True)}
        return {"field": fieldname, "match": [_item_dict(e, i == 0) for i, e in enumerate(chain)]}
    for e in chain:
        if e.kind == "content" and e.startswith:
            e.offset, e.depth = 0, len(e.data)
    if first.kind == "pcre" and len(chain) == 1 and not first.min_after and not first.endswith:
        m = re.fullmatch(r"\(\?(i?)(-s)?:(.*)\)", first.regex, re.DOTALL)
        if m and m.group(2) is None:  # /.../s or /.../si: the leaf's own flags
            d = {"field": fieldname, "regex": m.group(3)}
            if m.group(1):
                d["nocase"] = True
            return d
    return {"field": fieldname, "regex": _chain_regex(chain)}


def _header_content(e: _Elem) -> tuple[str, _Elem]:
    """A content on the whole-header buffer that names its header -> (field, content)."""
    m = _HEADER_LINE_RE.match(e.data)
    if e.kind != "content" or m is None or not m.group(2):
        shown = e.data[:40] if e.kind == "content" else e.regex[:40]
        raise _Skip(f"http.header content not tied to one header name: {shown!r}")
    name, rest = m.group(1).decode("ascii").lower(), m.group(2)
    endswith = rest.endswith(b"\r\n")
    if endswith:
        rest = rest[:-2]
    if b"\r" in rest or b"\n" in rest or not rest:
        raise _Skip(f"http.header content spans header lines: {e.data[:40]!r}")
    new = _Elem("content", f"http.header.{name}", data=rest, nocase=e.nocase, negated=e.negated)
    new.endswith = endswith or e.endswith
    # "Name: value" anywhere in the header block: the value starts right after the colon,
    # unless the content does not start at the beginning of the name (no leading CRLF and an
    # offset/distance would say so; Suricata writes headers one per line).
    new.startswith = True
    return new.buffer, new


def convert(rule: SuricataRule, any_ports: tuple[int, ...] = ()) -> Conversion:
    """One Suricata rule -> vpatch rule mapping (see the module docstring), or reasons.
    `any_ports`: the server ports given to a rule whose header says `any` and whose protocol
    implies no app (default: none, such a rule is not converted)."""
    reasons: list[str] = []
    warnings: list[str] = []
    sid = rule.sid
    try:
        out = _convert(rule, reasons, warnings, any_ports)
    except _Skip as err:
        reasons.append(str(err.args[0]))
        out = None
    if reasons:
        return Conversion(sid, rule.source, rule.line, None, tuple(dict.fromkeys(reasons)))
    return Conversion(sid, rule.source, rule.line, out, (), tuple(dict.fromkeys(warnings)))


def _convert(
    rule: SuricataRule, reasons: list[str], warnings: list[str], any_ports: tuple[int, ...]
) -> dict[str, Any] | None:
    if rule.sid is None:
        raise _Skip("sid: missing or not a number")
    if rule.action == "pass":
        raise _Skip("action: pass rules whitelist traffic")
    if rule.action not in _ACTIONS:
        raise _Skip(f"action: {rule.action}")
    if rule.protocol not in _HEADER_PROTOS:
        raise _Skip(f"protocol: {rule.protocol} (only tcp, udp and the apps we decode)")
    transport, header_app = _HEADER_PROTOS[rule.protocol]

    directions = frozenset({Direction.TO_SERVER})
    direction_given = False
    elems: list[_Elem] = []
    buffer = "raw"
    meta_cves: list[str] = []
    refs: list[str] = []
    cves: list[str] = []
    severity: str | None = None
    classtype = ""
    mode = Mode.DETECT
    compares: list[dict[str, Any]] = []
    established = False
    app_from_meta: str | None = None
    dotprefixed: set[str] = set()

    for opt in rule.options:
        name, value = opt.name, opt.value
        try:
            if name in _IGNORED or name == "sid":
                continue
            if name == "msg":
                continue
            if name == "classtype":
                classtype = (value or "").strip()
            elif name == "reference":
                kind, _, ref = (value or "").partition(",")
                if kind.strip().lower() == "cve":
                    m = _CVE_RE.match(ref.strip())
                    if m:
                        cves.append(f"CVE-{m.group(1)}-{m.group(2)}")
                elif ref.strip():
                    refs.append(f"{kind.strip()}: {ref.strip()}")
            elif name == "metadata":
                for pair in (value or "").split(","):
                    key, _, val = pair.strip().partition(" ")
                    key, val = key.strip().lower(), val.strip()
                    if key == "cve":
                        m = _CVE_RE.match(val)
                        if m:
                            meta_cves.append(f"CVE-{m.group(1)}-{m.group(2)}")
                    elif key == "signature_severity" and val.lower() in _SEVERITY_META:
                        severity = _SEVERITY_META[val.lower()]
                    elif key == "vpatch_default_mode" and val in _MODES:
                        mode = _MODES[val]
                    elif key == "vpatch_app":
                        app_from_meta = val
            elif name == "flow":
                for part in (value or "").split(","):
                    p = part.strip()
                    if p in ("to_server", "from_client"):
                        directions, direction_given = frozenset({Direction.TO_SERVER}), True
                    elif p in ("to_client", "from_server"):
                        directions, direction_given = frozenset({Direction.TO_CLIENT}), True
                    elif p == "established":
                        established = True
                    elif p in ("stateless", "only_stream"):
                        pass
                    elif p == "no_stream":
                        warnings.append("flow no_stream: matched on the reassembled stream")
                    else:
                        raise _Skip(f"flow: {p}")
            elif name == "content" or name == "uricontent":
                text, negated = _unquote(value or "")
                try:
                    data = parse_content(text)
                except ValueError as err:
                    raise _Skip(f"content: {text[:40]!r}: {err}") from None
                elem = _Elem("content", "http.uri" if name == "uricontent" else buffer, data=data)
                elem.negated = negated
                if buffer in dotprefixed and name == "content" and data.startswith(b"."):
                    elem.kind = "dotname"  # resolved when its modifiers are known
                elems.append(elem)
            elif name in (
                "nocase",
                "offset",
                "depth",
                "distance",
                "within",
                "startswith",
                "endswith",
            ):
                last = _last(elems, name, want="content")
                if name == "nocase":
                    last.nocase = True
                elif name == "startswith":
                    last.startswith = True
                elif name == "endswith":
                    last.endswith = True
                else:
                    number = _int(value, name)
                    setattr(last, name, number)
                    if name in ("distance", "within"):
                        last.relative = True
            elif name in _CONTENT_MODIFIERS:
                target = _BUFFERS[name]
                last = _last(elems, name, want=None)
                last.buffer = target
            elif name in _BUFFERS:
                buffer = _BUFFERS[name]
            elif name == "dotprefix":
                if buffer != "dns.qname":
                    raise _Skip(f"dotprefix: on the {buffer} buffer")
                dotprefixed.add(buffer)
            elif name == "pcre":
                elems.append(_pcre(value or "", buffer))
            elif name == "byte_test":
                elems.append(_byte_test(value or "", buffer))
            elif name == "isdataat":
                v = (value or "").strip()
                if v.startswith("!"):
                    raise _Skip(f"isdataat: negated ({v})")
                parts = [p.strip() for p in v.split(",")]
                n = _int(parts[0], "isdataat")
                if "relative" in parts[1:]:
                    last = _last(elems, "isdataat", want=None)
                    last.min_after = max(last.min_after, n)
                else:
                    elems.append(_Elem("pcre", buffer, regex=f"^.{{{n}}}"))
            elif name in ("urilen", "bsize"):
                target = "http.uri" if name == "urilen" else buffer
                v = (value or "").strip()
                if name == "urilen" and v.endswith(",raw"):
                    target, v = "http.uri.raw", v[:-4]
                elif name == "urilen" and v.endswith(",norm"):
                    v = v[:-5]
                if target in ("raw", "HEADER", "FILE"):
                    raise _Skip(f"{name}: on the {target} buffer")
                compares.extend(_length_compares(target, v, name))
            elif name == "dns.opcode":
                compares.append({"field": "dns.opcode", "equals": _int(value, "dns.opcode")})
            elif name == "flowbits":
                verb = (value or "").split(",")[0].strip()
                if verb in ("set", "unset", "toggle"):
                    continue
                if verb == "noalert":
                    raise _Skip("flowbits: noalert (a helper rule that never alerts)")
                raise _Skip(f"flowbits: {verb} (depends on another rule's match)")
            elif name in ("threshold", "detection_filter"):
                v = value or ""
                if name == "threshold" and "type limit" in v:
                    continue
                raise _Skip(f"{name}: a rate condition ({v.strip()})")
            else:
                raise _Skip(f"keyword {name}")
        except _Skip as err:
            reasons.append(str(err.args[0]))

    if reasons:
        return None
    if not direction_given and rule.dst_ports.strip() == "any" and rule.src_ports.strip() != "any":
        directions = frozenset({Direction.TO_CLIENT})
    if rule.bidirectional:
        directions = frozenset(Direction)

    # FILE: the request body when the rule inspects requests (Suricata 7), else a response.
    for e in elems:
        if e.buffer == "FILE":
            if directions != {Direction.TO_SERVER}:
                raise _Skip("file_data: response bodies are not decoded")
            e.buffer = "http.body"

    # Chains: per buffer, a new chain starts at every element that is not relative.
    by_buffer: dict[str, list[list[_Elem]]] = {}
    for e in elems:
        chains = by_buffer.setdefault(e.buffer, [])
        if e.relative and chains:
            chains[-1].append(e)
        elif e.relative:
            raise _Skip(f"relative match with nothing before it in buffer {e.buffer}")
        else:
            chains.append([e])
    conditions: list[dict[str, Any]] = []
    for buf, chains in by_buffer.items():
        for chain in chains:
            fieldname = buf
            if buf == "HEADER":
                fieldname, head = _header_content(chain[0])
                rest = []
                for e in chain[1:]:
                    if e.kind == "content" and (b"\r" in e.data or b"\n" in e.data):
                        raise _Skip("http.header relative content spans header lines")
                    e.buffer = fieldname
                    rest.append(e)
                chain = [head, *rest]
                warnings.append("http.header: header name matched caselessly")
            conditions.append(_chain_condition(fieldname, chain))
            if fieldname == "raw" and (chain[0].offset or chain[0].depth is not None):
                warnings.append("raw offset/depth: anchored at the stream start, not the packet")
            if fieldname == "raw" and any(
                e.kind == "pcre" and e.regex.startswith("^.{") for e in chain
            ):
                warnings.append("isdataat absolute: counted from the stream start")
    conditions.extend(compares)
    if not conditions:
        raise _Skip("no content: a rule without content, pcre or field condition")

    fields = {c.get("field", "") for c in conditions} | {
        c["not"]["field"] for c in conditions if "not" in c
    }
    apps = {f.split(".", 1)[0] for f in fields if f and f != "raw"}
    if len(apps) > 1:
        raise _Skip(f"fields of several apps: {sorted(apps)}")
    app = apps.pop() if apps else "raw"
    if app == "dns" and established:
        transport = "tcp"
    if app == "http" and transport != "tcp":
        raise _Skip("http fields on udp")
    default_app = app if app != "raw" else (app_from_meta or header_app)
    default_ports: tuple[int, ...] = ()
    if default_app is not None:
        proto = app_registry.get(default_app)
        if proto is not None:
            default_ports = tuple(sorted(proto.ports))
    server_side = rule.src_ports if directions == {Direction.TO_CLIENT} else rule.dst_ports
    if len(directions) > 1 and server_side.strip() == "any":
        server_side = rule.src_ports
    if not default_ports and any_ports:
        default_ports = any_ports
        if server_side.strip() == "any":
            warnings.append("any ports: server ports taken from --any-ports")
    ports = _ports(server_side, default_ports)
    if not ports:
        raise _Skip(f"header: no server port ({rule.protocol} {server_side} and no app default)")

    title = _unescape(_unquote(rule.get("msg") or "")[0]).strip() or f"Suricata sid {rule.sid}"
    all_cves = list(dict.fromkeys(cves + meta_cves))
    if severity is None:
        severity = _CLASSTYPE_SEVERITY.get(classtype, "medium")
    rev = rule.get("rev")
    out: dict[str, Any] = {
        "id": rule.sid,
        "title": title,
    }
    if all_cves:
        out["cve"] = all_cves
    out.update(
        {
            "severity": severity,
            "action": _ACTIONS[rule.action].value,
            "default_mode": mode.value,
            "protocol": transport,
        }
    )
    if app != "raw":
        out["app"] = app
    out["ports"] = list(ports)
    out["direction"] = direction_text(directions)
    out["conditions"] = conditions
    if refs:
        out["references"] = refs
    out["description"] = (
        f"Imported from {Path(rule.source).name}:{rule.line} (sid {rule.sid}"
        + (f" rev {rev.strip()}" if rev else "")
        + (f", classtype {classtype}" if classtype else "")
        + ")."
    )
    return out


def _last(elems: list[_Elem], modifier: str, want: str | None) -> _Elem:
    if not elems:
        raise _Skip(f"{modifier}: modifier with no content before it")
    last = elems[-1]
    if want is not None and last.kind not in ("content", "dotname"):
        raise _Skip(f"{modifier}: on a {last.kind} (only contents take it)")
    return last


def _length_compares(target: str, v: str, what: str) -> list[dict[str, Any]]:
    if "<>" in v:
        lo, hi = (_int(x, what) for x in v.split("<>", 1))
        return [
            {"field": target, "length": True, "gt": lo},
            {"field": target, "length": True, "lt": hi},
        ]
    for prefix, op in (("<=", "le"), (">=", "ge"), ("<", "lt"), (">", "gt"), ("=", "equals")):
        if v.startswith(prefix):
            return [{"field": target, "length": True, op: _int(v[len(prefix) :], what)}]
    return [{"field": target, "length": True, "equals": _int(v, what)}]


def import_rules(
    rules: Iterable[SuricataRule],
    include_disabled: bool = False,
    any_ports: tuple[int, ...] = (),
) -> ImportReport:
    """Convert every rule; each converted one is also checked by the real rule loader (so the
    YAML written from `report.converted` passes `vpatch rules validate`)."""
    report = ImportReport()
    seen: set[int] = set()
    pending: list[Conversion] = []
    for rule in rules:
        if not rule.enabled:
            report.disabled_seen += 1
            if not include_disabled:
                continue
        report.total += 1
        conv = convert(rule, any_ports)
        if conv.rule is not None and conv.sid in seen:
            conv = Conversion(
                conv.sid, conv.source, conv.line, None, (f"sid: {conv.sid} repeated",)
            )
        if conv.rule is None:
            report.skipped.append(conv)
            continue
        assert conv.sid is not None
        seen.add(conv.sid)
        pending.append(conv)
    with tempfile.TemporaryDirectory(prefix="vpatch-import-") as tmp:
        for conv in pending:
            path = Path(tmp) / f"sid-{conv.sid}.yaml"
            path.write_text(dump_rule(conv.rule or {}), encoding="utf-8")
            try:
                load_rules([path])
            except RuleError as err:
                detail = str(err).splitlines()[-1].split(": ", 1)[-1].strip()
                if "rejected by Hyperscan" in detail:
                    detail = "pcre rejected by Hyperscan: " + detail.rsplit(": ", 1)[-1]
                report.skipped.append(
                    Conversion(
                        conv.sid,
                        conv.source,
                        conv.line,
                        None,
                        (
                            detail
                            if detail.startswith("pcre rejected")
                            else f"rejected by vpatch validation: {detail}",
                        ),
                    )
                )
                continue
            report.converted.append(conv)
    return report


def dump_rule(rule: dict[str, Any]) -> str:
    return yaml.safe_dump(rule, sort_keys=False, allow_unicode=False, width=100)


# --------------------------------------------------------------------------------- export

_LITERAL_RE: Final = re.compile(r"(?:[A-Za-z0-9_]|\\x[0-9a-f]{2}|\[([A-Z])([a-z])\])")
_GAP_RE: Final = re.compile(r"\.\*|\.\{(\d+)(?:(,)(\d*))?\}")


def items_from_content_regex(expr: bytes) -> tuple[ContentItem, ...] | None:
    """The content sequence a `conditions.content_regex` expression was built from (one of
    the equivalent ones), or None if `expr` is not of that shape."""
    try:
        text = expr.decode("ascii")
    except UnicodeDecodeError:
        return None
    pos = 0
    items: list[ContentItem] = []
    first_gap: tuple[int, int | None] | None = None
    if text.startswith("^"):
        pos = 1
        m = _GAP_RE.match(text, pos)
        if m and m.group(0) != ".*":
            lo = int(m.group(1))
            hi = lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None)
            first_gap = (lo, hi)
            pos = m.end()
        else:
            first_gap = (0, 0)
    gap: tuple[int, int | None] | None = None
    while pos < len(text):
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
        if not data:
            return None
        nocase = bool(cases) and all(cases)
        if cases and any(cases) and not nocase:
            return None
        n = len(data)
        if not items:
            if first_gap is None:
                items.append(ContentItem(bytes(data), nocase))
            else:
                lo, hi = first_gap
                depth = None if hi is None else hi - lo + n
                items.append(ContentItem(bytes(data), nocase, lo, depth))
        else:
            assert gap is not None
            lo, hi = gap
            items.append(
                ContentItem(bytes(data), nocase, None, None, lo, None if hi is None else hi + n)
            )
        if pos >= len(text):
            break
        m = _GAP_RE.match(text, pos)
        if not m:
            return None
        if m.group(0) == ".*":
            gap = (0, None)
        else:
            lo = int(m.group(1))
            gap = (lo, lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None))
        pos = m.end()
        if pos >= len(text):
            return None
    if not items or content_regex(tuple(items)) != expr:
        return None
    return tuple(items)


def _escape_msg(text: str) -> str:
    return re.sub(r'([";\\])', r"\\\1", text)


def _pcre_text(expr: str) -> str:
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
            if (
                item.within is not None
            ):  # ours counts from the previous end, Suricata's from distance
                out.append(f"within:{item.within - (item.distance or 0)}")
    return out


def _match_opts(expr: bytes, nocase: bool, items: tuple[ContentItem, ...]) -> list[str]:
    if not items:
        found = None if nocase else items_from_content_regex(expr)
        if found is None:
            return [f'pcre:"/{_pcre_text(expr.decode("utf-8"))}/s{"i" if nocase else ""}"']
        items = found
    return _content_opts(items)


def export_rule(rule: Rule) -> tuple[str | None, str]:
    """(Suricata 7 rule text, "") or (None, why it cannot be written)."""
    opts: list[str] = []
    for p in rule.patterns:
        if p.kind == "content":
            opts.extend(_content_opts((ContentItem(p.expr, p.nocase),)))
        else:
            opts.extend(_match_opts(p.expr, p.nocase, ()))
    field_opts: dict[str, list[str]] = {}
    other: list[str] = []
    cond = rule.conditions
    members = cond.items if isinstance(cond, All) else (cond,) if cond is not None else ()
    for c in members:
        try:
            _export_condition(c, field_opts, other)
        except _Skip as err:
            return None, str(err.args[0])
    uses_fields = bool(field_opts or other)
    header_proto = rule.protocol
    if uses_fields and rule.app in ("http", "dns"):
        header_proto = rule.app
    if field_opts and opts:
        opts = [*opts]  # raw first, then sticky buffers (each resets the buffer)
    for buf, bopts in field_opts.items():
        opts.append(buf)
        opts.extend(bopts)
    opts.extend(other)
    if not opts:
        return None, "no condition that Suricata can express"
    ports = rule.ports_text
    ports = f"[{ports}]" if len(rule.ports) > 1 else ports
    if rule.directions == {Direction.TO_CLIENT}:
        head = f"any {ports} -> any any"
    elif len(rule.directions) > 1:
        head = f"any any <> any {ports}"
    else:
        head = f"any any -> any {ports}"
    flow = []
    if rule.protocol == "tcp":
        flow.append("established")
    if len(rule.directions) == 1:
        flow.append(rule.direction)  # Suricata's flow keywords are spelt like Direction.label
    lead = [f'msg:"{_escape_msg(rule.title)}"']
    if flow:
        lead.append("flow:" + ",".join(flow))
    tail = [f"reference:cve,{c[4:]}" for c in rule.cves]
    meta = [
        f"signature_severity {_SEVERITY_EXPORT[rule.severity]}",
        f"vpatch_default_mode {rule.default_mode.value}",
    ]
    if rule.app != "raw" and not uses_fields:
        meta.append(f"vpatch_app {rule.app}")
    tail.append("metadata:" + ", ".join(meta))
    tail += [f"sid:{rule.id}", "rev:1"]
    text = (
        f"{_EXPORT_ACTIONS[rule.action]} {header_proto} {head} ("
        + "; ".join(lead + opts + tail)
        + ";)"
    )
    return text, ""


def _export_condition(c: Condition, field_opts: dict[str, list[str]], other: list[str]) -> None:
    if isinstance(c, Match):
        buf = _EXPORT_BUFFERS.get(c.field)
        if buf is None:
            raise _Skip(f"field {c.field}: no Suricata 7 sticky buffer")
        field_opts.setdefault(buf, []).extend(_match_opts(c.expr, c.nocase, c.items))
        return
    if isinstance(c, Not) and isinstance(c.item, Match):
        m = c.item
        buf = _EXPORT_BUFFERS.get(m.field)
        if buf is None:
            raise _Skip(f"field {m.field}: no Suricata 7 sticky buffer")
        if len(m.items) == 1 and m.items[0].offset is None and m.items[0].depth is None:
            field_opts.setdefault(buf, []).extend(_content_opts(m.items, negated=True))
            return
        if not m.items:
            flags = "si" if m.nocase else "s"
            text = _pcre_text(m.regex.decode("utf-8"))
            field_opts.setdefault(buf, []).append(f'pcre:!"/{text}/{flags}"')
            return
        raise _Skip("not: a negated content with modifiers")
    if isinstance(c, Compare):
        if isinstance(c.value, FieldRef):
            raise _Skip(f"field {c.field}: comparison with another field")
        if c.field == "dns.opcode" and c.op == "equals" and isinstance(c.value, int):
            other.append(f"dns.opcode:{c.value}")
            return
        if c.length and isinstance(c.value, int) and c.plus == 0:
            sym = {"lt": "<", "gt": ">", "equals": "", "le": "<", "ge": ">"}.get(c.op)
            if sym is None:
                raise _Skip(f"field {c.field}: length {c.op}")
            bound = c.value + (1 if c.op == "le" else -1 if c.op == "ge" else 0)
            if c.field in ("http.uri", "http.uri.raw"):
                suffix = ",raw" if c.field == "http.uri.raw" else ""
                other.append(f"urilen:{sym}{bound}{suffix}")
                return
            buf = _EXPORT_BUFFERS.get(c.field)
            if buf is None:
                raise _Skip(f"field {c.field}: no Suricata 7 sticky buffer")
            field_opts.setdefault(buf, []).append(f"bsize:{sym}{bound}")
            return
        if c.op == "equals" and isinstance(c.value, bytes) and not c.length:
            buf = _EXPORT_BUFFERS.get(c.field)
            if buf is None:
                raise _Skip(f"field {c.field}: no Suricata 7 sticky buffer")
            value = c.value
            if c.field == "dns.qname":
                if not value.endswith(b"."):
                    raise _Skip("field dns.qname: equals a name without the root dot")
                value = value[:-1]
            opts = [f'content:"{format_content(value)}"']
            if c.nocase:
                opts.append("nocase")
            field_opts.setdefault(buf, []).extend([*opts, "startswith", "endswith"])
            return
        raise _Skip(f"field {c.field}: `{c.op}` comparison has no Suricata 7 keyword")
    if isinstance(c, Any_):
        raise _Skip("any: alternatives have no single-rule Suricata equivalent")
    if isinstance(c, Not):
        raise _Skip("not: over a combinator")
    raise _Skip("all: nested `all` below the top level")


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


# ------------------------------------------------------------------------ equivalence


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


def _canon_patterns(rule: Rule) -> frozenset[tuple[bytes, bool]]:
    out = set()
    for p in rule.patterns:
        if p.kind == "content":
            out.add((content_regex((ContentItem(p.expr, p.nocase),)), False))
        else:
            out.add((_canon_regex(p.expr), p.nocase))
    return frozenset(out)


def _canon_regex(expr: bytes) -> bytes:
    """`;` and `"` written as \\x escapes (as export writes them): same meaning."""
    try:
        return _pcre_text(expr.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:
        return expr


def rule_differences(a: Rule, b: Rule) -> list[str]:
    """What differs in meaning between two rules (empty: equivalent)."""
    diffs = []
    for name in ("id", "title", "cves", "severity", "action", "protocol", "ports", "direction",
                 "default_mode"):  # fmt: skip
        if getattr(a, name) != getattr(b, name):
            diffs.append(f"{name}: {getattr(a, name)!r} != {getattr(b, name)!r}")
    if a.conditions is not None and a.app != b.app:
        diffs.append(f"app: {a.app!r} != {b.app!r}")
    if _canon_patterns(a) != _canon_patterns(b):
        diffs.append(f"raw patterns: {sorted(_canon_patterns(a))} != {sorted(_canon_patterns(b))}")
    ca, cb = _canon_cond(a.conditions), _canon_cond(b.conditions)
    if isinstance(ca, tuple) and ca[0] != "all":
        ca = ("all", frozenset({ca}))
    if isinstance(cb, tuple) and cb[0] != "all":
        cb = ("all", frozenset({cb}))
    if ca != cb:
        diffs.append(f"conditions: {ca!r} != {cb!r}")
    return diffs
