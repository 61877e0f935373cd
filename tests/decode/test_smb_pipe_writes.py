"""Every way of writing to a named pipe reaches the DCE/RPC decoder (gateway/decode/smb.py with
dcerpc.DceRpcPipes), and a bad PDU, a broken chain or a closed pipe does not blind it.

The pipe bytes are the MS08-067 sample of rules/ms08-067-netapi.yaml (a BIND to srvsvc, then
NetprPathCanonicalize of "\\A\\..\\..\\BBBB..."), sent with the builders of
gateway/testing/smb_writes.py; each stream is fed whole and one byte at a time (several SMB
messages in one segment, one message across many), and the engine runs on the streams that
matter end to end (rule 9001010 must fire).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import cache

import pytest

from gateway.decode import smb as smb_mod
from gateway.decode.registry import AppRecord
from gateway.decode.smb import (
    MAX_MESSAGE,
    PipeTransactions,
    Smb1Command,
    SmbAdapter,
    SmbDecoder,
    SmbMalformed,
    State,
    Transaction,
)
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing import smb_writes as w
from gateway.testing.traffic import contiguous, replay_packets, tcp_session

SRVSVC = b"4b324fc8-1670-01d3-1278-5a47bf6ee188"
MS08_067 = 9001010
FID = 0x4000
FILE_ID = bytes(range(16))


@cache
def matcher() -> Matcher:
    return Matcher(load_rules([default_rule_dir()]))


@cache
def exploit() -> tuple[bytes, bytes]:
    """(BIND, REQUEST): the pipe bytes of rule 9001010's attack sample."""
    (rule,) = [r for r in matcher().ruleset.rules if r.id == MS08_067]
    sample = next(s for s in rule.samples if s.kind == "attack")
    writes = w.pipe_writes(sample.to_server)
    assert writes is not None
    bind, request = (x.data for x in writes if x.data)
    return bind, request


def records(stream: bytes, step: int = 0) -> list[AppRecord]:
    adapter = SmbAdapter()
    if not step:
        return adapter.feed(stream)
    return [r for i in range(0, len(stream), step) for r in adapter.feed(stream[i : i + step])]


def canonicalize_calls(recs: list[AppRecord]) -> list[bytes]:
    """The stubs of srvsvc NetprPathCanonicalize calls the records hold."""
    return [
        r.fields["dcerpc.stub"]  # type: ignore[misc]
        for r in recs
        if r.fields.get("dcerpc.interface") == SRVSVC and r.fields.get("dcerpc.opnum") == 0x1F
    ]


def caught(stream: bytes, port: int = 445) -> bool:
    engine = Engine(matcher().ruleset, EngineConfig(), matcher=matcher())
    try:
        events = replay_packets(engine, tcp_session(contiguous(stream, 700), dport=port))
    finally:
        engine.close()
    return any(e.signature_id == MS08_067 for e in events)


def _split3(data: bytes) -> list[int]:
    third = (len(data) - 8) // 3
    return [third, third, len(data) - 8 - 2 * third]


# Each: (bind, request) -> the client stream that writes them to one pipe.
Build = Callable[[bytes, bytes], bytes]
METHODS: dict[str, Build] = {
    "write": lambda b, r: w.write(FID, b) + w.write(FID, r),
    "write-and-close": lambda b, r: w.write(FID, b) + w.write_and_close(FID, r),
    "write-andx-padded": lambda b, r: w.write_andx(FID, b, pad=13) + w.write_andx(FID, r, pad=3),
    "write-andx-raw-mode": lambda b, r: (
        w.write_andx(FID, b, raw_mode=True) + w.write_andx(FID, r, raw_mode=True)
    ),
    "andx-chain": lambda b, r: w.write_andx_chain(FID, [b, r[:30], r[30:]]),
    "trans": lambda b, r: w.trans_nmpipe(FID, b) + w.trans_nmpipe(FID, r),
    "trans-secondaries-out-of-order": lambda b, r: (
        w.trans_nmpipe(FID, b, first=0, parts=[len(b)])
        + w.trans_nmpipe(FID, r, first=8, parts=_split3(r))
    ),
    "write-raw": lambda b, r: w.write_raw(FID, b, 0) + w.write_raw(FID, r, 10),
    "smb2-write": lambda b, r: w.nbss(w.smb2_write(FILE_ID, b)) + w.nbss(w.smb2_write(FILE_ID, r)),
    "smb2-ioctl": lambda b, r: w.nbss(w.smb2_ioctl(FILE_ID, b)) + w.nbss(w.smb2_ioctl(FILE_ID, r)),
    "smb2-compound-related": lambda b, r: w.smb2_compound(
        w.smb2_write(FILE_ID, b, 10),
        w.smb2_write(w.NO_FILE_ID, r[:40], 11, flags=w.RELATED),
        w.smb2_write(w.NO_FILE_ID, r[40:], 12, flags=w.RELATED),
    ),
    "smb2-create-related-then-file-id": lambda b, r: (
        w.smb2_compound(
            w.smb2_create("srvsvc", 9), w.smb2_write(w.NO_FILE_ID, b + r[:20], 10, flags=w.RELATED)
        )
        + w.nbss(w.smb2_write(FILE_ID, r[20:], 11))
    ),
    "netbios-139": lambda b, r: w.session_request() + w.write_andx(FID, b) + w.write_andx(FID, r),
}


