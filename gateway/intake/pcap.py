"""Offline intake: a streaming reader for pcap and pcapng capture files.

What it does: ``read_capture(path)`` yields one ``CaptureRecord`` (timestamp, link type, frame
bytes, byte offset of the record in the file) per captured packet, reading the file
sequentially with bounded memory (one record at a time, at most ``MAX_RECORD_SIZE`` bytes of
frame data; unknown pcapng blocks are skipped without being read into memory).

Formats:
- classic pcap (tcpdump.org "pcap savefile format", draft-ietf-opsawg-pcap): both byte
  orders, microsecond (0xA1B2C3D4) and nanosecond (0xA1B23C4D) magic, and the "modified pcap"
  variant (0xA1B2CD34, 24-byte record headers). The link type is the low 16 bits of the
  header's LinkType field (the upper bits carry FCS information).
- pcapng (draft-ietf-opsawg-pcapng): Section Header Block (either byte order; every new
  section resets the interface list), Interface Description Block (link type, if_tsresol
  option 9, if_tsoffset option 14), Enhanced Packet Block, Simple Packet Block (interface 0),
  the obsolete Packet Block; any other block type is skipped. Multiple interfaces, with
  different link types and resolutions, are supported.

What it guarantees: on a truncated or corrupt file every good record before the damage is
yielded first, then ``CaptureError`` is raised naming the file, what is wrong and the byte
offset. A file that is not a capture at all raises ``CaptureError`` before yielding anything.
Only ``CaptureError`` escapes for problems with the file's content (``OSError`` from opening
or reading the file is wrapped too).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from gateway.errors import CaptureError

__all__ = ["MAX_INTERFACES", "MAX_RECORD_SIZE", "CaptureRecord", "read_capture"]

MAX_RECORD_SIZE: Final = 256 * 1024  # bytes of frame data in one record; larger means corrupt
MAX_INTERFACES: Final = 1024  # pcapng interfaces per section
_MAX_META_BLOCK: Final = 1024 * 1024  # bytes of an SHB/IDB read into memory (options included)

_PCAP_MAGIC_US: Final = 0xA1B2C3D4
_PCAP_MAGIC_NS: Final = 0xA1B23C4D
_PCAP_MAGIC_MODIFIED: Final = 0xA1B2CD34
_PCAPNG_SHB: Final = 0x0A0D0D0A
_PCAPNG_BOM: Final = 0x1A2B3C4D
_PCAPNG_IDB: Final = 0x00000001
_PCAPNG_PB: Final = 0x00000002
_PCAPNG_SPB: Final = 0x00000003
_PCAPNG_EPB: Final = 0x00000006
_OPT_ENDOFOPT: Final = 0
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14

_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One captured frame: seconds since the epoch, pcap link type, bytes, file offset."""

    timestamp: float
    linktype: int
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class _Interface:
    linktype: int
    ts_divisor: float  # timestamp units per second
    ts_offset: int  # seconds added to every timestamp


def read_capture(path: str | os.PathLike[str]) -> Iterator[CaptureRecord]:
    """Yield every record of a pcap or pcapng file; CaptureError on damage (after good records)."""
    name = os.fspath(path)
    try:
        fh = open(name, "rb")  # noqa: SIM115 (closed by the `with fh` below)
    except OSError as err:
        raise CaptureError(f"{name}: cannot open capture: {err.strerror or err}") from err
    with fh:
        try:
            head = fh.read(4)
            if len(head) < 4:
                raise CaptureError(
                    f"{name}: not a capture file ({len(head)} bytes, too short for a magic number)"
                )
            magic_le = _U32_LE.unpack(head)[0]
            if magic_le == _PCAPNG_SHB:
                yield from _read_pcapng(fh, name, head)
            elif {magic_le, _U32_BE.unpack(head)[0]} & {
                _PCAP_MAGIC_US,
                _PCAP_MAGIC_NS,
                _PCAP_MAGIC_MODIFIED,
            }:
                yield from _read_pcap(fh, name, head)
            else:
                raise CaptureError(
                    f"{name}: not a pcap or pcapng capture (magic 0x{head.hex()} at byte offset 0)"
                )
        except OSError as err:
            raise CaptureError(f"{name}: read error: {err.strerror or err}") from err


