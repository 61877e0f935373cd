"""Hostile input for the whole engine, and the checks that it held (tests/test_fuzz_engine.py,
bench/fuzz_engine.py).

What it does:
- `load_corpus(root)` reads every capture of the shared corpora (attacks/, benign/, malformed/)
  into `CaptureRecord`s, `corpus_flows(records)` groups their frames by connection (both
  directions, capture order).
- `evasion_cases(ruleset)`: every evasion technique of gateway/testing/evasion.py over the
  attack samples of the rules (each planned on use into the raw IP datagrams of a session).
- `CorpusMutator(records, cases, seed)` yields `Unit`s, each a short run of inputs for the
  engine: a corpus frame with bytes flipped, truncated, spliced with another or with bytes
  inserted; random bytes; a corpus flow whose TCP segments are shuffled, duplicated, dropped,
  cut in two, overlapped by differing copies or have their payload bytes flipped (lengths and
  checksums fixed, so the segments reach reassembly and the decoders); an evasion session
  mutated the same way. The clock moves on by a little for each input, now and then by a lot
  (idle expiry), now and then backwards.
- `feed(engine, unit)` gives a unit to `Engine.process_frame` / `process_ip` and returns the
  decisions; `bound_violations(engine)` lists every configured bound the engine's state
  exceeds (empty when all hold); `flow_state_bytes(flow)` measures what one flow holds.

What it guarantees: deterministic for a seed (random.Random, no global state); nothing is
sent anywhere; the corpora are only read. The mutators never raise on any input.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.decode.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    DecodeError,
    Packet,
    parse_frame,
)
from gateway.decode.registry import MAX_PROBE_BYTES
from gateway.engine import Engine
from gateway.errors import CaptureError
from gateway.flow.table import Flow
from gateway.intake.pcap import CaptureRecord, read_capture
from gateway.match.inspection import Inspection
from gateway.match.rules import RuleSet
from gateway.testing.evasion import TECHNIQUES, Technique, plan
from gateway.testing.wire import ones_sum
from gateway.verdict import Decision
from gateway.vocabulary import PROTO_TCP, PROTO_UDP

__all__ = [
    "CORPUS_DIRS",
    "DECODER_STATE_BOUND",
    "LINKTYPES",
    "CorpusMutator",
    "Unit",
    "bound_violations",
    "corpus_flows",
    "EvasionCase",
    "evasion_cases",
    "feed",
    "flow_state_bytes",
    "load_corpus",
]

CORPUS_DIRS: Final = ("attacks", "benign", "malformed")
MAX_FRAMES_PER_FILE: Final = 2000  # a few large captures must not make the corpus
MAX_FLOW_FRAMES: Final = 100  # frames of one corpus connection in one Unit (a slice of longer ones)
LINKTYPES: Final = (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_NULL,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
)
RAW_IP: Final = -1  # Unit.linktype of raw IP datagrams (Engine.process_ip)
# What one direction's app decoder may hold by its own named bounds: the largest are an HTTP
# head (gateway/decode/http.py MAX_HEAD_BYTES) and an h2 header block with its HPACK table
# (gateway/decode/h2.py, hpack.py), 1 MiB each, plus the probe buffer and one segment.
DECODER_STATE_BOUND: Final = 2 * 1024 * 1024 + 64 * 1024 + MAX_PROBE_BYTES + 65535
_APPS: Final = {80: "http", 8080: "http", 139: "smb", 445: "smb"}
_HTTP_PORTS: Final = frozenset((80, 8000, 8008, 8080, 8081, 8888, 9000))


@dataclass(frozen=True, slots=True)
class Unit:
    """Inputs for the engine: (linktype or RAW_IP, bytes) in order, with what made them."""

    kind: str
    inputs: tuple[tuple[int, bytes], ...]


# ----------------------------------------------------------------------------- sources


def load_corpus(root: Path, max_frames_per_file: int = MAX_FRAMES_PER_FILE) -> list[CaptureRecord]:
    """Every frame (up to `max_frames_per_file` each) of every capture under the corpora's
    attacks/, benign/ and malformed/ directories, in path order; damaged captures give the
    frames before the damage."""
    out: list[CaptureRecord] = []
    for sub in CORPUS_DIRS:
        for path in sorted((root / sub).rglob("*")):
            if path.suffix not in (".pcap", ".pcapng"):
                continue
            try:
                for i, record in enumerate(read_capture(path)):
                    if i >= max_frames_per_file:
                        break
                    out.append(record)
            except CaptureError:
                continue
    return out


def _decoded(record: CaptureRecord) -> Packet | None:
    try:
        return parse_frame(record.data, record.linktype)
    except DecodeError:
        return None


def corpus_flows(records: Iterable[CaptureRecord]) -> list[list[CaptureRecord]]:
    """The TCP and UDP frames of `records` grouped by connection (either direction), in
    capture order; flows of one frame are left out."""
    flows: dict[tuple[int, tuple[str, int], tuple[str, int]], list[CaptureRecord]] = {}
    for record in records:
        pkt = _decoded(record)
        if pkt is None or pkt.proto not in (PROTO_TCP, PROTO_UDP) or pkt.fragment:
            continue
        a, b = (pkt.src, pkt.sport), (pkt.dst, pkt.dport)
        key = (pkt.proto, min(a, b), max(a, b))
        flows.setdefault(key, []).append(record)
    return [frames for frames in flows.values() if len(frames) > 1]


@dataclass(frozen=True, slots=True)
class EvasionCase:
    """An evasion technique over a rule's attack sample (planned when used: planning all of
    them takes half a minute)."""

    technique: Technique
    to_server: bytes
    to_client: bytes
    port: int
    app: str

    def datagrams(self) -> tuple[bytes, ...] | None:
        """The session's datagrams (client and server) in wire order; None if the technique
        does not apply to the sample."""
        planned = plan(self.technique, self.to_server, self.to_client, self.port, self.app)
        return None if planned is None else tuple(d for _server, d in planned.packets)


def evasion_cases(ruleset: RuleSet) -> list[EvasionCase]:
    """Every evasion technique (gateway/testing/evasion.py) over the first inline TCP attack
    sample of every rule."""
    samples = []
    for rule in ruleset.rules:
        if rule.protocol != "tcp" or not rule.ports:
            continue
        for sample in rule.samples:
            if sample.kind == "attack" and sample.pcap is None and sample.to_server:
                samples.append((sample.to_server, sample.to_client, rule.ports[0]))
                break
    return [
        EvasionCase(tech, stream, to_client, port, _app(port))
        for tech in TECHNIQUES.values()
        for stream, to_client, port in samples
    ]


def _app(port: int) -> str:
    return "http" if port in _HTTP_PORTS else _APPS.get(port, "")


# ----------------------------------------------------------------------------- byte mutations


def flip(data: bytes, rng: random.Random) -> bytes:
    """A few bytes XORed with random non-zero values (header bytes included)."""
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
    return bytes(buf)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def splice(a: bytes, b: bytes, rng: random.Random) -> bytes:
    return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]


def insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def interesting(data: bytes, rng: random.Random) -> bytes:
    """One 16- or 32-bit field set to an edge value (0, max, sign bit, small)."""
    if len(data) < 4:
        return data
    at = rng.randrange(len(data) - 3)
    value = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF))
    if rng.random() < 0.5:
        return data[:at] + struct.pack("!H", value & 0xFFFF) + data[at + 2 :]
    return data[:at] + struct.pack("!I", value) + data[at + 4 :]


# ----------------------------------------------------------------------------- segment rebuilding


@dataclass(frozen=True, slots=True)
class _Seg:
    """A decoded TCP/UDP frame and where its parts are, to rebuild it with other bytes."""

    linktype: int
    frame: bytes
    pkt: Packet
    l3: int
    l4: int  # offset of the TCP/UDP header
    hlen: int  # TCP/UDP header length


def _seg(record: CaptureRecord) -> _Seg | None:
    pkt = _decoded(record)
    if pkt is None or pkt.fragment or pkt.first_fragment:
        return None
    frame = record.data
    if pkt.proto == PROTO_TCP:
        l4 = pkt.l4
        if l4 <= 0 or l4 + 13 > len(frame):
            return None
        hlen = (frame[l4 + 12] >> 4) * 4
    elif pkt.proto == PROTO_UDP:
        hlen = 8
        l4 = len(frame) - len(pkt.payload) - hlen
        if frame[pkt.l3] >> 4 == 4:  # Ethernet padding after the datagram: count from the IP header
            l4 = pkt.l3 + (frame[pkt.l3] & 0x0F) * 4
    else:
        return None
    if l4 < pkt.l3 or l4 + hlen > len(frame):
        return None
    return _Seg(record.linktype, frame, pkt, pkt.l3, l4, hlen)


def _rebuild(seg: _Seg, payload: bytes, seq_delta: int = 0) -> bytes:
    """`seg`'s frame with `payload` as its L4 data (and its TCP sequence number moved on by
    `seq_delta`): IP lengths, the IPv4 header checksum and the L4 checksum fixed."""
    frame, l3, l4 = seg.frame, seg.l3, seg.l4
    ip = bytearray(frame[l3:l4])
    l4h = bytearray(frame[l4 : l4 + seg.hlen])
    length = len(l4h) + len(payload)
    v6 = ip[0] >> 4 == 6
    if v6:
        struct.pack_into("!H", ip, 4, len(ip) - 40 + length)
        src, dst = bytes(ip[8:24]), bytes(ip[24:40])
        pseudo = src + dst + struct.pack("!I3xB", length, seg.pkt.proto)
    else:
        struct.pack_into("!H", ip, 2, len(ip) + length)
        struct.pack_into("!H", ip, 10, 0)
        struct.pack_into("!H", ip, 10, ~ones_sum(bytes(ip[: (ip[0] & 0x0F) * 4])) & 0xFFFF)
        src, dst = bytes(ip[12:16]), bytes(ip[16:20])
        pseudo = src + dst + struct.pack("!BBH", 0, seg.pkt.proto, length)
    if seg.pkt.proto == PROTO_TCP:
        seq = (struct.unpack_from("!I", l4h, 4)[0] + seq_delta) & 0xFFFFFFFF
        struct.pack_into("!I", l4h, 4, seq)
        at = 16
    else:
        struct.pack_into("!H", l4h, 4, length)
        at = 6
    struct.pack_into("!H", l4h, at, 0)
    csum = ~ones_sum(pseudo + bytes(l4h) + payload) & 0xFFFF
    struct.pack_into("!H", l4h, at, csum or (0xFFFF if at == 6 else 0))
    return frame[:l3] + bytes(ip) + bytes(l4h) + payload


# ----------------------------------------------------------------------------- the mutator


class CorpusMutator:
    """Endless `Unit`s from corpus frames, corpus flows and evasion sessions (deterministic
    for a seed)."""

    def __init__(
        self,
        records: list[CaptureRecord],
        cases: list[EvasionCase],
        seed: int = 0,
    ) -> None:
        self.rng = random.Random(seed)
        self.records = records
        self.flows = corpus_flows(records)
        self.cases = cases
        self._makers = (
            (self.mutated_frame, 30),
            (self.random_bytes, 5),
            (self.mutated_flow, 40),
            (self.mutated_session, 25),
        )

    def __iter__(self) -> Iterator[Unit]:
        makers = [m for m, _ in self._makers]
        weights = [w for _, w in self._makers]
        while True:
            unit = self.rng.choices(makers, weights)[0]()
            if unit is not None:
                yield unit

    def mutated_frame(self) -> Unit | None:
        if not self.records:
            return None
        rng = self.rng
        record = rng.choice(self.records)
        data = record.data
        op = rng.randrange(5)
        if op == 0:
            data = flip(data, rng)
        elif op == 1:
            data = truncate(data, rng)
        elif op == 2:
            data = splice(data, rng.choice(self.records).data, rng)
        elif op == 3:
            data = insert(data, rng)
        else:
            data = interesting(data, rng)
        linktype = record.linktype if rng.random() < 0.9 else rng.choice(LINKTYPES)
        return Unit(
            f"frame-{('flip', 'truncate', 'splice', 'insert', 'edge')[op]}", ((linktype, data),)
        )

    def random_bytes(self) -> Unit:
        rng = self.rng
        data = rng.randbytes(rng.randint(0, 1600))
        if rng.random() < 0.5 and data:  # an IP version nibble, so the decoder goes further
            data = bytes([rng.choice((0x45, 0x46, 0x4F, 0x60))]) + data[1:]
        linktype = RAW_IP if rng.random() < 0.5 else rng.choice(LINKTYPES)
        return Unit("random", ((linktype, data),))

    def mutated_flow(self) -> Unit | None:
        if not self.flows:
            return None
        frames = self.rng.choice(self.flows)
        if len(frames) > MAX_FLOW_FRAMES:
            start = self.rng.randrange(len(frames) - MAX_FLOW_FRAMES)
            frames = frames[start : start + MAX_FLOW_FRAMES]
        segs = [_seg(r) for r in frames]
        inputs = self._shuffle([(r.linktype, r.data) for r in frames], segs)
        return Unit("flow", tuple(inputs))

    def mutated_session(self) -> Unit | None:
        if not self.cases:
            return None
        datagrams = self.rng.choice(self.cases).datagrams()
        if datagrams is None:
            return None
        segs = [_seg(CaptureRecord(0.0, LINKTYPE_RAW, d, 0)) for d in datagrams]
        inputs = self._shuffle([(RAW_IP, d) for d in datagrams], segs)
        return Unit("session", tuple(inputs))

    def _shuffle(
        self, inputs: list[tuple[int, bytes]], segs: list[_Seg | None]
    ) -> list[tuple[int, bytes]]:
        """Segment-level mutations of one connection's inputs (`segs[i]` decodes inputs[i])."""
        rng = self.rng
        items = list(zip(inputs, segs, strict=True))
        for _ in range(rng.randint(1, 6)):
            if not items:
                break
            i = rng.randrange(len(items))
            (linktype, data), seg = items[i]
            op = rng.randrange(8)
            if op == 0:  # swap with a near neighbour
                j = min(len(items) - 1, i + rng.randint(1, 4))
                items[i], items[j] = items[j], items[i]
            elif op == 1:  # duplicate
                items.insert(rng.randrange(len(items) + 1), items[i])
            elif op == 2:  # drop
                del items[i]
            elif op == 3:  # flip header or payload bytes (checksums left wrong)
                items[i] = ((linktype, flip(data, rng)), None)
            elif seg is not None and seg.pkt.payload:
                payload = seg.pkt.payload
                if op == 4:  # payload bytes changed, checksums right: reaches the decoders
                    items[i] = ((linktype, _rebuild(seg, flip(payload, rng))), seg)
                elif op == 5 and seg.pkt.proto == PROTO_TCP and len(payload) > 1:  # cut in two
                    cut = rng.randrange(1, len(payload))
                    first = (linktype, _rebuild(seg, payload[:cut]))
                    second = (linktype, _rebuild(seg, payload[cut:], cut))
                    pair = [(first, None), (second, None)]
                    if rng.random() < 0.5:
                        pair.reverse()
                    items[i : i + 1] = pair
                elif op == 6 and seg.pkt.proto == PROTO_TCP:  # a differing overlapping copy
                    copy = (linktype, _rebuild(seg, flip(payload, rng)))
                    items.insert(i + rng.randint(0, 1), (copy, None))
                else:  # truncated payload, lengths fixed
                    items[i] = ((linktype, _rebuild(seg, truncate(payload, rng))), seg)
        return [inp for inp, _ in items]


