"""The flow table's bound and eviction order under many inspected keep-alive flows, through the
whole engine (gateway/flow/table.py's guarantees, at a scale where a leak would show):

- never more than `max_flows` flows, whatever number of connections is opened;
- when full, the least recently seen open TCP flow goes first (a flow that sent a request
  recently survives older quiet ones), closed flows before any open one;
- an evicted flow's Hyperscan stream and reassembly buffers are freed with it (streams open ==
  inspected flows in the table), and the flows left are still inspected.

bench/bench_flows.py measures the same at 100,000 flows live (RSS, per-flow memory, req/s).
"""

from __future__ import annotations

from gateway.decode.packet import TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.rules import RuleSet
from gateway.testing.wire import Seg, build
from gateway.vocabulary import Action
from tests.test_engine import MARKER, rule

CLIENT_NET = "198.18.{}.{}"
SERVER = "198.18.0.20"
MAX_FLOWS = 600
EXTRA = 150
TICK = 0.01  # seconds between packets: all well within the idle timeouts
REQUEST = b"GET /1k.bin HTTP/1.1\r\nHost: 198.18.0.20\r\n\r\n"


class Client:
    """One keep-alive connection from its own address (many source addresses, as live)."""

    def __init__(self, engine: Engine, n: int) -> None:
        self.engine = engine
        self.addr = CLIENT_NET.format(1 + n // 250, 1 + n % 250)
        self.sport = 40000 + n % 20000
        self.cseq, self.sseq = 1000, 90000
        self.now = 0.0

    def send(self, flags: int, payload: bytes = b"", to_server: bool = True) -> Action:
        return self.engine.process_ip(self.segment(flags, payload, to_server), self.now).action

    def segment(self, flags: int, payload: bytes = b"", to_server: bool = True) -> bytes:
        """The next segment's datagram (sequence numbers move on)."""
        if to_server:
            seg = Seg(self.addr, SERVER, self.sport, 80, self.cseq, self.sseq, flags, payload)
            self.cseq += len(payload) + (1 if flags & TCP_SYN else 0)
        else:
            seg = Seg(SERVER, self.addr, 80, self.sport, self.sseq, self.cseq, flags, payload)
            self.sseq += len(payload) + (1 if flags & TCP_SYN else 0)
        (datagram,) = build(seg)
        return datagram

    def open(self, now: float) -> None:
        self.now = now
        # a full table evicts with an event (limits.flow_table: alert, the default)
        assert self.send(TCP_SYN) in (Action.ACCEPT, Action.ALERT)
        assert self.send(TCP_SYN | TCP_ACK, to_server=False) is Action.ACCEPT
        self.request(now)

    def request(self, now: float, payload: bytes = REQUEST) -> Action:
        self.now = now
        return self.send(TCP_ACK | TCP_PSH, payload)


def _engine() -> Engine:
    return Engine(RuleSet([rule(1, MARKER)]), EngineConfig(max_flows=MAX_FLOWS))


def _ports(engine: Engine) -> set[str]:
    return {f.key.client for f in engine.table}


def test_the_table_never_holds_more_than_max_flows_and_evicts_the_least_recent() -> None:
    engine = _engine()
    clients = [Client(engine, n) for n in range(MAX_FLOWS + EXTRA)]
    for n, c in enumerate(clients[:MAX_FLOWS]):
        c.open(n * TICK)
    assert len(engine.table) == MAX_FLOWS and engine.table.evicted == 0
    assert engine.stats.streams_open == MAX_FLOWS
    # the first flow speaks again: now the most recently seen
    clients[0].request(MAX_FLOWS * TICK)
    for n, c in enumerate(clients[MAX_FLOWS:]):
        c.open((MAX_FLOWS + 1 + n) * TICK)
        assert len(engine.table) <= MAX_FLOWS
    assert len(engine.table) == MAX_FLOWS
    assert engine.table.evicted == EXTRA
    gone = {c.addr for c in clients[1 : 1 + EXTRA]}  # the oldest, but for the one that spoke
    assert not gone & _ports(engine)
    assert _ports(engine) == {c.addr for c in clients} - gone
    # every evicted flow's Hyperscan stream was closed with it
    assert engine.stats.streams_open == MAX_FLOWS
    # the flows left are still inspected: the oldest survivor's next request is blocked
    attack = b"GET /?q=" + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert clients[0].request(2 * MAX_FLOWS * TICK, attack) is Action.RESET


def test_closed_flows_are_evicted_before_any_open_one() -> None:
    engine = _engine()
    clients = [Client(engine, n) for n in range(MAX_FLOWS + 2)]
    for n, c in enumerate(clients[:MAX_FLOWS]):
        c.open(n * TICK)
    closed = clients[MAX_FLOWS - 1]  # the most recently seen flow closes
    closed.now = MAX_FLOWS * TICK
    closed.send(TCP_RST | TCP_ACK)
    clients[MAX_FLOWS].open((MAX_FLOWS + 1) * TICK)
    assert closed.addr not in _ports(engine)
    assert clients[0].addr in _ports(engine)  # the oldest open flow stays, for now
    clients[MAX_FLOWS + 1].open((MAX_FLOWS + 2) * TICK)
    assert clients[0].addr not in _ports(engine)  # then it goes: least recently seen
    assert len(engine.table) == MAX_FLOWS and engine.stats.streams_open == MAX_FLOWS