def _read_exact(fh: BinaryIO, n: int, name: str, what: str, offset: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CaptureError(
            f"{name}: truncated {what} at byte offset {offset} ({len(data)} of {n} bytes present)"
        )
    return data


def _read_pcap(fh: BinaryIO, name: str, head: bytes) -> Iterator[CaptureRecord]:
    header = head + _read_exact(fh, 20, name, "pcap file header", 4)
    if _U32_LE.unpack_from(header)[0] in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS, _PCAP_MAGIC_MODIFIED):
        endian = "<"
    else:
        endian = ">"
    magic, _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(
        endian + "IHHiIII", header
    )
    linktype = network & 0xFFFF
    divisor = 1e9 if magic == _PCAP_MAGIC_NS else 1e6
    rec = struct.Struct(endian + "IIII")
    rec_size = 24 if magic == _PCAP_MAGIC_MODIFIED else 16
    offset = 24
    while True:
        rh = fh.read(rec_size)
        if not rh:
            return
        if len(rh) < rec_size:
            raise CaptureError(
                f"{name}: truncated record header at byte offset {offset} "
                f"({len(rh)} of {rec_size} bytes present)"
            )
        ts_sec, ts_frac, incl_len, _orig_len = rec.unpack_from(rh)
        if incl_len > MAX_RECORD_SIZE:
            raise CaptureError(
                f"{name}: record at byte offset {offset} claims {incl_len} captured bytes, "
                f"above the {MAX_RECORD_SIZE}-byte bound (corrupt file?)"
            )
        data = _read_exact(fh, incl_len, name, "record data", offset + rec_size)
        yield CaptureRecord(ts_sec + ts_frac / divisor, linktype, data, offset)
        offset += rec_size + incl_len


def _read_pcapng(fh: BinaryIO, name: str, head: bytes) -> Iterator[CaptureRecord]:
    offset = 0
    u32 = _U32_LE
    endian = "<"
    interfaces: list[_Interface] = []
    pending = head  # bytes of the next block's type already read
    while True:
        start = pending + fh.read(8 - len(pending))
        pending = b""
        if not start:
            return
        if len(start) < 8:
            raise CaptureError(
                f"{name}: truncated block header at byte offset {offset} "
                f"({len(start)} of 8 bytes present)"
            )
        if _U32_LE.unpack_from(start)[0] == _PCAPNG_SHB:
            bom_raw = _read_exact(fh, 4, name, "section header block", offset + 8)
            if _U32_LE.unpack(bom_raw)[0] == _PCAPNG_BOM:
                u32, endian = _U32_LE, "<"
            elif _U32_BE.unpack(bom_raw)[0] == _PCAPNG_BOM:
                u32, endian = _U32_BE, ">"
            else:
                raise CaptureError(
                    f"{name}: section header block at byte offset {offset} has a bad "
                    f"byte-order magic 0x{bom_raw.hex()}"
                )
            total = u32.unpack_from(start, 4)[0]
            _check_block_length(total, 28, _MAX_META_BLOCK, name, "section header", offset)
            _read_exact(fh, total - 12, name, "section header block", offset + 12)
            interfaces = []
            offset += total
            continue
        btype, total = struct.unpack(endian + "II", start)
        if btype in (_PCAPNG_EPB, _PCAPNG_SPB, _PCAPNG_PB):
            minimum = 16 if btype == _PCAPNG_SPB else 32
            _check_block_length(
                total, minimum, MAX_RECORD_SIZE + 4096, name, f"packet block {btype}", offset
            )
            body = _read_exact(fh, total - 8, name, "packet block", offset + 8)
            yield _packet_block(btype, body, total, endian, interfaces, name, offset)
        elif btype == _PCAPNG_IDB:
            _check_block_length(total, 20, _MAX_META_BLOCK, name, "interface block", offset)
            body = _read_exact(fh, total - 8, name, "interface block", offset + 8)
            if len(interfaces) >= MAX_INTERFACES:
                raise CaptureError(
                    f"{name}: more than {MAX_INTERFACES} interfaces in one section "
                    f"(byte offset {offset})"
                )
            interfaces.append(_interface(body[:-4], endian, name, offset))
        else:
            _check_block_length(total, 12, 2**32, name, f"block type 0x{btype:08x}", offset)
            fh.seek(total - 8, os.SEEK_CUR)
            # seek past EOF succeeds silently; verify the block's trailer really exists
            if fh.tell() > _file_size(fh):
                raise CaptureError(
                    f"{name}: truncated block (type 0x{btype:08x}, {total} bytes) at byte offset "
                    f"{offset}"
                )
        offset += total


