"""DCE/RPC CO decoder: built PDUs whole and byte by byte, SMB named pipes from real captures."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from gateway.decode import (
    bundled,  # noqa: F401 (registers the bundled app decoders)
    registry,
)
from gateway.decode.dcerpc import (
    MAX_PENDING_CALLS,
    MAX_STUB_KEEP,
    PFC_FIRST_FRAG,
    PFC_LAST_FRAG,
    PFC_OBJECT_UUID,
    Bind,
    ContextItem,
    DceRpcDecodeError,
    DceRpcDecoder,
    DceRpcPipes,
    Pdu,
    Request,
    State,
)
from gateway.decode.smb import SmbDecodeError, SmbDecoder, pipe_records
from gateway.testing.streams import tcp_streams
from gateway.vocabulary import PROTO_TCP, Direction

NDR = "8a885d04-1ceb-11c9-9fe8-08002b104860"
ISYSTEM_ACTIVATOR = "000001a0-0000-0000-c000-000000000046"  # MS03-026 (Blaster) target
SRVSVC = "4b324fc8-1670-01d3-1278-5a47bf6ee188"
SPOOLSS = "12345678-1234-abcd-ef00-0123456789ab"
SAMR = "12345778-1234-abcd-ef00-0123456789ab"
BOTH = PFC_FIRST_FRAG | PFC_LAST_FRAG


def pdu(
    ptype: int, body: bytes, call_id: int = 1, flags: int = BOTH, auth: bytes = b"", le: bool = True
) -> bytes:
    e = "<" if le else ">"
    trailer = (b"\x0a\x02\0\0\0\0\0\0" + auth) if auth else b""
    length = 16 + len(body) + len(trailer)
    drep = b"\x10\0\0\0" if le else b"\0\0\0\0"
    return (
        struct.pack(e + "BBBB4sHHI", 5, 0, ptype, flags, drep, length, len(auth), call_id)
        + body
        + trailer
    )


def uuid_bytes(text: str, le: bool = True) -> bytes:
    u = uuid.UUID(text)
    return u.bytes_le if le else u.bytes


def bind(contexts: list[tuple[int, str, int]], call_id: int = 1, le: bool = True) -> bytes:
    e = "<" if le else ">"
    body = struct.pack(e + "HHIB3x", 5840, 5840, 0, len(contexts))
    for ctx_id, iface, version in contexts:
        body += struct.pack(e + "HBx", ctx_id, 1) + uuid_bytes(iface, le)
        body += struct.pack(e + "HH", version, 0)
        body += uuid_bytes(NDR, le) + struct.pack(e + "I", 2)
    return pdu(11, body, call_id, le=le)


def request(
    ctx: int,
    opnum: int,
    stub: bytes,
    call_id: int = 1,
    flags: int = BOTH,
    auth: bytes = b"",
    obj: str = "",
    le: bool = True,
) -> bytes:
    e = "<" if le else ">"
    body = struct.pack(e + "IHH", len(stub), ctx, opnum)
    if obj:
        body += uuid_bytes(obj, le)
        flags |= PFC_OBJECT_UUID
    return pdu(0, body + stub, call_id, flags, auth, le)


# MS03-026: RemoteCreateInstance (opnum 4) whose UNC server name overflows a fixed buffer.
OVERSIZED_NAME = ("\\\\" + "A" * 600 + "\\share").encode("utf-16-le")
BLASTER_LIKE = bind([(1, ISYSTEM_ACTIVATOR, 0)]) + request(1, 4, b"\x05\x00" + OVERSIZED_NAME, 2)
FRAGMENTED = (
    bind([(0, SAMR, 1)], call_id=7)
    + request(0, 57, b"a" * 100, 8, PFC_FIRST_FRAG)
    + request(0, 57, b"b" * 100, 8, 0)
    + request(0, 57, b"c" * 10, 8, PFC_LAST_FRAG)
)


def summarize(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Pdu):
            out.append(("pdu", ev.ptype, ev.frag_length, ev.little_endian))
        elif isinstance(ev, Request):
            out.append(
                ("req", ev.interface, ev.opnum, ev.stub_length, ev.fragments, ev.object_uuid)
            )
        else:
            out.append(ev)
    return out


def ctx(ctx_id: int, iface: str, version: int) -> ContextItem:
    return ContextItem(ctx_id, iface, version, 0, (NDR,))


CASES = [
    (
        "ms03-026 shape: ISystemActivator bind, long request",
        BLASTER_LIKE,
        [
            ("pdu", 11, 72, True),
            Bind(11, 1, 5840, 5840, 0, (ctx(1, ISYSTEM_ACTIVATOR, 0),)),
            ("pdu", 0, 16 + 8 + 2 + len(OVERSIZED_NAME), True),
            ("req", ISYSTEM_ACTIVATOR, 4, 2 + len(OVERSIZED_NAME), 1, ""),
        ],
    ),
    (
        "three fragments reassembled into one request",
        FRAGMENTED,
        [
            ("pdu", 11, 72, True),
            Bind(11, 7, 5840, 5840, 0, (ctx(0, SAMR, 1),)),
            ("pdu", 0, 124, True),
            ("pdu", 0, 124, True),
            ("pdu", 0, 34, True),
            ("req", SAMR, 57, 210, 3, ""),
        ],
    ),
    (
        "big-endian data representation",
        bind([(3, SRVSVC, 3)], le=False) + request(3, 15, b"xyz", 2, le=False),
        [
            ("pdu", 11, 72, False),
            Bind(11, 1, 5840, 5840, 0, (ctx(3, SRVSVC, 3),)),
            ("pdu", 0, 27, False),
            ("req", SRVSVC, 15, 3, 1, ""),
        ],
    ),
    (
        "auth verifier and object uuid are not stub",
        request(9, 1, b"s" * 20, 3, auth=b"v" * 16, obj=SAMR),
        [("pdu", 0, 16 + 8 + 16 + 20 + 8 + 16, True), ("req", "", 1, 20, 1, SAMR)],
    ),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("name", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, stream: bytes, expected: list[object], step: int | None) -> None:
    dec = DceRpcDecoder()
    if step is None:
        events = dec.receive_data(stream)
    else:
        events = [ev for i in range(len(stream)) for ev in dec.receive_data(stream[i : i + 1])]
    assert summarize(events) == expected
    assert dec.buffered == 0


def test_stub_kept_up_to_bound_but_counted_in_full() -> None:
    dec = DceRpcDecoder()
    chunk = b"z" * 60000
    events = dec.receive_data(request(0, 1, chunk, 5, PFC_FIRST_FRAG))
    for _ in range(5):
        events += dec.receive_data(request(0, 1, chunk, 5, 0))
        assert dec.buffered <= MAX_STUB_KEEP
    events += dec.receive_data(request(0, 1, b"", 5, PFC_LAST_FRAG))
    (req,) = [e for e in events if isinstance(e, Request)]
    assert req.stub_length == 6 * 60000 and len(req.stub) == MAX_STUB_KEEP
    assert req.fragments == 7


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a DCE/RPC CO header"),
        (pdu(0, b"")[:8] + b"\x08\x00\0\0\1\0\0\0", "frag length 8"),
        (pdu(42, b"xxxx"), "unknown DCE/RPC packet type 42"),
    ],
)
def test_framing_errors_are_sticky(stream: bytes, error: str) -> None:
    dec = DceRpcDecoder()
    with pytest.raises(DceRpcDecodeError, match=error):
        dec.receive_data(stream)
    assert dec.state is State.ERROR
    with pytest.raises(DceRpcDecodeError, match="ERROR state"):
        dec.receive_data(b"")


def test_pending_call_bound_forgets_the_oldest_call() -> None:
    dec = DceRpcDecoder()
    opened = b"".join(request(0, 1, b"x", i, PFC_FIRST_FRAG) for i in range(MAX_PENDING_CALLS + 1))
    events = dec.receive_data(opened + request(0, 7, b"stub", 99))
    assert dec.evicted_calls == 2 and dec.malformed == 0  # the 17th call, then call 99
    assert any(isinstance(e, Request) and e.opnum == 7 for e in events)


@pytest.mark.parametrize(
    ("stream", "bad"),
    [
        (pdu(0, b"abc"), 1),
        (pdu(11, struct.pack("<HHIB3x", 1, 1, 0, 2)), 1),
    ],
)
def test_a_bad_pdu_in_an_intact_frame_does_not_stop_decoding(stream: bytes, bad: int) -> None:
    """The server rejects a malformed PDU and reads the next one: so does the decoder."""
    dec = DceRpcDecoder()
    events = dec.receive_data(stream + request(0, 7, b"stub", 99))
    assert dec.malformed == bad and dec.state is not State.ERROR
    assert any(isinstance(e, Request) and e.opnum == 7 for e in events)


def test_pipes_skip_writes_that_are_not_rpc_but_not_the_pipe() -> None:
    """A write that is not DCE/RPC (a file's contents, garbage, a broken PDU header) is dropped;
    the pipe's next write is decoded afresh (a bad PDU does not disable the pipe for good)."""
    pipes = DceRpcPipes(max_pipes=2)
    assert pipes.feed("file", b"plain file contents....") == []
    broken = b"\x05\x00\x00\x03\x10\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00"  # frag length 8
    assert pipes.feed("file", broken + BLASTER_LIKE) == []  # the rest of that write goes too
    assert pipes.errors == 2
    events = pipes.feed("file", BLASTER_LIKE)
    assert [e.interface for e in events if isinstance(e, Request)] == [ISYSTEM_ACTIVATOR]
    events = pipes.feed("pipe", BLASTER_LIKE)
    assert [e.interface for e in events if isinstance(e, Request)] == [ISYSTEM_ACTIVATOR]
    pipes.feed("other", BLASTER_LIKE)
    pipes.feed("third", BLASTER_LIKE)
    assert len(pipes) == 2


def test_blaster_capture_holds_only_the_shell_session(corpora: Path) -> None:
    # The corpus file keeps only the post-exploit shell (TCP 4444): no port 135 traffic at all,
    # so the MS03-026 request shape is built above from the published structure instead.
    streams = tcp_streams(corpora / "attacks" / "blaster-ms03-026.pcap")
    assert {k.dport for k in streams} | {k.sport for k in streams} == {4444, 1793}
    for data in streams.values():
        with pytest.raises(DceRpcDecodeError):
            DceRpcDecoder().receive_data(data)


def pipe_requests(path: Path) -> list[tuple[bytes, int]]:
    found = []
    for key, data in tcp_streams(path).items():
        if key.dport not in (139, 445):
            continue
        pipes = DceRpcPipes()
        try:
            events = SmbDecoder().receive_data(data)
        except SmbDecodeError:
            continue
        for ev in events:
            for rec in pipe_records(pipes, ev):
                if "dcerpc.opnum" in rec.fields:
                    iface, opnum = rec.fields["dcerpc.interface"], rec.fields["dcerpc.opnum"]
                    assert isinstance(iface, bytes) and isinstance(opnum, int)
                    found.append((iface, opnum))
    return found


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # SMB1 TransactNmPipe / WriteAndX: srvsvc NetShareEnumAll, then SAMR calls
        ("raw_ntlm_in_smb.pcap", [(SRVSVC, 15), (SAMR, 45)]),
        # SMB2 WRITE + IOCTL FSCTL_PIPE_TRANSCEIVE
        ("smb2-zero-byte-error-ioctl.pcapng", [(SRVSVC, 15), (SAMR, 44)]),
    ],
)
def test_real_smb_pipes(corpora: Path, name: str, expected: list[tuple[str, int]]) -> None:
    found = pipe_requests(corpora / "benign" / "smb" / name)
    for iface, opnum in expected:
        assert (iface.encode(), opnum) in found


