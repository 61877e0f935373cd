"""Fuzz over every app decoder.

The decoders themselves (TARGETS): only the decoder's own DecodeError subclass escapes, errors
are sticky, and internal buffers stay under their named bounds. Inputs are random bytes and
mutations of a valid seed of each protocol (so the fuzz reaches past the first header), fed in
random slices.

The registered app decoders (gateway/decode/app.py adapters, what the engine feeds): every
record carries only fields its app declares (`AppProtocol.fields`, which rule validation in
gateway/match/rules.py reads through `registry.field_kind`), each value of the declared kind (an
`int` for INT, `bytes` for BYTES: no bool, bytearray or memoryview), and a record of another app
only where that app is `carried_by` the emitting one (dcerpc from smb named pipes). Inputs: one
shared table of cases -- every rule's samples (rules/, inline and pcap), every capture under
tests/data/ and the seeds above -- each fed to every adapter of its transport, whole and one
byte at a time (UDP: every prefix of every datagram as a datagram of its own); whole and
bytewise must give the same records. Then hypothesis-mutated versions of the same table, and
the shared capture corpora (whole). The table must make every declared field appear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decode import bundled, dcerpc, dns, epm, ftp, http, mssql, rdp, registry, smb, tls  # noqa: F401
from gateway.decode.packet import parse_frame
from gateway.decode.registry import AppRecord, FieldKind
from gateway.errors import CaptureError, DecodeError
from gateway.intake.pcap import read_capture
from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.streams import tcp_streams
from gateway.vocabulary import PROTO_TCP, PROTO_UDP, Direction


@dataclass(frozen=True)
class Target:
    error: type[DecodeError]
    new: Callable[[], object]
    feed: Callable[[object, bytes], object]
    buffered: Callable[[object], int]
    bound: int  # what `buffered` may reach after a feed of at most MAX_FEED bytes
    seed: bytes


MAX_FEED = 2048


def _http_feed(dec: object, data: bytes) -> None:
    assert isinstance(dec, http.HttpRequestDecoder)
    dec.receive_data(data)
    for _ in range(10000):
        if dec.next_event() is http.NEED_DATA:
            return


def _feed(dec: object, data: bytes) -> object:
    return dec.receive_data(data)  # type: ignore[attr-defined]


def _buf(dec: object) -> int:
    return len(dec._buf)  # type: ignore[attr-defined]


class _DnsUdp:
    def receive_data(self, data: bytes) -> object:
        return dns.parse_message(data)


class _Sqlr:
    def receive_data(self, data: bytes) -> object:
        return mssql.parse_datagram(data)


DCERPC_SEED = bytes.fromhex(
    "05000b031000000048000000010000 00d016d01600000000010000000100010"
    "0a001000000000000c000000000000046000000000"
    "45d888aeb1cc9119fe808002b10486002000000".replace(" ", "")
) + bytes.fromhex("0500000310000000200000000200000008000000010004000102030405060708")

TARGETS = {
    "http": Target(
        http.HttpDecodeError,
        http.HttpRequestDecoder,
        _http_feed,
        _buf,
        http.MAX_HEAD_BYTES + MAX_FEED,
        b"GET /a%20b/../c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    ),
    "tls": Target(
        tls.TlsDecodeError,
        tls.TlsDecoder,
        _feed,
        lambda d: _buf(d) + len(d._handshake),  # type: ignore[attr-defined]
        5 + tls.MAX_RECORD_BYTES + tls.MAX_HANDSHAKE_BYTES + MAX_FEED,
        bytes.fromhex("16030100")
        + bytes([9])
        + bytes.fromhex("010000050301")
        + b"\0" * 3
        + bytes.fromhex("1803020003014000"),
    ),
    "dns-tcp": Target(
        dns.DnsDecodeError,
        dns.DnsTcpDecoder,
        _feed,
        _buf,
        2 + dns.MAX_TCP_MESSAGE + MAX_FEED,
        bytes.fromhex("002112340100000100000000000003777777076578616d706c6503636f6d0000010001"),
    ),
    "dns-udp": Target(
        dns.DnsDecodeError,
        _DnsUdp,
        _feed,
        lambda d: 0,
        0,
        bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001"),
    ),
    "smb": Target(
        smb.SmbDecodeError,
        smb.SmbDecoder,
        _feed,
        _buf,
        4 + smb.MAX_MESSAGE + MAX_FEED,
        b"\0\0\0\x2f\xffSMB\x72" + b"\0" * 27 + b"\0\x0c\x00\x02NT LM 0.12\0",
    ),
    "dcerpc": Target(
        dcerpc.DceRpcDecodeError,
        dcerpc.DceRpcDecoder,
        _feed,
        lambda d: d.buffered,  # type: ignore[attr-defined]
        dcerpc.MAX_FRAG_LENGTH + MAX_FEED + dcerpc.MAX_PENDING_CALLS * dcerpc.MAX_STUB_KEEP,
        DCERPC_SEED,
    ),
    "rdp": Target(
        rdp.RdpDecodeError,
        rdp.RdpDecoder,
        _feed,
        _buf,
        rdp.MAX_PDU + MAX_FEED,
        bytes.fromhex(
            "0300002d28e00000000000436f6f6b69653a206d737473686173683d6a6152674c67430d0a010008000b000000"
        )
        + bytes.fromhex("0300000c02f0807f6582000a"),
    ),
    "mssql": Target(mssql.MssqlDecodeError, _Sqlr, _feed, lambda d: 0, 0, b"\x04" + b"\x01" * 60),
    "ftp-client": Target(
        ftp.FtpDecodeError,
        lambda: ftp.FtpDecoder(True),
        _feed,
        _buf,
        ftp.MAX_LINE + 1,
        b"USER a\r\n\xff\xf4ABOR\r\nMKD xxxx\r\n",
    ),
    "ftp-server": Target(
        ftp.FtpDecodeError,
        lambda: ftp.FtpDecoder(False),
        _feed,
        _buf,
        ftp.MAX_LINE + 1,
        b"220-hi\r\n there\r\n220 ok\r\n331 pw\r\n",
    ),
}


@st.composite
def inputs(draw: st.DrawFn, seeds: Sequence[bytes]) -> tuple[bytes, int]:
    if draw(st.booleans()):
        data = draw(st.binary(max_size=600))
    else:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 6))):
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
            if op == "flip" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del data[pos : pos + draw(st.integers(1, 8))]
            else:
                data += data[pos:]
        data = bytes(data)
    return data, draw(st.integers(1, 64))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_own_errors_and_bounded_buffers(name: str) -> None:
    target = TARGETS[name]
    datagram = name in ("dns-udp", "mssql")

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs([target.seed]))
    def run(case: tuple[bytes, int]) -> None:
        data, step = case
        dec = target.new()
        pieces = [data] if datagram else [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces or [b""]:
            try:
                target.feed(dec, piece)
            except target.error:
                if hasattr(dec, "state"):
                    with pytest.raises(target.error):
                        target.feed(dec, b"x")  # sticky
                    return
            assert target.buffered(dec) <= target.bound

    run()


def test_seeds_decode() -> None:
    for name, target in TARGETS.items():
        dec = target.new()
        target.feed(dec, target.seed)  # a valid seed: no error
        assert target.buffered(dec) <= target.bound, name


def test_dns_tcp_decoder_is_not_sticky() -> None:
    # DnsTcpDecoder (dns.py) has no ERROR state: a bad message is dropped from the buffer before
    # it raises, and the next message decodes. The sticky check above is skipped for it; this
    # records the behaviour so a change to dns.py shows up.
    dec = dns.DnsTcpDecoder()
    with pytest.raises(dns.DnsDecodeError):
        dec.receive_data(b"\x00\x03abc")
    assert len(dec.receive_data(TARGETS["dns-tcp"].seed)) == 1


# ------------------------------------------------------------------------ declared fields

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MAX_SEED = 4096  # bytes of a table case that hypothesis mutates
BOTH = frozenset({Direction.TO_SERVER, Direction.TO_CLIENT})

_NETLOGON = "12345678-1234-abcd-ef00-01234567cffb"


def _response(stub: bytes) -> bytes:
    """A one-fragment DCE/RPC RESPONSE (C706 12.6.4.10) carrying `stub`."""
    body = len(stub).to_bytes(4, "little") + b"\0" * 4 + stub
    return (
        bytes.fromhex("05000203")
        + b"\x10\0\0\0"
        + (16 + len(body)).to_bytes(2, "little")
        + (b"\0\0" + (2).to_bytes(4, "little") + body)
    )


# Messages of declared fields that neither the rules' samples nor tests/data carry (see
# test_table_reaches_every_declared_field): an RDP Connection Confirm (MS-RDPBCGR 2.2.1.2,
# RDP_NEG_RSP, then RDP_NEG_FAILURE), an X.224 Disconnect Request (X.224 13.5), an SMB3
# TRANSFORM_HEADER (MS-SMB2 2.2.41) in a NetBIOS session message.
FIELD_SEEDS = {
    "rdp confirm": bytes.fromhex("030000130ed000001234000200080002000000"),
    "rdp confirm failure": bytes.fromhex("030000130ed000001234000300080005000000"),
    "rdp disconnect": bytes.fromhex("0300000b06800000000000"),
    # an endpoint mapper's ept_map answer (gateway/decode/epm.py): Netlogon on TCP 49667
    "epm map response": _response(
        epm.build_map_response([epm.Endpoint(_NETLOGON, 1, "tcp", 49667)])
    ),
    # STARTTLS exchanges (gateway/decode/starttls.py), client and server lines
    "smtp": b"EHLO a\r\nSTARTTLS\r\n220 2.0.0 go\r\n",
    "imap": b"a1 STARTTLS\r\n* OK ready\r\na1 OK go\r\n",
    "pop3": b"STLS\r\n+OK go\r\n",
    "smb3 transform": bytes.fromhex("00000034fd534d42")
    + bytes(32)  # signature, nonce
    + (4096).to_bytes(4, "little")
    + bytes.fromhex("00000100")
    + (0x1122334455667788).to_bytes(8, "little"),
    # a query padded past its bound: the record's http.cut (limits.field)
    "http padded query": b"GET /?" + b"&".join(b"p%d=1" % i for i in range(1100)) + b" HTTP/1.1"
    b"\r\nHost: a\r\n\r\n",
}


@dataclass(frozen=True)
class Case:
    """One input of the shared table: a TCP stream, or the UDP datagrams, of one flow direction
    (`directions`: the adapter directions it is fed to; captures go to both)."""

    name: str
    transport: int
    directions: frozenset[int]
    chunks: tuple[bytes, ...]  # TCP: (the stream,); UDP: the datagrams in order


@dataclass(frozen=True)
class Adapter:
    """One registered app decoder for one transport and direction."""

    app: str
    transport: int
    direction: int

    def new(self) -> registry.AppDecoder:
        protocol = registry.get(self.app)
        assert protocol is not None
        return protocol.new_decoder(self.transport, self.direction)

    def __str__(self) -> str:
        transport = "tcp" if self.transport == PROTO_TCP else "udp"
        direction = self.direction.label
        return f"{self.app}-{transport}-{direction}"


ADAPTERS = [
    Adapter(p.name, transport, direction)
    for p in registry.protocols()
    for transport in sorted(p.transports)
    for direction in sorted(p.directions)
]


def _capture_cases(path: Path) -> list[Case]:
    """Every TCP stream and every UDP 4-tuple's datagrams of a capture."""
    cases = [
        Case(f"{path.name} {k.src}:{k.sport}>{k.dst}:{k.dport}#{k.index}", PROTO_TCP, BOTH, (d,))
        for k, d in sorted(tcp_streams(path).items(), key=lambda kv: str(kv[0]))
    ]
    datagrams: dict[tuple[str, int, str, int], list[bytes]] = {}
    for record in read_capture(path):
        try:
            pkt = parse_frame(record.data, record.linktype)
        except DecodeError:
            continue
        if pkt.proto == PROTO_UDP and not pkt.fragment:
            datagrams.setdefault((pkt.src, pkt.sport, pkt.dst, pkt.dport), []).append(pkt.payload)
    for (src, sport, dst, dport), payloads in sorted(datagrams.items()):
        cases.append(
            Case(f"{path.name} udp {src}:{sport}>{dst}:{dport}", PROTO_UDP, BOTH, tuple(payloads))
        )
    return cases