@pytest.mark.parametrize("step", [0, 1, 97])
@pytest.mark.parametrize("method", METHODS)
def test_every_write_method_reaches_the_pipe(method: str, step: int) -> None:
    bind, request = exploit()
    stream = METHODS[method](bind, request)
    stubs = canonicalize_calls(records(stream, step))
    assert len(stubs) == 1, method
    assert b"\\\x00.\x00.\x00\\\x00.\x00.\x00" in stubs[0]


@pytest.mark.parametrize("method", ["write", "trans-secondaries-out-of-order", "write-raw"])
def test_the_engine_stops_ms08_067_through_each_smb1_method(method: str) -> None:
    bind, request = exploit()
    assert caught(METHODS[method](bind, request), port=445)
    assert caught(w.session_request() + METHODS[method](bind, request), port=139)


def test_fragments_reassemble_across_write_methods() -> None:
    """One call cut into DCE/RPC fragments, each fragment (and one fragment's halves) written
    to the same FID another way."""
    bind, request = exploit()
    header, body = request[:24], request[24:]
    cuts = [body[:50], body[50:120], body[120:]]
    frags = []
    for i, stub in enumerate(cuts):
        flags = (1 if i == 0 else 0) | (2 if i == len(cuts) - 1 else 0)
        frag = bytearray(header + stub)
        frag[3] = flags
        struct.pack_into("<H", frag, 8, len(frag))
        frags.append(bytes(frag))
    stream = (
        w.write_andx(FID, bind)
        + w.trans_nmpipe(FID, frags[0], first=4, parts=[len(frags[0]) - 4])
        + w.write(FID, frags[1][:30])
        + w.write_raw(FID, frags[1][30:], 5)
        + w.write_andx(FID, frags[2], raw_mode=True)
    )
    for step in (0, 1):
        recs = records(stream, step)
        (call,) = [r for r in recs if r.fields.get("dcerpc.opnum") == 0x1F]
        assert call.fields["dcerpc.fragments"] == 3
        assert call.fields["dcerpc.interface"] == SRVSVC
        assert call.fields["dcerpc.stub"] == b"".join(cuts)
    assert caught(stream)


