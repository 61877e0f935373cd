"""What an idle keep-alive flow holds (issue 16: memory per flow; the figures are in
bench/bench_flow_memory.py, never asserted here). After a complete HTTP request and its answer,
with the connection left open, through the whole engine with the inline path's settings:

- every object the flow owns is slotted (no per-object `__dict__`);
- its reassemblers hold no out-of-order piece and no list for them, its Hyperscan streams no
  match containers, its inspection no re-arm list (shared empty defaults, made on first use);
- a direction no rule inspects holds no reassembler, and a flow no rule covers none at all;
- what detection needs stays: the retransmission history of each inspected direction still
  holds the bytes delivered (a retransmission that differs is still refused).
"""

from __future__ import annotations

import gc
from dataclasses import replace
from enum import Enum
from pathlib import Path

import pytest

from gateway.decode.session import UnitMemo
from gateway.engine import Engine, EngineStats
from gateway.engine_config import EngineConfig
from gateway.flow.limits import HostPolicies
from gateway.flow.normalize import ChecksumMode
from gateway.flow.table import NO_STREAMS, Flow
from gateway.match.inspection import Inspection
from gateway.match.matcher import Matcher, MatchGroup
from gateway.match.rules import RuleSet
from gateway.testing.flowload import REQUEST, keepalive_flow, response
from gateway.testing.wire import ACK, PSH, Seg, build
from gateway.vocabulary import Action, Direction
from tests.test_engine import HTTP_RULE, MARKER, app_rules, rule

FLOWS = 20
SHARED = (Matcher, MatchGroup, EngineStats, UnitMemo, HostPolicies, Enum, type)


def _engine(tmp_path: Path, direction: str, depth_to_client: int = 65536) -> Engine:
    rules = RuleSet([*app_rules(tmp_path, HTTP_RULE), rule(1, MARKER, direction=direction)])
    config = replace(
        EngineConfig(),
        depth_to_client=depth_to_client,
        checksums=ChecksumMode.VERIFY,
        kernel_checked_syn=True,
        kernel_checked_tcp=True,
    )
    engine = Engine(rules, config)
    for n in range(FLOWS):
        for datagram in keepalive_flow(n):
            assert engine.process_ip(datagram, 1.0 + n).action is Action.ACCEPT
    assert len(engine.table) == FLOWS and engine.stats.flows_inspected == FLOWS
    return engine


def _owned(flow: Flow) -> list[object]:
    """The objects a flow owns: reachable from it without passing through what flows share
    (rules, matcher, counters, memo, limit policies, enum members)."""
    seen: set[int] = set()
    todo: list[object] = [flow]
    out: list[object] = []
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, SHARED) or callable(obj):
            continue
        seen.add(id(obj))
        out.append(obj)
        todo.extend(gc.get_referents(obj))
    return out


@pytest.mark.parametrize("direction", ["to_server", "both"])
def test_an_idle_keepalive_flow_holds_only_slotted_state_and_no_spare_containers(
    tmp_path: Path, direction: str
) -> None:
    engine = _engine(tmp_path, direction)
    for flow in engine.table:
        insp = flow.inspection
        assert isinstance(insp, Inspection)
        with_dict = [
            type(o).__qualname__
            for o in _owned(flow)
            if type(o).__module__.startswith("gateway.") and hasattr(o, "__dict__")
        ]
        assert with_dict == []
        assert isinstance(insp.rearm, tuple) and not insp.rearm
        assert isinstance(flow.streams, tuple)
        for d, way in zip(Direction, insp.ways, strict=True):
            assert flow.streams[d] is way.reasm
            if direction == "to_server" and d is Direction.TO_CLIENT:
                assert way.reasm is None and way.state is None and not way.active
                continue
            reasm = way.reasm
            assert reasm is not None and reasm.delivered > 0 and not reasm.hole
            assert reasm._starts == () and reasm._chunks == () and reasm._holes == ()
            sent = REQUEST if d is Direction.TO_SERVER else response(1024)
            assert bytes(reasm._recent) == sent  # the history detection needs
            state = way.state
            assert state is not None and not state.closed
            assert state.hits is None and state.masks is None and state.ends is None
            assert way.records is None and not way.raw_done and not way.cond_ok


def test_a_direction_past_its_depth_keeps_no_history(tmp_path: Path) -> None:
    """Its segments are no longer compared, so the bytes kept for that go; the other direction
    keeps its own, and the normaliser still follows both."""
    engine = _engine(tmp_path, "both", depth_to_client=512)  # the 1 KiB answer passes it
    for flow in engine.table:
        insp = flow.inspection
        assert isinstance(insp, Inspection)
        to_server, to_client = insp.ways
        assert to_server.active and to_server.reasm is not None
        assert bytes(to_server.reasm._recent) == REQUEST
        assert not to_client.active and to_client.state is None
        reasm = to_client.reasm
        assert reasm is not None and flow.streams[Direction.TO_CLIENT] is reasm
        assert reasm.depth_reached and reasm.history == 0 and not reasm._recent


def test_a_flow_no_rule_covers_holds_no_reassembler(tmp_path: Path) -> None:
    config = replace(EngineConfig(), identify_any_port=False)  # port 80 is then not looked at
    engine = Engine(RuleSet([rule(1, MARKER, ports=(8080,))]), config)
    for datagram in keepalive_flow(0):
        engine.process_ip(datagram, 1.0)
    (flow,) = engine.table
    assert flow.final and flow.inspection is None and flow.streams is NO_STREAMS


def test_a_retransmission_that_differs_is_still_refused_on_an_idle_flow(tmp_path: Path) -> None:
    """The history the memory work keeps: the request's bytes sent again, changed, reset the
    flow even after its answer came and the connection went quiet."""
    engine = _engine(tmp_path, "both")
    client, port = "198.18.0.100", 20_000  # flow 0 (gateway/testing/flowload.py)
    changed = REQUEST.replace(b"1k", b"2k")
    answer_end = 9001 + len(response(1024))
    seg = Seg(client, "198.18.0.20", port, 80, 1001, answer_end, ACK | PSH, changed, ts=(5, 3))
    (datagram,) = build(seg)
    assert engine.process_ip(datagram, 100.0).action is Action.RESET
    assert engine.normalizer.counts["conflict"] == 1
