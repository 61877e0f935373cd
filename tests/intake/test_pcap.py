"""Tests for gateway/intake/pcap.py.

Real captures from the corpora are read and compared record by record with scapy's raw
readers (an independent implementation); synthetic files cover both byte orders, both
timestamp resolutions, the modified-pcap variant and pcapng with several interfaces,
sections and unknown blocks; truncated and corrupted copies (made in tmp_path) must yield
every good record and then raise CaptureError naming the file and byte offset.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.utils import RawPcapNgReader, RawPcapReader

from gateway.errors import CaptureError
from gateway.intake.pcap import MAX_RECORD_SIZE, CaptureRecord, read_capture

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
PCAPNG = CORPORA / "benign" / "smb" / "smb2-zero-byte-error-ioctl.pcapng"
PCAP = CORPORA / "attacks" / "heartbleed.pcap"
REAL = [
    PCAPNG,
    PCAP,
    CORPORA / "attacks" / "eternalblue-success-unpatched-win7.pcap",
    CORPORA / "benign" / "tls" / "openjdk-25.0.2-zeek.org.pcap",
    CORPORA / "benign" / "http" / "connect-with-header.pcap",
]


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"corpus file {path} missing")
    return path


# --- builders for synthetic files ------------------------------------------------------------


def pcap_bytes(
    records: list[tuple[int, int, bytes]],
    endian: str = "<",
    magic: int = 0xA1B2C3D4,
    linktype: int = 1,
) -> bytes:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data))
        if magic == 0xA1B2CD34:
            out += struct.pack(endian + "IHBB", 1, 2, 0, 0)  # ifindex, protocol, type, pad
        out += data
    return out


def _block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack(endian + "II", btype, total) + body + struct.pack(endian + "I", total)


def shb(endian: str) -> bytes:
    return _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(endian: str, linktype: int, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(endian + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0"
    if tsoffset:
        opts += struct.pack(endian + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(endian + "HH", 0, 0)
    return _block(endian, 1, struct.pack(endian + "HHI", linktype, 0, 65535) + opts)


def epb(endian: str, iface: int, ts: int, data: bytes) -> bytes:
    head = struct.pack(endian + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return _block(endian, 6, head + data)


def spb(endian: str, data: bytes) -> bytes:
    return _block(endian, 3, struct.pack(endian + "I", len(data)) + data)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- classic pcap ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endian", "magic", "divisor"),
    [
        ("<", 0xA1B2C3D4, 1e6),
        (">", 0xA1B2C3D4, 1e6),
        ("<", 0xA1B23C4D, 1e9),
        (">", 0xA1B23C4D, 1e9),
        ("<", 0xA1B2CD34, 1e6),
    ],
    ids=["le-us", "be-us", "le-ns", "be-ns", "modified"],
)
def test_pcap_variants(tmp_path: Path, endian: str, magic: int, divisor: float) -> None:
    recs = [(1_700_000_000, 123_456, b"frame-one"), (1_700_000_001, 999, b""), (5, 0, b"x" * 1500)]
    path = _write(tmp_path, "v.pcap", pcap_bytes(recs, endian, magic, linktype=0x0400_0000 | 101))
    got = list(read_capture(path))
    assert [r.data for r in got] == [d for _, _, d in recs]
    assert [r.linktype for r in got] == [101] * 3  # the FCS bits above 16 are masked off
    assert got[0].timestamp == pytest.approx(1_700_000_000 + 123_456 / divisor, abs=1e-9)
    assert got[0].offset == 24
    hdr = 24 if magic == 0xA1B2CD34 else 16
    assert got[1].offset == 24 + hdr + len(b"frame-one")


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_captures_match_scapy(path: Path) -> None:
    _need(path)
    ours = list(read_capture(path))
    reader = RawPcapReader(str(path))
    theirs = list(reader)
    reader.close()
    assert len(ours) == len(theirs) > 0
    for rec, (data, meta) in zip(ours, theirs, strict=True):
        assert rec.data == data
        if isinstance(reader, RawPcapNgReader):
            ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
            assert rec.linktype == meta.linktype
        else:
            ts = meta.sec + meta.usec / 1e6
        assert rec.timestamp == pytest.approx(ts, abs=1e-6)


# --- pcapng ----------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_sections_and_unknown_blocks(tmp_path: Path, endian: str) -> None:
    data = (
        shb(endian)
        + idb(endian, 1)  # interface 0: Ethernet, microseconds (default)
        + idb(endian, 101, tsresol=9)  # interface 1: raw IP, nanoseconds
        + idb(endian, 113, tsresol=0x80 | 10, tsoffset=100)  # interface 2: 2**-10 s, +100 s
        + epb(endian, 0, 1_500_000, b"eth")
        + _block(endian, 0xBAD, b"unknown block, skipped" * 10)
        + epb(endian, 1, 2_500_000_000, b"raw")
        + epb(endian, 2, 1024 * 3, b"sll")
        + spb(endian, b"simple")
        + shb(endian)  # a new section: interfaces reset
        + idb(endian, 228)
        + epb(endian, 0, 7_000_000, b"v4")
    )
    got = list(read_capture(_write(tmp_path, "multi.pcapng", data)))
    assert [(r.linktype, r.data) for r in got] == [
        (1, b"eth"),
        (101, b"raw"),
        (113, b"sll"),
        (1, b"simple"),
        (228, b"v4"),
    ]
    assert [r.timestamp for r in got] == pytest.approx([1.5, 2.5, 103.0, 0.0, 7.0])
    assert all(
        data[r.offset : r.offset + 4]
        in (b"\x06\0\0\0", b"\0\0\0\x06", b"\x03\0\0\0", b"\0\0\0\x03")
        for r in got
    )


def test_pcapng_packet_on_undescribed_interface(tmp_path: Path) -> None:
    data = shb("<") + idb("<", 1) + epb("<", 0, 0, b"ok") + epb("<", 3, 0, b"bad")
    path = _write(tmp_path, "iface.pcapng", data)
    got: list[CaptureRecord] = []
    with pytest.raises(CaptureError, match="names interface 3, only 1 described"):
        for rec in read_capture(path):
            got.append(rec)  # keep what came before the error
    assert [r.data for r in got] == [b"ok"]


# --- damage ----------------------------------------------------------------------------------


def _read_until_error(path: Path) -> tuple[list[CaptureRecord], CaptureError | None]:
    got: list[CaptureRecord] = []
    try:
        for rec in read_capture(path):
            got.append(rec)  # keep what came before the error
    except CaptureError as err:
        return got, err
    return got, None


@pytest.mark.parametrize("source", [PCAP, PCAPNG], ids=lambda p: p.name)
def test_truncated_copies_yield_good_records_then_error(tmp_path: Path, source: Path) -> None:
    raw = _need(source).read_bytes()
    full = list(read_capture(source))
    ends = {r.offset for r in full[1:]} | {len(raw)}  # record boundaries: clean ends
    cuts = sorted({*range(0, len(raw), max(1, len(raw) // 60)), *(o + 3 for o in ends)} - {0})
    for cut in cuts:
        if cut >= len(raw):
            continue
        path = _write(tmp_path, f"cut-{cut}{source.suffix}", raw[:cut])
        got, err = _read_until_error(path)
        complete = [r for r in full if _fits(r, full, raw, cut)]
        assert got == complete, f"cut at {cut}"
        if cut in ends:
            assert err is None
        else:
            assert err is not None, f"cut at {cut} not reported"
            assert str(path) in str(err) and "byte offset" in str(err)
        path.unlink()


def _fits(rec: CaptureRecord, full: list[CaptureRecord], raw: bytes, cut: int) -> bool:
    """Whether the record (up to the next record or EOF) lies entirely before `cut`."""
    later = [r.offset for r in full if r.offset > rec.offset]
    end = later[0] if later else len(raw)
    return end <= cut


def test_truncated_header_message_names_offset(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, b"a" * 10), (2, 0, b"b" * 10)])
    path = _write(tmp_path, "t.pcap", data[: -10 - 16 + 5])  # 5 bytes of the 2nd record header
    got, err = _read_until_error(path)
    assert [r.data for r in got] == [b"a" * 10]
    assert err is not None
    assert str(err) == f"{path}: truncated record header at byte offset 50 (5 of 16 bytes present)"


def test_oversized_record_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(pcap_bytes([(1, 0, b"good"), (2, 0, b"bad!")]))
    struct.pack_into("<I", data, 24 + 16 + 4 + 8, MAX_RECORD_SIZE + 1)
    got, err = _read_until_error(_write(tmp_path, "big.pcap", bytes(data)))
    assert [r.data for r in got] == [b"good"]
    assert err is not None and f"above the {MAX_RECORD_SIZE}-byte bound" in str(err)
    assert "byte offset 44" in str(err)


def test_pcapng_bad_block_length(tmp_path: Path) -> None:
    data = bytearray(shb("<") + idb("<", 1) + epb("<", 0, 0, b"ok") + epb("<", 0, 0, b"bad"))
    second = len(data) - len(epb("<", 0, 0, b"bad"))
    struct.pack_into("<I", data, second + 4, 37)
    got, err = _read_until_error(_write(tmp_path, "len.pcapng", bytes(data)))
    assert [r.data for r in got] == [b"ok"]
    assert err is not None and f"byte offset {second}" in str(err) and "total length 37" in str(err)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a capture file (0 bytes"),
        (b"\xd4\xc3", "not a capture file (2 bytes"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a pcap or pcapng capture (magic 0x47455420"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header at byte offset 4"),
    ],
)
def test_non_capture_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = _write(tmp_path, "not-a-capture", content)
    with pytest.raises(CaptureError) as info:
        list(read_capture(path))
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open capture"):
        list(read_capture(tmp_path / "nope.pcap"))
