"""Evasion techniques: a client byte stream -> the raw IP datagrams of one TCP connection that
delivers it to the server in a way meant to mislead an inspecting gateway (tests, benchmarks).

A `Technique` has a name, a class (the table's row: checksum, window, ttl, ...) and up to four
stages, each optional, applied in this order by `plan`:
1. `rewrite`: the application bytes (HTTP, SMB, DCE/RPC re-encodings, gateway/testing/
   evasion_app.py); the result is what the server application must read (`Planned.intended`);
2. `segment`: how those bytes are cut into `Piece`s of sequence space (an urgent-data
   technique adds bytes the receiver takes out);
3. `conn`: the connection's parameters (`Conn`: IP version, server window, ...);
4. `tcp`: transforms of the whole list of segments (`wire.Seg`): the handshake, the client's
   data, the server's data and the close, as `session` builds them; insertion copies,
   reordering, fragmentation and IPv6 extension headers are all such transforms.
`combine` chains techniques (rewrites and transforms in order; at most one segmenter).

The techniques follow Ptacek & Newsham (1998), Handley, Paxson & Kreibich (2001) and what
Stonesoft's evader automates: insertion copies (junk of the same length at the same sequence
numbers) that a receiver drops for a bad TCP or IPv4 checksum, an offload-partial checksum, a
TTL that expires before the server, no ACK flag, an ACK of unsent data, an old timestamp
(PAWS), or a sequence number beyond the window; overlapping out-of-order copies for first-wins
and last-wins receivers; urgent bytes; data on the SYN; a second SYN with another ISN; resets
outside the window or not at RCV.NXT; a SYN+ACK before the SYN; IP fragments (tiny, reversed,
overlapping); IPv6 extension header chains; segmentation and reordering; plus the application
rewrites. Whether an evasion is valid (the server really reads the exploit) is not assumed
here: gateway/testing/receiver.py judges it, per target (gateway/testing/evasion_run.py).

Addresses: IPv4 198.18.0.1 -> 198.19.0.1 (RFC 2544), IPv6 2001:2::1 -> 2001:2::2 (RFC 5180).
Nothing leaves the process.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final

from gateway.testing.evasion_app import (
    APACHE_ONLY,
    CHARSET_READERS,
    H2C_REWRITES,
    HTTP_REWRITES,
    IIS_ONLY,
    JAVA_AND_APACHE,
    JAVA_ONLY,
    SMB_REWRITES,
)
from gateway.testing.smb_writes import WRITE_METHODS
from gateway.testing.wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Checksum,
    Fragmenting,
    FragOverlap,
    Seg,
    build,
    junk,
)

__all__ = [
    "CLASSES",
    "TECHNIQUES",
    "Conn",
    "Piece",
    "Planned",
    "Technique",
    "combine",
    "plan",
    "session",
]

MSS: Final = 1400
CLIENT_TS: Final = 100_000
SERVER_TS: Final = 900_000
OTHER_ISN: Final = 0x40000000  # added to the client ISN for a second, different SYN
SMALL_WINDOW: Final = 64  # the server window of the out-of-window technique

Rewrite = Callable[[bytes], "bytes | None"]
Segmenter = Callable[[bytes], "list[Piece]"]
Transform = Callable[["Conn", "list[Seg]"], "list[Seg]"]


@dataclass(frozen=True, slots=True)
class Conn:
    """One TCP connection's parameters."""

    dport: int = 80
    version: int = 4
    sport: int = 40000
    client_isn: int = 0x1000_0000
    server_isn: int = 0x5000_0000
    server_window: int = 65535
    timestamps: bool = True
    ttl: int = 64  # of the client's datagrams, as the gateway sees them

    @property
    def client(self) -> str:
        return "198.18.0.1" if self.version == 4 else "2001:2::1"

    @property
    def server(self) -> str:
        return "198.19.0.1" if self.version == 4 else "2001:2::2"

    def offset(self, seq: int) -> int:
        """Stream offset of a client sequence number (0: the first byte after the SYN)."""
        return (seq - self.client_isn - 1) % (1 << 32)