def test_registered_adapter_gives_interface_per_request() -> None:
    proto = registry.get("dcerpc")
    assert proto is not None
    assert registry.identify(["dcerpc"], PROTO_TCP, 135, Direction.TO_SERVER, BLASTER_LIKE) == (
        "dcerpc",
        True,
    )
    records = proto.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(BLASTER_LIKE)
    (req,) = [r for r in records if r.fields.get("dcerpc.opnum") == 4]
    assert req.fields["dcerpc.interface"] == ISYSTEM_ACTIVATOR.encode()
    assert req.fields["dcerpc.stub_length"] == 2 + len(OVERSIZED_NAME)
    for rec in records:
        assert set(rec.fields) <= set(proto.fields)


def _ndr_string(text: str, e: str) -> bytes:
    """A conformant varying NDR string (max count, offset, actual count, UTF-16 units with the
    terminating zero) in byte order `e`, padded to 4."""
    units = [ord(c) for c in text] + [0]
    out = struct.pack(e + "III", len(units), 0, len(units))
    out += b"".join(struct.pack(e + "H", u) for u in units)
    return out + b"\0" * (-len(out) % 4)


def path_canonicalize_stub(path: str, e: str) -> bytes:
    """[MS-SRVS] NetprPathCanonicalize (opnum 31) arguments, NDR in byte order `e`."""
    stub = struct.pack(e + "I", 0x20000) + _ndr_string("\\\\SRV", e)  # unique ServerName
    stub += _ndr_string(path, e)  # PathName
    stub += struct.pack(e + "I", 1000)  # OutbufLen
    stub += _ndr_string("\\", e)  # Prefix
    return stub + struct.pack(e + "II", 1, 0)  # PathType, Flags