# ----------------------------------------------------------------------------- running and checking


def feed(engine: Engine, unit: Unit, now: float) -> list[Decision]:
    """Every input of `unit` through the engine at packet time `now` (+1 ms each)."""
    out = []
    for i, (linktype, data) in enumerate(unit.inputs):
        t = now + i * 0.001
        if linktype == RAW_IP:
            out.append(engine.process_ip(data, t))
        else:
            out.append(engine.process_frame(data, linktype, t))
    return out


_SHARED_TYPES: Final = ("Matcher", "MatchGroup", "Rule", "RuleSet", "UnitMemo", "EngineStats",
                        "Engine", "FlowTable", "AppProtocol", "Normalizer")  # fmt: skip


def flow_state_bytes(flow: Flow, limit: int = 1 << 20) -> int:
    """The bytes one flow's state holds (sys.getsizeof over what the flow owns: its
    inspection, reassemblers, app sessions and decoders, TCP state), leaving out what flows
    share (rules, matcher, memo, counters); stops counting objects after `limit` of them."""
    seen: set[int] = set()
    todo: list[object] = [flow]
    total = 0
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        cls = type(obj)
        if (
            cls.__name__ in _SHARED_TYPES
            or cls.__module__ in ("hyperscan", "builtins")
            and callable(obj)
        ):
            continue
        if (
            isinstance(obj, (type, Iterator))
            or cls.__module__ == "enum"
            or hasattr(obj, "__members__")
        ):
            continue
        total += sys.getsizeof(obj)
        if isinstance(obj, (bytes, bytearray, str, int, float, memoryview)):
            continue
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__") or hasattr(cls, "__slots__"):
            for name in _attr_names(cls):
                value = getattr(obj, name, None)
                if value is not None:
                    todo.append(value)
            if hasattr(obj, "__dict__"):
                todo.extend(vars(obj).values())
    return total


