"""NetBIOS + SMB1/2/3 decoder: built messages whole and byte by byte, real captures, fuzzing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.smb import (
    MAX_MESSAGE,
    SMB1_NT_TRANS,
    NetbiosMessage,
    Smb1Command,
    Smb2Command,
    Smb3Compressed,
    SmbDecodeError,
    SmbDecoder,
    SmbMalformed,
    State,
)
from gateway.testing.streams import tcp_streams


def nbss(body: bytes) -> bytes:
    return b"\0" + len(body).to_bytes(3, "big") + body


def smb1(command: int, words: bytes, data: bytes = b"", flags: int = 0x18) -> bytes:
    header = struct.pack(
        "<4sBIBHH8sHHHHH", b"\xffSMB", command, 0, flags, 0xC807, 0, b"\0" * 8, 0, 1, 2, 3, 4
    )
    return header + bytes([len(words) // 2]) + words + struct.pack("<H", len(data)) + data


def smb2(command: int, next_command: int = 0, flags: int = 0) -> bytes:
    return struct.pack(
        "<4sHHIHHIIQIIQ16s",
        b"\xfeSMB",
        64,
        1,
        0,
        command,
        1,
        flags,
        next_command,
        9,
        0,
        5,
        0x77,
        b"\0" * 16,
    )


NT_TRANS_WORDS = struct.pack("<BHIIIIIIIIBH", 1, 0, 30, 66512, 0, 0, 30, 75, 976, 104, 0, 0)
NEGOTIATE = smb1(0x72, b"", b"\x02NT LM 0.12\0\x02SMB 2.002\0")
# Session setup AndX (0x73) chained to tree connect AndX (0x75) at offset 32+1+6+2.
ANDX = smb1(0x73, bytes([0x75, 0]) + struct.pack("<H", 41) + b"\0\0") + bytes([0]) + b"\0\0"

CASES = [
    (
        "negotiate",
        nbss(NEGOTIATE),
        [("nb", 0, len(NEGOTIATE)), ("smb1", 0x72, None, ("NT LM 0.12", "SMB 2.002"))],
    ),
    (
        "nt trans counts",
        nbss(smb1(SMB1_NT_TRANS, NT_TRANS_WORDS)),
        [("nb", 0, 32 + 1 + 38 + 2), ("smb1", SMB1_NT_TRANS, (30, 66512, 0), ())],
    ),
    (
        "andx chain",
        nbss(ANDX),
        [("nb", 0, len(ANDX)), ("smb1", 0x73, None, ()), ("smb1", 0x75, None, ())],
    ),
    (
        "smb2 compound",
        nbss(smb2(5, next_command=64) + smb2(6)),
        [("nb", 0, 128), ("smb2", 5, 5), ("smb2", 6, 5)],
    ),
    (
        "smbghost compression header",
        nbss(struct.pack("<4sIHHI", b"\xfcSMB", 0xFFFFFFFF, 1, 0, 0xFFFF)),
        [("nb", 0, 16), Smb3Compressed(0xFFFFFFFF, 1, 0, 0xFFFF, 16)],
    ),
]


def summarize(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, NetbiosMessage):
            out.append(("nb", ev.msg_type, ev.length))
        elif isinstance(ev, Smb1Command):
            tx = ev.transaction
            counts = (
                None
                if tx is None
                else (tx.total_parameter_count, tx.total_data_count, tx.subcommand)
            )
            out.append(("smb1", ev.command, counts, ev.dialects))
        elif isinstance(ev, Smb2Command):
            out.append(("smb2", ev.command, ev.tree_id))
        else:
            out.append(ev)
    return out


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("name", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, stream: bytes, expected: list[object], step: int | None) -> None:
    dec = SmbDecoder()
    if step is None:
        events = dec.receive_data(stream)
    else:
        events = [ev for i in range(len(stream)) for ev in dec.receive_data(stream[i : i + 1])]
    assert summarize(events) == expected


def test_oversized_message_is_skipped_not_buffered() -> None:
    big = smb2(9) + b"x" * (MAX_MESSAGE * 3)  # an SMB2 WRITE larger than the buffer bound
    stream = nbss(big) + nbss(smb2(8))
    dec = SmbDecoder()
    events = []
    for i in range(0, len(stream), 4096):
        events += dec.receive_data(stream[i : i + 4096])
        assert len(dec._buf) <= MAX_MESSAGE + 4096 + 4
    assert [e.command for e in events if isinstance(e, Smb2Command)] == [9, 8]


def test_framing_errors_are_sticky() -> None:
    dec = SmbDecoder()
    with pytest.raises(SmbDecodeError, match="not a NetBIOS session message"):
        dec.receive_data(b"\x47\x45\x54\x20/ HTTP")
    assert dec.state is State.ERROR


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"\xffSMB\x72", "header truncated"),
        (smb1(0x74, bytes([0x74, 0, 0, 0])), "does not advance"),
        (b"GET / HTTP/1.1\r\n", "unknown SMB protocol id"),
    ],
)
def test_a_bad_message_in_an_intact_frame_does_not_stop_decoding(
    message: bytes, error: str
) -> None:
    """The server answers a malformed PDU with an error and reads the next one: so do we."""
    dec = SmbDecoder()
    after = nbss(smb1(0x72, b"", b"\x02NT LM 0.12\x00"))
    events = dec.receive_data(nbss(message) + after)
    malformed = [e for e in events if isinstance(e, SmbMalformed)]
    assert len(malformed) == 1 and error in malformed[0].reason
    assert dec.malformed == 1 and dec.state is State.MESSAGES
    assert any(isinstance(e, Smb1Command) and e.command == 0x72 for e in events)


def nt_trans_total_data(path: Path) -> list[int]:
    found = []
    for key, data in tcp_streams(path).items():
        if 445 not in (key.sport, key.dport) and 139 not in (key.sport, key.dport):
            continue
        try:
            events = SmbDecoder().receive_data(data)
        except SmbDecodeError:
            continue
        found += [
            e.transaction.total_data_count
            for e in events
            if isinstance(e, Smb1Command) and e.command == SMB1_NT_TRANS and e.transaction
        ]
    return found


def test_eternalblue_oversized_nt_trans(corpora: Path) -> None:
    # MS17-010: an NT Transact whose FEA list (total data) exceeds what a 16-bit size can hold.
    # (eternalblue-failed-patched-win7.pcap holds no TCP at all: nothing to decode there.)
    path = corpora / "attacks" / "eternalblue-success-unpatched-win7.pcap"
    assert max(nt_trans_total_data(path)) >= 0x10000


def test_benign_smb_decodes_and_has_no_oversized_nt_trans(corpora: Path) -> None:
    refused = []
    for path in sorted((corpora / "benign" / "smb").glob("*.pcap*")):
        assert all(n < 0x10000 for n in nt_trans_total_data(path)), path.name
        for key, data in tcp_streams(path).items():
            if 445 in (key.sport, key.dport) or 139 in (key.sport, key.dport):
                dec = SmbDecoder()
                dec.receive_data(data)  # no framing error in any of them
                if dec.malformed:
                    refused.append(path.name)
    # Two zeek traces are deliberately malformed (an AndX loop, a bad SMB2 structure size): the
    # message is reported and decoding goes on.
    assert sorted(set(refused)) == ["smb1-logoff-andx-no-advance.pcap", "smb2_fscontrol.pcap"]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
def test_fuzz_only_decode_errors(data: bytes, step: int) -> None:
    dec = SmbDecoder()
    try:
        for i in range(0, len(data), step):
            dec.receive_data(nbss(data)[i : i + step] if i == 0 else data[i : i + step])
    except SmbDecodeError:
        pass
