"""NetBIOS session service + SMB1/SMB2/SMB3 decoder, fed one direction's byte stream.

Framing is RFC 1002 section 4.3 (NetBIOS session messages; on TCP 445 the same 4-byte header
carries a 24-bit length, MS-SMB2 section 2.1). Inside, SMB1 ([MS-CIFS] 2.2.3.1 header, 2.2.4
commands) with AndX chains followed, and the transaction commands whose counts the MS17-010 family
abuses (Trans 0x25, Trans2 0x32, NT Transact 0xA0 and their secondaries), SMB2/3 headers ([MS-SMB2]
2.2.1, chained with NextCommand), the SMB3 transform header (2.2.41) and the compression transform
header (2.2.42, whose OriginalCompressedSegmentSize and Offset CVE-2020-0796 overflows).
Guarantees:
- only SmbDecodeError escapes, for a broken NetBIOS framing, and after it the decoder is in
  the ERROR state; an SMB message that does not decode inside an intact frame is reported as
  SmbMalformed (counted in `malformed`) and decoding goes on with the next frame, as servers
  do (one bad PDU does not blind the rest of the connection);
- at most MAX_MESSAGE bytes are buffered: a longer message (SMB2 READ/WRITE carry up to 8 MiB)
  is decoded from its first MAX_MESSAGE bytes (headers only) and the rest is skipped as it
  arrives; AndX and NextCommand chains must move forward and are followed at most MAX_CHAIN times;
- offsets and counts are reported as sent, never trusted for slicing beyond the message.
Named-pipe payloads (for DCE/RPC over SMB, see dcerpc.DceRpcPipes): requests that write to a
file carry the bytes in `data` with the file in `fid` (SMB1 WriteAndX [MS-CIFS] 2.2.4.43.1, Trans
TransactNmPipe / WriteNmPipe 2.2.5.6 / 2.2.5.7, whose Setup[1] is the FID) or `file_id` (SMB2
WRITE [MS-SMB2] 2.2.21, IOCTL FSCTL_PIPE_TRANSCEIVE input 2.2.31); `data` is a slice of the
message, so it is bounded by MAX_MESSAGE.
App layer (gateway/decode/registry.py): `SmbAdapter` turns the events into "smb" records and,
through `pipe_records` and one dcerpc.DceRpcPipes per flow direction, the DCE/RPC calls written
to named pipes into "dcerpc" records; importing this module registers the "smb" protocol.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from gateway.decode import dcerpc as _dcerpc
from gateway.decode.registry import (
    AppDecoder,
    AppProtocol,
    AppRecord,
    FieldKind,
    FieldValue,
    Probe,
    register,
)
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, Direction

MAX_MESSAGE = 0x20000  # 128 KiB: SMB1 max buffer and the SMB2 messages we inspect fit
MAX_CHAIN = 16

SMB1_TRANS = 0x25
SMB1_TRANS_SECONDARY = 0x26
SMB1_TRANS2 = 0x32
SMB1_TRANS2_SECONDARY = 0x33
SMB1_NT_TRANS = 0xA0
SMB1_NT_TRANS_SECONDARY = 0xA1
SMB1_NEGOTIATE = 0x72
# Commands whose parameter block starts with AndXCommand, AndXReserved, AndXOffset.
SMB1_ANDX = frozenset({0x24, 0x2D, 0x2E, 0x2F, 0x73, 0x74, 0x75, 0xA2})
SMB1_NO_ANDX = 0xFF
SMB1_WRITE_ANDX = 0x2F
TRANS_TRANSACT_NMPIPE = 0x26
TRANS_WRITE_NMPIPE = 0x37
SMB2_WRITE = 9
SMB2_IOCTL = 11
FSCTL_PIPE_TRANSCEIVE = 0x0011C017

_NBSS = struct.Struct("!BB H")
_SMB1 = struct.Struct("<4sBIBHH8sHHHHH")
_SMB2 = struct.Struct("<4sHHIHHIIQIIQ16s")
_TRANS = struct.Struct("<HHHHBBHIHHHHHBB")  # Trans / Trans2 request words up to SetupCount
_NT_TRANS = struct.Struct("<BHIIIIIIIIBH")  # NT Transact request words up to Function
_COMPRESSION = struct.Struct("<4sIHHI")


class SmbDecodeError(DecodeError):
    """The peer sent something that is not NetBIOS/SMB (its fault; the state is now ERROR)."""


class State(enum.Enum):
    MESSAGES = "messages"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Transaction:
    """Counts of an SMB1 Trans / Trans2 / NT Transact request (primary or secondary)."""

    total_parameter_count: int
    total_data_count: int
    parameter_count: int
    parameter_offset: int
    data_count: int
    data_offset: int
    subcommand: int  # Trans2 Setup[0] / NT Trans Function / Trans Setup[0]; -1 if none
    max_data_count: int = 0


@dataclass(frozen=True, slots=True)
class Smb1Command:
    command: int
    status: int
    is_response: bool
    flags2: int
    tid: int
    uid: int
    mid: int
    word_count: int
    byte_count: int
    transaction: Transaction | None = None
    dialects: tuple[str, ...] = ()  # negotiate request
    fid: int = -1  # WriteAndX / TransactNmPipe / WriteNmPipe request: the file written
    data: bytes = b""  # ... and the bytes written to it (pipe payload)


@dataclass(frozen=True, slots=True)
class Smb2Command:
    command: int
    status: int
    is_response: bool
    message_id: int
    tree_id: int
    session_id: int
    file_id: bytes = b""  # WRITE / IOCTL FSCTL_PIPE_TRANSCEIVE request: the 16-byte FileId
    data: bytes = b""  # ... and the bytes written / the IOCTL input (pipe payload)


@dataclass(frozen=True, slots=True)
class Smb3Transform:
    original_size: int
    session_id: int


@dataclass(frozen=True, slots=True)
class Smb3Compressed:
    original_size: int
    algorithm: int
    flags: int
    offset: int  # length of the uncompressed part, or of the first payload header
    message_length: int


@dataclass(frozen=True, slots=True)
class NetbiosMessage:
    msg_type: int  # 0x00 session message, 0x81 session request, 0x85 keep-alive, ...
    length: int


@dataclass(frozen=True, slots=True)
class SmbMalformed:
    """An SMB message inside an intact NetBIOS frame that did not decode: what was wrong."""

    reason: str


Event = SmbMalformed | NetbiosMessage | Smb1Command | Smb2Command | Smb3Transform | Smb3Compressed


class SmbDecoder:
    """Decodes one direction of an SMB connection (TCP 139 or 445)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.state = State.MESSAGES
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized message still to be skipped
        self.malformed = 0  # SMB messages that did not decode (framing intact, decoding went on)

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.ERROR:
            raise SmbDecodeError("decoder is in ERROR state after an earlier error")
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        self._buf += data
        events: list[Event] = []
        try:
            while len(self._buf) >= 4 and not self._skip:
                msg_type = self._buf[0]
                length = int.from_bytes(self._buf[1:4], "big")
                if msg_type not in (0x00, 0x81, 0x82, 0x83, 0x84, 0x85):
                    raise SmbDecodeError(f"not a NetBIOS session message: type 0x{msg_type:02x}")
                if msg_type != 0x00 and length > 0x1FFFF:
                    raise SmbDecodeError(f"NetBIOS type 0x{msg_type:02x} with length {length}")
                if length > self.max_message:
                    if len(self._buf) < 4 + self.max_message:
                        break
                    events.append(NetbiosMessage(msg_type, length))
                    events.extend(parse_smb_headers(bytes(self._buf[4 : 4 + self.max_message])))
                    self._skip = max(0, 4 + length - len(self._buf))
                    del self._buf[: 4 + length]
                    continue
                if len(self._buf) < 4 + length:
                    break
                body = bytes(self._buf[4 : 4 + length])
                del self._buf[: 4 + length]
                events.append(NetbiosMessage(msg_type, length))
                if msg_type == 0x00 and body:
                    try:
                        events.extend(parse_smb(body))
                    except SmbDecodeError as err:
                        # The NetBIOS length still frames the next message: the server answers
                        # this one with an error status and reads on, and so do we.
                        self.malformed += 1
                        events.append(SmbMalformed(str(err)))
        except SmbDecodeError:
            self.state = State.ERROR
            raise
        return events