def _sample_table() -> list[Case]:
    """Every rule's samples, every capture under tests/data/, the seeds of TARGETS."""
    cases: list[Case] = []
    captures = {p.resolve() for p in DATA_DIR.rglob("*.pcap*")}
    for rule in load_rules([default_rule_dir()]).rules:
        for sample in rule.samples:
            if sample.pcap is not None:
                captures.add(sample.pcap.resolve())
                continue
            name = f"rule {rule.id} line {sample.line} {sample.kind}"
            for direction, data in (
                (Direction.TO_SERVER, sample.to_server),
                (Direction.TO_CLIENT, sample.to_client),
            ):
                if data:
                    cases.append(Case(name, rule.proto_number, frozenset({direction}), (data,)))
    for path in sorted(captures):
        cases.extend(_capture_cases(path))
    for name, target in TARGETS.items():
        transport = PROTO_UDP if name in ("dns-udp", "mssql") else PROTO_TCP
        cases.append(Case(f"seed {name}", transport, BOTH, (target.seed,)))
    for name, data in FIELD_SEEDS.items():
        cases.append(Case(name, PROTO_TCP, BOTH, (data,)))
    return cases


SAMPLE_TABLE = _sample_table()


def assert_declared(record: AppRecord, emitter: str) -> None:
    """The record's app is registered and may come from `emitter`; every field is declared by
    that app with the kind of its value (a variant, `registry.variant_key`, is declared by its
    field, which must hold bytes, and numbered 1..MAX_VARIANTS)."""
    protocol = registry.get(record.app)
    assert protocol is not None, f"{emitter}: record of unregistered app {record.app!r}"
    assert record.app == emitter or emitter in protocol.carried_by, (
        f"{emitter}: emits {record.app!r} records, which {record.app!r} does not declare "
        "carried_by it"
    )
    for key, value in record.fields.items():
        name, variant, number = key.partition("#")
        if variant:
            assert registry.variant_key(name, int(number)) == key, key
            assert 1 <= int(number) <= registry.MAX_VARIANTS, key
            assert registry.field_kind(name) is FieldKind.BYTES, key
        kind = registry.field_kind(name)
        assert name.startswith(record.app + ".") and kind is not None, (
            f"{emitter}: field {name!r} is not declared by {record.app!r}"
        )
        declared = int if kind is FieldKind.INT else bytes
        assert type(value) is declared, (
            f"{emitter}: field {name!r} = {value!r:.80} is {type(value).__name__}, "
            f"declared {kind.value}"
        )


