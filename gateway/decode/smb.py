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
  do (one bad PDU does not blind the rest of the connection); a chain (AndX, SMB2 compound)
  broken after its first command keeps the commands before the break (Windows executes them
  one at a time) and reports the rest as SmbMalformed;
- at most MAX_MESSAGE bytes are buffered: a longer message (SMB2 READ/WRITE carry up to 8 MiB)
  is decoded from its first MAX_MESSAGE bytes (headers only: the first SMB2 header, or the
  first SMB1 command with its parameter words) and the rest is skipped as it arrives; AndX
  chains must move forward and chains are followed at most MAX_CHAIN commands; at most
  MAX_PENDING_TRANSACTIONS pipe transactions await their secondaries;
- offsets and counts are reported as sent, never trusted for slicing beyond the message.
Named-pipe payloads (for DCE/RPC over SMB, see dcerpc.DceRpcPipes): a request that writes to a
file carries the bytes in `data` with the file in `fid` (SMB1) or `file_id` (SMB2), however
the client writes: SMB1 WRITE / WRITE_AND_UNLOCK ([MS-CIFS] 2.2.4.12, 2.2.4.21: the count in
the words, as Samba reads it), WRITE_AND_CLOSE (2.2.4.40), WriteAndX (2.2.4.43, DataOffset from
the header; DataLengthHigh only where the data fits; named-pipe raw mode with MSG_START: the
2-byte message length that leads the data is not written, as Samba and Snort's dcerpc2 read it),
WRITE_RAW (2.2.4.25: the bytes in the request, then the next message is raw data without a
header, a RawWriteData event; a raw message that also looks like SMB is decoded both ways),
Trans TransactNmPipe / WriteNmPipe (2.2.5.6, 2.2.5.7, Setup[1] is the FID) whose data is
completed by Trans secondaries (PipeTransactions: placed at DataDisplacement in any order, the
last write winning; complete when the counts received reach the totals, as srv.sys and Samba
do); SMB2 WRITE ([MS-SMB2] 2.2.21) and IOCTL FSCTL_PIPE_TRANSCEIVE input (2.2.31), where a
related compound operation's FileId 0xFF..FF is the previous command's file (3.3.5.2.7.2; for a
CREATE, named after it until the server's FileId appears). SMB1 CLOSE and SMB2 CLOSE requests
carry the file they close. `data` is a slice of the message, so it is bounded by MAX_MESSAGE.
App layer (gateway/decode/registry.py): `SmbAdapter` turns the events into "smb" records and,
through `pipe_records` and one dcerpc.DceRpcPipes per flow direction, the DCE/RPC calls written
to named pipes into "dcerpc" records (every write method of one file feeds one pipe);
importing this module registers the "smb" protocol.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Hashable
from dataclasses import dataclass, replace
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
SMB1_CLOSE = 0x04
SMB1_WRITE = 0x0B
SMB1_WRITE_AND_UNLOCK = 0x14
SMB1_WRITE_RAW = 0x1D
SMB1_WRITE_AND_CLOSE = 0x2C
# Commands whose parameter block starts with AndXCommand, AndXReserved, AndXOffset.
SMB1_ANDX = frozenset({0x24, 0x2D, 0x2E, 0x2F, 0x73, 0x74, 0x75, 0xA2})
SMB1_NO_ANDX = 0xFF
SMB1_WRITE_ANDX = 0x2F
TRANS_TRANSACT_NMPIPE = 0x26
TRANS_WRITE_NMPIPE = 0x37
WRITEMODE_RAW = 0x0004  # WriteAndX WriteMode: named pipe raw mode ...
WRITEMODE_MSG_START = 0x0008  # ... and the start of a message: 2 length bytes lead the data
SMB2_CREATE = 5
SMB2_CLOSE = 6
SMB2_FLUSH = 7
SMB2_READ = 8
SMB2_WRITE = 9
SMB2_IOCTL = 11
SMB2_FLAGS_RESPONSE = 0x1
SMB2_FLAGS_ASYNC = 0x2
SMB2_FLAGS_RELATED = 0x4
SMB2_NO_FILE_ID = b"\xff" * 16  # a related operation's "the previous command's file"
# Where a request's FileId sits, from the start of its body ([MS-SMB2] 2.2.14 .. 2.2.31).
_SMB2_FILE_ID_AT: Final = {
    SMB2_CLOSE: 8,
    SMB2_FLUSH: 8,
    SMB2_READ: 16,
    SMB2_WRITE: 16,
    SMB2_IOCTL: 8,
}
MAX_PENDING_TRANSACTIONS = 16  # TransactNmPipe / WriteNmPipe transactions awaiting secondaries
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
    parameter_displacement: int = 0  # secondaries: where their parameter bytes go ...
    data_displacement: int = 0  # ... and their data bytes, in the transaction's buffers


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
    fid: int = -1  # a request that writes to (or closes) a file: the file
    data: bytes = b""  # ... and the bytes written to it (pipe payload)
    pid: int = 0  # PIDHigh << 16 | PIDLow
    raw_remaining: int = 0  # WRITE_RAW request: bytes to come in the next, raw, message


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
class RawWriteData:
    """The NetBIOS message after an SMB1 WRITE_RAW request that left bytes to send: raw data
    for that request's file, without an SMB header ([MS-CIFS] 2.2.4.25, 3.2.4.15.1)."""

    tid: int
    fid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SmbMalformed:
    """An SMB message inside an intact NetBIOS frame that did not decode: what was wrong."""

    reason: str


Event = (
    SmbMalformed
    | NetbiosMessage
    | Smb1Command
    | Smb2Command
    | Smb3Transform
    | Smb3Compressed
    | RawWriteData
)


class SmbDecoder:
    """Decodes one direction of an SMB connection (TCP 139 or 445)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.state = State.MESSAGES
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized message still to be skipped
        self.malformed = 0  # SMB messages that did not decode (framing intact, decoding went on)
        self._raw: tuple[int, int] | None = None  # (TID, FID) of a WRITE_RAW awaiting its data
        self._transactions = PipeTransactions()

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
                whole = length <= self.max_message
                if len(self._buf) < 4 + min(length, self.max_message):
                    break
                body = bytes(self._buf[4 : 4 + min(length, self.max_message)])
                self._skip = max(0, 4 + length - len(self._buf))
                del self._buf[: 4 + length]
                events.append(NetbiosMessage(msg_type, length))
                if msg_type == 0x00 and body:
                    self._message(body, whole, events)
        except SmbDecodeError:
            self.state = State.ERROR
            raise
        return events

    def _message(self, body: bytes, whole: bool, events: list[Event]) -> None:
        """One session message's events: raw WRITE_RAW data, or SMB (a longer message than
        max_message: its first max_message bytes, headers only)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            # Raw data has no header. A message that still looks like SMB is decoded as SMB
            # too (the server refused the raw write and the client went on, or the data starts
            # like SMB): both readings are inspected.
            events.append(RawWriteData(raw[0], raw[1], body))
            if body[:4] not in _SMB_MAGICS:
                return
        try:
            decoded = parse_smb(body) if whole else parse_smb_headers(body)
        except SmbDecodeError as err:
            # The NetBIOS length still frames the next message: the server answers this one
            # with an error status and reads on, and so do we.
            decoded = [SmbMalformed(str(err))]
        for event in decoded:
            if isinstance(event, SmbMalformed):
                self.malformed += 1
            elif isinstance(event, Smb1Command) and not event.is_response:
                event = self._transactions.request(event)
                if event.raw_remaining:
                    self._raw = (event.tid, event.fid)
            events.append(event)


class _Transaction:
    """A TransactNmPipe / WriteNmPipe transaction awaiting its secondaries: the data buffer
    (written at each part's displacement, the last write winning) and the counts received."""

    __slots__ = ("data", "fid", "got_data", "got_parameters", "total_data", "total_parameters")

    def __init__(self, fid: int, tx: Transaction, data: bytes) -> None:
        self.fid = fid
        self.total_parameters = tx.total_parameter_count
        self.total_data = tx.total_data_count
        self.data = bytearray(self.total_data)
        self.got_parameters = 0
        self.got_data = 0
        self.add(tx, data, 0)

    def add(self, tx: Transaction, chunk: bytes, displacement: int) -> bool:
        """Add one part; whether the transaction is now complete. Like Windows and Samba, the
        counts received are summed (parts may overlap), a secondary may lower the totals, and a
        part is copied at its displacement, clipped to the total (Samba refuses what does not
        fit; pre-MS17-010 Windows writes past it, which the EternalRomance rule reports)."""
        self.total_parameters = min(self.total_parameters, tx.total_parameter_count)
        self.total_data = min(self.total_data, tx.total_data_count)
        chunk = chunk[: max(0, self.total_data - displacement)]
        self.data[displacement : displacement + len(chunk)] = chunk
        self.got_parameters += tx.parameter_count
        self.got_data += tx.data_count
        return self.got_data >= self.total_data and self.got_parameters >= self.total_parameters


class PipeTransactions:
    """SMB1 Trans requests that write to a named pipe, across their Trans secondaries
    ([MS-CIFS] 2.2.4.33, 2.2.4.34, 3.3.5.57): a primary that does not carry all its data
    waits for secondaries (matched by TID, UID, PID and MID), and the pipe write is reported
    on the request that completes it, with all the data placed at its displacements. At most
    MAX_PENDING_TRANSACTIONS wait at once (the oldest is forgotten first)."""

    __slots__ = ("_pending", "limit")

    def __init__(self, limit: int = MAX_PENDING_TRANSACTIONS) -> None:
        self.limit = limit
        self._pending: dict[tuple[int, int, int, int], _Transaction] = {}

    def request(self, cmd: Smb1Command) -> Smb1Command:
        """`cmd` as the pipe sees it: data only once its transaction is complete."""
        tx = cmd.transaction
        if tx is None or cmd.command not in (SMB1_TRANS, SMB1_TRANS_SECONDARY):
            return cmd
        key = (cmd.tid, cmd.uid, cmd.pid, cmd.mid)
        if cmd.command == SMB1_TRANS:
            self._pending.pop(key, None)  # a new primary on the same ids starts over
            if cmd.fid < 0 or (
                tx.data_count >= tx.total_data_count
                and tx.parameter_count >= tx.total_parameter_count
            ):
                return cmd  # not a pipe write, or complete in one message
            self._pending[key] = _Transaction(cmd.fid, tx, cmd.data)
            if len(self._pending) > self.limit:
                del self._pending[next(iter(self._pending))]
            return replace(cmd, data=b"")
        pending = self._pending.get(key)
        if pending is None or not pending.add(tx, cmd.data, tx.data_displacement):
            return replace(cmd, data=b"")
        del self._pending[key]
        return replace(cmd, fid=pending.fid, data=bytes(pending.data[: pending.total_data]))


def parse_smb(msg: bytes) -> list[Event]:
    """Decode one SMB message (the body of a NetBIOS session message). A chain (AndX, SMB2
    compound) broken after its first command ends in an SmbMalformed after the commands before
    the break; a message whose first command does not decode raises SmbDecodeError."""
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
    """Decode what the first bytes of an oversized message say: its SMB2 header(s) only, or the
    SMB1 command whose parameter words it starts with (the counts the MS17-010 rules judge)."""
    if prefix[:4] == b"\xfeSMB":
        return _parse_smb2(prefix, follow_chain=False)
    if prefix[:4] == b"\xffSMB":
        return _parse_smb1(prefix, follow_chain=False)
    return parse_smb(prefix) if prefix[:4] in (b"\xfdSMB", b"\xfcSMB") else []


def _parse_smb1(msg: bytes, follow_chain: bool = True) -> list[Event]:
    if len(msg) < _SMB1.size + 1:
        raise SmbDecodeError(f"SMB1 header truncated: {len(msg)} bytes")
    (_, command, status, flags, flags2, pid_high, _, _, tid, pid_low, uid, mid) = _SMB1.unpack_from(
        msg
    )
    head = _Smb1Head(status, bool(flags & 0x80), flags2, tid, uid, mid, pid_high << 16 | pid_low)
    events: list[Event] = []
    pos = _SMB1.size
    for _ in range(MAX_CHAIN):
        try:
            event, link = _smb1_command(msg, pos, command, head)
        except SmbDecodeError as err:
            if not events:
                raise
            # The commands before the broken link were executed (Windows runs a chain one
            # command at a time): keep them, report the rest.
            events.append(SmbMalformed(str(err)))
            return events
        events.append(event)
        if isinstance(link, str):
            events.append(SmbMalformed(link))
            return events
        if link is None or not follow_chain:
            return events
        command, pos = link
    events.append(SmbMalformed(f"AndX chain longer than {MAX_CHAIN} commands"))
    return events


@dataclass(frozen=True, slots=True)
class _Smb1Head:
    status: int
    is_response: bool
    flags2: int
    tid: int
    uid: int
    mid: int
    pid: int


def _smb1_command(
    msg: bytes, pos: int, command: int, head: _Smb1Head
) -> tuple[Smb1Command, tuple[int, int] | str | None]:
    """The command whose parameter block starts at `pos`, and the (command, offset) its AndX
    link names (None at the end of the chain). A link must move forward: one that loops or
    points back breaks the chain there (what is wrong, as a str)."""
    if pos >= len(msg):
        raise SmbDecodeError(f"SMB1 command 0x{command:02x} parameter block past the end at {pos}")
    wc = msg[pos]
    words_end = pos + 1 + 2 * wc
    if words_end + 2 > len(msg):
        # Error responses may carry no byte count; anything else is truncated.
        if head.is_response and wc == 0 and words_end == len(msg):
            return Smb1Command(
                command, head.status, True, head.flags2, head.tid, head.uid, head.mid, 0, 0
            ), None
        raise SmbDecodeError(f"SMB1 command 0x{command:02x} truncated (word count {wc})")
    words = msg[pos + 1 : words_end]
    byte_count = int.from_bytes(msg[words_end : words_end + 2], "little")
    block = words_end + 2
    transaction = None if head.is_response else _parse_transaction(command, words)
    dialects: tuple[str, ...] = ()
    if command == SMB1_NEGOTIATE and not head.is_response:
        data = msg[block : block + byte_count]
        dialects = tuple(d[1:].decode("latin-1") for d in data.split(b"\0") if d[:1] == b"\x02")
    fid, written, raw = -1, b"", 0
    if not head.is_response:
        fid, written, raw = _smb1_write(msg, command, words, block, transaction)
    event = Smb1Command(
        command,
        head.status,
        head.is_response,
        head.flags2,
        head.tid,
        head.uid,
        head.mid,
        wc,
        byte_count,
        transaction,
        dialects,
        fid,
        written,
        head.pid,
        raw,
    )
    if command not in SMB1_ANDX or wc < 2 or words[0] == SMB1_NO_ANDX:
        return event, None
    next_offset = int.from_bytes(words[2:4], "little")
    if next_offset <= pos:
        return (
            event,
            f"AndX offset {next_offset} of command 0x{command:02x} does not advance past {pos}",
        )
    return event, (words[0], next_offset)


def _parse_transaction(command: int, words: bytes) -> Transaction | None:
    if command in (SMB1_TRANS, SMB1_TRANS2) and len(words) >= _TRANS.size:
        (tpc, tdc, _mpc, mdc, _msc, _, _flags, _timeout, _, pc, po, dc, do, sc, _) = (
            _TRANS.unpack_from(words)
        )
        sub = int.from_bytes(words[_TRANS.size : _TRANS.size + 2], "little") if sc else -1
        return Transaction(tpc, tdc, pc, po, dc, do, sub, mdc)
    if command in (SMB1_TRANS_SECONDARY, SMB1_TRANS2_SECONDARY) and len(words) >= 16:
        tpc, tdc, pc, po, pd, dc, do, dd = struct.unpack_from("<8H", words)
        return Transaction(tpc, tdc, pc, po, dc, do, -1, 0, pd, dd)
    if command == SMB1_NT_TRANS and len(words) >= _NT_TRANS.size:
        (_msc, _, tpc, tdc, _mpc, mdc, pc, po, dc, do, _sc, function) = _NT_TRANS.unpack_from(words)
        return Transaction(tpc, tdc, pc, po, dc, do, function, mdc)
    if command == SMB1_NT_TRANS_SECONDARY and len(words) >= 35:
        tpc, tdc, pc, po, pd, dc, do, dd = struct.unpack_from("<8I", words, 3)
        return Transaction(tpc, tdc, pc, po, dc, do, -1, 0, pd, dd)
    return None


def _parse_smb2(msg: bytes, follow_chain: bool = True) -> list[Event]:
    """The commands of an SMB2 message, following a compound's NextCommand chain ([MS-SMB2]
    3.2.4.1.4): a related operation's FileId 0xFF..FF is the previous command's file (for a
    CREATE, the file it opens, named after the CREATE until the server's FileId is known)."""
    events: list[Event] = []
    pos = 0
    previous = b""  # the file of the previous command in the compound
    for _ in range(MAX_CHAIN):
        try:
            if len(msg) - pos < _SMB2.size:
                raise SmbDecodeError(f"SMB2 header truncated at offset {pos}")
            (magic, size, _, status, command, _, flags, next_command, message_id, _, tree_id,
             session_id, _) = _SMB2.unpack_from(msg, pos)  # fmt: skip
            if magic != b"\xfeSMB" or size != 64:
                raise SmbDecodeError(f"bad SMB2 header at offset {pos} (structure size {size})")
        except SmbDecodeError as err:
            if not events:
                raise
            events.append(SmbMalformed(str(err)))
            return events
        file_id, written = b"", b""
        if not flags & SMB2_FLAGS_RESPONSE:
            end = pos + next_command if next_command else len(msg)
            file_id = _smb2_file_id(msg, pos, end, command)
            if flags & SMB2_FLAGS_RELATED and file_id == SMB2_NO_FILE_ID and previous:
                file_id = previous
            if command == SMB2_CREATE:
                previous = b"create" + struct.pack("<QQ", session_id, message_id)
            elif file_id:
                previous = file_id
            written = _smb2_write(msg, pos, end, command)
            if command not in (SMB2_WRITE, SMB2_IOCTL, SMB2_CLOSE) or (
                command == SMB2_IOCTL and not written
            ):
                file_id = b""
        # ASYNC headers (flag 0x2) carry an AsyncId where sync ones carry Reserved + TreeId.
        events.append(
            Smb2Command(
                command,
                status,
                bool(flags & SMB2_FLAGS_RESPONSE),
                message_id,
                0 if flags & SMB2_FLAGS_ASYNC else tree_id,
                session_id,
                file_id,
                written,
            )
        )
        if next_command == 0 or not follow_chain:
            return events
        if next_command < _SMB2.size or next_command % 8:
            events.append(
                SmbMalformed(f"SMB2 NextCommand {next_command} at offset {pos} is invalid")
            )
            return events
        pos += next_command
    events.append(SmbMalformed(f"SMB2 compound chain longer than {MAX_CHAIN} commands"))
    return events


def _u16(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at : at + 2], "little")


