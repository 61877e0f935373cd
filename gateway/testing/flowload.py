"""Keep-alive HTTP flows as datagrams, for memory figures and tests (bench/bench_flow_memory.py,
bench/bench_flows.py, tests/test_engine_flow_memory.py).

`keepalive_flow(n)` returns the IPv4 datagrams of flow number `n`: the handshake (SYN, SYN+ACK,
ACK), one HTTP/1.1 request and, unless `answered` is False, its answer (a 200 with a body of
`body` bytes) and the client's ACK of it; the connection then stays open (no FIN), as a
keep-alive connection between two requests does. Flows differ by client address and port only
(198.18.0.100 and up, 20,000 ports each; the server is 198.18.0.20:80), so any number of them
can be held at once. Timestamps are on (as Linux sends them). Nothing here sends anything.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from gateway.testing.wire import ACK, PSH, SYN, Seg, build

__all__ = ["REQUEST", "SERVER", "keepalive_flow", "response"]

SERVER: Final = "198.18.0.20"
FIRST_CLIENT: Final = ipaddress.ip_address("198.18.0.100")
PORTS_PER_CLIENT: Final = 20_000
REQUEST: Final = b"GET /1k.bin HTTP/1.1\r\nHost: 198.18.0.20\r\n\r\n"
_CLIENT_ISN: Final = 1000
_SERVER_ISN: Final = 9000


def response(body: int) -> bytes:
    """A 200 answer whose body is `body` bytes."""
    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream\r\n"
        b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n" % body
    )
    return head + bytes(i % 256 for i in range(body))


def keepalive_flow(n: int, answered: bool = True, body: int = 1024) -> list[bytes]:
    """The datagrams of flow `n` (see the module comment), in wire order."""
    client = str(FIRST_CLIENT + n // PORTS_PER_CLIENT)
    port = 20_000 + n % PORTS_PER_CLIENT
    c_seq, s_seq = _CLIENT_ISN + 1, _SERVER_ISN + 1
    segs = [
        Seg(client, SERVER, port, 80, _CLIENT_ISN, 0, SYN, ts=(1, 0)),
        Seg(SERVER, client, 80, port, _SERVER_ISN, c_seq, SYN | ACK, ts=(1, 1)),
        Seg(client, SERVER, port, 80, c_seq, s_seq, ACK, ts=(2, 1)),
        Seg(client, SERVER, port, 80, c_seq, s_seq, ACK | PSH, REQUEST, ts=(2, 1)),
    ]
    if answered:
        c_end = c_seq + len(REQUEST)
        answer = response(body)
        segs.append(Seg(SERVER, client, 80, port, s_seq, c_end, ACK | PSH, answer, ts=(3, 2)))
        segs.append(Seg(client, SERVER, port, 80, c_end, s_seq + len(answer), ACK, ts=(4, 3)))
    return [datagram for seg in segs for datagram in build(seg)]