def feed(decoder: registry.AppDecoder, chunks: Sequence[bytes]) -> tuple[list[AppRecord], bool]:
    """The records of feeding `chunks` in order, up to the first DecodeError (raised, or kept in
    a RecoverableDecoder's `refused` with the records before it); and whether one came."""
    out: list[AppRecord] = []
    for chunk in chunks:
        try:
            out.extend(decoder.feed(chunk))
        except DecodeError:
            return out, True
        if getattr(decoder, "refused", None) is not None:
            return out, True
    return out, False


def cases_for(adapter: Adapter) -> list[Case]:
    return [
        c
        for c in SAMPLE_TABLE
        if c.transport == adapter.transport and adapter.direction in c.directions
    ]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=str)
def test_table_records_carry_declared_fields_whole_and_bytewise(adapter: Adapter) -> None:
    emitted = 0
    for case in cases_for(adapter):
        whole, whole_failed = feed(adapter.new(), case.chunks)
        for record in whole:
            assert_declared(record, adapter.app)
        emitted += len(whole)
        if adapter.transport == PROTO_TCP:
            (stream,) = case.chunks
            bytes_one_by_one = [stream[i : i + 1] for i in range(len(stream))]
            bytewise, bytewise_failed = feed(adapter.new(), bytes_one_by_one)
            for record in bytewise:
                assert_declared(record, adapter.app)
            assert bytewise_failed == whole_failed, case.name
            if not whole_failed:
                assert bytewise == whole, case.name
        else:
            for datagram in case.chunks:
                for n in range(len(datagram)):
                    for record in feed(adapter.new(), [datagram[:n]])[0]:
                        assert_declared(record, adapter.app)
    # the table reaches every adapter: the check above is not vacuous for any of them
    assert emitted > 0, f"no case of the table yields a record of {adapter}"


