"""Every way an SMB client writes to a named pipe, as builders of client messages, and as
rewrites of a client stream that carry the same pipe bytes another way (tests, evasion harness).

Builders (each returns NetBIOS-framed bytes ready to send, RFC 1002 4.3.1):
- `session_request`: the NetBIOS SESSION REQUEST a client sends first on TCP 139 (4.3.2);
- SMB1 ([MS-CIFS] 2.2.4): `write` (SMB_COM_WRITE 0x0B), `write_and_close` (0x2C),
  `write_andx` (0x2F; padding before the data, named-pipe raw mode with its 2-byte message
  length, several WriteAndX in one AndX chain), `write_raw` (0x1D: the request, then the raw
  data message without an SMB header), `trans_nmpipe` (Trans 0x25 TransactNmPipe whose data
  is completed by Trans secondaries 0x26 in any order), `close` (0x04);
- SMB2 ([MS-SMB2] 2.2): `smb2_write` (WRITE), `smb2_ioctl` (IOCTL FSCTL_PIPE_TRANSCEIVE),
  `smb2_create` (CREATE), `smb2_compound` (NextCommand chains; a related operation may name
  the previous command's file with FileId 0xFF..FF).
Rewrites (`WRITE_METHODS`, name -> (rewrite, what it does)): a client stream whose pipe writes
are plain WriteAndX, TransactNmPipe or SMB2 WRITE / IOCTL messages has each such message sent
another way; other messages are kept. A stream that holds nothing but pipe writes may change
dialect (its writes become SMB1 or SMB2 writes); a rewrite returns None where it does not
apply. What the server reads from the pipe is the same bytes in the same order: that rests on
[MS-CIFS] and [MS-SMB2] as cited per builder (the TCP model of the harness cannot judge it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "WRITE_METHODS",
    "Ids",
    "PipeWrite",
    "close",
    "nbss",
    "pipe_writes",
    "session_first",
    "session_request",
    "smb1",
    "smb2_compound",
    "smb2_create",
    "smb2_ioctl",
    "smb2_write",
    "trans_nmpipe",
    "write",
    "write_and_close",
    "write_andx",
    "write_andx_chain",
    "write_raw",
]

SMB1_HEADER: Final = struct.Struct("<4sBIBHH8sHHHHH")
SMB2_HEADER: Final = struct.Struct("<4sHHIHHIIQIIQ16s")
NO_FILE_ID: Final = b"\xff" * 16
FSCTL_PIPE_TRANSCEIVE: Final = 0x0011C017
RELATED: Final = 0x4  # SMB2_FLAGS_RELATED_OPERATIONS


@dataclass(frozen=True, slots=True)
class Ids:
    """The SMB1 header's identifiers (and SMB2's tree and session)."""

    tid: int = 0x0800
    uid: int = 0x0800
    pid: int = 0xFEFF
    mid: int = 0x0040
    session: int = 0x0000_0400_0000_0001


def nbss(body: bytes, msg_type: int = 0x00) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def _netbios_name(name: bytes) -> bytes:
    """First-level encoding (RFC 1001 14.1) of a 16-byte NetBIOS name, as a label."""
    padded = name.ljust(15)[:15] + b"\x20"
    encoded = bytes(c for b in padded for c in (0x41 + (b >> 4), 0x41 + (b & 0xF)))
    return b"\x20" + encoded + b"\x00"


def session_request(called: bytes = b"*SMBSERVER", calling: bytes = b"VPATCH") -> bytes:
    """NetBIOS SESSION REQUEST (type 0x81, RFC 1002 4.3.2): what a client sends first on 139."""
    return nbss(_netbios_name(called) + _netbios_name(calling), 0x81)


def smb1(command: int, words: bytes, block: bytes, ids: Ids, flags2: int = 0xC807) -> bytes:
    """One SMB1 request: header, parameter words, byte block (not framed)."""
    header = SMB1_HEADER.pack(
        b"\xffSMB", command, 0, 0x18, flags2, ids.pid >> 16, b"\0" * 8, 0,
        ids.tid, ids.pid & 0xFFFF, ids.uid, ids.mid,
    )  # fmt: skip
    return header + bytes([len(words) // 2]) + words + struct.pack("<H", len(block)) + block


def write(fid: int, data: bytes, ids: Ids = Ids()) -> bytes:
    """SMB_COM_WRITE ([MS-CIFS] 2.2.4.12): count in the words, BufferFormat 0x01 + length."""
    words = struct.pack("<HHIH", fid, len(data), 0, 0)
    return nbss(smb1(0x0B, words, b"\x01" + struct.pack("<H", len(data)) + data, ids))


def write_and_close(fid: int, data: bytes, ids: Ids = Ids()) -> bytes:
    """SMB_COM_WRITE_AND_CLOSE (2.2.4.40): one pad byte, then the data; the file is closed."""
    words = struct.pack("<HHII", fid, len(data), 0, 0)
    return nbss(smb1(0x2C, words, b"\0" + data, ids))


def _write_andx_words(
    fid: int, length: int, data_offset: int, mode: int, next_command: int, next_offset: int
) -> bytes:
    return struct.pack(
        "<BBHHIIHHHHHI", next_command, 0, next_offset, fid, 0, 0, mode, length, 0, length,
        data_offset, 0,
    )  # fmt: skip


def write_andx(
    fid: int, data: bytes, ids: Ids = Ids(), pad: int = 1, raw_mode: bool = False
) -> bytes:
    """SMB_COM_WRITE_ANDX (2.2.4.43), 14 words: `pad` bytes before the data (DataOffset counts
    from the SMB header); `raw_mode`: WriteMode RAW_MODE | MSG_START, so the data starts with
    the message's 2-byte length, which the server does not write to the pipe."""
    body = (struct.pack("<H", len(data)) if raw_mode else b"") + data
    offset = 32 + 1 + 28 + 2 + pad
    words = _write_andx_words(fid, len(body), offset, 0x000C if raw_mode else 0, 0xFF, 0)
    return nbss(smb1(0x2F, words, b"\0" * pad + body, ids))


