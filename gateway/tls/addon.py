"""The vpatch mitmproxy addon: each decrypted request judged by the packet plane's rules.

What it does: mitmproxy terminates the client's TLS with the service's own certificate and
parses HTTP; this addon's hooks hand every request and response to an `ExchangeJudge`
(gateway/tls/inspect.py, the packet plane's engine) and apply its decision:
- `requestheaders`: the header limits of the service (`max_headers`, `max_header_bytes`: a
  request over them is refused with an event, sid 9300031), then the request head is judged; a
  blocked request is answered (block page or reset) before any body is read. A body larger
  than the service's `depth` is streamed (mitmproxy's `stream_large_bodies`): its first `depth`
  bytes are judged while they pass, and a hit cuts the request off (the server has seen its
  head and the body up to there; docs/https.md);
- `request`: a buffered body (at most `depth` bytes: larger ones are streamed) is judged; a
  blocked request is answered with the block page (403, `Connection: close`) or a reset, and
  the server is never contacted: the proxy runs with `connection_strategy=lazy`, so the
  upstream connection is opened only for a request that passes; a passing one gets
  X-Forwarded-For and Forwarded when the service asks (after judging: rules see what the
  client sent);
- `responseheaders` / `response`: the same for the response (to_client rules);
- `tls_clienthello` / `tls_failed_client`: a client that offers only versions below the
  service's `client_min` is refused by mitmproxy (no TLS alert: the client sees the connection
  close) and raises an event (sid 9300030) naming what it offered.
Events get the `tls` facts (SNI, the versions on both sides) and go to the gateway's event
sink; detect-only, exceptions and the per-host policy are the engine's.

What it guarantees: no hook raises into mitmproxy (a failure is counted in `errors`, logged,
and the request gets the fail policy: passed under `fail_policy: open`, reset under
`closed`); the judge's replayed exchanges are finished when their flow ends or errs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from mitmproxy import http
from mitmproxy.tls import ClientHelloData, TlsData

from gateway.events.eve import Event
from gateway.tls.inspect import (
    ExchangeJudge,
    TlsFacts,
    build_body,
    build_request_head,
    build_response_head,
    is_chunked,
)
from gateway.tls.service import (
    SID_HEADER_LIMIT,
    SID_TLS_REFUSED,
    BlockAnswer,
    TlsService,
    TlsVersion,
)
from gateway.verdict import Decision
from gateway.vocabulary import PROTO_TCP, Action, Direction

__all__ = ["BLOCK_PAGE", "SID_HEADER_LIMIT", "SID_TLS_REFUSED", "VpatchAddon", "offered_version"]

log = logging.getLogger("vpatch.tls")

SUPPORTED_VERSIONS: Final = 43  # the TLS extension (RFC 8446 section 4.2.1)
BLOCK_PAGE: Final = (
    b"<!doctype html><html><head><title>Request blocked</title></head><body>"
    b"<h1>Request blocked</h1><p>This request was blocked by the gateway protecting this "
    b"server (vpatch).</p></body></html>\n"
)


class Counters(Protocol):
    def add(self, name: str, n: int = 1) -> None: ...


class EventOut(Protocol):
    def emit(self, event: Event) -> object: ...


def offered_version(raw_hello: bytes, extensions: Iterable[tuple[int, bytes]]) -> int:
    """The highest TLS version a ClientHello offers (its wire number, e.g. 0x0303)."""
    for kind, data in extensions:
        if kind == SUPPORTED_VERSIONS and len(data) >= 3:
            versions = [
                int.from_bytes(data[i : i + 2], "big") for i in range(1, 1 + data[0] - 1, 2)
            ]
            real = [v for v in versions if v & 0x0F0F != 0x0A0A]  # GREASE: 0x?A?A (RFC 8701)
            if real:
                return max(real)
    return int.from_bytes(raw_hello[:2], "big") if len(raw_hello) >= 2 else 0


def _version_name(code: int) -> str:
    version = TlsVersion.from_code(code)
    return version.value if version is not None else f"0x{code:04x}"


class VpatchAddon:
    """The mitmproxy addon of one proxied service (one per proxy process)."""

    def __init__(
        self,
        service: TlsService,
        judge: ExchangeJudge,
        events: EventOut | None,
        counters: Counters,
        fail_open: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.judge = judge
        self.events = events
        self.counters = counters
        self.fail_open = fail_open
        self.clock = clock
        self._offered: dict[str, int] = {}  # client connection id -> highest version offered
        page = service.block_page.read_bytes() if service.block_page is not None else BLOCK_PAGE
        self._page = page

    # ---------------------------------------------------------------- TLS

    def tls_clienthello(self, data: ClientHelloData) -> None:
        hello = data.client_hello
        try:
            offered = offered_version(hello.raw_bytes(False), hello.extensions)
        except Exception:  # noqa: BLE001 (an odd hello is mitmproxy's to refuse)
            offered = 0
        self._offered[data.context.client.id] = offered

    def tls_established_client(self, data: TlsData) -> None:
        self._offered.pop(data.context.client.id, None)

    def tls_failed_client(self, data: TlsData) -> None:
        client = data.context.client
        offered = self._offered.pop(client.id, None)
        if offered is None or offered >= self.service.client_min.code:
            return  # failed for another reason (the client refused our certificate...)
        self.counters.add("tls_refused")
        reason = f"TLS client offered at most {_version_name(offered)}"
        self._plane_event(
            SID_TLS_REFUSED,
            f"vpatch TLS: client below the service's floor {self.service.client_min.value}",
            client.peername, reason, client.sni or "", _version_name(offered),
        )  # fmt: skip

    # ---------------------------------------------------------------- HTTP

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._guarded(flow, self._request_head)

    def request(self, flow: http.HTTPFlow) -> None:
        self._guarded(flow, self._request_body)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._guarded(flow, self._response_head)

    def response(self, flow: http.HTTPFlow) -> None:
        self._guarded(flow, self._response_body)
        self.judge.finish(flow.id, self.clock())

    def error(self, flow: http.HTTPFlow) -> None:
        self.judge.finish(flow.id, self.clock())

    def _guarded(self, flow: http.HTTPFlow, step: Callable[[http.HTTPFlow], None]) -> None:
        try:
            step(flow)
        except Exception as err:  # noqa: BLE001 (a hook never raises into mitmproxy)
            self.counters.add("errors")
            log.error("%s: inspecting %s failed: %r", self.service.name, flow.request.url, err)
            if not self.fail_open and flow.response is None:
                _kill(flow)

    def _request_head(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        self.counters.add("requests")
        fields = list(req.headers.fields)
        size = sum(len(name) + len(value) + 4 for name, value in fields)
        service = self.service
        if len(fields) > service.max_headers or size > service.max_header_bytes:
            self.counters.add("header_limits")
            client = flow.client_conn
            self._plane_event(
                SID_HEADER_LIMIT, "vpatch HTTPS: request header fields over the service's bound",
                client.peername,
                f"{len(fields)} fields, {size} bytes (bounds {service.max_headers}, "
                f"{service.max_header_bytes})", client.sni or "", client.tls_version or "",
            )  # fmt: skip
            self._block(flow, bool(req.stream))
            return
        now = self.clock()
        server = flow.server_conn.address or (req.host, req.port)
        self.judge.open(flow.id, flow.client_conn.peername[:2], server[:2], now)
        head = build_request_head(
            req.data.method, req.data.path, req.data.http_version, fields, req.data.authority
        )
        decision = self.judge.send(flow.id, True, head, self._facts(flow), now)
        if self._apply(flow, decision, bool(req.stream)):
            return
        if req.stream:  # a body over the depth: judged while it passes
            req.stream = self._streamer(flow, is_chunked(fields))

    def _request_body(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if flow.response is not None or flow.error is not None:
            return  # answered at the head already
        if flow.metadata.get("vpatch_blocked"):  # a streamed body hit a rule
            _kill(flow)
            return
        if not req.stream:
            body = req.raw_content or b""
            data = build_body(body, is_chunked(req.headers.fields), self.service.depth, True)
            decision = self.judge.send(flow.id, True, data, self._facts(flow), self.clock())
            if self._apply(flow, decision, False):
                return
        if self.service.forwarded:
            _add_forwarded(req, flow.client_conn.peername[0])

    def _response_head(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or flow.metadata.get("vpatch_answered"):
            return
        head = build_response_head(
            resp.data.http_version, resp.status_code, resp.data.reason, list(resp.headers.fields)
        )
        decision = self.judge.send(flow.id, False, head, self._facts(flow), self.clock())
        self._apply(flow, decision, bool(resp.stream))

    def _response_body(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or resp.stream or flow.metadata.get("vpatch_answered"):
            return
        chunked = is_chunked(resp.headers.fields)
        data = build_body(resp.raw_content or b"", chunked, self.service.depth, True)
        decision = self.judge.send(flow.id, False, data, self._facts(flow), self.clock())
        self._apply(flow, decision, False)

    def _streamer(self, flow: http.HTTPFlow, chunked: bool) -> Callable[[bytes], bytes]:
        """The stream function of a body over the depth: its first `depth` bytes are judged
        as they pass; after a hit nothing more is forwarded (the `request` hook kills)."""
        left = self.service.depth

        def stream(chunk: bytes) -> bytes:
            nonlocal left
            if flow.metadata.get("vpatch_blocked"):
                return b""
            if left > 0 and chunk:
                data = build_body(chunk, chunked, left, False)
                left -= len(chunk)
                decision = self.judge.send(flow.id, True, data, self._facts(flow), self.clock())
                if decision is not None and self._verdict(decision):
                    flow.metadata["vpatch_blocked"] = True
                    return b""
            return chunk

        return stream

    # ---------------------------------------------------------------- decisions

    def _apply(self, flow: http.HTTPFlow, decision: Decision | None, streaming: bool) -> bool:
        """Emit the decision's events; answer the flow if it blocks (True): a reset when the
        service says so or the message is streamed, else the block page."""
        if decision is None or not self._verdict(decision):
            return False
        self._block(flow, streaming)
        return True

    def _verdict(self, decision: Decision) -> bool:
        """Emit the events; True when the decision blocks."""
        for event in decision.events:
            self.counters.add("events")
            if self.events is not None:
                self.events.emit(event)
        return decision.action in (Action.DROP, Action.RESET)

    def _block(self, flow: http.HTTPFlow, streaming: bool) -> None:
        self.counters.add("blocked")
        flow.metadata["vpatch_answered"] = True
        if self.service.blocked is BlockAnswer.RESET or streaming:
            _kill(flow)
            return
        if flow.request.stream:
            flow.request.stream = False  # an answer and a streamed request exclude each other
        flow.response = http.Response.make(
            403,
            self._page,
            {"Content-Type": "text/html; charset=utf-8", "Connection": "close"},
        )

    def _facts(self, flow: http.HTTPFlow) -> TlsFacts:
        return TlsFacts(
            flow.client_conn.sni or "",
            flow.client_conn.tls_version or "",
            flow.server_conn.tls_version or "",
        )

    def _plane_event(
        self,
        sid: int,
        signature: str,
        peer: Any,
        reason: str,
        sni: str,
        version: str,
    ) -> None:
        """An event of the plane itself (not of a rule): blocked, sid `sid`."""
        self.counters.add("events")
        if self.events is None:
            return
        src = peer[:2] if peer else ("", 0)
        self.events.emit(
            Event(
                timestamp=self.clock(), flow_id=0, src_ip=str(src[0]), src_port=int(src[1]),
                dest_ip=self.service.host, dest_port=self.service.port, proto=PROTO_TCP,
                server_port=self.service.port, direction=Direction.TO_SERVER,
                signature_id=sid, signature=signature, severity="medium", cves=(),
                rule_action=Action.RESET, blocked=True, field="tls", condition=reason,
                tls_sni=sni, tls_version=version,
            )
        )  # fmt: skip


def _kill(flow: http.HTTPFlow) -> None:
    """Close the client's connection (HTTP/2: its stream) without an answer."""
    flow.kill()  # type: ignore[no-untyped-call]


def _add_forwarded(req: http.Request, client: str) -> None:
    """X-Forwarded-For (appended to any the client sent) and Forwarded (RFC 7239)."""
    previous = req.headers.get("X-Forwarded-For")
    req.headers["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
    node = f'"[{client}]"' if ":" in client else client
    req.headers["Forwarded"] = f"for={node};proto=https"
