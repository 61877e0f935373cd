"""Active protocol probes for the recommendation scan (sockets + struct, no third-party code).

Each probe talks one protocol to one (host, port) and returns a `Finding`: the product, version
and features it identified, with `Evidence` (the probe and what it saw) for each conclusion,
and `FeatureCheck`s for features it tested, present or absent (absence is evidence too: "SMB1
negotiate refused" is what retires an SMB1 rule). Guarantees:

- Only the address the caller names is contacted; every socket operation has a timeout
  (`timeout` argument, default DEFAULT_TIMEOUT_S) and every read is bounded (MAX_READ_BYTES).
- A probe never raises for anything the peer does: a refused, reset or garbled answer becomes
  a Finding with evidence saying so (or None when the service is not that protocol).
- Probes are non-destructive: WebDAV is detected with OPTIONS, PROPFIND and a MKCOL whose parent
  collection does not exist (a WebDAV server answers 409 Conflict and creates nothing).

Protocol references: HTTP RFC 9110 (OPTIONS 9.3.7), WebDAV RFC 4918 (PROPFIND 9.1, MKCOL 9.3.1
409 when an intermediate collection is missing); SMB1 [MS-CIFS] 2.2.4.52 (NEGOTIATE), 2.2.4.53
(SESSION_SETUP_ANDX, NativeOS/NativeLanMan); SMB2 [MS-SMB2] 2.2.3/2.2.4 (NEGOTIATE); RDP
[MS-RDPBCGR] 2.2.1.1/2.2.1.2 (X.224 Connection Request/Confirm, RDP_NEG_REQ/RSP/FAILURE); TLS
RFC 5246 7.4.1.2 and RFC 8446 4.1.2/4.2.1 (ClientHello, supported_versions), RFC 6520 (heartbeat
extension 15); SSLv3 RFC 6101; DNS RFC 1035 with CHAOS class TXT version.bind; MSSQL resolution
[MC-SQLR] 2.2.2/2.2.5 (CLNT_UCAST_EX, SVR_RESP); SSH RFC 4253 4.2 (identification string); FTP
RFC 959 (220 greeting).
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.decode.tls import EXT_HEARTBEAT, HANDSHAKE_SERVER_HELLO, TlsDecodeError, parse_hello

DEFAULT_TIMEOUT_S = 3.0  # per socket operation
MAX_READ_BYTES = 65536  # bytes read from one answer
MAX_EVIDENCE_TEXT = 200  # characters of a peer's text quoted in evidence

# Ports probed by default: (port, protocol), the services the rule pack's targets run.
DEFAULT_TCP_PORTS = (21, 22, 80, 139, 443, 445, 1433, 3389, 8080, 8443, 53)
DEFAULT_UDP_PORTS = (53, 1434)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one probe sent and what it saw."""

    probe: str
    saw: str


@dataclass(frozen=True, slots=True)
class FeatureCheck:
    """A feature a probe tested, whether it is present, and why we think so."""

    feature: str
    present: bool
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Finding:
    """One identified service on one port."""

    port: int
    transport: str  # "tcp" | "udp"
    service: str  # http, smb, rdp, tls, dns, mssql-resolution, ssh, ftp
    product: str | None = None  # product id (docs/policy.md) or None when unknown
    version: str | None = None
    features: tuple[FeatureCheck, ...] = ()
    evidence: tuple[Evidence, ...] = ()

    def has(self, feature: str) -> bool:
        return any(f.feature == feature and f.present for f in self.features)


@dataclass(slots=True)
class _Builder:
    """Mutable accumulator a probe fills before freezing it into a Finding."""

    port: int
    transport: str
    service: str
    product: str | None = None
    version: str | None = None
    features: list[FeatureCheck] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)

    def saw(self, probe: str, text: str) -> None:
        self.evidence.append(Evidence(probe, _clip(text)))

    def feature(self, name: str, present: bool, probe: str, text: str) -> None:
        self.features.append(FeatureCheck(name, present, Evidence(probe, _clip(text))))

    def build(self) -> Finding:
        return Finding(
            self.port,
            self.transport,
            self.service,
            self.product,
            self.version,
            tuple(self.features),
            tuple(self.evidence),
        )