def _smb1_write(
    msg: bytes, command: int, words: bytes, block: int, transaction: Transaction | None
) -> tuple[int, bytes, int]:
    """(FID, bytes written, WRITE_RAW bytes still to come) of an SMB1 request that writes to a
    file or pipe, or closes one (FID, b"", 0), else (-1, b"", 0); a Trans secondary gives its
    data part (-1, part, 0). `block` is where the command's byte block starts."""
    n = len(words)
    if command in (SMB1_WRITE, SMB1_WRITE_AND_UNLOCK) and n >= 10:
        # [MS-CIFS] 2.2.4.12.1 / 2.2.4.21.1: CountOfBytesToWrite in the words; the byte block
        # is BufferFormat 0x01, DataLength, Data (Samba takes the count from the words)
        return _u16(words, 0), msg[block + 3 : block + 3 + _u16(words, 2)], 0
    if command == SMB1_WRITE_AND_CLOSE and n >= 12:
        # 2.2.4.40.1: the byte block is one Pad byte, then CountOfBytesToWrite bytes
        return _u16(words, 0), msg[block + 1 : block + 1 + _u16(words, 2)], 0
    if command == SMB1_WRITE_ANDX and n >= 24:
        # 2.2.4.43.1: Data at DataOffset (from the SMB header, after any padding); [MS-SMB]
        # 2.2.4.3.1 DataLengthHigh, which Samba ignores on pipes: used only when the data fits
        offset, length = _u16(words, 22), _u16(words, 20) | _u16(words, 18) << 16
        if offset + length > len(msg):
            length = _u16(words, 20)
        data = msg[offset : offset + length]
        if _u16(words, 14) & (WRITEMODE_RAW | WRITEMODE_MSG_START) == (
            WRITEMODE_RAW | WRITEMODE_MSG_START
        ):
            data = data[2:]  # named pipe raw mode, message start: a 2-byte length leads
        return _u16(words, 4), data, 0
    if command == SMB1_WRITE_RAW and n >= 24:
        # 2.2.4.25.1: CountOfBytes in all, DataLength of them here at DataOffset; the rest
        # follows in the next message, raw (after the server's interim response)
        length = _u16(words, 20)
        data = msg[_u16(words, 22) : _u16(words, 22) + length]
        return _u16(words, 0), data, max(0, _u16(words, 2) - length)
    if command == SMB1_CLOSE and n >= 2:
        return _u16(words, 0), b"", 0
    if transaction is None:
        return -1, b"", 0
    part = msg[transaction.data_offset : transaction.data_offset + transaction.data_count]
    if command == SMB1_TRANS_SECONDARY:
        return -1, part, 0
    if (
        command == SMB1_TRANS
        and n >= _TRANS.size + 4
        and transaction.subcommand in (TRANS_TRANSACT_NMPIPE, TRANS_WRITE_NMPIPE)
    ):
        return _u16(words, _TRANS.size + 2), part, 0  # Setup[1] is the FID (2.2.5.6, 2.2.5.7)
    return -1, b"", 0


