"""One parsed Suricata rule -> one vpatch rule as plain data (the YAML mapping of
docs/rules.md), or the reasons why it cannot be converted. docs/suricata.md lists what maps.

What it does: `convert(rule)` reads the rule's options in order; each keyword has one handler
(`_HANDLERS`, a dispatch table) that updates the rule's `_Draft` (direction, buffer, match
elements, metadata...). Then the elements are grouped into chains per buffer (a chain starts
at every element that is not relative) and each chain becomes one condition
(gateway/match/suricata/elements.py); the header gives the transport and the server ports.
Contents and their modifiers (offset, depth, distance, within, nocase, startswith, endswith,
negation on decoded fields), pcre (flags i s m x, R relative, U I P M C K V W Z buffers),
sticky buffers and the older http_* modifiers, flow direction, 1-byte and equality byte_test,
isdataat at the end of a chain, urilen/bsize, dns.opcode, sid/msg/reference/classtype/metadata
(cve, signature_severity) and the header's ports are converted.

What it guarantees: `convert` never raises on a parsed rule: every keyword or construct that
does not map is named in `Conversion.reasons` (all of them that the options show, not only the
first), and what converts with a caveat is named in `Conversion.warnings`. Bound:
`MAX_PORT_RANGE` (a port range wider than this is refused rather than expanded).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode import registry as app_registry
from gateway.match.rules import parse_content
from gateway.match.suricata.elements import (
    Element,
    Unconvertible,
    byte_test_element,
    chain_condition,
    header_content,
    number,
    pcre_element,
)
from gateway.match.suricata.parse import SuricataRule, unescape, unquote

__all__ = ["MAX_PORT_RANGE", "Conversion", "convert"]

MAX_PORT_RANGE: Final = 1024  # a port range is expanded only up to this many ports

_ACTIONS: Final = {
    "alert": "alert",
    "drop": "drop",
    "reject": "reset",
    "rejectsrc": "reset",
    "rejectdst": "reset",
    "rejectboth": "reset",
}

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
# maps only when the content names its header ("User-Agent: ..."). "FILE": file_data, the
# request body when the rule inspects requests.
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
# The older form: a modifier after the content (`content:"x"; http_uri;`).
_CONTENT_MODIFIERS: Final = frozenset(
    k for k in _BUFFERS if "_" in k and "." not in k and k not in ("pkt_data", "file_data")
)
# Options that do not change what matches (or only how it is reported or prefiltered).
_IGNORED: Final = frozenset(
    {
        "sid",
        "msg",
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
_CVE_RE: Final = re.compile(r"(?:CVE[-_])?(\d{4})[-_](\d{4,})\Z", re.IGNORECASE)
_LENGTH_OPS: Final = (("<=", "le"), (">=", "ge"), ("<", "lt"), (">", "gt"), ("=", "equals"))


@dataclass(frozen=True, slots=True)
class Conversion:
    """The result for one Suricata rule: `rule` (YAML-ready mapping) or `reasons`."""

    sid: int | None
    source: str
    line: int
    rule: dict[str, Any] | None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class _Draft:
    """What the options of one rule have said so far (the handlers' shared state)."""

    direction: str = "to_server"
    direction_given: bool = False
    established: bool = False
    buffer: str = "raw"  # the current sticky buffer
    elems: list[Element] = field(default_factory=list)
    compares: list[dict[str, Any]] = field(default_factory=list)
    dotprefixed: set[str] = field(default_factory=set)
    cves: list[str] = field(default_factory=list)
    meta_cves: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    severity: str | None = None
    classtype: str = ""
    mode: str = "detect"
    app_from_meta: str | None = None
    warnings: list[str] = field(default_factory=list)

    def last(self, modifier: str, content_only: bool) -> Element:
        """The element a modifier applies to: the last one so far."""
        if not self.elems:
            raise Unconvertible(f"{modifier}: modifier with no content before it")
        last = self.elems[-1]
        if content_only and last.kind not in ("content", "dotname"):
            raise Unconvertible(f"{modifier}: on a {last.kind} (only contents take it)")
        return last


def convert(rule: SuricataRule, any_ports: tuple[int, ...] = ()) -> Conversion:
    """One Suricata rule -> vpatch rule mapping (see the module docstring), or reasons.
    `any_ports`: the server ports given to a rule whose header says `any` and whose protocol
    implies no app (default: none, such a rule is not converted)."""
    draft = _Draft()
    reasons: list[str] = []
    out: dict[str, Any] | None = None
    try:
        transport, header_app = _header(rule)
        for opt in rule.options:
            try:
                _HANDLERS.get(opt.name, _unknown)(draft, opt.name, opt.value)
            except Unconvertible as err:
                reasons.append(err.reason)
        if not reasons:
            out = _finish(rule, draft, transport, header_app, any_ports)
    except Unconvertible as err:
        reasons.append(err.reason)
    if reasons:
        return Conversion(rule.sid, rule.source, rule.line, None, tuple(dict.fromkeys(reasons)))
    warnings = tuple(dict.fromkeys(draft.warnings))
    return Conversion(rule.sid, rule.source, rule.line, out, (), warnings)


def _header(rule: SuricataRule) -> tuple[str, str | None]:
    """(transport, the app the header protocol implies) of a rule that has a sid."""
    if rule.sid is None:
        raise Unconvertible("sid: missing or not a number")
    if rule.action == "pass":
        raise Unconvertible("action: pass rules whitelist traffic")
    if rule.action not in _ACTIONS:
        raise Unconvertible(f"action: {rule.action}")
    if rule.protocol not in _HEADER_PROTOS:
        raise Unconvertible(f"protocol: {rule.protocol} (only tcp, udp and the apps we decode)")
    return _HEADER_PROTOS[rule.protocol]


# --------------------------------------------------------------------- option handlers
# Each takes (draft, keyword, value as written or None) and raises Unconvertible.

Handler = Callable[[_Draft, str, str | None], None]


def _ignore(d: _Draft, name: str, value: str | None) -> None:
    pass


def _unknown(d: _Draft, name: str, value: str | None) -> None:
    raise Unconvertible(f"keyword {name}")


def _classtype(d: _Draft, name: str, value: str | None) -> None:
    d.classtype = (value or "").strip()


def _cve(text: str) -> str | None:
    m = _CVE_RE.match(text)
    return f"CVE-{m.group(1)}-{m.group(2)}" if m else None


def _reference(d: _Draft, name: str, value: str | None) -> None:
    kind, _, ref = (value or "").partition(",")
    if kind.strip().lower() == "cve":
        if (cve := _cve(ref.strip())) is not None:
            d.cves.append(cve)
    elif ref.strip():
        d.refs.append(f"{kind.strip()}: {ref.strip()}")


def _metadata(d: _Draft, name: str, value: str | None) -> None:
    for pair in (value or "").split(","):
        key, _, val = pair.strip().partition(" ")
        key, val = key.strip().lower(), val.strip()
        if key == "cve":
            if (cve := _cve(val)) is not None:
                d.meta_cves.append(cve)
        elif key == "signature_severity" and val.lower() in _SEVERITY_META:
            d.severity = _SEVERITY_META[val.lower()]
        elif key == "vpatch_default_mode" and val in ("off", "detect", "prevent"):
            d.mode = val
        elif key == "vpatch_app":
            d.app_from_meta = val


def _flow(d: _Draft, name: str, value: str | None) -> None:
    for part in (value or "").split(","):
        p = part.strip()
        if p in ("to_server", "from_client"):
            d.direction, d.direction_given = "to_server", True
        elif p in ("to_client", "from_server"):
            d.direction, d.direction_given = "to_client", True
        elif p == "established":
            d.established = True
        elif p == "no_stream":
            d.warnings.append("flow no_stream: matched on the reassembled stream")
        elif p not in ("stateless", "only_stream"):
            raise Unconvertible(f"flow: {p}")


def _content(d: _Draft, name: str, value: str | None) -> None:
    text, negated = unquote(value or "")
    try:
        data = parse_content(text)
    except ValueError as err:
        raise Unconvertible(f"content: {text[:40]!r}: {err}") from None
    elem = Element("content", "http.uri" if name == "uricontent" else d.buffer, data=data)
    elem.negated = negated
    if d.buffer in d.dotprefixed and name == "content" and data.startswith(b"."):
        elem.kind = "dotname"  # resolved when its modifiers are known
    d.elems.append(elem)


def _flag_modifier(d: _Draft, name: str, value: str | None) -> None:
    """nocase, startswith, endswith on the last content."""
    setattr(d.last(name, content_only=True), name, True)


def _position_modifier(d: _Draft, name: str, value: str | None) -> None:
    """offset, depth (absolute) and distance, within (relative) on the last content."""
    last = d.last(name, content_only=True)
    setattr(last, name, number(value, name))
    if name in ("distance", "within"):
        last.relative = True


def _buffer_modifier(d: _Draft, name: str, value: str | None) -> None:
    """`http_uri` and the like: the last element is in that buffer."""
    d.last(name, content_only=False).buffer = _BUFFERS[name]


def _sticky_buffer(d: _Draft, name: str, value: str | None) -> None:
    d.buffer = _BUFFERS[name]


def _dotprefix(d: _Draft, name: str, value: str | None) -> None:
    if d.buffer != "dns.qname":
        raise Unconvertible(f"dotprefix: on the {d.buffer} buffer")
    d.dotprefixed.add(d.buffer)


def _pcre(d: _Draft, name: str, value: str | None) -> None:
    d.elems.append(pcre_element(value or "", d.buffer))


def _byte_test(d: _Draft, name: str, value: str | None) -> None:
    d.elems.append(byte_test_element(value or "", d.buffer))


def _isdataat(d: _Draft, name: str, value: str | None) -> None:
    v = (value or "").strip()
    if v.startswith("!"):
        raise Unconvertible(f"isdataat: negated ({v})")
    parts = [p.strip() for p in v.split(",")]
    n = number(parts[0], "isdataat")
    if "relative" in parts[1:]:
        last = d.last("isdataat", content_only=False)
        last.min_after = max(last.min_after, n)
    else:
        d.elems.append(Element("pcre", d.buffer, regex=f"^.{{{n}}}"))


def _length(d: _Draft, name: str, value: str | None) -> None:
    """urilen (on the URI, `,raw`: the raw URI) and bsize (on the current buffer)."""
    target = "http.uri" if name == "urilen" else d.buffer
    v = (value or "").strip()
    if name == "urilen" and v.endswith(",raw"):
        target, v = "http.uri.raw", v[:-4]
    elif name == "urilen" and v.endswith(",norm"):
        v = v[:-5]
    if target in ("raw", "HEADER", "FILE"):
        raise Unconvertible(f"{name}: on the {target} buffer")
    d.compares.extend(_length_compares(target, v, name))


def _length_compares(target: str, v: str, what: str) -> list[dict[str, Any]]:
    if "<>" in v:
        lo, hi = (number(x, what) for x in v.split("<>", 1))
        return [
            {"field": target, "length": True, "gt": lo},
            {"field": target, "length": True, "lt": hi},
        ]
    for prefix, op in _LENGTH_OPS:
        if v.startswith(prefix):
            return [{"field": target, "length": True, op: number(v[len(prefix) :], what)}]
    return [{"field": target, "length": True, "equals": number(v, what)}]


def _dns_opcode(d: _Draft, name: str, value: str | None) -> None:
    d.compares.append({"field": "dns.opcode", "equals": number(value, "dns.opcode")})


def _flowbits(d: _Draft, name: str, value: str | None) -> None:
    verb = (value or "").split(",")[0].strip()
    if verb in ("set", "unset", "toggle"):
        return
    if verb == "noalert":
        raise Unconvertible("flowbits: noalert (a helper rule that never alerts)")
    raise Unconvertible(f"flowbits: {verb} (depends on another rule's match)")


def _rate(d: _Draft, name: str, value: str | None) -> None:
    """threshold / detection_filter: only `threshold: type limit` (reporting) is harmless."""
    v = value or ""
    if name == "threshold" and "type limit" in v:
        return
    raise Unconvertible(f"{name}: a rate condition ({v.strip()})")


# Keyword -> handler. Later entries win: a content modifier (`http_uri`) is also a buffer name.
_HANDLERS: Final[dict[str, Handler]] = {
    **{name: _sticky_buffer for name in _BUFFERS},
    **{name: _buffer_modifier for name in _CONTENT_MODIFIERS},
    **{name: _ignore for name in _IGNORED},
    "classtype": _classtype,
    "reference": _reference,
    "metadata": _metadata,
    "flow": _flow,
    "content": _content,
    "uricontent": _content,
    "nocase": _flag_modifier,
    "startswith": _flag_modifier,
    "endswith": _flag_modifier,
    "offset": _position_modifier,
    "depth": _position_modifier,
    "distance": _position_modifier,
    "within": _position_modifier,
    "dotprefix": _dotprefix,
    "pcre": _pcre,
    "byte_test": _byte_test,
    "isdataat": _isdataat,
    "urilen": _length,
    "bsize": _length,
    "dns.opcode": _dns_opcode,
    "flowbits": _flowbits,
    "threshold": _rate,
    "detection_filter": _rate,
}


# --------------------------------------------------------------------- the whole rule


def _finish(
    rule: SuricataRule,
    d: _Draft,
    transport: str,
    header_app: str | None,
    any_ports: tuple[int, ...],
) -> dict[str, Any]:
    """The vpatch rule mapping, once every option has been read without a problem."""
    direction = _direction(rule, d)
    conditions = _conditions(d, direction)
    app = _app(conditions)
    if app == "dns" and d.established:
        transport = "tcp"
    if app == "http" and transport != "tcp":
        raise Unconvertible("http fields on udp")
    default_app = app if app != "raw" else (d.app_from_meta or header_app)
    ports = _server_ports(rule, direction, default_app, any_ports, d.warnings)
    return _mapping(rule, d, transport, app, ports, direction, conditions)


def _direction(rule: SuricataRule, d: _Draft) -> str:
    """flow's direction; without one, a header with only a source port looks at replies."""
    direction = d.direction
    only_source = rule.dst_ports.strip() == "any" and rule.src_ports.strip() != "any"
    if not d.direction_given and only_source:
        direction = "to_client"
    return "both" if rule.bidirectional else direction


def _conditions(d: _Draft, direction: str) -> list[dict[str, Any]]:
    """Every chain of every buffer as one condition, then the length/opcode comparisons."""
    # FILE: the request body when the rule inspects requests (Suricata 7), else a response.
    for e in d.elems:
        if e.buffer == "FILE":
            if direction != "to_server":
                raise Unconvertible("file_data: response bodies are not decoded")
            e.buffer = "http.body"
    # Chains: per buffer, a new chain starts at every element that is not relative.
    by_buffer: dict[str, list[list[Element]]] = {}
    for e in d.elems:
        chains = by_buffer.setdefault(e.buffer, [])
        if e.relative and chains:
            chains[-1].append(e)
        elif e.relative:
            raise Unconvertible(f"relative match with nothing before it in buffer {e.buffer}")
        else:
            chains.append([e])
    conditions = [
        _chain(buf, chain, d.warnings) for buf, chains in by_buffer.items() for chain in chains
    ]
    conditions.extend(d.compares)
    if not conditions:
        raise Unconvertible("no content: a rule without content, pcre or field condition")
    return conditions


def _chain(buf: str, chain: list[Element], warnings: list[str]) -> dict[str, Any]:
    """One chain of `buf` -> one condition (a whole-header chain moves to its header)."""
    fieldname = buf
    if buf == "HEADER":
        fieldname, head = header_content(chain[0])
        for e in chain[1:]:
            if e.kind == "content" and (b"\r" in e.data or b"\n" in e.data):
                raise Unconvertible("http.header relative content spans header lines")
            e.buffer = fieldname
        chain = [head, *chain[1:]]
        warnings.append("http.header: header name matched caselessly")
    condition = chain_condition(fieldname, chain)
    if fieldname == "raw" and (chain[0].offset or chain[0].depth is not None):
        warnings.append("raw offset/depth: anchored at the stream start, not the packet")
    if fieldname == "raw" and any(e.kind == "pcre" and e.regex.startswith("^.{") for e in chain):
        warnings.append("isdataat absolute: counted from the stream start")
    return condition


def _app(conditions: list[dict[str, Any]]) -> str:
    """The one app whose fields the conditions use ("raw": none)."""
    fields = {c.get("field", "") for c in conditions} | {
        c["not"]["field"] for c in conditions if "not" in c
    }
    apps = {f.split(".", 1)[0] for f in fields if f and f != "raw"}
    if len(apps) > 1:
        raise Unconvertible(f"fields of several apps: {sorted(apps)}")
    return apps.pop() if apps else "raw"


def _server_ports(
    rule: SuricataRule,
    direction: str,
    default_app: str | None,
    any_ports: tuple[int, ...],
    warnings: list[str],
) -> tuple[int, ...]:
    """The server side's ports of the header; `any` means the app's well-known ports, else
    `any_ports`, else the rule does not convert."""
    default_ports: tuple[int, ...] = ()
    if default_app is not None:
        proto = app_registry.get(default_app)
        if proto is not None:
            default_ports = tuple(sorted(proto.ports))
    server_side = rule.src_ports if direction == "to_client" else rule.dst_ports
    if direction == "both" and server_side.strip() == "any":
        server_side = rule.src_ports
    if not default_ports and any_ports:
        default_ports = any_ports
        if server_side.strip() == "any":
            warnings.append("any ports: server ports taken from --any-ports")
    ports = _ports(server_side, default_ports)
    if not ports:
        raise Unconvertible(
            f"header: no server port ({rule.protocol} {server_side} and no app default)"
        )
    return ports


def _ports(spec: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Port list of a header word; `any` -> `default` (empty: no server port known)."""
    spec = spec.strip()
    if spec.startswith("$"):
        name = spec[1:]
        if name == "HTTP_PORTS":
            proto = app_registry.get("http")
            return tuple(sorted(proto.ports)) if proto else (80,)
        if name not in _PORT_VARS:
            raise Unconvertible(f"port variable: ${name} is not one of Suricata's defaults")
        return _ports(_PORT_VARS[name], default)
    if spec == "any":
        return default
    if spec.startswith("!"):
        raise Unconvertible(f"negated ports: {spec}")
    if spec.startswith("["):
        return _port_list(spec)
    if ":" in spec:
        lo_text, hi_text = spec.split(":", 1)
        lo = int(lo_text) if lo_text else 1
        hi = int(hi_text) if hi_text else 65535
        if hi - lo + 1 > MAX_PORT_RANGE:
            raise Unconvertible(f"port range too wide: {spec} (more than {MAX_PORT_RANGE} ports)")
        return tuple(range(max(lo, 1), hi + 1))
    if not spec.isdigit() or not 1 <= int(spec) <= 65535:
        raise Unconvertible(f"port: {spec!r} is not a port number")
    return (int(spec),)


def _port_list(spec: str) -> tuple[int, ...]:
    """`[a,b,[c,d],$VAR,lo:hi]`: the union, sorted; `any` inside is refused."""
    if not spec.endswith("]"):
        raise Unconvertible(f"port list: {spec} is not closed")
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
    out: set[int] = set()
    for part in parts:
        got = _ports(part, ())
        if not got:
            raise Unconvertible(f"port list: {spec} holds `any`")
        out.update(got)
    return tuple(sorted(out))


def _mapping(
    rule: SuricataRule,
    d: _Draft,
    transport: str,
    app: str,
    ports: tuple[int, ...],
    direction: str,
    conditions: list[dict[str, Any]],
) -> dict[str, Any]:
    """The rule mapping, keys in the order docs/rules.md writes them."""
    title = unescape(unquote(rule.get("msg") or "")[0]).strip() or f"Suricata sid {rule.sid}"
    out: dict[str, Any] = {"id": rule.sid, "title": title}
    if cves := list(dict.fromkeys(d.cves + d.meta_cves)):
        out["cve"] = cves
    out["severity"] = d.severity or _CLASSTYPE_SEVERITY.get(d.classtype, "medium")
    out["action"] = _ACTIONS[rule.action]
    out["default_mode"] = d.mode
    out["protocol"] = transport
    if app != "raw":
        out["app"] = app
    out["ports"] = list(ports)
    out["direction"] = direction
    out["conditions"] = conditions
    if d.refs:
        out["references"] = d.refs
    rev = rule.get("rev")
    out["description"] = (
        f"Imported from {Path(rule.source).name}:{rule.line} (sid {rule.sid}"
        + (f" rev {rev.strip()}" if rev else "")
        + (f", classtype {d.classtype}" if d.classtype else "")
        + ")."
    )
    return out