def parse_smb(msg: bytes) -> list[Event]:
    """Decode one SMB message (the body of a NetBIOS session message)."""
    magic = msg[:4]
    if magic == b"\xffSMB":
        return _parse_smb1(msg)
    if magic == b"\xfeSMB":
        return _parse_smb2(msg)
    if magic == b"\xfdSMB":
        if len(msg) < 52:
            raise SmbDecodeError(f"SMB3 transform header truncated: {len(msg)} bytes")
        original_size = int.from_bytes(msg[36:40], "little")
        return [Smb3Transform(original_size, int.from_bytes(msg[44:52], "little"))]
    if magic == b"\xfcSMB":
        if len(msg) < _COMPRESSION.size:
            raise SmbDecodeError(f"SMB3 compression header truncated: {len(msg)} bytes")
        _, original, algorithm, flags, offset = _COMPRESSION.unpack_from(msg)
        return [Smb3Compressed(original, algorithm, flags, offset, len(msg))]
    raise SmbDecodeError(f"unknown SMB protocol id {magic!r}")


def parse_smb_headers(prefix: bytes) -> list[Event]:
    """Decode what the first bytes of an oversized message say: its SMB2 header(s) only."""
    if prefix[:4] == b"\xfeSMB":
        return _parse_smb2(prefix, follow_chain=False)
    return parse_smb(prefix) if prefix[:4] in (b"\xfdSMB", b"\xfcSMB") else []


