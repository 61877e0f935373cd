"""Endpoint mapper answers (gateway/decode/epm.py, dcerpc.py MapResponse) and a Zerologon call
on the dynamic port they hand out, through the engine (protocols identified on any port)."""

from __future__ import annotations

from functools import cache

import pytest

from gateway.decode.dcerpc import PTYPE_RESPONSE, DceRpcAdapter
from gateway.decode.epm import (
    EPM_INTERFACE,
    OPNUM_EPT_MAP,
    Endpoint,
    build_map_response,
    build_tower,
    parse_map_response,
    parse_tower,
)
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from tests.decode.test_dcerpc import BOTH, bind, pdu, request
from tests.test_engine import Conn

NETLOGON = "12345678-1234-abcd-ef00-01234567cffb"
DYNAMIC_PORT = 49667
NETLOGON_TCP = Endpoint(NETLOGON, 1, "tcp", DYNAMIC_PORT, "198.18.0.20")

# NetrServerAuthenticate3 (opnum 26): PrimaryName, AccountName, SecureChannelType 6,
# ComputerName, then ClientCredential (8 bytes) and NegotiateFlags ([MS-NRPC] 3.5.4.4.2)
_AUTH3_HEAD = bytes.fromhex(
    "000002000600000000000000060000005c005c0044004300310000000500000000000000050000004400"
    "430031002400000000000600000004000000000000000400000044004300310000000000"
)
ZEROLOGON_STUB = _AUTH3_HEAD + b"\0" * 8 + bytes.fromhex("ffff2f21")
BENIGN_STUB = _AUTH3_HEAD + bytes.fromhex("3bd1a2f00c9e4d77") + bytes.fromhex("ffff2f61")


def response(stub: bytes, call_id: int = 2) -> bytes:
    return pdu(PTYPE_RESPONSE, len(stub).to_bytes(4, "little") + b"\0\0\0\0" + stub, call_id, BOTH)


def test_tower_and_answer_round_trip() -> None:
    assert parse_tower(build_tower(NETLOGON_TCP)) == NETLOGON_TCP
    http = Endpoint(NETLOGON, 1, "http", 6004, "0.0.0.0")
    assert parse_map_response(build_map_response([NETLOGON_TCP, http])) == [NETLOGON_TCP, http]
    assert parse_map_response(build_map_response([])) == []
    stub = build_map_response([NETLOGON_TCP])
    for cut in range(len(stub)):  # truncated answers: never raises, never invents a port
        assert parse_map_response(stub[:cut]) in ([], [NETLOGON_TCP])


def test_dcerpc_adapter_reports_the_endpoints_of_an_answer() -> None:
    adapter = DceRpcAdapter()
    records = adapter.feed(response(build_map_response([NETLOGON_TCP])))
    epm = [r.fields for r in records if "dcerpc.epm.port" in r.fields]
    assert epm == [
        {
            "dcerpc.ptype": PTYPE_RESPONSE,
            "dcerpc.call_id": 2,
            "dcerpc.epm.interface": NETLOGON.encode(),
            "dcerpc.epm.transport": b"tcp",
            "dcerpc.epm.port": DYNAMIC_PORT,
        }
    ]
    # an ordinary response names no endpoint
    plain = adapter.feed(response(b"\0" * 40, call_id=3))
    assert not any("dcerpc.epm.port" in r.fields for r in plain)


@cache
def _matcher() -> Matcher:
    return Matcher(load_rules([default_rule_dir()]))


def _exchange(engine: Engine, port: int, sport: int, calls: list[tuple[bytes, bytes]]) -> list[int]:
    c = Conn(engine, dport=port, sport=sport)
    c.handshake()
    offsets = [0, 0]
    fired: list[int] = []
    for to_server, to_client in calls:
        for data, send, i in ((to_server, c.data, 0), (to_client, c.reply, 1)):
            if data:
                fired += [e.signature_id for e in send(offsets[i], data).events]
                offsets[i] += len(data)
    return fired


@pytest.mark.parametrize(("stub", "expected"), [(ZEROLOGON_STUB, [9001015]), (BENIGN_STUB, [])])
def test_zerologon_on_the_port_the_endpoint_mapper_handed_out(
    stub: bytes, expected: list[int]
) -> None:
    """ept_map on 135 answers Netlogon on 49667; the client binds Netlogon there and calls
    NetrServerAuthenticate3 with a zero credential: the Zerologon rule (written for 445, 139
    and 135) judges the dynamic port's DCE/RPC, identified by content."""
    matcher = _matcher()
    engine = Engine(matcher.ruleset, matcher=matcher)
    epm_map = request(1, OPNUM_EPT_MAP, b"\0" * 64, call_id=2)
    answer = response(build_map_response([NETLOGON_TCP]))
    assert (
        _exchange(engine, 135, 40001, [(bind([(1, EPM_INTERFACE, 3)]), b""), (epm_map, answer)])
        == []
    )
    calls = [(bind([(1, NETLOGON, 1)]), b""), (request(1, 26, stub, call_id=2), b"")]
    assert _exchange(engine, DYNAMIC_PORT, 40002, calls) == expected
    assert engine.stats.app_rebinds >= 1


def test_without_identification_on_any_port_the_dynamic_port_is_not_seen() -> None:
    matcher = _matcher()
    engine = Engine(matcher.ruleset, EngineConfig(identify_any_port=False), matcher=matcher)
    calls = [(bind([(1, NETLOGON, 1)]), b""), (request(1, 26, ZEROLOGON_STUB, call_id=2), b"")]
    assert _exchange(engine, DYNAMIC_PORT, 40002, calls) == []
    assert engine.stats.flows_inspected == 0
