"""HTTP exchanges decrypted by the proxy, judged by the packet plane's engine (sans-I/O).

What it does: for each request it has parsed the proxy opens an exchange
(`ExchangeJudge.open`) and `send`s its bytes as HTTP/1.1 (`build_request_head`: the request
line and header fields exactly as received; `build_body`: the body as sent, cut at the
service's inspection depth), then the response's (`build_response_head`, `build_body`), and
`finish`es it. The judge replays the exchange into an ordinary `Engine`
(gateway/engine.py) as one TCP connection between the real client and server addresses:
handshake, the request, the response; then the engine forgets it. So the HTTP decoder, the
normalised fields, the compiled rules, detect/prevent, exceptions, the per-host policy, the
limits and the events are the packet plane's own: one rule language, one compiled set, one
judge. Nothing here opens a socket or reads a clock (`now` is passed in).

What it guarantees:
- every request gets its own replayed connection (a fresh client port from a private range),
  so one blocked request never taints the next, and a body cut at the depth never shifts the
  next request's bytes; the events carry the real client port and the TLS facts (`TlsFacts`);
- the engine is the packet plane's with TCP checks the kernel did not make turned off (the
  segments are built here, whole and in order) and content identification on, so HTTP rules
  written for port 80 judge HTTP on 443 (gateway/match/follow.py);
- a body is never held whole: at most `depth` bytes of it reach the judge (the caller cuts);
  chunked bodies are presented chunked (one chunk), as they travelled;
- `request` and `response` never raise: a failure inside the engine gets the fail policy's
  decision (the engine's own guarantee).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from gateway.decode.packet import TCP_ACK, TCP_PSH, TCP_SYN, Packet
from gateway.engine import Engine
from gateway.events.eve import Event
from gateway.flow.table import FlowKey
from gateway.verdict import Decision
from gateway.vocabulary import PROTO_TCP, Action

__all__ = [
    "ExchangeJudge",
    "TlsFacts",
    "build_body",
    "build_request_head",
    "build_response_head",
    "is_chunked",
]

FIRST_PORT: Final = 1024  # replayed connections take client ports from this range
LAST_PORT: Final = 65535
_ISN_CLIENT: Final = 1_000_000
_ISN_SERVER: Final = 5_000_000
_PSH_ACK: Final = TCP_PSH | TCP_ACK
_NOTHING: Final = Decision(Action.ACCEPT)


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What the events of one client connection say about its TLS."""

    sni: str = ""
    client_version: str = ""  # e.g. "TLSv1.3"
    server_version: str = ""  # e.g. "TLSv1" ("" before the server was contacted)


