"""The registry of app-layer decoders: what a decoder plug-in declares, and how a flow
direction's protocol is identified among the registered ones.

What it does:
- `AppProtocol` describes one application protocol: its name (the rule's `app:`), transports,
  well-known ports, the fields its records carry (name -> FieldKind, used by rule validation),
  a content `probe` and a factory of per-flow-direction decoders.
- `register(protocol)` adds one; `get(name)`, `protocols()` and `field_kind(name)` read them.
- `identify(candidates, transport, server_port, direction, data)` picks the protocol of a flow
  direction from its first bytes (content probes), falling back to the port for protocols
  without a probe.
This module imports none of its plug-ins (as aioquic's congestion/base.py): each decoder module
registers itself when imported (gateway/decode/app.py: http, tls, dns; smb.py, dcerpc.py,
rdp.py, mssql.py, ftp.py), and gateway/decode/bundled.py imports every decoder vpatch ships;
code that reads the registry imports that module first.

The decoder interface (what a plug-in implements):
    class MyDecoder:                       # one per flow direction (TCP) or per UDP flow direction
        def feed(self, data: bytes) -> list[AppRecord]: ...
TCP: `feed` gets the next in-order bytes of the reassembled stream, in any slicing. UDP: `feed`
gets exactly one datagram's payload per call. `feed` raises nothing but a
gateway.errors.DecodeError subclass; after one the engine stops feeding that direction (its app
layer is "failed": raw-stream conditions keep working). Buffers must be bounded.
The decoders of a protocol registered with `memo=True` are `MemoDecoder`s (HttpAdapter): besides
`feed`, `memo_unit(data)` says that `data` is exactly one whole unit whose records depend on those
bytes alone (the decoder between units, nothing carried over) and `at_boundary()` that the
decoder sits between units; the engine may then remember that those very bytes fired no rule and
skip decoding them next time (gateway/decode/session.py).
An `AppRecord` is one decoded unit (an HTTP request, a TLS record, an SMB command, a DNS
resource record...): `app` (the protocol whose rules judge it; an adapter may emit records of
another app, e.g. DCE/RPC inside SMB named pipes) and `fields`, a dict of field name -> int or
bytes. Field names start with "<app>." and are declared in `AppProtocol.fields`; a declared name
ending in ".*" declares a family (`http.header.*` covers `http.header.user-agent`).
A record may also carry variants of a byte-string field: the same field as another target
decodes it (HTTP: the URI decoded once as well as fully), under `variant_key(name, n)` for
n = 1..MAX_VARIANTS. A pattern condition (content, regex) on the field holds when it matches the
field or one of its variants; comparisons use the field's own value.

What it guarantees:
- Registration validates names (unique protocol names, field names prefixed by the protocol
  name, kinds "int" or "bytes") and raises ValueError naming the offending value.
- Probes look at no more than MAX_PROBE_BYTES; `identify` never raises on any input.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction

__all__ = [
    "MAX_PROBE_BYTES",
    "MAX_VARIANTS",
    "AppDecoder",
    "AppProtocol",
    "AppRecord",
    "DecoderFactory",
    "DerivingDecoder",
    "FieldKind",
    "FieldValue",
    "HandoverDecoder",
    "Probe",
    "ProbeFunc",
    "RecoverableDecoder",
    "anomaly_field",
    "cut_field",
    "field_kind",
    "get",
    "identify",
    "protocols",
    "register",
    "variant_key",
]

MAX_PROBE_BYTES: Final = 64  # bytes a direction may buffer while its protocol is undecided
MAX_BLANK_PREFIX: Final = 4096  # leading CR/LF bytes a probe looks past (not counted above)

MAX_VARIANTS: Final = 6  # variants of one field a record may carry (see the module comment)

FieldValue = int | bytes


def variant_key(name: str, n: int) -> str:
    """The record key of the n-th variant (1..MAX_VARIANTS) of byte-string field `name`; no
    rule can name it (field names hold no "#")."""
    return f"{name}#{n}"


class FieldKind(enum.Enum):
    """The type of a field's values: numbers compare, byte strings match content/regex."""

    INT = "int"
    BYTES = "bytes"


class Probe(enum.Enum):
    """What a content probe says about a direction's first bytes."""

    YES = "yes"
    NO = "no"
    NEED_DATA = "need-data"


# Plain constants for identification, run on every new flow's first bytes (an enum member
# looked up on its class costs about 70 ns on Python 3.11: gateway/vocabulary.py, DIRECTIONS).
_YES: Final = Probe.YES
_NO: Final = Probe.NO
_NEED_DATA: Final = Probe.NEED_DATA


