"""Tests for the SMB adapter's DCE/RPC-over-named-pipe records (gateway/decode/smb.py SmbAdapter
with smb.pipe_records): real srvsvc / samr calls in the benign corpora,
the same records when the stream arrives one byte at a time, and an engine run in which a
dcerpc rule on port 445 fires on a pipe call."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.registry import AppRecord
from gateway.testing.streams import tcp_streams
from gateway.vocabulary import PROTO_TCP, Direction

SRVSVC = b"4b324fc8-1670-01d3-1278-5a47bf6ee188"
SAMR = b"12345778-1234-abcd-ef00-0123456789ab"


def _smb_records(data: bytes, step: int = 0) -> list[AppRecord]:
    smb = registry.get("smb")
    assert smb is not None
    adapter = smb.new_decoder(PROTO_TCP, Direction.TO_SERVER)
    if not step:
        return adapter.feed(data)
    out: list[AppRecord] = []
    for i in range(0, len(data), step):
        out.extend(adapter.feed(data[i : i + step]))
    return out


def _calls(records: list[AppRecord]) -> list[tuple[bytes, int]]:
    return [
        (r.fields["dcerpc.interface"], r.fields["dcerpc.opnum"])  # type: ignore[misc]
        for r in records
        if r.app == "dcerpc" and "dcerpc.opnum" in r.fields
    ]


def _to_server(path: Path) -> list[bytes]:
    return [d for k, d in tcp_streams(path).items() if k.dport == 445]


def _records(path: Path, step: int = 0) -> list[AppRecord]:
    return [r for data in _to_server(path) for r in _smb_records(data, step)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # SMB1 WriteAndX / Trans TransactNmPipe: srvsvc NetrShareEnum-era calls and samr
        ("raw_ntlm_in_smb.pcap", {(SRVSVC, 15), (SAMR, 45), (SAMR, 44), (SAMR, 14), (SAMR, 0)}),
        # SMB2 WRITE + IOCTL FSCTL_PIPE_TRANSCEIVE
        (
            "smb2-zero-byte-error-ioctl.pcapng",
            {(SRVSVC, 15), (SAMR, 45), (SAMR, 44), (SAMR, 14), (SAMR, 0)},
        ),
    ],
)
def test_pipe_calls_in_benign_captures(corpora: Path, name: str, expected: set) -> None:
    path = corpora / "benign" / "smb" / name
    records = _records(path)
    calls = _calls(records)
    assert expected <= set(calls), calls
    binds = [r for r in records if r.app == "dcerpc" and "dcerpc.bind.context_count" in r.fields]
    assert {b.fields["dcerpc.interface"] for b in binds} >= {SRVSVC, SAMR}
    # every SMB record is still there, and the same records come out whatever the slicing
    assert any(r.app == "smb" for r in records)
    assert _records(path, step=1) == records
    assert _records(path, step=7) == records


def test_stub_and_lengths_are_the_pipe_bytes(corpora: Path) -> None:
    records = _records(corpora / "benign" / "smb" / "raw_ntlm_in_smb.pcap")
    srvsvc = [r for r in records if r.fields.get("dcerpc.interface") == SRVSVC]
    call = next(r for r in srvsvc if "dcerpc.opnum" in r.fields)
    stub = call.fields["dcerpc.stub"]
    assert isinstance(stub, bytes)
    assert call.fields["dcerpc.stub_length"] == len(stub) > 0
    assert b"1\x009\x002\x00" in stub  # the UTF-16 server name "192..."


def test_non_rpc_file_writes_give_no_dcerpc_records(corpora: Path) -> None:
    # smb2readwrite writes ordinary file contents: no pipe, no DCE/RPC records
    records = _records(corpora / "benign" / "smb" / "smb2readwrite.pcap")
    assert any(r.app == "smb" for r in records)
    assert not [r for r in records if r.app == "dcerpc" and "dcerpc.opnum" in r.fields]


def test_dcerpc_is_carried_by_smb() -> None:
    proto = registry.get("dcerpc")
    assert proto is not None and proto.carried_by == frozenset({"smb"})
