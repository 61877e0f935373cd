"""Builders of the SMB / DCE-RPC / RDP / DNS / MC-SQLR messages used by the network rules'
samples (rules/*.yaml `hex_to_server` / `hex_to_client`) and by tests/rules/test_rules_network.py.

Each builder follows the published structure (MS-CIFS, MS-SMB2, C706, T.125, RFC 1035, MC-SQLR)
so a sample is a well-formed message with exactly one anomaly. `python -m
tests.rules.network_builders` prints every sample as hex, which is what the YAML files hold.
"""

from __future__ import annotations

import struct
import uuid

NDR = "8a885d04-1ceb-11c9-9fe8-08002b104860"
SRVSVC = "4b324fc8-1670-01d3-1278-5a47bf6ee188"
REMACT = "4d9f4ab8-7d1c-11cf-861e-0020af6e7c57"
ISYSACT = "000001a0-0000-0000-c000-000000000046"
DSSETUP = "3919286a-b10c-11d0-9ba8-00c04fd92ef5"
NETLOGON = "12345678-1234-abcd-ef00-01234567cffb"


# ------------------------------------------------------------------ NetBIOS + SMB1 / SMB2 / SMB3


def nbss(body: bytes) -> bytes:
    return b"\0" + len(body).to_bytes(3, "big") + body