def write_andx_chain(fid: int, parts: list[bytes], ids: Ids = Ids()) -> bytes:
    """Several WriteAndX of one file in one message, an AndX chain (2.2.3.4): the parts are
    written in order."""
    size = 1 + 28 + 2 + 1  # word count, words, byte count, pad
    pos = 32
    blocks = b""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        end = pos + size + len(part)
        end += -end % 4
        words = _write_andx_words(fid, len(part), pos + size, 0, 0xFF if last else 0x2F, end)
        block = b"\0" + part
        block += b"\0" * (end - pos - size - len(part)) if not last else b""
        blocks += bytes([14]) + words + struct.pack("<H", len(block)) + block
        pos = end
    whole = smb1(0x2F, b"", b"", ids)
    return nbss(whole[:32] + blocks)


def write_raw(fid: int, data: bytes, first: int, ids: Ids = Ids()) -> bytes:
    """SMB_COM_WRITE_RAW (2.2.4.25): `first` bytes in the request, the rest in the next
    message, raw (sent once the server's interim response says go on, 3.2.4.15.1)."""
    head, rest = data[:first], data[first:]
    words = struct.pack("<HHHIIHIHH", fid, len(data), 0, 0, 0, 0, 0, len(head), 60)
    return nbss(smb1(0x1D, words, b"\0" + head, ids)) + (nbss(rest) if rest else b"")