@dataclass(frozen=True, slots=True)
class Piece:
    """Client bytes at `offset` of sequence space; `urg`: urgent pointer (URG set when > 0)."""

    offset: int
    data: bytes
    urg: int = 0


@dataclass(frozen=True, slots=True)
class Technique:
    name: str
    cls: str
    doc: str
    rewrite: tuple[Rewrite, ...] = ()
    apps: frozenset[str] = frozenset()  # app protocols it applies to (empty: any)
    servers: frozenset[str] = frozenset()  # server families it applies to (empty: any)
    segment: Segmenter | None = None
    conn: tuple[Callable[[Conn], Conn], ...] = ()
    tcp: tuple[Transform, ...] = ()


@dataclass(frozen=True, slots=True)
class Planned:
    """A technique applied to one stream: what the server must read, and the datagrams."""

    technique: Technique
    conn: Conn
    intended: bytes
    packets: tuple[tuple[bool, bytes], ...]  # (sent by the server, datagram) in wire order


# ----------------------------------------------------------------------------- the session


def contiguous(size: int) -> Segmenter:
    def cut(data: bytes) -> list[Piece]:
        return [Piece(i, data[i : i + size]) for i in range(0, len(data), size)]

    return cut


def session(conn: Conn, pieces: Iterable[Piece], to_client: bytes = b"") -> list[Seg]:
    """Handshake, the client's pieces in the given order, the server's data, FIN both ways."""
    c, s, sp, dp = conn.client, conn.server, conn.sport, conn.dport
    ci, si = conn.client_isn, conn.server_isn
    tick = [CLIENT_TS, SERVER_TS]

    def ts(server: bool) -> tuple[int, int] | None:
        if not conn.timestamps:
            return None
        tick[server] += 1
        return (tick[1], tick[0]) if server else (tick[0], tick[1])

    out = [
        Seg(c, s, sp, dp, ci, 0, SYN, mss=1460, ts=ts(False), ttl=conn.ttl),
        Seg(s, c, dp, sp, si, ci + 1, SYN | ACK, window=conn.server_window, mss=1460, ts=ts(True)),
        Seg(c, s, sp, dp, ci + 1, si + 1, ACK, ts=ts(False), ttl=conn.ttl),
    ]
    end = 0
    for p in pieces:
        flags = ACK | PSH | (URG if p.urg else 0)
        out.append(
            Seg(
                c,
                s,
                sp,
                dp,
                ci + 1 + p.offset,
                si + 1,
                flags,
                p.data,
                urg=p.urg,
                ts=ts(False),
                ttl=conn.ttl,
            )
        )
        end = max(end, p.offset + len(p.data))
    c_next, s_next = ci + 1 + end, si + 1
    for i in range(0, len(to_client), MSS):
        chunk = to_client[i : i + MSS]
        out.append(
            Seg(
                s,
                c,
                dp,
                sp,
                s_next,
                c_next,
                ACK | PSH,
                chunk,
                window=conn.server_window,
                ts=ts(True),
            )
        )
        s_next += len(chunk)
    out += [
        Seg(c, s, sp, dp, c_next, s_next, FIN | ACK, ts=ts(False), ttl=conn.ttl),
        Seg(s, c, dp, sp, s_next, c_next + 1, FIN | ACK, window=conn.server_window, ts=ts(True)),
        Seg(c, s, sp, dp, c_next + 1, s_next + 1, ACK, ts=ts(False), ttl=conn.ttl),
    ]
    return out