def _parse_smb1(msg: bytes) -> list[Event]:
    if len(msg) < _SMB1.size + 1:
        raise SmbDecodeError(f"SMB1 header truncated: {len(msg)} bytes")
    (_, command, status, flags, flags2, _, _, _, tid, _, uid, mid) = _SMB1.unpack_from(msg)
    is_response = bool(flags & 0x80)
    events: list[Event] = []
    pos = _SMB1.size
    for _ in range(MAX_CHAIN):
        if pos >= len(msg):
            raise SmbDecodeError(
                f"SMB1 command 0x{command:02x} parameter block past the end at {pos}"
            )
        wc = msg[pos]
        words_end = pos + 1 + 2 * wc
        if words_end + 2 > len(msg):
            # Error responses may carry no byte count; anything else is truncated.
            if is_response and wc == 0 and words_end == len(msg):
                events.append(
                    Smb1Command(command, status, is_response, flags2, tid, uid, mid, 0, 0)
                )
                return events
            raise SmbDecodeError(f"SMB1 command 0x{command:02x} truncated (word count {wc})")
        words = msg[pos + 1 : words_end]
        byte_count = int.from_bytes(msg[words_end : words_end + 2], "little")
        data = msg[words_end + 2 : words_end + 2 + byte_count]
        transaction = None if is_response else _parse_transaction(command, words)
        dialects: tuple[str, ...] = ()
        if command == SMB1_NEGOTIATE and not is_response:
            dialects = tuple(d[1:].decode("latin-1") for d in data.split(b"\0") if d[:1] == b"\x02")
        fid, written = -1, b""
        if not is_response:
            fid, written = _smb1_write(msg, command, words, transaction)
        events.append(
            Smb1Command(
                command,
                status,
                is_response,
                flags2,
                tid,
                uid,
                mid,
                wc,
                byte_count,
                transaction,
                dialects,
                fid,
                written,
            )
        )
        if command not in SMB1_ANDX or wc < 2:
            return events
        next_command, next_offset = words[0], int.from_bytes(words[2:4], "little")
        if next_command == SMB1_NO_ANDX:
            return events
        if next_offset <= pos:
            raise SmbDecodeError(
                f"AndX offset {next_offset} of command 0x{command:02x} does not advance past {pos}"
            )
        command, pos = next_command, next_offset
    raise SmbDecodeError(f"AndX chain longer than {MAX_CHAIN} commands")