def trans_nmpipe(
    fid: int, data: bytes, ids: Ids = Ids(), first: int = -1, parts: list[int] | None = None
) -> bytes:
    """Trans TransactNmPipe (2.2.4.33, 2.2.5.6) of `data`: the primary carries `first` bytes
    (all when -1); the rest goes in Trans secondaries (2.2.4.34), one per size in `parts`,
    sent last part first (the server places each at its DataDisplacement)."""
    first = len(data) if first < 0 else first
    name = b"\0" + "\\PIPE\\\0".encode("utf-16-le")  # pad to a word, then the Unicode name
    words_len = 28 + 4
    data_offset = 32 + 1 + words_len + 2 + len(name)
    data_offset += -data_offset % 4
    block = name + b"\0" * (data_offset - 32 - 1 - words_len - 2 - len(name)) + data[:first]
    words = struct.pack(
        "<HHHHBBHIHHHHHBBHH", 0, len(data), 0, 1024, 0, 0, 0, 0, 0, 0, data_offset, first,
        data_offset, 2, 0, 0x26, fid,
    )  # fmt: skip
    out = nbss(smb1(0x25, words, block, ids))
    sizes = parts if parts is not None else ([len(data) - first] if first < len(data) else [])
    chunks = []
    pos = first
    for size in sizes:
        chunks.append((pos, data[pos : pos + size]))
        pos += size
    for displacement, chunk in reversed(chunks):
        words = struct.pack("<8H", 0, len(data), 0, 0, 0, len(chunk), 52, displacement)
        out += nbss(smb1(0x26, words, b"\0" + chunk, ids))
    return out


def close(fid: int, ids: Ids = Ids()) -> bytes:
    """SMB_COM_CLOSE (2.2.4.5)."""
    return nbss(smb1(0x04, struct.pack("<HI", fid, 0), b"", ids))


def _smb2(command: int, message_id: int, ids: Ids, flags: int = 0) -> bytes:
    return SMB2_HEADER.pack(
        b"\xfeSMB", 64, 1, 0, command, 1, flags, 0, message_id, 0xFEFF, ids.tid, ids.session,
        b"\0" * 16,
    )  # fmt: skip


def smb2_write(
    file_id: bytes, data: bytes, message_id: int = 10, ids: Ids = Ids(), flags: int = 0
) -> bytes:
    """SMB2 WRITE ([MS-SMB2] 2.2.21), not framed."""
    body = struct.pack("<HHIQ16sIIHHI", 49, 64 + 48, len(data), 0, file_id, 0, 0, 0, 0, 0)
    return _smb2(9, message_id, ids, flags) + body + data


def smb2_ioctl(
    file_id: bytes, data: bytes, message_id: int = 10, ids: Ids = Ids(), flags: int = 0
) -> bytes:
    """SMB2 IOCTL FSCTL_PIPE_TRANSCEIVE (2.2.31), not framed."""
    body = struct.pack(
        "<HHI16sIIIIIIII", 57, 0, FSCTL_PIPE_TRANSCEIVE, file_id, 64 + 56, len(data), 0, 0, 0,
        4280, 1, 0,
    )  # fmt: skip
    return _smb2(11, message_id, ids, flags) + body + data


def smb2_create(name: str, message_id: int = 9, ids: Ids = Ids()) -> bytes:
    """SMB2 CREATE (2.2.13) of `name` (a pipe: "srvsvc"), not framed."""
    raw = name.encode("utf-16-le")
    body = struct.pack(
        "<HBBIQQIIIIIHHII", 57, 0, 0, 2, 0, 0, 0x0012019F, 0, 7, 1, 0, 64 + 56, len(raw), 0, 0
    )
    return _smb2(5, message_id, ids) + body + raw


def smb2_compound(*commands: bytes) -> bytes:
    """SMB2 commands in one message ([MS-SMB2] 3.2.4.1.4): each but the last padded to 8
    bytes, its NextCommand set to where the next starts. Framed."""
    out = b""
    for i, cmd in enumerate(commands):
        if i < len(commands) - 1:
            cmd += b"\0" * (-len(cmd) % 8)
            cmd = cmd[:20] + struct.pack("<I", len(cmd)) + cmd[24:]
        out += cmd
    return nbss(out)


# ----------------------------------------------------------------------------- rewrites


@dataclass(frozen=True, slots=True)
class PipeWrite:
    """One message of a client stream: a pipe write (file, bytes) or another message."""

    message: bytes  # the NetBIOS-framed message as sent
    file: bytes = b""  # SMB1: the FID (2 bytes, little-endian); SMB2: the FileId
    data: bytes = b""
    ids: Ids = Ids()

    @property
    def smb2(self) -> bool:
        return len(self.file) == 16