def _smb2_file_id(msg: bytes, pos: int, end: int, command: int) -> bytes:
    """The FileId of the request at `pos` (b"" for commands without one)."""
    at = _SMB2_FILE_ID_AT.get(command)
    start = pos + _SMB2.size + (at or 0)
    return msg[start : start + 16] if at is not None and start + 16 <= end else b""


def _smb2_write(msg: bytes, pos: int, end: int, command: int) -> bytes:
    """The bytes an SMB2 WRITE / pipe-transceive IOCTL request at `pos` writes."""
    body = pos + _SMB2.size
    if command == SMB2_WRITE and body + 32 <= end:
        offset = int.from_bytes(msg[body + 2 : body + 4], "little")
        length = int.from_bytes(msg[body + 4 : body + 8], "little")
        start = pos + offset
        return msg[start : min(start + length, end)]
    if command == SMB2_IOCTL and body + 32 <= end:
        if int.from_bytes(msg[body + 4 : body + 8], "little") != FSCTL_PIPE_TRANSCEIVE:
            return b""
        offset = int.from_bytes(msg[body + 24 : body + 28], "little")
        length = int.from_bytes(msg[body + 28 : body + 32], "little")
        start = pos + offset
        return msg[start : min(start + length, end)]
    return b""


# ------------------------------------------------------------------------- app layer

