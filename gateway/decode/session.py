"""The application layer of one flow direction: which protocol it speaks, then its decoder.

What it does:
- `AppSession(candidates, transport, direction, port, ...)`: the engine gives it the in-order
  bytes of one flow direction (TCP: the reassembled stream, in any slicing; UDP: one datagram
  per call) and gets back the app records they complete (gateway/decode/registry.py `AppRecord`).
  First the protocol is identified among `candidates` (the protocols the rules covering the
  flow judge) with `identify` (content probes, else the port); then the protocol's decoder is
  fed.
- Hand-over: a decoder whose protocol `hands_over` (STARTTLS: SMTP, IMAP, POP3, FTP to TLS)
  may say the stream moved (registry.HandoverDecoder): the bytes from there on go to a decoder
  of the new protocol, in the same feed (`app_handovers`).
- Rebinding: on TCP, `probed` holds the stream's first bytes from the feed that identified the
  protocol until the engine takes them to switch the direction to the rules that follow that
  protocol (gateway/match/follow.py); `protocol` names what was identified.
- Memo: when the decoder is a MemoDecoder (its AppProtocol has `memo=True`, e.g. HTTP), a whole
  unit (e.g. a body-less request head) of at most MAX_MEMO_UNIT bytes whose records fired no rule
  is remembered exactly in the engine's `UnitMemo`, keyed by the unit's bytes, the flow's server
  and port and the rule group (`owner`); the very same bytes again skip decoding and field
  evaluation, which are pure functions of those bytes and that group (health checks, polling and
  repeated asset requests cost 7.6 instead of 32 us). The engine calls `remember()` when the
  records of a feed fired nothing; it clears the memo when the policy changes (which rules are
  off for a server), and a swapped rule set has new groups, so it never hits old entries.
- `whole_connection_probes(direction)` / `starts_whole_connection(probes, data, direction)`:
  the protocols whose connections carry any number of units (AppProtocol.whole_connection, HTTP
  keep-alive), so the engine inspects such a stream to its end instead of up to the depth: a
  depth bound would leave the later requests unchecked (the weakness of Suricata's stream
  bypass on keep-alive connections).
- `record_target(fields)` and `request_uri(target, fields)`: the request target a record carries
  and the normalised URI (what `http.uri` holds) exceptions are matched against.

What it guarantees:
- `feed` never raises. A decoder that refuses the bytes (a gateway.errors DecodeError, counted
  in `app_decode_errors`) never ends inspection silently: the feed returns one anomaly record
  (`<app>.anomaly`: the decoder's complaint) that the anomaly rules judge per host (off: pass,
  detect: alert, prevent: reset; rules/vpatch-anomalies.yaml), then the decoder resynchronises
  when it can (`recover()`, HTTP: the next request line; `app_recoveries`) and feeding goes on.
  Otherwise, and when no candidate is recognised (`app_unidentified`) or the decoder fails
  otherwise (`app_internal_errors`, a bug), `feed` returns None from then on: the direction's
  app layer is over, raw stream patterns keep working. `capped` tells the engine it ended for
  the session's own bounds or a bug (its `limits.decoder` policy and event), `decoding` that
  the decoder still follows the stream (its `limits.stream_depth` inspect-start).
- Bounded: while undecided a TCP direction buffers less than MAX_PROBE_BYTES plus one chunk
  (identify decides once it has its budget); a UDP direction gets UDP_PROBE_ATTEMPTS datagrams
  to be identified. The memo holds at most its `limit` entries of at most MAX_MEMO_UNIT bytes
  (least recently used dropped first).
- A memo hit never hides a match: only units whose records fired no rule, with the decoder at a
  unit boundary before and after them, are remembered; skipping one leaves the decoder's state
  as decoding it would.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol, cast

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode.http import normalize_uri
from gateway.decode.registry import (
    AppDecoder,
    AppProtocol,
    AppRecord,
    DerivingDecoder,
    HandoverDecoder,
    MemoDecoder,
    Probe,
    ProbeFunc,
    RecoverableDecoder,
    anomaly_field,
    get,
    identify,
    protocols,
)
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction

__all__ = [
    "MAX_MEMO_UNIT",
    "UDP_PROBE_ATTEMPTS",
    "AppCounters",
    "AppSession",
    "UnitMemo",
    "record_target",
    "request_uri",
    "starts_whole_connection",
    "whole_connection_probes",
]

UDP_PROBE_ATTEMPTS: Final = 4  # datagrams a UDP direction may take to be identified
MAX_ANOMALY_DETAIL: Final = 200  # bytes of a decoder's complaint kept in the anomaly record
# Recoveries within one feed: past them the direction's app layer is over (a segment of many
# malformed requests must not buy unbounded resynchronising; raw rules and the anomaly rule
# still see it)
MAX_RECOVERIES_PER_FEED: Final = 16
MAX_MEMO_UNIT: Final = 2048  # bytes: longer units are never memoised
NO_RECORDS: Final[tuple[AppRecord, ...]] = ()
_YES: Final = Probe.YES  # a plain constant (gateway/vocabulary.py, DIRECTIONS)

MemoKey = tuple[int, str, int, bytes]  # (id of the owner, server, server port, unit bytes)


class AppCounters(Protocol):
    """The counters an AppSession adds to (the engine's EngineStats)."""

    app_records: int  # decoded app-layer records (a memo hit counts as one)
    http_memo_hits: int  # units answered from the memo (no decode, no evaluate)
    app_decode_errors: int
    app_recoveries: int  # decode errors after which the decoder resynchronised
    app_internal_errors: int
    app_unidentified: int
    app_handovers: int  # directions handed over to another protocol (STARTTLS)


class UnitMemo:
    """Whole units that fired no rule, exactly: (id of the owner, server, port, bytes) -> owner
    (held, so its id cannot be reused while the entry exists). At most `limit` entries, least
    recently used dropped first; limit 0: memo off."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[MemoKey, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def hit(self, key: MemoKey, owner: object) -> bool:
        entries = self._entries
        if entries.get(key) is owner:
            entries.move_to_end(key)
            return True
        return False

    def put(self, key: MemoKey, owner: object) -> None:
        entries = self._entries
        entries[key] = owner
        if len(entries) > self.limit:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class AppSession:
    """One flow direction: protocol identification, then the app decoder feeding records."""

    __slots__ = (
        "_anomaly",
        "_app",
        "_attempts",
        "_buf",
        "_candidates",
        "_decoder",
        "_deriving",
        "_direction",
        "_memo",
        "_over",
        "_owner",
        "_port",
        "_recoverable",
        "_server",
        "_stats",
        "_switch",
        "_transport",
        "_unit",
        "capped",
        "pending",
        "probed",
    )

    def __init__(
        self,
        candidates: Iterable[str],
        transport: int,
        direction: Direction,
        server: str,
        port: int,
        stats: AppCounters,
        memo: UnitMemo,
        owner: object,
    ) -> None:
        self._candidates = candidates
        self._transport = transport
        self._direction = direction
        self._server = server
        self._port = port
        self._stats = stats
        self._memo = memo
        self._owner = owner  # whose evaluation the memo stands for (the engine's rule group)
        self._buf = b""  # bytes seen while the protocol is undecided (< MAX_PROBE_BYTES + 1 chunk)
        self._attempts = 0  # UDP datagrams seen while undecided
        self._decoder: AppDecoder | None = None
        self._app = ""  # the identified protocol's name
        self._anomaly = ""  # its anomaly field (registry.anomaly_field)
        self._over = False  # the decoder failed and cannot recover: app layer over
        self._recoverable: RecoverableDecoder | None = None  # the decoder, when it can recover
        self._unit: MemoDecoder | None = None  # the decoder, when its units may be memoised
        self._deriving: DerivingDecoder | None = None  # the decoder, when it derives bytes
        self._switch: HandoverDecoder | None = None  # the decoder, when it may hand over
        # the memo key of the records the last feed returned, when they may be memoised
        self.pending: MemoKey | None = None
        # TCP: the stream's first bytes, from the feed that identified the protocol until the
        # engine takes them (to rescan them with the rules of that protocol, match/follow.py)
        self.probed: bytes | None = None
        # the app layer ended for the session's own bounds or a decoder bug, not because the
        # decoder refused bytes (the engine's `limits.decoder`)
        self.capped = False

    @property
    def protocol(self) -> str:
        """The identified protocol's name ("" while undecided, or when none was found)."""
        return self._app

    @property
    def decoding(self) -> bool:
        """The protocol is identified and its decoder still follows the stream."""
        return self._decoder is not None

    def feed(self, data: bytes) -> Sequence[AppRecord] | None:
        """The records `data` completes (empty while undecided, or when the memo answers), or
        None once this direction's app layer is over (see the module comment). Never raises."""
        stats = self._stats
        decoder = self._decoder
        if decoder is None:
            if self._over:
                return None
            transport = self._transport
            if transport == PROTO_TCP:
                self._buf += data
                data = self._buf
            else:
                self._attempts += 1
            name, decided = identify(self._candidates, transport, self._port, self._direction, data)
            if not decided:
                # TCP: identify decides by itself once it has its budget of bytes
                if transport == PROTO_UDP and self._attempts >= UDP_PROBE_ATTEMPTS:
                    name = None
                else:
                    return NO_RECORDS
            protocol = get(name) if name is not None else None
            if protocol is None:
                stats.app_unidentified += 1
                return None
            decoder = self._use(protocol)
            if transport == PROTO_TCP:
                self.probed = self._buf
            self._buf = b""
        key: MemoKey | None = None
        unit = self._unit
        if unit is not None and len(data) <= MAX_MEMO_UNIT and unit.memo_unit(data):
            key = (id(self._owner), self._server, self._port, data)
            if self._memo.hit(key, self._owner):
                # The very same unit fired nothing before: decoding it again would give the
                # same fields and the same (empty) answer. The decoder is at a unit boundary
                # before and after it, so skipping it leaves its state as it would be.
                stats.app_records += 1
                stats.http_memo_hits += 1
                return NO_RECORDS
        try:
            records = decoder.feed(data)
        except DecodeError as err:
            stats.app_decode_errors += 1
            self.pending = None
            return self._refused(err)
        except Exception:  # noqa: BLE001 (a decoder bug must not stop raw inspection)
            stats.app_internal_errors += 1
            self.capped = True
            self._end()
            return None
        recoverable = self._recoverable
        if recoverable is not None and recoverable.refused is not None:
            return self._recover(recoverable, records)
        switch = self._switch
        if switch is not None and switch.handover is not None:
            return self._hand_over(switch, records)
        if records:
            stats.app_records += len(records)
            self.pending = key if key is not None and len(records) == 1 else None
        return records

    def _use(self, protocol: AppProtocol) -> AppDecoder:
        """Decode the direction as `protocol` from now on: its decoder, and what it can do."""
        decoder = self._decoder = protocol.new_decoder(self._transport, self._direction)
        self._app = protocol.name
        self._anomaly = anomaly_field(protocol.name)
        self._recoverable = (
            cast(RecoverableDecoder, decoder) if hasattr(decoder, "recover") else None
        )
        self._unit = cast(MemoDecoder, decoder) if protocol.memo and self._memo.limit else None
        self._switch = cast(HandoverDecoder, decoder) if protocol.hands_over else None
        self._deriving = (
            cast(DerivingDecoder, decoder) if hasattr(decoder, "take_derived") else None
        )
        return decoder

    def _hand_over(
        self, decoder: HandoverDecoder, records: Sequence[AppRecord]
    ) -> Sequence[AppRecord]:
        """The stream moved to another protocol (STARTTLS, registry.HandoverDecoder): the
        records before the move, then what the new protocol's decoder makes of the bytes of
        this feed that are its own. A protocol the registry does not know ends the app layer
        (raw stream rules go on)."""
        move = decoder.handover
        assert move is not None
        decoder.handover = None
        name, rest = move
        out = list(records)
        self.pending = None
        self._stats.app_records += len(out)
        protocol = get(name)
        if protocol is None or name not in (self._app_protocol().hands_over):
            self._stats.app_unidentified += 1
            self._end()
            return out
        self._use(protocol)
        self._stats.app_handovers += 1
        if rest:
            more = self.feed(rest)
            if more is None:
                self._end()
            else:
                out.extend(more)
        return out

    def _app_protocol(self) -> AppProtocol:
        protocol = get(self._app)
        assert protocol is not None
        return protocol

    def restart(self) -> None:
        """The stream skipped a hole (gateway/engine.py, `limits.stream_hole`): the bytes
        before it are gone. A new decoder of the identified protocol takes the bytes after
        it: a unit that starts right after the hole decodes as usual; otherwise the decoder
        refuses the bytes (an anomaly record) and a RecoverableDecoder resynchronises on the
        next unit (HTTP: the next request line). Undecided, identification starts again."""
        self._buf = b""
        self.pending = None
        if self._decoder is not None:
            protocol = get(self._app)
            if protocol is not None:
                self._use(protocol)
            else:
                self._end()

    def _recover(
        self, decoder: RecoverableDecoder, records: Sequence[AppRecord]
    ) -> Sequence[AppRecord]:
        """The records before the decoder's complaint, its anomaly record, and what the bytes
        already received hold after it (they go to the server with this packet, so they are
        decoded now): at most MAX_RECOVERIES_PER_FEED rounds, then the app layer is over."""
        out = list(records)
        self.pending = None
        for _ in range(MAX_RECOVERIES_PER_FEED):
            err = decoder.refused
            if err is None:
                break
            self._stats.app_decode_errors += 1
            out.extend(self._refused(err))
            if self._over:
                break
            try:
                out.extend(decoder.feed(b""))
            except Exception:  # noqa: BLE001 (a decoder bug ends the app layer, counted)
                self._stats.app_internal_errors += 1
                self.capped = True
                self._end()
                break
        else:
            if decoder.refused is not None:
                self._stats.app_decode_errors += 1
                self.capped = True
                out.extend(self._refused(decoder.refused, may_go_on=False))
        self._stats.app_records += len(out)
        return out

    def _refused(self, err: DecodeError, may_go_on: bool = True) -> Sequence[AppRecord]:
        """The decoder refused the bytes: one anomaly record naming what was wrong (judged by
        the anomaly rules, rules/vpatch-anomalies.yaml), then, unless `may_go_on` is False,
        decoding goes on where it can (UDP: with the next datagram; a RecoverableDecoder: on
        the next unit, HTTP's next request line); else this direction's app layer is over. Raw
        stream rules go on either way."""
        detail = str(err).encode("latin-1", "replace")[:MAX_ANOMALY_DETAIL]
        record = AppRecord(self._app, {self._anomaly: detail})
        if may_go_on and self._transport == PROTO_UDP:
            return (record,)  # one datagram, decoded whole: the next one stands on its own
        if may_go_on and self._recoverable is not None:
            try:
                self._recoverable.recover()
                self._stats.app_recoveries += 1
                return (record,)
            except Exception:  # noqa: BLE001 (a recovery bug ends the app layer, counted)
                self._stats.app_internal_errors += 1
                self.capped = True
        self._end()
        return (record,)

    def _end(self) -> None:
        """This direction's app layer is over: `feed` returns None from now on."""
        self._decoder = None
        self._unit = None
        self._recoverable = None
        self._deriving = None
        self._switch = None
        self._over = True

    def take_derived(self) -> bytes:
        """What the decoder derived for the raw stream patterns from the bytes fed since the
        last call (registry.DerivingDecoder: h2c requests as HTTP/1 text); b"" for most."""
        deriving = self._deriving
        if deriving is None:
            return b""
        try:
            return deriving.take_derived()
        except Exception:  # noqa: BLE001 (a decoder bug must not break the packet path)
            self._stats.app_internal_errors += 1
            return b""

    def remember(self) -> None:
        """The records the last `feed` returned fired no rule: remember their unit when it was
        one whole unit (`pending`) and the decoder is between units again."""
        key = self.pending
        unit = self._unit
        if key is not None and unit is not None and unit.at_boundary():
            self._memo.put(key, self._owner)


def whole_connection_probes() -> tuple[tuple[ProbeFunc, ...], tuple[ProbeFunc, ...]]:
    """Per direction (indexed by Direction): the probes of the protocols whose TCP connections
    are inspected whole."""
    out: tuple[list[ProbeFunc], list[ProbeFunc]] = ([], [])
    for app in protocols():
        if app.whole_connection and app.probe is not None and PROTO_TCP in app.transports:
            for direction in app.directions:
                out[direction].append(app.probe)
    return tuple(out[0]), tuple(out[1])


def starts_whole_connection(
    probes: tuple[ProbeFunc, ...], data: bytes, direction: Direction
) -> bool:
    """Whether a stream whose first bytes are `data` is one of those (a probe says YES)."""
    for probe in probes:
        try:
            verdict = probe(data, direction)
        except Exception:  # noqa: BLE001 (a plug-in probe must not break the packet path)
            verdict = Probe.NO
        if verdict is _YES:
            return True
    return False


def record_target(fields: Mapping[str, int | bytes]) -> bytes | None:
    """The request target (as sent) a decoded record carries, if any."""
    target = fields.get("http.uri.raw")
    return target if isinstance(target, bytes) else None


def request_uri(target: bytes, fields: Mapping[str, int | bytes] | None) -> str:
    """The normalised request URI (what `http.uri` holds) of `target`: the record's own when
    `fields` carries it, else `target` normalised the same way."""
    if fields is not None:
        uri = fields.get("http.uri")
        if isinstance(uri, bytes):
            return uri.decode("latin-1")
    return normalize_uri(target.decode("latin-1"))