@dataclass(frozen=True, slots=True)
class AppRecord:
    """One decoded unit of an application protocol, as fields for the rule conditions."""

    app: str
    fields: dict[str, FieldValue]


class AppDecoder(Protocol):
    """A per-flow-direction decoder adapter (see the module comment)."""

    def feed(self, data: bytes) -> list[AppRecord]: ...


class RecoverableDecoder(Protocol):
    """A decoder that can go on after refusing bytes. Its `feed` does not raise: it returns the
    records decoded before the problem and sets `refused` to the DecodeError; `recover()`
    clears it and resynchronises on the next unit it can find (HTTP: the next request line)."""

    refused: DecodeError | None

    def feed(self, data: bytes) -> list[AppRecord]: ...

    def recover(self) -> None: ...


class DerivingDecoder(Protocol):
    """A decoder whose stream carries units in a form the raw stream patterns cannot read
    (HTTP/2's HPACK-coded requests): `take_derived()` gives them, as the protocol's plain
    form (HTTP/1 text), for the bytes fed since the last call; the engine scans those with
    the direction's raw patterns too (gateway/match/inspection.py `scan_derived`)."""

    def feed(self, data: bytes) -> list[AppRecord]: ...

    def take_derived(self) -> bytes: ...


class MemoDecoder(Protocol):
    """The decoder of an AppProtocol with `memo=True` (see the module comment)."""

    def feed(self, data: bytes) -> list[AppRecord]: ...

    def memo_unit(self, data: bytes) -> bool: ...

    def at_boundary(self) -> bool: ...


class HandoverDecoder(Protocol):
    """A decoder whose stream may move to another protocol (STARTTLS): after a `feed`,
    `handover` is (protocol name, the bytes of this feed that belong to it) once the move
    happened; the app session then feeds those and every later byte to a decoder of that
    protocol (gateway/decode/session.py)."""

    handover: tuple[str, bytes] | None

    def feed(self, data: bytes) -> list[AppRecord]: ...


# (transport, direction) -> decoder for one flow direction
DecoderFactory = Callable[[int, Direction], AppDecoder]
ProbeFunc = Callable[[bytes, Direction], Probe]  # (first bytes, direction) -> Probe


@dataclass(frozen=True, slots=True)
class AppProtocol:
    """One application protocol the engine can decode.

    name: the rule's `app:` value and the prefix of every field name.
    transports: PROTO_TCP and/or PROTO_UDP.
    ports: well-known server ports (documentation, and identification when `probe` is None).
    fields: field name (or "prefix.*" family) -> FieldKind.
    new_decoder: factory (transport, direction) -> AppDecoder.
    probe: content identification on the first bytes of a direction; None: by port only.
    directions: which directions the decoder understands.
    late_fields: fields present only in a record emitted at the end of a unit (e.g. the HTTP
        body): a rule that references one is evaluated only on records that carry it.
    carried_by: protocols whose adapters emit this protocol's records (DCE/RPC inside SMB
        named pipes: carried_by={"smb"}); where rules of this protocol cover a port, those
        decoders are candidates for identification too.
    whole_connection: one connection carries any number of units (HTTP keep-alive): a TCP
        direction whose first bytes `probe` recognises is inspected to the connection's end,
        not up to the stream depth (EngineConfig.http_whole_connection turns this off).
    memo: its decoders are MemoDecoders (see the module comment).
    hands_over: protocols its decoders may hand the stream over to (STARTTLS: SMTP, IMAP,
        POP3 and FTP to "tls"): such a decoder is a HandoverDecoder, and the rules that follow
        those protocols follow this one too (gateway/match/follow.py).
    elsewhere: for a protocol identified by port on its own `ports` (`probe` None, its bytes
        having no magic), a stricter content probe for every other TCP port (DNS over TCP: a
        plausible query after the length prefix), so that it is recognised where it moved.
    """

    name: str
    transports: frozenset[int]
    ports: frozenset[int]
    fields: Mapping[str, FieldKind]
    new_decoder: DecoderFactory
    probe: ProbeFunc | None = None
    directions: frozenset[Direction] = frozenset(Direction)
    late_fields: frozenset[str] = field(default_factory=frozenset)
    carried_by: frozenset[str] = field(default_factory=frozenset)
    whole_connection: bool = False
    memo: bool = False
    description: str = ""
    elsewhere: ProbeFunc | None = None
    hands_over: frozenset[str] = field(default_factory=frozenset)


_REGISTRY: dict[str, AppProtocol] = {}
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*\Z")
_FIELD_RE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_\-]+)*(\.\*)?\Z")