ENCRYPTED: Final = b"encrypted SMB3 message (transform header): its commands are not inspected"
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


# RFC 1002 section 4.3: the length each session service packet other than a request has
_SESSION_PACKET_LENGTHS: Final = {0x82: 0, 0x83: 1, 0x84: 6, 0x85: 0}
_MIN_SESSION_REQUEST: Final = 68  # two first-level encoded names of 34 bytes (RFC 1002 4.1)


def _probe_session_service(data: bytes) -> Probe:
    """A NetBIOS session service packet other than a session message: its header must be
    exact (only the length extension flag, the length its type has; a session request holds
    two encoded names, each starting with their length 0x20), so that another binary
    protocol whose first byte happens to be 0x81-0x85 is not taken for SMB."""
    if len(data) < 4:
        return Probe.NEED_DATA
    if data[1] & 0xFE:
        return Probe.NO
    length = (data[1] & 1) << 16 | int.from_bytes(data[2:4], "big")
    expected = _SESSION_PACKET_LENGTHS.get(data[0])
    if expected is not None:
        return Probe.YES if length == expected else Probe.NO
    if len(data) < 5:
        return Probe.NEED_DATA
    return Probe.YES if data[4] == 0x20 and length >= _MIN_SESSION_REQUEST else Probe.NO