def _parse_transaction(command: int, words: bytes) -> Transaction | None:
    if command in (SMB1_TRANS, SMB1_TRANS2) and len(words) >= _TRANS.size:
        (tpc, tdc, _mpc, mdc, _msc, _, _flags, _timeout, _, pc, po, dc, do, sc, _) = (
            _TRANS.unpack_from(words)
        )
        sub = int.from_bytes(words[_TRANS.size : _TRANS.size + 2], "little") if sc else -1
        return Transaction(tpc, tdc, pc, po, dc, do, sub, mdc)
    if command in (SMB1_TRANS_SECONDARY, SMB1_TRANS2_SECONDARY) and len(words) >= 16:
        tpc, tdc, pc, po, _pd, dc, do, _dd = struct.unpack_from("<8H", words)
        return Transaction(tpc, tdc, pc, po, dc, do, -1)
    if command == SMB1_NT_TRANS and len(words) >= _NT_TRANS.size:
        (_msc, _, tpc, tdc, _mpc, mdc, pc, po, dc, do, _sc, function) = _NT_TRANS.unpack_from(words)
        return Transaction(tpc, tdc, pc, po, dc, do, function, mdc)
    if command == SMB1_NT_TRANS_SECONDARY and len(words) >= 35:
        tpc, tdc, pc, po, _pd, dc, do, _dd = struct.unpack_from("<8I", words, 3)
        return Transaction(tpc, tdc, pc, po, dc, do, -1)
    return None


def _parse_smb2(msg: bytes, follow_chain: bool = True) -> list[Event]:
    events: list[Event] = []
    pos = 0
    for _ in range(MAX_CHAIN):
        if len(msg) - pos < _SMB2.size:
            raise SmbDecodeError(f"SMB2 header truncated at offset {pos}")
        (
            magic,
            size,
            _credit,
            status,
            command,
            _,
            flags,
            next_command,
            message_id,
            _,
            tree_id,
            session_id,
            _,
        ) = _SMB2.unpack_from(msg, pos)
        if magic != b"\xfeSMB" or size != 64:
            raise SmbDecodeError(f"bad SMB2 header at offset {pos} (structure size {size})")
        file_id, written = b"", b""
        if not flags & 1:
            end = pos + next_command if next_command else len(msg)
            file_id, written = _smb2_write(msg, pos, end, command)
        # ASYNC headers (flag 0x2) carry an AsyncId where sync ones carry Reserved + TreeId.
        events.append(
            Smb2Command(
                command,
                status,
                bool(flags & 1),
                message_id,
                0 if flags & 2 else tree_id,
                session_id,
                file_id,
                written,
            )
        )
        if next_command == 0 or not follow_chain:
            return events
        if next_command < _SMB2.size or next_command % 8:
            raise SmbDecodeError(f"SMB2 NextCommand {next_command} at offset {pos} is invalid")
        pos += next_command
    raise SmbDecodeError(f"SMB2 compound chain longer than {MAX_CHAIN} commands")


def _smb1_write(
    msg: bytes, command: int, words: bytes, transaction: Transaction | None
) -> tuple[int, bytes]:
    """(FID, bytes written) of an SMB1 request that writes to a file or pipe, else (-1, b"")."""
    if command == SMB1_WRITE_ANDX and len(words) >= 24:
        fid = int.from_bytes(words[4:6], "little")
        high = int.from_bytes(words[18:20], "little")
        length = int.from_bytes(words[20:22], "little") | (high << 16)
        offset = int.from_bytes(words[22:24], "little")
        return fid, msg[offset : offset + length]
    if (
        command == SMB1_TRANS
        and transaction is not None
        and len(words) >= _TRANS.size + 4
        and transaction.subcommand in (TRANS_TRANSACT_NMPIPE, TRANS_WRITE_NMPIPE)
    ):
        fid = int.from_bytes(words[_TRANS.size + 2 : _TRANS.size + 4], "little")
        start = transaction.data_offset
        return fid, msg[start : start + transaction.data_count]
    return -1, b""