def _servers(name: str) -> frozenset[str]:
    """The server families an app rewrite applies to (empty: any)."""
    if name in IIS_ONLY:
        return frozenset({"iis"})
    if name in CHARSET_READERS:
        return frozenset({"iis", "java"})
    if name in APACHE_ONLY:
        return frozenset({""})
    if name in JAVA_ONLY:
        return frozenset({"java"})
    if name in JAVA_AND_APACHE:
        return frozenset({"java", ""})
    return frozenset()


def plan(
    tech: Technique, stream: bytes, to_client: bytes, dport: int, app: str, server: str = ""
) -> Planned | None:
    """`tech` applied to a client stream for an `app` server of family `server` ("iis",
    "java", or "" for any other), or None where it does not apply."""
    if (tech.apps and app not in tech.apps) or (tech.servers and server not in tech.servers):
        return None
    intended = stream
    for rewrite in tech.rewrite:
        out = rewrite(intended)
        if out is None:
            return None
        intended = out
    conn = Conn(dport=dport)
    for change in tech.conn:
        conn = change(conn)
    pieces = (tech.segment or contiguous(MSS))(intended)
    segs = session(conn, pieces, to_client)
    for transform in tech.tcp:
        segs = transform(conn, segs)
    packets: list[tuple[bool, bytes]] = []
    for ident, seg in enumerate(segs, 1):
        seg = replace(seg, ident=ident)
        packets.extend((seg.src == conn.server, d) for d in build(seg))
    return Planned(tech, conn, intended, tuple(packets))


def combine(*techs: Technique, cls: str | None = None) -> Technique | None:
    """The techniques one after the other (None when two of them cut the stream)."""
    segmenters = [t.segment for t in techs if t.segment is not None]
    if len(segmenters) > 1:
        return None
    apps = [t.apps for t in techs if t.apps]
    servers = [t.servers for t in techs if t.servers]
    return Technique(
        name="+".join(t.name for t in techs),
        cls=cls or techs[0].cls,
        doc="; ".join(t.doc for t in techs),
        rewrite=tuple(r for t in techs for r in t.rewrite),
        apps=frozenset.intersection(*apps) if apps else frozenset(),
        servers=frozenset.intersection(*servers) if servers else frozenset(),
        segment=segmenters[0] if segmenters else None,
        conn=tuple(c for t in techs for c in t.conn),
        tcp=tuple(f for t in techs for f in t.tcp),
    )


# ----------------------------------------------------------------------------- transforms


def _client_data(conn: Conn, seg: Seg) -> bool:
    return seg.src == conn.client and bool(seg.data) and not seg.flags & SYN


def insertion(mutate: Callable[[Conn, Seg], Seg]) -> Transform:
    """Before every client data segment, a junk copy (same sequence numbers) changed by
    `mutate` so that the receiver drops it."""

    def transform(conn: Conn, segs: list[Seg]) -> list[Seg]:
        out = []
        for seg in segs:
            if _client_data(conn, seg):
                out.append(mutate(conn, seg.with_data(junk(seg.data))))
            out.append(seg)
        return out

    return transform


def _ahead(conn: Conn, segs: list[Seg]) -> list[Seg]:
    """Before each client data segment, junk for the bytes one window further: out of the
    server's window when sent, the real bytes come later."""
    data = [s for s in segs if _client_data(conn, s)]
    win = conn.server_window
    out = []
    for seg in segs:
        if _client_data(conn, seg):
            at = conn.offset(seg.seq) + win
            out += [
                o.with_data(junk(o.data))
                for o in data
                if at <= conn.offset(o.seq) < at + len(seg.data)
            ]
        out.append(seg)
    return out