@pytest.mark.parametrize("le", [True, False], ids=["little-endian", "big-endian"])
def test_a_big_endian_stub_is_matched_like_a_little_endian_one(le: bool) -> None:
    """A request in big-endian NDR (drep 0: Windows' runtime converts it) must not hide the
    MS08-067 path from the rule written for UTF-16LE strings (`big_endian_stub_forms`); a
    benign path stays benign in both byte orders."""
    from gateway.match.matcher import Matcher
    from gateway.match.rules import default_rule_dir, load_rules

    matcher = Matcher(load_rules([default_rule_dir()]))
    group = matcher.group(PROTO_TCP, Direction.TO_SERVER, 445)
    assert group is not None
    proto = registry.get("dcerpc")
    assert proto is not None
    e = "<" if le else ">"

    def sids(path: str) -> set[int]:
        stream = bind([(0, SRVSVC, 3)], le=le) + request(
            0, 0x1F, path_canonicalize_stub(path, e), 2, le=le
        )
        found: set[int] = set()
        for record in proto.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(stream):
            found.update(r.id for r in matcher.evaluate(group.apps["dcerpc"], record.fields))
        return found

    assert 9001010 in sids("\\A\\..\\..\\" + "B" * 40)
    assert 9001010 not in sids("\\dir\\..\\file")

    def start_doc(output_file: str | None) -> set[int]:
        """[MS-RPRN] RpcStartDocPrinter (opnum 17): handle, level 1, DOC_INFO_1 pointers."""
        stub = b"H" * 20 + struct.pack(e + "III", 1, 1, 0x20000)
        stub += struct.pack(e + "III", 0x20004, 0x20008 if output_file else 0, 0x2000C)
        stub += _ndr_string("doc", e)
        if output_file:
            stub += _ndr_string(output_file, e)
        stub += _ndr_string("RAW", e)
        stream = bind([(0, SPOOLSS, 1)], le=le) + request(0, 17, stub, 2, le=le)
        found: set[int] = set()
        for record in proto.new_decoder(PROTO_TCP, Direction.TO_SERVER).feed(stream):
            found.update(r.id for r in matcher.evaluate(group.apps["dcerpc"], record.fields))
        return found

    assert 9001028 in start_doc("wbem\\mof\\x.mof")  # integers: only the reversed form
    assert 9001028 not in start_doc(None)