def _messages(stream: bytes) -> list[bytes] | None:
    out = []
    pos = 0
    while pos < len(stream):
        if len(stream) - pos < 4 or stream[pos] not in (0x00, 0x81, 0x85):
            return None
        end = pos + 4 + int.from_bytes(stream[pos + 1 : pos + 4], "big")
        if end > len(stream):
            return None
        out.append(stream[pos:end])
        pos = end
    return out


def _smb1_write(msg: bytes) -> PipeWrite:
    (_, command, _, _, _, pid_high, _, _, tid, pid_low, uid, mid) = SMB1_HEADER.unpack_from(msg, 4)
    ids = Ids(tid, uid, pid_high << 16 | pid_low, mid)
    words = msg[37 : 37 + 2 * msg[36]]
    if command == 0x2F and msg[36] >= 12 and words[0] == 0xFF and not words[14] & 0x04:
        fid, length, offset = words[4:6], *struct.unpack_from("<HH", words, 20)
        return PipeWrite(msg, fid, msg[4 + offset : 4 + offset + length], ids)
    if command == 0x25 and msg[36] == 16 and struct.unpack_from("<H", words, 28)[0] == 0x26:
        total, count, offset = (struct.unpack_from("<H", words, at)[0] for at in (2, 22, 24))
        if count == total:
            return PipeWrite(msg, words[30:32], msg[4 + offset : 4 + offset + count], ids)
    return PipeWrite(msg)


def _smb2_write(msg: bytes) -> PipeWrite:
    (_, _, _, _, command, _, flags, next_command, _, _, tid, session, _) = SMB2_HEADER.unpack_from(
        msg, 4
    )
    body = 4 + 64
    ids = Ids(tid=tid, session=session)
    if next_command or flags & 1 or len(msg) < body + 48:
        return PipeWrite(msg)
    if command == 9:
        offset, length = struct.unpack_from("<HI", msg, body + 2)
        return PipeWrite(
            msg, msg[body + 16 : body + 32], msg[4 + offset : 4 + offset + length], ids
        )
    if command == 11 and struct.unpack_from("<I", msg, body + 4)[0] == FSCTL_PIPE_TRANSCEIVE:
        offset, length = struct.unpack_from("<II", msg, body + 24)
        return PipeWrite(msg, msg[body + 8 : body + 24], msg[4 + offset : 4 + offset + length], ids)
    return PipeWrite(msg)


def pipe_writes(stream: bytes) -> list[PipeWrite] | None:
    """The messages of a client stream, the plain pipe writes among them decoded; None when
    the stream is not NetBIOS-framed SMB or writes to no pipe."""
    messages = _messages(stream)
    if messages is None:
        return None
    out = []
    for msg in messages:
        magic = msg[4:8]
        if msg[0] == 0 and magic == b"\xffSMB" and len(msg) >= 39:
            out.append(_smb1_write(msg))
        elif msg[0] == 0 and magic == b"\xfeSMB" and len(msg) >= 68:
            out.append(_smb2_write(msg))
        else:
            out.append(PipeWrite(msg))
    return out if any(w.data for w in out) else None


Method = Callable[[PipeWrite, bool], bytes]  # (write, first write of its file) -> messages


def _fid(w: PipeWrite) -> int:
    return int.from_bytes(w.file[:2], "little")


def _file_id(w: PipeWrite) -> bytes:
    return w.file if w.smb2 else w.file.ljust(8, b"\0") + b"\x01" + b"\0" * 7


def _rewrite(method: Method, dialect: int) -> Callable[[bytes], bytes | None]:
    """Every pipe write of the stream through `method` (of SMB `dialect`); the stream may
    change dialect only when it holds nothing but pipe writes."""

    def rewrite(stream: bytes) -> bytes | None:
        writes = pipe_writes(stream)
        if writes is None:
            return None
        only_writes = all(w.data for w in writes)
        seen: set[bytes] = set()
        out = b""
        for w in writes:
            if w.data and (only_writes or (2 if w.smb2 else 1) == dialect):
                out += method(w, w.file not in seen)
                seen.add(w.file)
            else:
                out += w.message
        return out if out != stream else None

    return rewrite