def _overlap(junk_first: bool, shift: int = 0) -> Transform:
    """Client data out of order: every segment but the first with a junk copy (before or after
    it; `shift`: the copies moved by that many bytes and all sent first), the first last."""

    def transform(conn: Conn, segs: list[Seg]) -> list[Seg]:
        idx = [i for i, s in enumerate(segs) if _client_data(conn, s)]
        if len(idx) < 2:
            return segs
        data = [segs[i] for i in idx]
        body: list[Seg] = []
        if shift:
            body += [s.with_data(junk(s.data)) for s in data[1:]]
            body = [replace(s, seq=s.seq - shift) for s in body]
            body += data[1:]
        else:
            for s in data[1:]:
                copy = s.with_data(junk(s.data))
                body += [copy, s] if junk_first else [s, copy]
        body.append(data[0])
        return segs[: idx[0]] + body + segs[idx[-1] + 1 :]

    return transform


def _syn_payload(conn: Conn, segs: list[Seg]) -> list[Seg]:
    first = next((s for s in segs if _client_data(conn, s)), None)
    if first is None:
        return segs
    return [s.with_data(junk(first.data)) if i == 0 else s for i, s in enumerate(segs)]


def _other_isn_copies(conn: Conn, segs: list[Seg]) -> list[Seg]:
    """Junk copies of the client data numbered from the other ISN."""
    return [
        replace(s.with_data(junk(s.data)), seq=s.seq + OTHER_ISN)
        for s in segs
        if _client_data(conn, s)
    ]


def _second_syn(early: bool, reset: bool = False) -> Transform:
    """A SYN with another ISN (before the server's SYN+ACK, or after the handshake, then
    preceded by a reset outside the window), then junk numbered from that ISN."""

    def transform(conn: Conn, segs: list[Seg]) -> list[Seg]:
        syn = replace(segs[0], seq=conn.client_isn + OTHER_ISN)
        copies = _other_isn_copies(conn, segs)
        first = next(i for i, s in enumerate(segs) if _client_data(conn, s))
        if early:
            return [segs[0], syn, *segs[1:first], *copies, *segs[first:]]
        extra = [_rst(conn, segs[2], 1 << 20)] if reset else []
        return [*segs[:3], *extra, syn, *copies, *segs[3:]]

    return transform


def _rst(conn: Conn, ack_seg: Seg, distance: int) -> Seg:
    return replace(ack_seg, seq=ack_seg.seq + distance, flags=RST | ACK, data=b"")


def _reset_at(distance: int) -> Transform:
    def transform(conn: Conn, segs: list[Seg]) -> list[Seg]:
        return [*segs[:3], _rst(conn, segs[2], distance), *segs[3:]]

    return transform


def _synack_first(conn: Conn, segs: list[Seg]) -> list[Seg]:
    fake = replace(segs[0], flags=SYN | ACK, seq=conn.client_isn - 5000, ack=0x2468ACE)
    return [fake, *segs]


def _on_client(change: Callable[[Seg], Seg], data_only: bool = True) -> Transform:
    def transform(conn: Conn, segs: list[Seg]) -> list[Seg]:
        return [
            change(s) if s.src == conn.client and (_client_data(conn, s) or not data_only) else s
            for s in segs
        ]

    return transform


def _retransmit_same(conn: Conn, segs: list[Seg]) -> list[Seg]:
    """After every client data segment, a copy reaching 3 bytes back (the same bytes)."""
    stream: dict[int, int] = {}
    out = []
    for seg in segs:
        out.append(seg)
        if _client_data(conn, seg):
            off = conn.offset(seg.seq)
            for i, b in enumerate(seg.data):
                stream[off + i] = b
            start = max(0, off - 3)
            if all(i in stream for i in range(start, off)):
                data = bytes(stream[i] for i in range(start, off + len(seg.data)))
                out.append(replace(seg, seq=seg.seq - (off - start), data=data))
    return out


# ----------------------------------------------------------------------------- segmenters


def _windows(size: int, window: int, shuffle: bool) -> Segmenter:
    def cut(data: bytes) -> list[Piece]:
        pieces = contiguous(size)(data)
        rng = random.Random(len(data))
        out: list[Piece] = []
        for i in range(0, len(pieces), window):
            chunk = pieces[i : i + window]
            if shuffle:
                rng.shuffle(chunk)
            else:
                chunk.reverse()
            out += chunk
        return out

    return cut