BAD_PDUS = {
    "version 4": b"\x04\x00\x00\x03\x10\x00\x00\x00\x18\x00\x00\x00\x01\x00\x00\x00" + b"\0" * 8,
    "frag length 8": b"\x05\x00\x00\x03\x10\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00",
    "unknown type": b"\x05\x00\x63\x03\x10\x00\x00\x00\x18\x00\x00\x00\x01\x00\x00\x00" + b"\0" * 8,
    "not rpc": b"GET / HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("bad", BAD_PDUS)
def test_a_bad_pdu_does_not_disable_the_pipe(bad: str) -> None:
    """A malformed DCE/RPC PDU on a pipe, then the exploit on the same pipe: still caught."""
    bind, request = exploit()
    for before in (
        w.write_andx(FID, BAD_PDUS[bad]) + w.write_andx(FID, bind),
        w.write_andx(FID, bind) + w.write_andx(FID, BAD_PDUS[bad]),
        w.nbss(w.smb2_write(FILE_ID, BAD_PDUS[bad])) + w.nbss(w.smb2_write(FILE_ID, bind)),
    ):
        then = (
            w.write_andx(FID, request)
            if before.startswith(w.write_andx(FID, b"")[:5])
            else w.nbss(w.smb2_write(FILE_ID, request))
        )
        assert canonicalize_calls(records(before + then)), bad
        assert caught(before + then), bad


def test_a_pipe_closed_and_reopened_under_the_same_fid_starts_afresh() -> None:
    """Half a PDU, CLOSE, the FID reused by the next open: its BIND is not eaten as the rest."""
    bind, request = exploit()
    stream = (
        w.write_andx(FID, bind[:40]) + w.close(FID) + w.write(FID, bind) + w.write(FID, request)
    )
    assert canonicalize_calls(records(stream))
    assert caught(stream)


def test_a_request_names_the_interface_bound_under_another_id() -> None:
    """The BIND went to the pipe under another TID (a server that ignores it, or a pipe
    forgotten): the call is reported with the interface bound to its context id."""
    bind, request = exploit()
    stream = w.write(FID, bind, w.Ids(tid=1)) + w.write(FID, request, w.Ids(tid=2))
    assert canonicalize_calls(records(stream))


def test_andx_chain_keeps_the_commands_before_a_broken_link() -> None:
    """A chain whose second link points back at the first (a loop): the first WriteAndX was
    executed before the server met the bad link, so its pipe bytes count."""
    bind, request = exploit()
    looped = bytearray(w.write_andx_chain(FID, [request, b"x"]))
    looped[4 + 32 + 1 + 2 : 4 + 32 + 1 + 4] = struct.pack("<H", 32)  # link -> itself
    dec = SmbDecoder()
    events = dec.receive_data(w.write_andx(FID, bind) + bytes(looped))
    assert [type(e).__name__ for e in events[-2:]] == ["Smb1Command", "SmbMalformed"]
    assert dec.state is State.MESSAGES and dec.malformed == 1
    assert canonicalize_calls(records(w.write_andx(FID, bind) + bytes(looped)))


def test_trans_secondaries_overlap_and_complete_like_the_server() -> None:
    """Parts are placed at their displacement (the last write wins) and the transaction is
    complete when the counts received reach the totals ([MS-CIFS] 3.3.5.57, srv.sys, Samba)."""
    tx = PipeTransactions()

    def trans(command: int, count: int, disp: int, data: bytes, total: int = 8) -> Smb1Command:
        t = Transaction(0, total, 0, 0, count, 0, 0x26 if command == 0x25 else -1, 0, 0, disp)
        return Smb1Command(command, 0, False, 0, 1, 2, 3, 16, 0, t, (), 7, data, 4)

    assert tx.request(trans(0x25, 2, 0, b"AA")).data == b""
    assert tx.request(trans(0x26, 2, 4, b"CC")).data == b""
    done = tx.request(trans(0x26, 4, 2, b"BBDD"))  # overlaps CC: the last write wins
    assert done.fid == 7 and done.data == b"AABBDD\0\0"
    # a secondary without its primary writes nothing
    assert tx.request(trans(0x26, 8, 0, b"12345678")).data == b""


def test_oversized_messages_keep_the_decoder_and_the_eternalblue_counts() -> None:
    """A message longer than MAX_MESSAGE is decoded from its first bytes: a bad SMB2 header
    there no longer stops the decoder, and an SMB1 NT Trans keeps its counts (rule 9001001)."""
    bad = b"\xfeSMB" + struct.pack("<H", 65) + b"\0" * (MAX_MESSAGE + 100)
    nt_words = struct.pack("<BHIIIIIIIIBH", 1, 0, 30, 66512, 0, 0, 30, 75, 976, 104, 0, 0)
    nt_trans = w.smb1(0xA0, nt_words, b"", w.Ids()) + b"\0" * (MAX_MESSAGE + 10)
    dec = SmbDecoder()
    events = []
    stream = w.nbss(bad) + w.nbss(nt_trans) + w.write_andx(FID, b"after")
    for i in range(0, len(stream), 4096):
        events += dec.receive_data(stream[i : i + 4096])
    assert dec.state is State.MESSAGES
    assert any(isinstance(e, SmbMalformed) for e in events)
    (nt,) = [e for e in events if isinstance(e, Smb1Command) and e.command == 0xA0]
    assert nt.transaction is not None and nt.transaction.total_data_count == 66512
    assert any(isinstance(e, Smb1Command) and e.data == b"after" for e in events)


def test_encrypted_smb3_is_an_anomaly() -> None:
    transform = b"\xfdSMB" + b"\0" * 32 + struct.pack("<I", 100) + b"\0" * 4 + b"\1" * 8
    recs = records(w.nbss(transform + b"\0" * 100))
    assert [r.fields.get("smb.anomaly") for r in recs if r.fields.get("smb.version") == 3] == [
        smb_mod.ENCRYPTED
    ]


def test_raw_write_data_that_looks_like_smb_is_read_both_ways() -> None:
    """After a WRITE_RAW request the next message is raw data; one that also parses as SMB
    (the server refused the raw write) is decoded as SMB too."""
    bind, request = exploit()
    dec = SmbDecoder()
    events = dec.receive_data(w.write_raw(FID, b"xxxxxxxx", 4) + w.write_andx(FID, bind))
    kinds = [type(e).__name__ for e in events if not isinstance(e, smb_mod.NetbiosMessage)]
    assert kinds == ["Smb1Command", "RawWriteData", "Smb1Command"]
