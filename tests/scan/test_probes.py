"""Probe message builders and answer parsers (no network): the bytes we send follow the specs
(checked by scapy's dissectors where it has one) and the parsers read real answer shapes."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR  # type: ignore[import-untyped]

from gateway.scan import probes


def test_version_bind_query_is_chaos_txt() -> None:
    pkt = DNS(probes.build_version_bind_query(0x1234))
    assert pkt.id == 0x1234
    assert pkt.qd.qname == b"version.bind."
    assert pkt.qd.qtype == 16 and pkt.qd.qclass == 3


def test_parse_txt_answer_reads_version_and_checks_id() -> None:
    answer = DNS(
        id=7,
        qr=1,
        qd=DNSQR(qname="version.bind", qtype=16, qclass=3),
        an=DNSRR(rrname="version.bind", type=16, rclass=3, rdata=["9.18.49-Debian"]),
    )
    raw = bytes(answer)
    assert probes.parse_txt_answer(raw, 7) == "9.18.49-Debian"
    assert probes.parse_txt_answer(raw, 8) is None  # someone else's answer
    assert probes.parse_txt_answer(raw[:11], 7) is None  # truncated


def _walk_client_hello(data: bytes) -> tuple[int, int, set[int]]:
    """(record type, client_version, extension types) per RFC 5246 7.4.1.2, lengths checked."""
    ctype, _, rlen = struct.unpack_from("!BHH", data)
    assert rlen == len(data) - 5
    assert data[5] == 1 and int.from_bytes(data[6:9], "big") == rlen - 4
    p = 9
    version = struct.unpack_from("!H", data, p)[0]
    p += 2 + 32
    p += 1 + data[p]
    p += 2 + struct.unpack_from("!H", data, p)[0]
    p += 1 + data[p]
    exts: set[int] = set()
    if p < len(data):
        end = p + 2 + struct.unpack_from("!H", data, p)[0]
        assert end == len(data)
        p += 2
        while p < end:
            kind, elen = struct.unpack_from("!HH", data, p)
            exts.add(kind)
            p += 4 + elen
        assert p == end
    return ctype, version, exts


@pytest.mark.parametrize("version", sorted(probes.TLS_VERSIONS))
def test_client_hello_layout(version: int) -> None:
    ctype, hello_version, ext_types = _walk_client_hello(
        probes.build_client_hello(version, "198.18.0.20")
    )
    assert ctype == 22
    assert hello_version == min(version, 0x0303)
    if version >= 0x0301:
        assert 15 in ext_types  # heartbeat offered
    if version == 0x0304:
        assert {43, 51} <= ext_types


def _server_hello(version: int, cipher: int, exts: bytes) -> bytes:
    body = struct.pack("!H", version) + b"\x00" * 32 + b"\x00" + struct.pack("!H", cipher) + b"\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0303, len(hs)) + hs


def test_parse_server_hello_version_cipher_heartbeat() -> None:
    ans = probes.parse_server_hello(_server_hello(0x0301, 0x002F, b"\x00\x0f\x00\x01\x01"))
    assert ans.accepted and ans.version == 0x0301 and ans.cipher == 0x002F and ans.heartbeat
    # TLS 1.3: legacy_version 0x0303, real version in supported_versions
    ans13 = probes.parse_server_hello(_server_hello(0x0303, 0x1301, b"\x00\x2b\x00\x02\x03\x04"))
    assert ans13.version == 0x0304 and not ans13.heartbeat
    alert = probes.parse_server_hello(b"\x15\x03\x01\x00\x02\x02\x46")
    assert not alert.accepted and "alert" in alert.text
    assert not probes.parse_server_hello(b"").accepted


def test_smb_requests_are_netbios_framed() -> None:
    for msg in (
        probes.build_smb1_negotiate(),
        probes.build_smb1_session_setup_anonymous(),
        probes.build_smb2_negotiate(),
    ):
        assert msg[0] == 0 and int.from_bytes(msg[1:4], "big") == len(msg) - 4
    neg = probes.build_smb1_negotiate()
    assert neg[4:9] == b"\xffSMB\x72" and b"\x02NT LM 0.12\x00" in neg
    neg2 = probes.build_smb2_negotiate()
    assert neg2[4:8] == b"\xfeSMB"
    count = struct.unpack_from("<H", neg2, 4 + 64 + 2)[0]
    assert count == len(probes.SMB2_DIALECTS)


def test_x224_request_layout() -> None:
    msg = probes.build_x224_request(3)
    assert msg[:2] == b"\x03\x00" and struct.unpack("!H", msg[2:4])[0] == len(msg) == 19
    assert msg[5] == 0xE0  # Connection Request
    assert struct.unpack_from("<BBHI", msg, 11) == (1, 0, 8, 3)


@pytest.fixture
def fake_rdp() -> Iterator[int]:
    """A loopback listener answering X.224 CR with a CC selecting TLS (or failure for 0)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                req = conn.recv(64)
                requested = struct.unpack_from("<I", req, 15)[0]
                if requested == 0:
                    neg = struct.pack("<BBHI", 3, 0, 8, 2)  # SSL_REQUIRED_BY_SERVER
                else:
                    neg = struct.pack("<BBHI", 2, 0, 8, 1)  # selected TLS
                x224 = bytes([6 + len(neg), 0xD0, 0, 0, 0x12, 0x34, 0]) + neg
                conn.sendall(struct.pack("!BBH", 3, 0, 4 + len(x224)) + x224)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        srv.close()


def test_probe_rdp_reads_selection_and_failure(fake_rdp: int) -> None:
    f = probes.probe_rdp("127.0.0.1", fake_rdp, timeout=2)
    assert f is not None and f.product == "microsoft-rdp"
    assert not f.has("rdp-standard-security")
    texts = " ".join(e.saw for e in f.evidence)
    assert "RDP_NEG_FAILURE code 2" in texts and "selected TLS" in texts


def test_probe_on_closed_port_finds_nothing() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert not probes.tcp_open("127.0.0.1", port, 1)
    assert probes.probe_http("127.0.0.1", port, 1) is None
    assert probes.probe_smb("127.0.0.1", port, 1) is None