def _first_last(data: bytes) -> list[Piece]:
    pieces = contiguous(16)(data)
    return pieces[1:] + pieces[:1]


def _urgent_junk(data: bytes) -> list[Piece]:
    """Every 8 bytes followed by a junk byte, the urgent byte of its segment."""
    out = []
    at = 0
    for i in range(0, len(data), 8):
        chunk = data[i : i + 8] + b"X"
        out.append(Piece(at, chunk, urg=len(chunk)))
        at += len(chunk)
    return out


def _urgent_ahead(data: bytes) -> list[Piece]:
    """Pairs of segments: 8 bytes whose urgent pointer names the next segment's first byte,
    then a junk byte and 8 more bytes."""
    out = []
    at = 0
    for i in range(0, len(data), 16):
        first = data[i : i + 8]
        out.append(Piece(at, first, urg=len(first) + 1))
        second = b"X" + data[i + 8 : i + 16]
        out.append(Piece(at + len(first), second))
        at += len(first) + len(second)
    return out


# ----------------------------------------------------------------------------- the registry


_t = Technique


def _v6(conn: Conn) -> Conn:
    return replace(conn, version=6)


def _small_window(conn: Conn) -> Conn:
    return replace(conn, server_window=SMALL_WINDOW)


def _frag(size: int, reverse: bool = False, overlap: FragOverlap = FragOverlap.NONE) -> Transform:
    return _on_client(lambda s: replace(s, frag=Fragmenting(size, reverse, overlap)))


def _ext(*chain: int) -> Transform:
    return _on_client(lambda s: replace(s, ext=chain), data_only=False)