def _probe_smb(data: bytes, direction: Direction) -> Probe:
    if not data:
        return Probe.NEED_DATA
    if data[0] not in _NBSS_TYPES:
        return Probe.NO
    if data[0] != 0x00:  # session request / response / keep-alive (port 139)
        return _probe_session_service(data)
    if len(data) < 8:
        return Probe.NEED_DATA
    return Probe.YES if data[4:8] in _SMB_MAGICS else Probe.NO


class SmbAdapter:
    """NetBIOS + SMB1/2/3 -> a record per NetBIOS message and per SMB command, followed by the
    "dcerpc" records of the DCE/RPC PDUs that command (or WRITE_RAW's raw data) writes to a
    named pipe, decoded by one dcerpc.DceRpcPipes per adapter, i.e. per flow direction (bounded
    by its MAX_PIPES). An encrypted SMB3 message's record carries `smb.anomaly` (ENCRYPTED)."""

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
                # Encrypted: what it carries cannot be inspected, which the anomaly rule's
                # policy decides on (rules/vpatch-anomalies.yaml 9300002)
                fields = {
                    "smb.version": 3,
                    "smb.transform.original_size": event.original_size,
                    "smb.session_id": event.session_id,
                    "smb.anomaly": ENCRYPTED,
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
            else:  # SmbMalformed: counted by the decoder, nothing to judge; raw write data
                out.extend(pipe_records(self._pipes, event))
                continue
            out.append(AppRecord("smb", fields))
            if isinstance(event, (Smb1Command, Smb2Command)):
                out.extend(pipe_records(self._pipes, event))
        return out


def pipe_records(pipes: _dcerpc.DceRpcPipes, event: Event) -> list[AppRecord]:
    """DCE/RPC records from the named-pipe data an SMB event carries (never raises).

    For the SMB adapter: call it with every event of one direction, using one DceRpcPipes per
    direction. Every way of writing to a pipe of one file feeds the same pipe (SMB1: TID and
    FID; SMB2: FileId); a CLOSE (or WRITE_AND_CLOSE) ends the pipe, so that a file reopened
    under the same id starts a new association. An SMB2 FileId first seen while exactly one
    pipe is known only by the compound CREATE that opened it (a related operation's FileId
    0xFF..FF) is taken to be that pipe's (the server's CREATE response, which names it, is not
    in this direction).
    """
    closes = False
    if isinstance(event, Smb1Command) and event.fid >= 0:
        key: Hashable = ("smb1", event.tid, event.fid)
        closes = event.command in (SMB1_CLOSE, SMB1_WRITE_AND_CLOSE)
    elif isinstance(event, RawWriteData):
        key = ("smb1", event.tid, event.fid)
    elif isinstance(event, Smb2Command) and event.file_id:
        key = ("smb2", event.file_id)
        closes = event.command == SMB2_CLOSE
        if event.data and len(event.file_id) == 16 and key not in pipes:
            opened = [
                k
                for k in pipes.pipe_ids()
                if isinstance(k, tuple) and k[0] == "smb2" and len(k[1]) != 16
            ]
            if len(opened) == 1:
                pipes.rename(opened[0], key)
    else:
        return []
    records = [r for e in pipes.feed(key, event.data) for r in _dcerpc.event_records(e)]
    if closes:
        pipes.forget(key)
    return records


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