def _smb2_write(msg: bytes, pos: int, end: int, command: int) -> tuple[bytes, bytes]:
    """(FileId, bytes written) of an SMB2 WRITE / pipe-transceive IOCTL request at `pos`."""
    body = pos + _SMB2.size
    if command == SMB2_WRITE and body + 32 <= end:
        offset = int.from_bytes(msg[body + 2 : body + 4], "little")
        length = int.from_bytes(msg[body + 4 : body + 8], "little")
        start = pos + offset
        return msg[body + 16 : body + 32], msg[start : min(start + length, end)]
    if command == SMB2_IOCTL and body + 32 <= end:
        if int.from_bytes(msg[body + 4 : body + 8], "little") != FSCTL_PIPE_TRANSCEIVE:
            return b"", b""
        offset = int.from_bytes(msg[body + 24 : body + 28], "little")
        length = int.from_bytes(msg[body + 28 : body + 32], "little")
        start = pos + offset
        return msg[body + 8 : body + 24], msg[start : min(start + length, end)]
    return b"", b""


# ------------------------------------------------------------------------- app layer

_NBSS_TYPES: Final = frozenset({0x00, 0x81, 0x82, 0x83, 0x84, 0x85})
_SMB_MAGICS: Final = frozenset({b"\xffSMB", b"\xfeSMB", b"\xfdSMB", b"\xfcSMB"})
_TRANS_PREFIX: Final = {
    SMB1_TRANS: "smb.trans.",
    SMB1_TRANS_SECONDARY: "smb.trans.",
    SMB1_TRANS2: "smb.trans2.",
    SMB1_TRANS2_SECONDARY: "smb.trans2.",
    SMB1_NT_TRANS: "smb.nt_trans.",
    SMB1_NT_TRANS_SECONDARY: "smb.nt_trans.",
}
_TRANS_FIELDS: Final = (
    "subcommand",
    "total_parameter_count",
    "total_data_count",
    "parameter_count",
    "parameter_offset",
    "data_count",
    "data_offset",
    "max_data_count",
)


def _probe_smb(data: bytes, direction: Direction) -> Probe:
    if not data:
        return Probe.NEED_DATA
    if data[0] not in _NBSS_TYPES:
        return Probe.NO
    if data[0] != 0x00:
        return Probe.YES  # session request / response / keep-alive (port 139)
    if len(data) < 8:
        return Probe.NEED_DATA
    return Probe.YES if data[4:8] in _SMB_MAGICS else Probe.NO