def _clip(text: str) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= MAX_EVIDENCE_TEXT else text[:MAX_EVIDENCE_TEXT] + "..."


def _printable(data: bytes) -> str:
    return data.decode("latin-1").translate({c: "." for c in range(32) if c not in (9,)})


# --- socket helpers -----------------------------------------------------------------------


def tcp_open(host: str, port: int, timeout: float) -> bool:
    """TCP connect scan of one port: True when the handshake completes."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def _recv_some(sock: socket.socket, limit: int = MAX_READ_BYTES) -> bytes:
    """One read (up to limit); b'' on close, timeout or reset."""
    try:
        return sock.recv(limit)
    except OSError:
        return b""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = _recv_some(sock, min(n - len(buf), MAX_READ_BYTES))
        if not chunk:
            break
        buf += chunk
    return buf


def _recv_until(sock: socket.socket, marker: bytes, limit: int = MAX_READ_BYTES) -> bytes:
    buf = b""
    while marker not in buf and len(buf) < limit:
        chunk = _recv_some(sock, limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _recv_tpkt(sock: socket.socket) -> bytes:
    """One TPKT (RFC 1006) or NetBIOS-session framed message: 4-byte header + body."""
    head = _recv_exact(sock, 4)
    if len(head) < 4:
        return head
    if head[0] == 3:  # TPKT: version 3, reserved, 16-bit length incl. header
        length = struct.unpack("!H", head[2:4])[0] - 4
    else:  # NetBIOS session message: type, 24-bit length
        length = int.from_bytes(head[1:4], "big")
    return head + _recv_exact(sock, min(max(length, 0), MAX_READ_BYTES))


def _udp_exchange(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(payload, (host, port))
            data, _ = sock.recvfrom(MAX_READ_BYTES)
            return data
        except OSError:
            return b""


# --- HTTP -----------------------------------------------------------------------------------

_SERVER_PRODUCTS = (
    (re.compile(r"Microsoft-IIS/([\d.]+)", re.IGNORECASE), "microsoft-iis"),
    (re.compile(r"Apache/([\d.]+)", re.IGNORECASE), "apache-httpd"),
    (re.compile(r"nginx/([\d.]+)", re.IGNORECASE), "nginx"),
    (re.compile(r"Microsoft-IIS", re.IGNORECASE), "microsoft-iis"),
    (re.compile(r"Apache", re.IGNORECASE), "apache-httpd"),
    (re.compile(r"nginx", re.IGNORECASE), "nginx"),
)
_DAV_METHODS = ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK")


def _http_request(
    host: str, port: int, method: str, path: str, timeout: float, extra: str = ""
) -> tuple[int, dict[str, str], str]:
    """(status, headers lower-cased, status line); status 0 when no HTTP answer came."""
    hosthdr = f"[{host}]" if ":" in host else host
    req = (
        f"{method} {path} HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: vpatch-scan\r\n"
        f"Accept: */*\r\nConnection: close\r\n{extra}\r\n"
    )
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(req.encode())
            data = _recv_until(sock, b"\r\n\r\n")
    except OSError:
        return 0, {}, ""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0]) if lines else None
    if not m:
        return 0, {}, _printable(data[:80])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    return int(m.group(1)), headers, lines[0]


def probe_http(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """Server header, then WebDAV: OPTIONS (DAV/Allow/Public), PROPFIND, MKCOL (missing parent)."""
    status, headers, line = _http_request(host, port, "GET", "/", timeout)
    if status == 0:
        return None
    b = _Builder(port, "tcp", "http")
    server = headers.get("server", "")
    b.saw("HTTP GET /", f"{line}; Server: {server or '(none)'}")
    for pattern, product in _SERVER_PRODUCTS:
        m = pattern.search(server)
        if m:
            b.product = product
            b.version = m.group(1) if m.groups() else None
            break
    reasons: list[str] = []
    _, hd, ln = _http_request(host, port, "OPTIONS", "/", timeout)
    allow = f"{hd.get('allow', '')} {hd.get('public', '')}".upper()
    dav_methods = [m for m in _DAV_METHODS if re.search(rf"\b{m}\b", allow)]
    opt_text = f"{ln}; DAV: {hd.get('dav', '(none)')}; Allow: {hd.get('allow', '(none)')}"
    if "dav" in hd or dav_methods:
        reasons.append(f"OPTIONS /: {opt_text}")
    body = '<?xml version="1.0"?><propfind xmlns="DAV:"><prop><resourcetype/></prop></propfind>'
    st2, _, ln2 = _http_request(
        host,
        port,
        "PROPFIND",
        "/",
        timeout,
        f"Depth: 0\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n",
    )
    # the body is not sent: a server that wants it answers 400 or waits; 207 proves WebDAV
    if st2 == 207:
        reasons.append(f"PROPFIND /: {ln2}")
    missing = f"/vpatch-scan-{os.urandom(4).hex()}/probe/"
    st3, _, ln3 = _http_request(host, port, "MKCOL", missing, timeout)
    if st3 == 409:
        reasons.append(f"MKCOL {missing} (parent missing): {ln3}")
    if reasons:
        b.feature("webdav", True, "HTTP OPTIONS/PROPFIND/MKCOL", "; ".join(reasons))
    else:
        b.feature(
            "webdav",
            False,
            "HTTP OPTIONS/PROPFIND/MKCOL",
            f"OPTIONS /: {opt_text}; PROPFIND /: {ln2 or 'no answer'}; "
            f"MKCOL {missing}: {ln3 or 'no answer'}",
        )
    return b.build()


# --- SMB ------------------------------------------------------------------------------------

SMB1_DIALECTS = (b"PC NETWORK PROGRAM 1.0", b"LANMAN1.0", b"LM1.2X002", b"LANMAN2.1", b"NT LM 0.12")
SMB2_DIALECTS = (0x0202, 0x0210, 0x0300, 0x0302)
_SMB2_NAMES = {0x0202: "2.0.2", 0x0210: "2.1", 0x0300: "3.0", 0x0302: "3.0.2", 0x0311: "3.1.1"}
_SMB1_HDR = struct.Struct("<4sBIBHHQHHHHH")  # [MS-CIFS] 2.2.3.1, 32 bytes


def _netbios(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def build_smb1_negotiate(dialects: tuple[bytes, ...] = SMB1_DIALECTS) -> bytes:
    """SMB_COM_NEGOTIATE offering only SMB1 dialects (no extended security requested)."""
    hdr = _SMB1_HDR.pack(b"\xffSMB", 0x72, 0, 0x18, 0x4001, 0, 0, 0, 0, os.getpid() & 0xFFFF, 0, 1)
    body = b"".join(b"\x02" + d + b"\x00" for d in dialects)
    return _netbios(hdr + b"\x00" + struct.pack("<H", len(body)) + body)


def build_smb1_session_setup_anonymous() -> bytes:
    """SMB_COM_SESSION_SETUP_ANDX (NT LM 0.12, non-extended security), empty credentials."""
    hdr = _SMB1_HDR.pack(b"\xffSMB", 0x73, 0, 0x18, 0x4001, 0, 0, 0, 0, os.getpid() & 0xFFFF, 0, 2)
    words = struct.pack("<BBHHHHIHHII", 0xFF, 0, 0, 0xFFFF, 2, 0, 0, 0, 0, 0, 0x00000054)
    data = b"\x00" + b"\x00" + b"Unix\x00" + b"vpatch-scan\x00"  # account, domain, OS, LM
    return _netbios(hdr + bytes([len(words) // 2]) + words + struct.pack("<H", len(data)) + data)


def build_smb2_negotiate(dialects: tuple[int, ...] = SMB2_DIALECTS) -> bytes:
    """SMB2 NEGOTIATE request ([MS-SMB2] 2.2.3) offering the given dialects."""
    hdr = struct.pack(
        "<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 0, 0, 0, 1, 0, 0, 0, 0xFEFF, 0, 0, b"\x00" * 16
    )
    body = struct.pack("<HHHHI16sQ", 36, len(dialects), 1, 0, 0, os.urandom(16), 0)
    body += b"".join(struct.pack("<H", d) for d in dialects)
    return _netbios(hdr + body)


def _smb1_strings(data: bytes, unicode: bool) -> list[str]:
    if unicode:
        parts = data.decode("utf-16-le", "replace").split("\x00")
    else:
        parts = data.decode("latin-1").split("\x00")
    return [p for p in parts if p]


def _samba_version(text: str) -> str | None:
    m = re.search(r"Samba (\d+(?:\.\d+)*)", text)
    return m.group(1) if m else None


def probe_smb(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """SMB1 negotiate (NT LM 0.12 accepted?), anonymous session setup (NativeOS/LanMan),
    SMB2 negotiate (dialect)."""
    b = _Builder(port, "tcp", "smb")
    probe1 = "SMB1 NEGOTIATE offering " + ", ".join(d.decode() for d in SMB1_DIALECTS)
    smb_seen = False
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(build_smb1_negotiate())
            resp = _recv_tpkt(sock)
            if len(resp) >= 4 + 37 and resp[4:8] == b"\xffSMB" and resp[8] == 0x72:
                smb_seen = True
                status = struct.unpack_from("<I", resp, 9)[0]
                index = struct.unpack_from("<H", resp, 4 + 33)[0] if resp[4 + 32] >= 1 else 0xFFFF
                if status == 0 and index < len(SMB1_DIALECTS):
                    dialect = SMB1_DIALECTS[index].decode()
                    b.feature("smb1", True, probe1, f"accepted dialect {dialect!r} (index {index})")
                    if dialect == "NT LM 0.12":
                        _smb1_session(sock, b)
                else:
                    b.feature(
                        "smb1",
                        False,
                        probe1,
                        f"refused: status {status:#010x}, dialect index {index:#x}",
                    )
            elif len(resp) >= 8 and resp[4:8] == b"\xfeSMB":
                smb_seen = True
                b.feature("smb1", False, probe1, "answered with SMB2 only (SMB1 not offered back)")
            else:
                b.feature(
                    "smb1",
                    False,
                    probe1,
                    "connection closed without an SMB1 answer"
                    if not resp
                    else f"non-SMB answer {_printable(resp[:32])!r}",
                )
    except OSError as err:
        b.feature("smb1", False, probe1, f"connection failed: {err}")
    probe2 = "SMB2 NEGOTIATE offering " + ", ".join(_SMB2_NAMES[d] for d in SMB2_DIALECTS)
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(build_smb2_negotiate())
            resp = _recv_tpkt(sock)
        if len(resp) >= 4 + 64 + 8 and resp[4:8] == b"\xfeSMB":
            smb_seen = True
            status = struct.unpack_from("<I", resp, 4 + 8)[0]
            dialect = struct.unpack_from("<H", resp, 4 + 64 + 4)[0]
            if status == 0:
                name = _SMB2_NAMES.get(dialect, f"{dialect:#06x}")
                b.feature("smb2", True, probe2, f"selected dialect {name}")
                if dialect >= 0x0300:
                    b.feature("smb3", True, probe2, f"selected dialect {name}")
            else:
                b.feature("smb2", False, probe2, f"refused: status {status:#010x}")
        else:
            b.feature(
                "smb2",
                False,
                probe2,
                "no SMB2 answer" if not resp else f"answer {_printable(resp[:32])!r}",
            )
    except OSError as err:
        b.feature("smb2", False, probe2, f"connection failed: {err}")
    if not smb_seen:
        return None
    if b.product is None:
        b.product = "smb"  # a server speaking SMB whose implementation we could not name
    return b.build()


def _smb1_session(sock: socket.socket, b: _Builder) -> None:
    probe = "SMB1 SESSION_SETUP_ANDX anonymous"
    sock.sendall(build_smb1_session_setup_anonymous())
    resp = _recv_tpkt(sock)
    if len(resp) < 4 + 33 or resp[4:8] != b"\xffSMB":
        b.saw(probe, "no answer")
        return
    status = struct.unpack_from("<I", resp, 9)[0]
    flags2 = struct.unpack_from("<H", resp, 4 + 10)[0]
    wc = resp[4 + 32]
    off = 4 + 33 + 2 * wc
    if len(resp) < off + 2:
        b.saw(probe, f"status {status:#010x}, truncated answer")
        return
    bcount = struct.unpack_from("<H", resp, off)[0]
    data = resp[off + 2 : off + 2 + bcount]
    unicode = bool(flags2 & 0x8000)
    if unicode and (off + 2) % 2 == 1 and data:
        data = data[1:]  # pad to a 2-byte boundary from the SMB header start
    strings = _smb1_strings(data, unicode)
    native_os = strings[0] if strings else ""
    lanman = strings[1] if len(strings) > 1 else ""
    b.saw(probe, f"status {status:#010x}; NativeOS {native_os!r}; NativeLanMan {lanman!r}")
    text = f"{native_os} {lanman}"
    version = _samba_version(text)
    if version is not None or "samba" in text.lower():
        b.product, b.version = "samba", version
    elif "windows" in text.lower():
        b.product = "microsoft-windows-smb"
        m = re.search(r"Windows[^\d]*(\d+(?:\.\d+)*)", native_os)
        b.version = m.group(1) if m else None


# --- RDP ------------------------------------------------------------------------------------

RDP_PROTOCOLS = {0: "standard RDP security", 1: "TLS", 2: "CredSSP (NLA)", 8: "RDSTLS"}


def build_x224_request(requested: int) -> bytes:
    """TPKT + X.224 Connection Request + RDP_NEG_REQ ([MS-RDPBCGR] 2.2.1.1)."""
    neg = struct.pack("<BBHI", 1, 0, 8, requested)
    x224 = bytes([6 + len(neg), 0xE0, 0, 0, 0, 0, 0]) + neg
    return struct.pack("!BBH", 3, 0, 4 + len(x224)) + x224


def probe_rdp(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """X.224 CR asking for standard security, then TLS|CredSSP: selected protocol or failure."""
    b = _Builder(port, "tcp", "rdp", product="microsoft-rdp")
    answered = False
    for requested, feature in ((0, "rdp-standard-security"), (0x3, None)):
        probe = f"RDP X.224 CR, RDP_NEG_REQ requestedProtocols={requested:#x}"
        try:
            with _connect(host, port, timeout) as sock:
                sock.sendall(build_x224_request(requested))
                resp = _recv_tpkt(sock)
        except OSError as err:
            b.saw(probe, f"connection failed: {err}")
            continue
        if len(resp) < 11 or resp[0] != 3 or resp[5] & 0xF0 != 0xD0:
            b.saw(
                probe,
                "no X.224 Connection Confirm" if not resp else f"answer {_printable(resp[:24])!r}",
            )
            continue
        answered = True
        if len(resp) >= 19 and resp[11] == 2:
            selected = struct.unpack_from("<I", resp, 15)[0]
            text = f"selected {RDP_PROTOCOLS.get(selected, hex(selected))}"
        elif len(resp) >= 19 and resp[11] == 3:
            code = struct.unpack_from("<I", resp, 15)[0]
            selected, text = -1, f"RDP_NEG_FAILURE code {code}"
        else:
            selected, text = 0, "Connection Confirm without RDP_NEG_RSP (standard security)"
        b.saw(probe, text)
        if feature is not None:
            b.feature(feature, selected == 0, probe, text)
    return b.build() if answered else None


# --- TLS ------------------------------------------------------------------------------------

TLS_VERSIONS = {
    0x0300: "sslv3",
    0x0301: "tls1.0",
    0x0302: "tls1.1",
    0x0303: "tls1.2",
    0x0304: "tls1.3",
}
_CIPHERS_LEGACY = (
    0xC02F,
    0xC030,
    0xC02B,
    0xC02C,
    0xC013,
    0xC014,
    0x009C,
    0x009D,
    0x002F,
    0x0035,
    0x000A,
    0x0005,
    0x0004,
    0x0033,
    0x0039,
    0x0016,
)
_CIPHERS_13 = (0x1301, 0x1302, 0x1303)


def _ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def build_client_hello(version: int, host: str, heartbeat: bool = True) -> bytes:
    """One TLS record holding a ClientHello for `version` (0x0300..0x0304)."""
    legacy = min(version, 0x0303)
    ciphers = _CIPHERS_13 if version == 0x0304 else _CIPHERS_LEGACY
    body = struct.pack("!H", legacy) + os.urandom(32) + b"\x00"
    body += struct.pack("!H", 2 * len(ciphers)) + b"".join(struct.pack("!H", c) for c in ciphers)
    body += b"\x01\x00"  # compression: null
    exts = b""
    if version >= 0x0301:
        if not re.fullmatch(r"[\d.:]+", host):
            name = host.encode()
            exts += _ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
        exts += _ext(10, struct.pack("!H", 6) + struct.pack("!HHH", 0x001D, 0x0017, 0x0018))
        exts += _ext(11, b"\x01\x00")  # ec_point_formats: uncompressed
        if version >= 0x0303:
            algs = (0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501, 0x0201, 0x0203)
            exts += _ext(
                13, struct.pack("!H", 2 * len(algs)) + b"".join(struct.pack("!H", a) for a in algs)
            )
        if heartbeat:
            exts += _ext(15, b"\x01")  # peer_allowed_to_send
        if version == 0x0304:
            exts += _ext(43, b"\x02\x03\x04")
            share = struct.pack("!HH", 0x001D, 32) + os.urandom(32)
            exts += _ext(51, struct.pack("!H", len(share)) + share)
        body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0301 if version >= 0x0301 else 0x0300, len(hs)) + hs


@dataclass(frozen=True, slots=True)
class TlsAnswer:
    accepted: bool
    version: int = 0
    cipher: int = 0
    heartbeat: bool = False
    text: str = ""


def parse_server_hello(data: bytes) -> TlsAnswer:
    """The first record of a server's answer: ServerHello (version, cipher, heartbeat ext) or
    an alert / garbage (not accepted)."""
    if len(data) < 5:
        return TlsAnswer(False, text="connection closed without an answer")
    ctype = data[0]
    if ctype == 21 and len(data) >= 7:
        return TlsAnswer(False, text=f"alert level {data[5]} description {data[6]}")
    if ctype != 22 or len(data) < 5 + 4 + 38 or data[5] != 2:
        return TlsAnswer(False, text=f"not a ServerHello: {_printable(data[:16])!r}")
    body = data[9 : 9 + int.from_bytes(data[6:9], "big")]
    try:
        hello = parse_hello(HANDSHAKE_SERVER_HELLO, body)
    except TlsDecodeError:
        hello = None
    if hello is None or not hello.cipher_suites:
        return TlsAnswer(False, text="truncated ServerHello")
    version, cipher = hello.effective_version, hello.cipher_suites[0]
    heartbeat = EXT_HEARTBEAT in hello.extensions
    name = TLS_VERSIONS.get(version, hex(version))
    return TlsAnswer(
        True,
        version,
        cipher,
        heartbeat,
        f"ServerHello {name}, cipher {cipher:#06x}"
        + (", heartbeat extension echoed" if heartbeat else ""),
    )


def probe_tls(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """One ClientHello per version SSLv3..TLS1.3: which are accepted, cipher, heartbeat."""
    b = _Builder(port, "tcp", "tls")
    any_accepted = False
    heartbeat_seen: str | None = None
    for version, name in TLS_VERSIONS.items():
        probe = f"TLS ClientHello {name}"
        try:
            with _connect(host, port, timeout) as sock:
                sock.sendall(build_client_hello(version, host))
                head = _recv_exact(sock, 5)
                rest = (
                    _recv_exact(sock, min(struct.unpack_from("!H", head, 3)[0], MAX_READ_BYTES))
                    if len(head) == 5
                    else b""
                )
        except OSError as err:
            b.feature(name, False, probe, f"connection failed: {err}")
            continue
        ans = parse_server_hello(head + rest)
        accepted = ans.accepted and ans.version == version
        if ans.accepted and not accepted:
            text = f"answered with {TLS_VERSIONS.get(ans.version, hex(ans.version))} instead"
        else:
            text = ans.text
        b.feature(name, accepted, probe, text)
        any_accepted |= ans.accepted
        if accepted and ans.heartbeat and heartbeat_seen is None:
            heartbeat_seen = f"{name}: {ans.text}"
    if not any_accepted:
        return None
    b.feature(
        "tls-heartbeat",
        heartbeat_seen is not None,
        "TLS ClientHello with heartbeat ext",
        heartbeat_seen or "heartbeat extension not echoed",
    )
    return b.build()


# --- DNS, MSSQL resolution ------------------------------------------------------------------


def build_version_bind_query(qid: int) -> bytes:
    """DNS query: version.bind. TXT, class CHAOS (3)."""
    name = b"".join(bytes([len(p)]) + p for p in (b"version", b"bind")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0000, 1, 0, 0, 0) + name + struct.pack("!HH", 16, 3)


def _skip_name(data: bytes, p: int) -> int:
    while p < len(data):
        n = data[p]
        if n == 0:
            return p + 1
        if n & 0xC0 == 0xC0:
            return p + 2
        p += 1 + n
    return p


def parse_txt_answer(data: bytes, qid: int) -> str | None:
    """The first TXT string of the first answer, or None."""
    if len(data) < 12:
        return None
    rid, flags, qd, an = struct.unpack_from("!HHHH", data)
    if rid != qid or not flags & 0x8000 or an == 0:
        return None
    p = 12
    for _ in range(qd):
        p = _skip_name(data, p) + 4
    p = _skip_name(data, p)
    if p + 10 > len(data):
        return None
    rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, p)
    p += 10
    if rtype != 16 or rdlen < 1 or p + rdlen > len(data):
        return None
    n = data[p]
    return data[p + 1 : p + 1 + n].decode("latin-1")


def probe_dns(host: str, port: int = 53, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """CHAOS TXT version.bind over UDP."""
    qid = int.from_bytes(os.urandom(2), "big")
    data = _udp_exchange(host, port, build_version_bind_query(qid), timeout)
    if not data:
        return None
    b = _Builder(port, "udp", "dns")
    text = parse_txt_answer(data, qid)
    probe = "DNS CHAOS TXT version.bind"
    if text is None:
        rcode = data[3] & 0x0F if len(data) >= 4 else -1
        b.saw(probe, f"answered without a version (rcode {rcode})")
        b.feature("version.bind", False, probe, f"rcode {rcode}")
        return b.build()
    b.saw(probe, f"TXT {text!r}")
    b.feature("version.bind", True, probe, f"TXT {text!r}")
    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", text)
    if m:
        b.product, b.version = "bind", m.group(1)
    return b.build()


def probe_dns_tcp(host: str, port: int = 53, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """CHAOS TXT version.bind over TCP (RFC 1035 4.2.2: 2-byte length prefix)."""
    qid = int.from_bytes(os.urandom(2), "big")
    query = build_version_bind_query(qid)
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            head = _recv_exact(sock, 2)
            data = _recv_exact(sock, struct.unpack("!H", head)[0]) if len(head) == 2 else b""
    except OSError:
        return None
    if len(data) < 12 or struct.unpack_from("!H", data)[0] != qid:
        return None
    b = _Builder(port, "tcp", "dns")
    text = parse_txt_answer(data, qid)
    probe = "DNS/TCP CHAOS TXT version.bind"
    b.feature(
        "version.bind",
        text is not None,
        probe,
        f"TXT {text!r}" if text is not None else f"rcode {data[3] & 0x0F}",
    )
    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", text or "")
    if m:
        b.product, b.version = "bind", m.group(1)
    return b.build()


def probe_mssql_resolution(
    host: str, port: int = 1434, timeout: float = DEFAULT_TIMEOUT_S
) -> Finding | None:
    """CLNT_UCAST_EX (0x03) -> SVR_RESP: instances with their versions."""
    data = _udp_exchange(host, port, b"\x03", timeout)
    if len(data) < 3 or data[0] != 0x05:
        return None
    text = data[3 : 3 + struct.unpack_from("<H", data, 1)[0]].decode("latin-1", "replace")
    b = _Builder(port, "udp", "mssql-resolution", product="microsoft-sql-server")
    b.saw("MSSQL CLNT_UCAST_EX", text)
    fields = text.split(";")
    for i in range(0, len(fields) - 1, 2):
        if fields[i].lower() == "version":
            b.version = fields[i + 1]
            break
    return b.build()


# --- banners --------------------------------------------------------------------------------


def _banner(host: str, port: int, timeout: float) -> bytes:
    try:
        with _connect(host, port, timeout) as sock:
            return _recv_until(sock, b"\n", 1024)
    except OSError:
        return b""


def probe_banner(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> Finding | None:
    """SSH identification string or FTP 220 greeting, whichever the service sends first."""
    data = _banner(host, port, timeout)
    line = data.split(b"\n", 1)[0].decode("latin-1").strip()
    if line.startswith("SSH-"):
        b = _Builder(port, "tcp", "ssh")
        b.saw("SSH identification", line)
        m = re.search(r"OpenSSH_([\w.]+)", line)
        if m:
            b.product, b.version = "openssh", m.group(1)
        return b.build()
    if line.startswith("220"):
        b = _Builder(port, "tcp", "ftp")
        b.saw("FTP greeting", line)
        m = re.search(r"vsFTPd (\d+(?:\.\d+)*)", line, re.IGNORECASE)
        if m:
            b.product, b.version = "vsftpd", m.group(1)
        elif "microsoft ftp" in line.lower():
            b.product = "microsoft-iis"
        return b.build()
    return None


# Which probes to try on an open TCP port, most likely first. Ports not listed get all of
# them (protocol probes, not port guessing: the first probe that identifies a service wins).
TCP_PROBES: dict[str, Callable[[str, int, float], Finding | None]] = {
    "banner": probe_banner,
    "http": probe_http,
    "smb": probe_smb,
    "rdp": probe_rdp,
    "tls": probe_tls,
    "dns": probe_dns_tcp,
}
PORT_HINTS: dict[int, tuple[str, ...]] = {
    21: ("banner",),
    22: ("banner",),
    80: ("http",),
    8080: ("http",),
    139: ("smb",),
    445: ("smb",),
    53: ("dns",),
    443: ("tls", "http"),
    8443: ("tls", "http"),
    3389: ("rdp", "tls"),
}
UDP_PROBES: dict[int, Callable[[str, int, float], Finding | None]] = {
    53: probe_dns,
    1434: probe_mssql_resolution,
}


def probe_tcp_port(
    host: str,
    port: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    cancelled: Callable[[], bool] | None = None,
) -> Finding | None:
    """Identify the service on an open TCP port: hinted probes first, then the others;
    `cancelled` is asked before each (True: stop, nothing identified)."""
    order = list(PORT_HINTS.get(port, ()))
    order += [name for name in ("banner", "http", "smb", "tls", "rdp") if name not in order]
    for name in order:
        if cancelled is not None and cancelled():
            return None
        finding = TCP_PROBES[name](host, port, timeout)
        if finding is not None:
            return finding
    return None