def _half(data: bytes) -> int:
    return max(1, len(data) // 2)


def _by_write(w: PipeWrite, first: bool) -> bytes:
    return write(_fid(w), w.data, w.ids)


def _by_write_andx_raw(w: PipeWrite, first: bool) -> bytes:
    return write_andx(_fid(w), w.data, w.ids, pad=7, raw_mode=True)


def _by_andx_chain(w: PipeWrite, first: bool) -> bytes:
    cut = _half(w.data)
    return write_andx_chain(_fid(w), [w.data[:cut], w.data[cut:]], w.ids)


def _by_trans(w: PipeWrite, first: bool) -> bytes:
    rest = len(w.data) - 8
    thirds = [rest // 3, rest // 3, rest - 2 * (rest // 3)] if rest > 2 else [max(rest, 0)]
    return trans_nmpipe(_fid(w), w.data, w.ids, first=min(8, len(w.data)), parts=thirds)


def _by_write_raw(w: PipeWrite, first: bool) -> bytes:
    return write_raw(_fid(w), w.data, min(8, len(w.data)), w.ids)


def _by_smb2_write(w: PipeWrite, first: bool) -> bytes:
    return nbss(smb2_write(_file_id(w), w.data, ids=w.ids))


def _by_smb2_ioctl(w: PipeWrite, first: bool) -> bytes:
    return nbss(smb2_ioctl(_file_id(w), w.data, ids=w.ids))


def _by_smb2_compound(w: PipeWrite, first: bool) -> bytes:
    """Two WRITEs in one compound, the second a related operation on the first's file."""
    cut = _half(w.data)
    return smb2_compound(
        smb2_write(_file_id(w), w.data[:cut], 10, w.ids),
        smb2_write(NO_FILE_ID, w.data[cut:], 11, w.ids, RELATED),
    )


def _by_smb2_create_related(w: PipeWrite, first: bool) -> bytes:
    """The file's first write in one compound with the CREATE that opens the pipe, as a related
    operation (FileId 0xFF..FF); later writes name the FileId the server returned."""
    if not first:
        return _by_smb2_write(w, first)
    return smb2_compound(
        smb2_create("srvsvc", 9, w.ids), smb2_write(NO_FILE_ID, w.data, 10, w.ids, RELATED)
    )


def session_first(stream: bytes) -> bytes | None:
    """A NetBIOS SESSION REQUEST before the SMB messages (what every client sends first on TCP
    139; the server answers it with a positive session response and reads on)."""
    messages = _messages(stream)
    if not messages or messages[0][0] == 0x81:
        return None
    if not any(m[0] == 0 and m[4:8] in (b"\xffSMB", b"\xfeSMB") for m in messages):
        return None
    return session_request() + stream


WRITE_METHODS: Final[dict[str, tuple[Callable[[bytes], bytes | None], str]]] = {
    "smb1-write": (_rewrite(_by_write, 1), "SMB_COM_WRITE for every pipe write"),
    "smb1-writeandx-raw": (
        _rewrite(_by_write_andx_raw, 1),
        "WriteAndX, padded, named-pipe raw mode with the message length first",
    ),
    "smb1-andx-chain": (_rewrite(_by_andx_chain, 1), "two WriteAndX chained in one message"),
    "smb1-trans-secondary": (
        _rewrite(_by_trans, 1),
        "TransactNmPipe of 8 bytes, the rest in Trans secondaries, last part first",
    ),
    "smb1-write-raw": (
        _rewrite(_by_write_raw, 1),
        "WRITE_RAW of 8 bytes, the rest as a raw message",
    ),
    "smb2-write": (_rewrite(_by_smb2_write, 2), "SMB2 WRITE for every pipe write"),
    "smb2-ioctl": (_rewrite(_by_smb2_ioctl, 2), "SMB2 IOCTL FSCTL_PIPE_TRANSCEIVE"),
    "smb2-compound": (
        _rewrite(_by_smb2_compound, 2),
        "two WRITEs in one compound, the second related (FileId 0xFF..FF)",
    ),
    "smb2-create-related": (
        _rewrite(_by_smb2_create_related, 2),
        "CREATE + related WRITE in one compound, then the real FileId",
    ),
}