class SmbAdapter:
    """NetBIOS + SMB1/2/3 -> a record per NetBIOS message and per SMB command, followed by the
    "dcerpc" records of the DCE/RPC PDUs that command writes to a named pipe (SMB1 WriteAndX /
    Trans TransactNmPipe / WriteNmPipe, SMB2 WRITE / IOCTL FSCTL_PIPE_TRANSCEIVE), decoded by
    one dcerpc.DceRpcPipes per adapter, i.e. per flow direction (bounded by its MAX_PIPES)."""

    __slots__ = ("_decoder", "_pipes")

    def __init__(self) -> None:
        self._decoder = SmbDecoder()
        self._pipes = _dcerpc.DceRpcPipes()

    def feed(self, data: bytes) -> list[AppRecord]:
        out: list[AppRecord] = []
        for event in self._decoder.receive_data(data):
            fields: dict[str, FieldValue]
            if isinstance(event, Smb1Command):
                fields = {
                    "smb.version": 1,
                    "smb.command": event.command,
                    "smb.status": event.status,
                    "smb.is_response": int(event.is_response),
                    "smb.flags2": event.flags2,
                    "smb.tid": event.tid,
                    "smb.uid": event.uid,
                    "smb.mid": event.mid,
                    "smb.word_count": event.word_count,
                    "smb.byte_count": event.byte_count,
                }
                trans = event.transaction
                prefix = _TRANS_PREFIX.get(event.command)
                if trans is not None and prefix is not None:
                    for name in _TRANS_FIELDS:
                        fields[prefix + name] = getattr(trans, name)
                if event.dialects:
                    fields["smb.negotiate.dialects"] = "\n".join(event.dialects).encode(
                        "latin-1", "replace"
                    )
            elif isinstance(event, Smb2Command):
                fields = {
                    "smb.version": 2,
                    "smb.command": event.command,
                    "smb.status": event.status,
                    "smb.is_response": int(event.is_response),
                    "smb.message_id": event.message_id,
                    "smb.tree_id": event.tree_id,
                    "smb.session_id": event.session_id,
                }
            elif isinstance(event, Smb3Transform):
                fields = {
                    "smb.version": 3,
                    "smb.transform.original_size": event.original_size,
                    "smb.session_id": event.session_id,
                }
            elif isinstance(event, Smb3Compressed):
                fields = {
                    "smb.version": 3,
                    "smb.compression.original_size": event.original_size,
                    "smb.compression.algorithm": event.algorithm,
                    "smb.compression.flags": event.flags,
                    "smb.compression.offset": event.offset,
                    "smb.compression.message_length": event.message_length,
                }
            elif isinstance(event, NetbiosMessage):
                fields = {"smb.netbios.type": event.msg_type, "smb.netbios.length": event.length}
            else:  # SmbMalformed: counted by the decoder, nothing to judge
                continue
            out.append(AppRecord("smb", fields))
            if isinstance(event, (Smb1Command, Smb2Command)) and event.data:
                out.extend(pipe_records(self._pipes, event))
        return out


def pipe_records(pipes: _dcerpc.DceRpcPipes, event: Event) -> list[AppRecord]:
    """DCE/RPC records from the named-pipe data an SMB event carries (never raises).

    For the SMB adapter: call it with every Smb1Command / Smb2Command of one direction, using one
    DceRpcPipes per direction; events without data give nothing.
    """
    if isinstance(event, Smb1Command) and event.data:
        key: Hashable = ("smb1", event.tid, event.fid)
    elif isinstance(event, Smb2Command) and event.data:
        key = ("smb2", event.file_id)
    else:
        return []
    return [r for e in pipes.feed(key, event.data) for r in _dcerpc.event_records(e)]


def _new_smb(transport: int, direction: Direction) -> AppDecoder:
    return SmbAdapter()


_I, _B = FieldKind.INT, FieldKind.BYTES

register(
    AppProtocol(
        name="smb",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({139, 445}),
        fields={
            "smb.version": _I,
            "smb.command": _I,
            "smb.status": _I,
            "smb.is_response": _I,
            "smb.flags2": _I,
            "smb.tid": _I,
            "smb.uid": _I,
            "smb.mid": _I,
            "smb.word_count": _I,
            "smb.byte_count": _I,
            **{
                p + f: _I
                for p in ("smb.trans.", "smb.trans2.", "smb.nt_trans.")
                for f in _TRANS_FIELDS
            },
            "smb.negotiate.dialects": _B,
            "smb.message_id": _I,
            "smb.tree_id": _I,
            "smb.session_id": _I,
            "smb.transform.original_size": _I,
            "smb.compression.original_size": _I,
            "smb.compression.algorithm": _I,
            "smb.compression.flags": _I,
            "smb.compression.offset": _I,
            "smb.compression.message_length": _I,
            "smb.netbios.type": _I,
            "smb.netbios.length": _I,
        },
        new_decoder=_new_smb,
        probe=_probe_smb,
        description="NetBIOS session + SMB1/SMB2/SMB3 (RFC 1002, MS-CIFS, MS-SMB2)",
    )
)