def _head(first_line: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [first_line]
    lines.extend(name + b": " + value for name, value in fields)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def is_chunked(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in fields
    )


def build_body(body: bytes, chunked: bool, depth: int, complete: bool) -> bytes:
    """The body as it travelled, at most `depth` bytes of its content; chunked: one chunk, and
    the final chunk when `complete` and nothing was cut (a cut body ends where the depth
    stopped it, as on a connection whose inspection the depth ended)."""
    cut = body[:depth]
    last = b"0\r\n\r\n" if complete and len(cut) == len(body) else b""
    if not chunked:
        return cut
    if not cut:
        return last
    return b"%x\r\n" % len(cut) + cut + (b"\r\n" + last if last else b"")


def build_request_head(
    method: bytes,
    target: bytes,
    version: bytes,
    fields: list[tuple[bytes, bytes]],
    authority: bytes = b"",
) -> bytes:
    """The HTTP/1.1 head of a request as the packet plane would have seen it: the request line
    and header fields as received (HTTP/2: `:authority` becomes Host)."""
    if not version.startswith(b"HTTP/1"):
        version = b"HTTP/1.1"
        if authority and not any(name.lower() == b"host" for name, _ in fields):
            fields = [(b"Host", authority), *fields]
    return _head(method + b" " + target + b" " + version, fields)


def build_response_head(
    version: bytes, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
) -> bytes:
    """The HTTP/1.1 head of a response."""
    if not version.startswith(b"HTTP/1"):
        version = b"HTTP/1.1"
    return _head(version + b" %d " % status + reason, fields)


class _Replay:
    """One replayed connection: addresses, ports and the next sequence number each way."""

    __slots__ = ("client", "client_port", "port", "seq", "server", "server_port", "version")

    def __init__(self, client: str, client_port: int, server: str, server_port: int, port: int):
        self.client, self.client_port = client, client_port
        self.server, self.server_port = server, server_port
        self.port = port  # the replay's own client port
        self.version = ipaddress.ip_address(server).version
        self.seq = [_ISN_CLIENT, _ISN_SERVER]

    def packet(self, to_server: bool, flags: int, payload: bytes = b"") -> Packet:
        d = 0 if to_server else 1
        seq, ack = self.seq[d], self.seq[1 - d]
        self.seq[d] = (seq + len(payload) + (1 if flags & TCP_SYN else 0)) & 0xFFFFFFFF
        src, dst = (self.client, self.server) if to_server else (self.server, self.client)
        sport, dport = (self.port, self.server_port) if to_server else (self.server_port, self.port)
        return Packet(
            self.version, src, dst, PROTO_TCP, sport, dport, flags, seq,
            ack if flags & TCP_ACK else 0, payload,
        )  # fmt: skip


class ExchangeJudge:
    """Judges the HTTP exchanges of one proxy process with one engine (not thread-safe)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._next_port = FIRST_PORT
        self._open: dict[object, _Replay] = {}  # exchange key -> its replayed connection

    def _port(self) -> int:
        port = self._next_port
        self._next_port = port + 1 if port < LAST_PORT else FIRST_PORT
        return port

    def open(
        self, key: object, client: tuple[str, int], server: tuple[str, int], now: float
    ) -> None:
        """Start the replayed connection of exchange `key` (a request and its response)
        between the real client and server addresses; one still open under `key` is finished."""
        self.finish(key, now)
        replay = _Replay(client[0], client[1], server[0], server[1], self._port())
        self._forget(replay)  # a replay of the same ports long ago (the range wrapped)
        self._open[key] = replay
        engine = self.engine
        engine.process(replay.packet(True, TCP_SYN), now)
        engine.process(replay.packet(False, TCP_SYN | TCP_ACK), now)
        engine.process(replay.packet(True, TCP_ACK), now)

    def send(
        self, key: object, to_server: bool, data: bytes, tls: TlsFacts, now: float
    ) -> Decision | None:
        """Judge the next bytes of exchange `key` in one direction (request head and body
        toward the server, response head and body toward the client); None when `key` is not
        open. The Decision's events carry the real client port and `tls`."""
        replay = self._open.get(key)
        if replay is None:
            return None
        if not data:
            return _NOTHING
        decision = self.engine.process(replay.packet(to_server, _PSH_ACK, data), now)
        return self._facts(decision, replay, tls)

    def finish(self, key: object, now: float) -> None:
        """The exchange is over: the engine forgets its replayed connection (blocked or not:
        a blocked flow would otherwise stay blocked until it expires)."""
        del now  # the engine's clock is not needed to forget a flow
        replay = self._open.pop(key, None)
        if replay is not None:
            self._forget(replay)

    def _forget(self, replay: _Replay) -> None:
        table = self.engine.table
        key = FlowKey(PROTO_TCP, replay.client, replay.port, replay.server, replay.server_port)
        flow = table.get(key)
        if flow is not None:
            table.remove(flow)

    @property
    def open_exchanges(self) -> int:
        return len(self._open)

    @staticmethod
    def _facts(decision: Decision, replay: _Replay, tls: TlsFacts) -> Decision:
        if not decision.events:
            return decision
        events = tuple(_with_facts(e, replay, tls) for e in decision.events)
        return replace(decision, events=events)


def _with_facts(event: Event, replay: _Replay, tls: TlsFacts) -> Event:
    """The event with the real client port in place of the replay's, and the TLS facts."""
    src_port, dest_port = event.src_port, event.dest_port
    if src_port == replay.port:
        src_port = replay.client_port
    if dest_port == replay.port:
        dest_port = replay.client_port
    return replace(
        event,
        src_port=src_port,
        dest_port=dest_port,
        tls_sni=tls.sni,
        tls_version=tls.client_version,
        tls_server_version=tls.server_version,
    )