@pytest.mark.parametrize("adapter", ADAPTERS, ids=str)
def test_mutated_table_records_carry_declared_fields(adapter: Adapter) -> None:
    # seeds: the table's cases this adapter decodes (so mutations reach past the first header)
    seeds = sorted(
        {
            chunk[:MAX_SEED]
            for case in cases_for(adapter)
            if feed(adapter.new(), case.chunks)[0]
            for chunk in case.chunks
        }
    )
    assert seeds
    datagram = adapter.transport == PROTO_UDP

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs(seeds))
    def run(case: tuple[bytes, int]) -> None:
        data, step = case
        pieces = [data] if datagram else [data[i : i + step] for i in range(0, len(data), step)]
        for record in feed(adapter.new(), pieces)[0]:
            assert_declared(record, adapter.app)

    run()


def test_corpora_records_carry_declared_fields(corpora: Path) -> None:
    # the shared capture corpora (real traffic, attacks and malformed captures), whole only
    emitted = 0
    for path in sorted(corpora.rglob("*.pcap*")):
        try:
            cases = _capture_cases(path)
        except CaptureError:
            continue  # a damaged capture of malformed/: tests/intake/test_pcap.py reads those
        for case in cases:
            for adapter in ADAPTERS:
                if case.transport == adapter.transport:
                    for record in feed(adapter.new(), case.chunks)[0]:
                        assert_declared(record, adapter.app)
                        emitted += 1
    assert emitted > 1000