def _file_size(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size


def _check_block_length(
    total: int, minimum: int, maximum: int, name: str, what: str, offset: int
) -> None:
    if total < minimum or total % 4 or total > maximum:
        raise CaptureError(
            f"{name}: {what} at byte offset {offset} has an invalid total length {total} "
            f"(must be a multiple of 4 within {minimum}..{maximum})"
        )


def _interface(body: bytes, endian: str, name: str, offset: int) -> _Interface:
    """Decode an IDB body (without the trailing length): link type, if_tsresol, if_tsoffset."""
    linktype = struct.unpack_from(endian + "H", body, 0)[0]
    divisor = 1e6
    ts_offset = 0
    pos = 8
    opt = struct.Struct(endian + "HH")
    while pos + 4 <= len(body):
        code, length = opt.unpack_from(body, pos)
        pos += 4
        if code == _OPT_ENDOFOPT:
            break
        if pos + length > len(body):
            raise CaptureError(
                f"{name}: interface block at byte offset {offset}: option {code} of {length} "
                f"bytes overruns the block"
            )
        if code == _OPT_IF_TSRESOL and length >= 1:
            res = body[pos]
            exp = res & 0x7F
            divisor = float(2**exp) if res & 0x80 else float(10**exp)
        elif code == _OPT_IF_TSOFFSET and length >= 8:
            ts_offset = struct.unpack_from(endian + "q", body, pos)[0]
        pos += (length + 3) & ~3
    return _Interface(linktype, divisor, ts_offset)


def _packet_block(
    btype: int,
    body: bytes,
    total: int,
    endian: str,
    interfaces: list[_Interface],
    name: str,
    offset: int,
) -> CaptureRecord:
    """Decode an EPB / SPB / PB body (everything after type and length) into a record."""
    if btype == _PCAPNG_SPB:
        orig_len = struct.unpack_from(endian + "I", body, 0)[0]
        caplen = min(orig_len, total - 16)
        iface_id, ts, data_at = 0, 0, 4
    else:
        if btype == _PCAPNG_EPB:
            iface_id, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "IIII", body, 0)
        else:
            iface_id, _drops, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "HHIII", body, 0)
        ts = (ts_hi << 32) | ts_lo
        data_at = 20
        if caplen > total - 32:
            raise CaptureError(
                f"{name}: packet block at byte offset {offset} claims {caplen} captured bytes, "
                f"the block holds {total - 32}"
            )
    if iface_id >= len(interfaces):
        raise CaptureError(
            f"{name}: packet block at byte offset {offset} names interface {iface_id}, "
            f"only {len(interfaces)} described"
        )
    iface = interfaces[iface_id]
    data = body[data_at : data_at + caplen]
    return CaptureRecord(ts / iface.ts_divisor + iface.ts_offset, iface.linktype, data, offset)