def _attr_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend((slots,) if isinstance(slots, str) else slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


def bound_violations(engine: Engine, per_flow: int | None = None) -> list[str]:
    """Every configured bound the engine's state exceeds, as sentences (empty: all held).

    Checked: flows in the table <= max_flows; per inspected TCP direction, out-of-order bytes
    <= max_pending, delivered bytes <= the depth unless inspected whole, kept history <= 2 x
    retransmit_history; the open Hyperscan streams are exactly those of the flows in the table
    (no leak); memo entries <= http_memo_entries; incomplete IP datagrams <= the
    defragmenter's bound; and, when `per_flow` is given, each flow's state
    (`flow_state_bytes`) <= per_flow bytes."""
    config = engine.config
    out: list[str] = []
    if len(engine.table) > config.max_flows:
        out.append(f"{len(engine.table)} flows > max_flows {config.max_flows}")
    open_streams = 0
    for flow in engine.table:
        insp = flow.inspection
        if isinstance(insp, Inspection):
            open_streams += _flow_violations(engine, flow, insp, out)
        if per_flow is not None:
            held = flow_state_bytes(flow)
            if held > per_flow:
                out.append(f"{flow!r} holds {held} bytes > {per_flow}")
    if engine.matcher.streams_open != open_streams:
        out.append(
            f"{engine.matcher.streams_open} Hyperscan streams open, {open_streams} in the table"
        )
    if len(engine._memo) > config.http_memo_entries:
        out.append(f"{len(engine._memo)} memo entries > {config.http_memo_entries}")
    if len(engine.defrag) > engine.defrag.max_datagrams:
        out.append(f"{len(engine.defrag)} incomplete datagrams > {engine.defrag.max_datagrams}")
    return out


def _flow_violations(engine: Engine, flow: Flow, insp: Inspection, out: list[str]) -> int:
    """Append the bounds this flow's inspection exceeds; return its open Hyperscan streams."""
    config = engine.config
    depth = (config.depth_to_server, config.depth_to_client)
    streams = 0
    for d, way in enumerate(insp.ways):
        reasm = way.reasm
        if reasm is not None:
            if reasm.pending_bytes > config.max_pending:
                out.append(f"{flow!r} d{d}: {reasm.pending_bytes} pending > {config.max_pending}")
            if reasm.max_depth <= depth[d] and reasm.delivered > depth[d]:
                out.append(f"{flow!r} d{d}: {reasm.delivered} delivered > depth {depth[d]}")
            recent = len(reasm._recent)
            if recent > 2 * config.retransmit_history:
                out.append(f"{flow!r} d{d}: history {recent} > 2 x {config.retransmit_history}")
        for state in (way.state, way.derived):
            if state is not None and not state.closed and state.matcher is engine.matcher:
                streams += 1
    return streams