def register(protocol: AppProtocol) -> None:
    """Add `protocol` to the registry; ValueError naming the offending value if invalid."""
    name = protocol.name
    if not _NAME_RE.match(name) or name == "raw":
        raise ValueError(f"app protocol name {name!r} must be lower-case [a-z0-9_], not 'raw'")
    if name in _REGISTRY:
        raise ValueError(f"app protocol {name!r} is already registered")
    if not protocol.transports or not protocol.transports <= {PROTO_TCP, PROTO_UDP}:
        raise ValueError(f"app protocol {name!r}: transports {set(protocol.transports)} invalid")
    for fname, kind in protocol.fields.items():
        if not fname.startswith(name + ".") or not _FIELD_RE.match(fname):
            raise ValueError(f"app protocol {name!r}: field {fname!r} must be '{name}.<name>'")
        if not isinstance(kind, FieldKind):
            raise TypeError(f"app protocol {name!r}: field {fname!r} kind {kind!r} invalid")
    for fname in protocol.late_fields:
        if fname not in protocol.fields:
            raise ValueError(f"app protocol {name!r}: late field {fname!r} is not declared")
    anomaly = anomaly_field(name)
    if anomaly not in protocol.fields:
        protocol = replace(protocol, fields={**protocol.fields, anomaly: FieldKind.BYTES})
    _REGISTRY[name] = protocol


def cut_field(name: str) -> str:
    """The field of a record some of whose derived fields a bound cut: one `field: what` line
    each (gateway/decode/http_fields.py `cuts`; the engine's `limits.field` policy judges it).
    Only protocols that declare it carry it (HTTP)."""
    return name + ".cut"


def anomaly_field(name: str) -> str:
    """The field every protocol carries in the record the app session emits when its decoder
    refuses the bytes: what was wrong, as the decoder said it (gateway/decode/session.py;
    rules/vpatch-anomalies.yaml turns it into a policy per host). Interned: every session
    holds it, one string for all of them."""
    return sys.intern(name + ".anomaly")


def get(name: str) -> AppProtocol | None:
    """The registered protocol called `name`, or None."""
    return _REGISTRY.get(name)


def protocols() -> tuple[AppProtocol, ...]:
    """Every registered protocol, by name."""
    return tuple(_REGISTRY[n] for n in sorted(_REGISTRY))


def field_kind(name: str) -> FieldKind | None:
    """The kind of field `name` ("http.header.host" resolves through "http.header.*")."""
    app = _REGISTRY.get(name.split(".", 1)[0])
    if app is None:
        return None
    kind = app.fields.get(name)
    if kind is not None:
        return kind
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        family = app.fields.get(".".join(parts[:i]) + ".*")
        if family is not None:
            return family
    return None


def identify(
    candidates: Iterable[str], transport: int, server_port: int, direction: Direction, data: bytes
) -> tuple[str | None, bool]:
    """Which of `candidates` (protocol names) the direction whose first bytes are `data` speaks.

    Returns (name, decided): (name, True) identified; (None, True) none of them (the app layer
    is "failed" for this direction); (None, False) undecided, call again with more bytes (the
    caller gives up once it has MAX_PROBE_BYTES). Candidates are tried in order: the first
    whose probe says YES wins; a protocol without a probe is identified by `server_port` being
    one of its ports (at once, unless an earlier candidate needs more bytes: then after every
    probe said no), elsewhere by its `elsewhere` probe if it has one. Never raises.
    """
    undecided = False
    # Empty lines before an HTTP request line are skipped by the servers (RFC 9112 section
    # 2.2; Apache takes up to 100): they do not count against the probe's budget.
    blank = min(len(data) - len(data.lstrip(b"\r\n")), MAX_BLANK_PREFIX)
    head = data[: blank + MAX_PROBE_BYTES]
    by_port: str | None = None
    for name in candidates:
        app = get(name)
        if app is None or transport not in app.transports or direction not in app.directions:
            continue
        probe = app.probe
        if probe is None:
            if server_port in app.ports or app.elsewhere is None or transport != PROTO_TCP:
                if server_port in app.ports:
                    if not undecided:
                        return name, True  # by its port, before any later candidate
                    if by_port is None:
                        by_port = name
                continue
            probe = app.elsewhere
        try:
            verdict = probe(head, direction)
        except Exception:  # noqa: BLE001 (a plug-in probe must not break identification)
            verdict = _NO
        if verdict is _YES:
            return name, True
        if verdict is _NEED_DATA:
            undecided = True
    if by_port is not None:
        return by_port, True
    if undecided and len(data) < blank + MAX_PROBE_BYTES:
        return None, False
    return None, True