SINGLE: Final[tuple[Technique, ...]] = (
    _t("plain", "baseline", "in order, 1400-byte segments (no evasion)"),
    _t("seg-1byte", "segmentation", "1-byte segments", segment=contiguous(1)),
    _t("seg-8byte", "segmentation", "8-byte segments", segment=contiguous(8)),
    _t(
        "seg-retransmit",
        "segmentation",
        "16-byte segments, each retransmitted 3 bytes back (same bytes)",
        segment=contiguous(16),
        tcp=(_retransmit_same,),
    ),
    _t(
        "order-reverse",
        "ordering",
        "1-byte segments, reversed in windows of 64",
        segment=_windows(1, 64, False),
    ),
    _t(
        "order-shuffle",
        "ordering",
        "7-byte segments shuffled in windows of 24",
        segment=_windows(7, 24, True),
    ),
    _t(
        "order-first-last", "ordering", "16-byte segments, the first sent last", segment=_first_last
    ),
    _t(
        "tcp-checksum-bad",
        "checksum",
        "junk copies with a wrong TCP checksum",
        tcp=(insertion(lambda c, s: replace(s, checksum=Checksum.BAD)),),
    ),
    _t(
        "tcp-checksum-partial",
        "checksum",
        "junk copies with an offload-partial checksum",
        tcp=(insertion(lambda c, s: replace(s, checksum=Checksum.PARTIAL)),),
    ),
    _t(
        "ip-checksum-bad",
        "checksum",
        "junk copies with a wrong IPv4 header checksum",
        tcp=(insertion(lambda c, s: replace(s, ip_checksum_bad=True)),),
    ),
    _t(
        "window-ahead",
        "window",
        f"server window {SMALL_WINDOW}: junk one window ahead",
        segment=contiguous(SMALL_WINDOW // 2),
        conn=(_small_window,),
        tcp=(_ahead,),
    ),
    _t(
        "no-ack",
        "ack",
        "junk copies without the ACK flag",
        tcp=(insertion(lambda c, s: replace(s, flags=s.flags & ~ACK)),),
    ),
    _t(
        "ack-unsent",
        "ack",
        "junk copies acknowledging data never sent",
        tcp=(insertion(lambda c, s: replace(s, ack=s.ack + (1 << 20))),),
    ),
    _t(
        "paws-old-ts",
        "paws",
        "junk copies with an old timestamp",
        tcp=(insertion(lambda c, s: replace(s, ts=(s.ts[0] - 50_000, s.ts[1]) if s.ts else None)),),
    ),
    _t(
        "overlap-real-first",
        "overlap",
        "out of order, a junk copy after each real segment",
        segment=contiguous(16),
        tcp=(_overlap(junk_first=False),),
    ),
    _t(
        "overlap-junk-first",
        "overlap",
        "out of order, a junk copy before each real segment",
        segment=contiguous(16),
        tcp=(_overlap(junk_first=True),),
    ),
    _t(
        "overlap-shifted",
        "overlap",
        "out of order, junk copies 8 bytes off, all sent first",
        segment=contiguous(16),
        tcp=(_overlap(junk_first=True, shift=8),),
    ),
    _t("urgent-junk", "urgent", "a junk urgent byte after every 8 bytes", segment=_urgent_junk),
    _t(
        "urgent-ahead",
        "urgent",
        "urgent pointer naming the next segment's junk first byte",
        segment=_urgent_ahead,
    ),
    _t("syn-payload", "syn", "junk on the SYN (no Fast Open cookie)", tcp=(_syn_payload,)),
    _t(
        "second-syn",
        "syn",
        "after the handshake a SYN with another ISN, junk numbered from it",
        tcp=(_second_syn(early=False),),
    ),
    _t(
        "second-syn-early",
        "syn",
        "a second SYN before the SYN+ACK, junk numbered from it",
        tcp=(_second_syn(early=True),),
    ),
    _t("synack-first", "syn", "the client sends a SYN+ACK before its SYN", tcp=(_synack_first,)),
    _t("rst-outside", "rst", "a reset outside the window", tcp=(_reset_at(1 << 20),)),
    _t("rst-inexact", "rst", "a reset in the window but not at RCV.NXT", tcp=(_reset_at(1000),)),
    _t(
        "rst-resyn",
        "rst",
        "a reset outside the window, a SYN with another ISN, junk from it",
        tcp=(_second_syn(early=False, reset=True),),
    ),
    _t(
        "ttl-insertion",
        "ttl",
        "junk copies whose TTL expires before the server",
        tcp=(insertion(lambda c, s: replace(s, ttl=1)),),
    ),
    _t("frag-tiny", "ip-frag", "IPv4 fragments of 8 bytes", tcp=(_frag(8),)),
    _t(
        "frag-reverse",
        "ip-frag",
        "IPv4 fragments of 16 bytes in reverse order",
        tcp=(_frag(16, reverse=True),),
    ),
    _t(
        "frag-overlap",
        "ip-frag",
        "IPv4 fragments, a junk fragment over the payload",
        tcp=(_frag(16, overlap=FragOverlap.REAL_FIRST),),
    ),
    _t("ipv6", "ipv6", "over IPv6", conn=(_v6,)),
    _t(
        "ipv6-ext",
        "ipv6",
        "hop-by-hop, destination, routing, destination headers",
        conn=(_v6,),
        tcp=(_ext(0, 60, 43, 60),),
    ),
    _t(
        "ipv6-ext-long",
        "ipv6",
        "hop-by-hop and 11 destination options headers",
        conn=(_v6,),
        tcp=(_ext(0, *([60] * 11)),),
    ),
    _t("ipv6-frag-tiny", "ipv6", "IPv6 fragments of 8 bytes", conn=(_v6,), tcp=(_frag(8),)),
    _t(
        "ipv6-frag-reverse",
        "ipv6",
        "IPv6 fragments of 16 bytes in reverse order",
        conn=(_v6,),
        tcp=(_frag(16, reverse=True),),
    ),
    *(
        _t(
            name,
            "http",
            doc,
            rewrite=(fn,),
            apps=frozenset({"http"}),
            servers=_servers(name),
        )
        for name, (fn, doc) in HTTP_REWRITES.items()
    ),
    *(
        _t(name, "h2c", doc, rewrite=(fn,), apps=frozenset({"http"}))
        for name, (fn, doc) in H2C_REWRITES.items()
    ),
    *(
        _t(name, "smb", doc, rewrite=(fn,), apps=frozenset({"smb", "dcerpc"}))
        for name, (fn, doc) in SMB_REWRITES.items()
    ),
    *(
        _t(name, "smb-write", doc, rewrite=(fn,), apps=frozenset({"smb", "dcerpc"}))
        for name, (fn, doc) in WRITE_METHODS.items()
    ),
)

_BY_NAME: Final = {t.name: t for t in SINGLE}
_CARRIERS: Final = ("ipv6", "order-shuffle")
_NO_CARRIER: Final = frozenset({"baseline", "segmentation", "ordering"})
_ALONE: Final = frozenset({"http-pipeline-long", "http-body-pad"})  # long: not worth repeating
# IPv4 only: IPv6 has no header checksum and drops every overlap of fragments (RFC 5722)
_V4_ONLY: Final = frozenset({"ip-checksum-bad", "frag-overlap"})


def _carried() -> list[Technique]:
    """Each technique also over IPv6 and with shuffled 7-byte segments (same class)."""
    out = []
    for tech in SINGLE:
        if tech.cls in _NO_CARRIER or tech.name in _CARRIERS or tech.name in _ALONE:
            continue
        for carrier in _CARRIERS:
            if carrier == "ipv6" and (
                tech.cls in ("http", "h2c", "smb", "smb-write")
                or _v6 in tech.conn
                or tech.name in _V4_ONLY
            ):
                continue
            both = combine(tech, _BY_NAME[carrier])
            if both is not None:
                out.append(both)
    return out


_CROSS: Final = (
    ("ttl-insertion", "seg-1byte", "http-uri-percent"),
    ("synack-first", "ttl-insertion"),
    ("tcp-checksum-bad", "urgent-junk"),
    ("frag-tiny", "overlap-junk-first"),
    ("ipv6-ext-long", "ipv6-frag-tiny"),
    ("paws-old-ts", "window-ahead"),
    ("rst-outside", "no-ack", "order-reverse"),
    ("second-syn", "frag-reverse"),
    ("http-fold", "http-lf", "http-chunked"),
    ("http-uri-iis-u", "http-name-case", "tcp-checksum-partial"),
    ("h2c-prior-knowledge", "seg-1byte", "ttl-insertion"),
    ("smb-keepalive", "smb-echo-first", "seg-1byte"),
    ("smb-keepalive", "smb1-trans-secondary", "netbios-session-request", "seg-1byte"),
    ("smb2-create-related", "smb2-compound", "smb-keepalive", "order-shuffle"),
    ("smb1-andx-chain", "smb-echo-first", "netbios-session-request"),
    ("smb1-write-raw", "smb-keepalive", "tcp-checksum-bad"),
    ("http-ognl-blanks", "http-multipart-fold", "http-chunk-ext-long"),
    ("http-xml-cdata", "http-chunked-ext", "order-shuffle"),
    ("http-pad-headers", "http-method-lower"),
    ("http-smuggle-te", "seg-8byte"),
    ("http-body-pad", "h2c-upgrade"),
)


def _cross() -> list[Technique]:
    out = []
    for names in _CROSS:
        both = combine(*(_BY_NAME[n] for n in names), cls="combined")
        assert both is not None, names
        out.append(both)
    return out


TECHNIQUES: Final[dict[str, Technique]] = {t.name: t for t in (*SINGLE, *_carried(), *_cross())}
CLASSES: Final[tuple[str, ...]] = tuple(dict.fromkeys(t.cls for t in TECHNIQUES.values()))