def test_table_reaches_every_declared_field() -> None:
    # every declared field (a family by any member) is emitted by some case of the table, so
    # the checks above see every field's kind; a new field needs a case here
    emitted: set[str] = set()
    for adapter in ADAPTERS:
        for case in cases_for(adapter):
            for record in feed(adapter.new(), case.chunks)[0]:
                emitted.update(record.fields)
    missing = [
        f"{protocol.name}: {name}"
        for protocol in registry.protocols()
        for name in protocol.fields
        # the anomaly field is the app session's, not the adapter's (tests/decode/test_session.py)
        if name != registry.anomaly_field(protocol.name)
        and not (
            name in emitted
            or (name.endswith(".*") and any(e.startswith(name[:-1]) for e in emitted))
        )
    ]
    assert not missing


def test_assert_declared_catches_undeclared_fields_and_wrong_kinds() -> None:
    assert_declared(AppRecord("dns", {"dns.id": 1, "dns.qname": b"a"}), "dns")
    assert_declared(AppRecord("dcerpc", {"dcerpc.opnum": 1}), "smb")  # carried by smb
    bad = [
        (AppRecord("dns", {"dns.nope": 1}), "dns", "not declared"),
        (AppRecord("dns", {"http.method": b"GET"}), "dns", "not declared"),
        (AppRecord("dns", {"dns.id": b"1"}), "dns", "is bytes, declared int"),
        (AppRecord("dns", {"dns.is_response": True}), "dns", "is bool, declared int"),
        (AppRecord("dns", {"dns.qname": bytearray(b"a")}), "dns", "is bytearray"),
        (AppRecord("dcerpc", {"dcerpc.opnum": 1}), "http", "carried_by"),
        (AppRecord("nope", {}), "http", "unregistered"),
    ]
    for record, emitter, reason in bad:
        with pytest.raises(AssertionError, match=reason):
            assert_declared(record, emitter)