def smb1(
    command: int,
    words: bytes,
    data: bytes = b"",
    *,
    flags: int = 0x18,
    status: int = 0,
    tid: int = 0x800,
    uid: int = 0x800,
    mid: int = 0x40,
) -> bytes:
    header = struct.pack(
        "<4sBIBHH8sHHHHH",
        b"\xffSMB",
        command,
        status,
        flags,
        0xC807,
        0,
        b"\0" * 8,
        0,
        tid,
        0xFEFF,
        uid,
        mid,
    )
    return nbss(header + bytes([len(words) // 2]) + words + struct.pack("<H", len(data)) + data)


def trans_words(
    tpc: int,
    tdc: int,
    pc: int,
    po: int,
    dc: int,
    do: int,
    setup: list[int],
    mdc: int = 0x1000,
    timeout: int = 0,
) -> bytes:
    """Trans / Trans2 request parameter words ([MS-CIFS] 2.2.4.33.1, 2.2.4.46.1)."""
    return struct.pack(
        "<HHHHBBHIHHHHHBB", tpc, tdc, 0x10, mdc, 0, 0, 0, timeout, 0, pc, po, dc, do, len(setup), 0
    ) + b"".join(struct.pack("<H", s) for s in setup)


def trans_secondary_words(
    tpc: int, tdc: int, pc: int, po: int, pd: int, dc: int, do: int, dd: int
) -> bytes:
    """Trans secondary request words ([MS-CIFS] 2.2.4.34.1)."""
    return struct.pack("<8H", tpc, tdc, pc, po, pd, dc, do, dd)


def nt_trans_words(tpc: int, tdc: int, pc: int, po: int, dc: int, do: int, function: int) -> bytes:
    """NT Transact request words ([MS-CIFS] 2.2.4.62.1), no setup words."""
    return struct.pack("<BHIIIIIIIIBH", 0, 0, tpc, tdc, 0x10, 0x1000, pc, po, dc, do, 0, function)


def write_andx(fid: int, data: bytes, mid: int = 0x41) -> bytes:
    """SMB1 WriteAndX ([MS-CIFS] 2.2.4.43.1): 14 words, data right after the byte count + pad."""
    offset = 32 + 1 + 28 + 2 + 1  # header, WordCount, words, ByteCount, pad
    words = struct.pack(
        "<BBHHIIHHHHHI", 0xFF, 0, 0, fid, 0, 0, 0x0008, len(data), 0, len(data), offset, 0
    )
    return smb1(0x2F, words, b"\0" + data, mid=mid)


def smb2_header(command: int, message_id: int, flags: int = 0, status: int = 0) -> bytes:
    return struct.pack(
        "<4sHHIHHIIQIIQ16s",
        b"\xfeSMB",
        64,
        1,
        status,
        command,
        1,
        flags,
        0,
        message_id,
        0xFEFF,
        1,
        0x1000,
        b"\0" * 16,
    )


def smb2_ioctl_pipe(file_id: bytes, data: bytes, message_id: int = 5) -> bytes:
    """SMB2 IOCTL FSCTL_PIPE_TRANSCEIVE ([MS-SMB2] 2.2.31) carrying `data` as input."""
    body = struct.pack(
        "<HHI16sIIIIIIII", 57, 0, 0x0011C017, file_id, 64 + 56, len(data), 0, 0, 0, 1024, 1, 0
    )
    return nbss(smb2_header(11, message_id) + body + data)


def smb3_compressed(original_size: int, offset: int, payload: bytes, algorithm: int = 1) -> bytes:
    """SMB 3.1.1 COMPRESSION_TRANSFORM_HEADER ([MS-SMB2] 2.2.42), unchained."""
    return nbss(struct.pack("<4sIHHI", b"\xfcSMB", original_size, algorithm, 0, offset) + payload)


# ------------------------------------------------------------------ DCE/RPC (C706 chapter 12)


def _pdu(ptype: int, body: bytes, call_id: int) -> bytes:
    return struct.pack("<BBBB4sHHI", 5, 0, ptype, 3, b"\x10\0\0\0", 16 + len(body), 0, call_id) + (
        body
    )


def rpc_bind(iface: str, version: int, call_id: int = 1) -> bytes:
    body = struct.pack("<HHIB3x", 4280, 4280, 0, 1)
    body += struct.pack("<HBx", 0, 1) + uuid.UUID(iface).bytes_le + struct.pack("<HH", version, 0)
    body += uuid.UUID(NDR).bytes_le + struct.pack("<I", 2)
    return _pdu(11, body, call_id)


def rpc_request(opnum: int, stub: bytes, call_id: int = 2) -> bytes:
    return _pdu(0, struct.pack("<IHH", len(stub), 0, opnum) + stub, call_id)


def ndr_wstring(text: str, pointer: bool = True) -> bytes:
    """A [unique, string] wchar_t* (referent id, max count, offset, actual count, UTF-16LE
    with NUL, padded to 4)."""
    raw = (text + "\0").encode("utf-16-le")
    n = len(raw) // 2
    out = (struct.pack("<I", 0x20000) if pointer else b"") + struct.pack("<III", n, 0, n) + raw
    return out + b"\0" * (-len(out) % 4)


def path_canonicalize_stub(path: str, prefix: str = "") -> bytes:
    """NetprPathCanonicalize (srvsvc opnum 0x1f): ServerName, PathName, OutbufLen, Prefix,
    PathType, Flags ([MS-SRVS] 3.1.4.30)."""
    return (
        ndr_wstring("SRV")
        + ndr_wstring(path, pointer=False)
        + struct.pack("<I", 1000)
        + ndr_wstring(prefix, pointer=False)
        + struct.pack("<II", 1, 0)
    )


# ------------------------------------------------------------------ RDP (X.224 + T.125 + GCC)


def tpkt(payload: bytes) -> bytes:
    return b"\x03\x00" + struct.pack("!H", 4 + len(payload)) + payload


def x224_cr(cookie: bytes) -> bytes:
    variable = cookie + struct.pack("<BBHI", 1, 0, 8, 0)
    return tpkt(bytes([6 + len(variable), 0xE0]) + b"\0\0\0\0\0" + variable)


def _ber(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    return tag + (bytes([n]) if n < 0x80 else b"\x82" + struct.pack("!H", n)) + value


def _domain_parameters(max_channel_ids: int) -> bytes:
    values = [max_channel_ids, 2, 0, 1, 0, 1, 65535, 2]
    return _ber(b"\x30", b"".join(_ber(b"\x02", v.to_bytes(3, "big")) for v in values))


def mcs_connect_initial(channels: list[bytes], max_channel_ids: int = 34) -> bytes:
    """X.224 Data TPDU carrying an MCS Connect-Initial with a CS_NET channel list."""
    net = struct.pack("<I", len(channels)) + b"".join(
        struct.pack("<8sI", name, 0x80800000) for name in channels
    )
    blocks = struct.pack("<HH", 0xC001, 8) + b"\0" * 4
    blocks += struct.pack("<HH", 0xC003, 4 + len(net)) + net
    gcc = b"\x00\x05\x00\x14\x7c\x00\x01\x81\x00" + b"\x00\x08\x00\x10\x00\x01\xc0\x00Duca"
    gcc += bytes([0x80 | len(blocks) >> 8, len(blocks) & 0xFF]) + blocks
    body = _ber(b"\x04", b"\x01") + _ber(b"\x04", b"\x01") + _ber(b"\x01", b"\xff")
    body += _domain_parameters(max_channel_ids) + _domain_parameters(1)
    body += _domain_parameters(65535) + _ber(b"\x04", gcc)
    return tpkt(b"\x02\xf0\x80" + _ber(b"\x7f\x65", body))


# ------------------------------------------------------------------ DNS (RFC 1035)


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def dns_message(
    ident: int, flags: int, questions: list[bytes], answers: list[bytes], additional: list[bytes]
) -> bytes:
    head = struct.pack("!HHHHHH", ident, flags, len(questions), len(answers), 0, len(additional))
    return head + b"".join(questions) + b"".join(answers) + b"".join(additional)


def dns_question(name: str, qtype: int) -> bytes:
    return dns_name(name) + struct.pack("!HH", qtype, 1)


def dns_rr(name: bytes, rtype: int, rdata: bytes, rclass: int = 1) -> bytes:
    return name + struct.pack("!HHIH", rtype, rclass, 0, len(rdata)) + rdata


def tkey_rdata() -> bytes:
    """TKEY RDATA (RFC 2930 section 2): algorithm, inception, expiration, mode 3, error 0,
    a 4-byte key, no other data."""
    return dns_name("gss-tsig") + struct.pack("!IIHHH", 0, 0, 3, 0, 4) + b"key!" + b"\0\0"


def sig_rdata(signature_length: int) -> bytes:
    """SIG RDATA (RFC 2535 section 4.1): fixed fields, signer name (a compression pointer to
    the question name, which expands when the server copies it) and the signature."""
    fixed = struct.pack("!HBBIIIH", 1, 5, 2, 3600, 0, 0, 1)
    return fixed + b"\xc0\x0c" + bytes((i * 7) & 0xFF for i in range(signature_length))


def dns_tcp(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


# ------------------------------------------------------------------ samples


def _pipe(pdu: bytes) -> bytes:
    """A DCE/RPC PDU written to the \\netlogon pipe (FID 0x4002) with WriteAndX."""
    return write_andx(0x4002, pdu)


def samples() -> dict[str, bytes]:
    """Every sample, named <rule short name>.<attack|benign>[.to_client]."""
    eb_words = trans_words(12, 0, 12, 66, 0, 78, [0x000E], timeout=0x25891A00)
    ok_words = trans_words(12, 0, 12, 68, 0, 80, [0x0005])  # QUERY_PATH_INFORMATION
    nt_big = nt_trans_words(30, 66512, 30, 84, 976, 114, 0)
    nt_ok = nt_trans_words(30, 100, 30, 84, 100, 114, 6)  # NT_TRANSACT_IOCTL, small
    pipe_key = b"\x11" * 16
    out = {
        "ms17-010-eternalblue.attack": smb1(0xA0, nt_big, b"\0" * 64),
        "ms17-010-eternalblue.benign": smb1(0xA0, nt_ok, b"\0" * 64),
        "ms17-010-eternalblue-trans2.attack": smb1(0x32, eb_words, b"\0" * 13, mid=0x41),
        "ms17-010-eternalblue-trans2.benign": smb1(0x32, ok_words, b"\0" * 13),
        # Trans secondary whose chunk claims more data than the whole transaction
        "ms17-010-eternalromance.attack": smb1(
            0x26, trans_secondary_words(0, 16, 0, 0, 0, 4096, 70, 0), b"\0" * 16
        ),
        "ms17-010-eternalromance.benign": smb1(
            0x26, trans_secondary_words(0, 8192, 0, 0, 0, 4096, 70, 4096), b"\0" * 16
        ),
        # Trans2 primary request whose own parameter chunk exceeds the declared total
        "ms17-010-eternalchampion.attack": smb1(
            0x32, trans_words(2, 0, 512, 68, 0, 80, [0x0005]), b"\0" * 13
        ),
        "ms17-010-eternalchampion.benign": smb1(
            0x32, trans_words(1024, 0, 512, 68, 0, 80, [0x0005]), b"\0" * 13
        ),
        # DoublePulsar ping reply: Trans2 response, STATUS_NOT_IMPLEMENTED, MID 65 + 16
        "ms17-010-doublepulsar.attack.to_client": smb1(
            0x32, b"", flags=0x98, status=0xC0000002, mid=0x51
        ),
        "ms17-010-doublepulsar.benign.to_client": smb1(
            0x32, b"", flags=0x98, status=0xC0000002, mid=0x49
        ),
        "ms08-067.attack": write_andx(0x4000, rpc_bind(SRVSVC, 3), mid=0x41)
        + write_andx(
            0x4000, rpc_request(0x1F, path_canonicalize_stub("\\A\\..\\..\\" + "B" * 40, "\\"))
        ),
        "ms08-067.benign": write_andx(0x4000, rpc_bind(SRVSVC, 3))
        + write_andx(0x4000, rpc_request(0x1F, path_canonicalize_stub("\\dir\\..\\file", "\\"))),
        "ms06-040.attack": smb2_ioctl_pipe(pipe_key, rpc_bind(SRVSVC, 3), 4)
        + smb2_ioctl_pipe(pipe_key, rpc_request(0x1F, path_canonicalize_stub("A" * 1100, "\\"))),
        "ms06-040.benign": smb2_ioctl_pipe(pipe_key, rpc_bind(SRVSVC, 3), 4)
        + smb2_ioctl_pipe(
            pipe_key, rpc_request(0x1F, path_canonicalize_stub("\\share\\" + "d" * 200, "\\"))
        ),
        "ms03-026.attack": rpc_bind(ISYSACT, 0)
        + rpc_request(4, b"\x05\x00\x07\x00" + ndr_wstring("\\\\" + "A" * 64 + "\\c$\\x.doc")),
        "ms03-026.benign": rpc_bind(ISYSACT, 0)
        + rpc_request(4, b"\x05\x00\x07\x00" + ndr_wstring("\\\\fileserver01\\c$\\x.doc")),
        "ms03-026-remact.attack": rpc_bind(REMACT, 0)
        + rpc_request(0, b"\x05\x00\x07\x00" + ndr_wstring("\\\\" + "\u4141" * 40 + "\\x")),
        "ms04-011.attack": write_andx(0x4001, rpc_bind(DSSETUP, 0))
        + write_andx(0x4001, rpc_request(9, ndr_wstring("A" * 3000) + b"\0" * 8)),
        "ms04-011.benign": write_andx(0x4001, rpc_bind(DSSETUP, 0))
        + write_andx(0x4001, rpc_request(0, struct.pack("<H", 1) + b"\0\0")),
        "cve-2020-1472-zerologon.attack": write_andx(0x4002, rpc_bind(NETLOGON, 1))
        + _pipe(
            rpc_request(
                26,
                ndr_wstring("\\\\DC1")
                + ndr_wstring("DC1$", pointer=False)
                + struct.pack("<H", 6)
                + b"\0\0"
                + ndr_wstring("DC1", pointer=False)
                + b"\0" * 8
                + struct.pack("<I", 0x212FFFFF),
            )
        ),
        "cve-2020-1472-zerologon.benign": write_andx(0x4002, rpc_bind(NETLOGON, 1))
        + _pipe(
            rpc_request(
                26,
                ndr_wstring("\\\\DC1")
                + ndr_wstring("WS01$", pointer=False)
                + struct.pack("<H", 2)
                + b"\0\0"
                + ndr_wstring("WS01", pointer=False)
                + bytes.fromhex("3bd1a2f00c9e4d77")
                + struct.pack("<I", 0x612FFFFF),
            )
        ),
        "cve-2020-1472-zerologon-challenge.attack": write_andx(0x4002, rpc_bind(NETLOGON, 1))
        + _pipe(
            rpc_request(4, ndr_wstring("\\\\DC1") + ndr_wstring("DC1", pointer=False) + b"\0" * 8)
        ),
        "cve-2020-0796-smbghost.attack": smb3_compressed(0xFFFFFFFF, 0x10, b"\0" * 64),
        "cve-2020-0796-smbghost.benign": smb3_compressed(4096, 0x10, b"\0" * 64),
        "ms12-020.attack": x224_cr(b"Cookie: mstshash=a\r\n")
        + mcs_connect_initial([b"rdpdr", b"cliprdr"], max_channel_ids=1),
        "ms12-020.benign": x224_cr(b"Cookie: mstshash=a\r\n")
        + mcs_connect_initial([b"rdpdr", b"cliprdr"]),
        "cve-2019-0708-bluekeep.attack": x224_cr(b"Cookie: mstshash=a\r\n")
        + mcs_connect_initial([b"rdpdr", b"MS_T120", b"rdpsnd"]),
        "cve-2019-0708-bluekeep.benign": x224_cr(b"Cookie: mstshash=a\r\n")
        + mcs_connect_initial([b"rdpdr", b"MS_T12", b"rdpsnd", b"cliprdr"]),
        "ms02-039-slammer.attack": b"\x04" + b"\x01" * 96 + b"\xdc\xc9\xb0\x42" + b"\x90" * 300,
        "ms02-039-slammer.benign": b"\x04MSSQLSERVER\x00",
        "cve-2015-5477-bind-tkey.attack": dns_message(
            0x1234,
            0x0000,
            [dns_question("k.example.", 249)],
            [],
            [dns_rr(b"\xc0\x0c", 16, b"\x04poc!")],
        ),
        "cve-2015-5477-bind-tkey-answer.attack": dns_message(
            0x1235,
            0x0000,
            [dns_question("k.example.", 249)],
            [dns_rr(b"\xc0\x0c", 249, tkey_rdata(), 255)],
            [],
        ),
        "cve-2015-5477-bind-tkey.benign": dns_message(
            0x1236,
            0x0000,
            [dns_question("k.example.", 249)],
            [],
            [dns_rr(b"\xc0\x0c", 249, tkey_rdata(), 255)],
        ),
        "cve-2020-1350-sigred.attack.to_client": dns_tcp(
            dns_message(
                0x4242,
                0x8180,
                [dns_question("9.sigred.example.", 24)],
                [dns_rr(b"\xc0\x0c", 24, sig_rdata(0xFF00))],
                [],
            )
        ),
        "cve-2020-1350-sigred.benign.to_client": dns_tcp(
            dns_message(
                0x4243,
                0x8180,
                [dns_question("9.sigred.example.", 24)],
                [dns_rr(b"\xc0\x0c", 24, sig_rdata(256))],
                [],
            )
        ),
        "cve-2020-1350-sigred.query": dns_tcp(
            dns_message(0x4242, 0x0100, [dns_question("9.sigred.example.", 24)], [], [])
        ),
    }
    for name in ("cve-2015-5477-bind-tkey-answer.attack", "cve-2015-5477-bind-tkey.benign"):
        out[name + ".tcp"] = dns_tcp(out[name])
    return out


def tcp_pcap(path: str, to_server: bytes, to_client: bytes, dport: int, mss: int = 1400) -> None:
    """Write one TCP connection (handshake, client bytes, server bytes, FINs) as a pcap, in
    198.18.0.0/15 addresses (scapy builds the frames; nothing is sent)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    c, s, sport = "198.18.0.10", "198.18.1.20", 49200
    cseq, sseq = 1000, 5000

    def frame(
        src: str, dst: str, sp: int, dp: int, flags: str, seq: int, ack: int, payload: bytes = b""
    ) -> object:
        return (
            Ether()
            / IP(src=src, dst=dst)
            / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack)
            / payload
        )

    frames = [
        frame(c, s, sport, dport, "S", cseq - 1, 0),
        frame(s, c, dport, sport, "SA", sseq - 1, cseq),
        frame(c, s, sport, dport, "A", cseq, sseq),
    ]
    for i in range(0, len(to_server), mss):
        frames.append(frame(c, s, sport, dport, "PA", cseq + i, sseq, to_server[i : i + mss]))
    cseq += len(to_server)
    for i in range(0, len(to_client), mss):
        frames.append(frame(s, c, dport, sport, "PA", sseq + i, cseq, to_client[i : i + mss]))
    sseq += len(to_client)
    frames.append(frame(c, s, sport, dport, "FA", cseq, sseq))
    frames.append(frame(s, c, dport, sport, "FA", sseq, cseq + 1))
    wrpcap(path, frames)


def write_pcaps(directory: str) -> None:
    """The samples too large for inline hex (tests/data/rules/)."""
    out = samples()
    tcp_pcap(
        f"{directory}/cve-2020-1350-sigred-attack.pcap",
        out["cve-2020-1350-sigred.query"],
        out["cve-2020-1350-sigred.attack.to_client"],
        53,
    )


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        write_pcaps(sys.argv[1])
    for name, data in samples().items():
        print(f"{name} {len(data)} {data.hex()[:64]}")
