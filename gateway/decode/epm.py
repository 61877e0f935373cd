"""The DCE/RPC endpoint mapper's answers: which interface listens on which dynamic port.

A client that wants an RPC interface with a dynamic endpoint (Netlogon on a domain controller,
the one Zerologon is normally reached through) asks the endpoint mapper on TCP 135 (or 593,
ncacn_http) with ept_map (C706 appendix O, opnum 3 of interface EPM_INTERFACE) and connects to
the port in the tower of the answer. `parse_map_response` reads those towers out of an ept_map
response stub ([MS-RPCE] 2.2.1.2 / C706 appendix L: the protocol tower is a count of floors,
each a left-hand side naming a protocol and a right-hand side with its data: floor 1 the
interface UUID and version, floor 2 the transfer syntax, floor 3 RPC connection-oriented, floor
4 the TCP (or HTTP) port, big-endian, floor 5 the IP address); `build_tower` /
`build_map_response` write them (tests, the lab). gateway/decode/dcerpc.py turns the endpoints
of a response into `dcerpc.epm.*` records.

How a call on that port is inspected: the gateway identifies DCE/RPC by content on every port
(engine.identify_any_port, gateway/match/follow.py), so the connection to the dynamic port is
decoded as DCE/RPC and the DCE/RPC rules (Zerologon's among them) judge it, whether or not the
endpoint mapper's answer was seen (a client may know the port already); the kernel queues
every port of the protected hosts until the engine has identified the connection, so no
per-port expectation set is needed (docs/architecture.md, "Protocols on any port").

Guarantees: parsing never raises and never reads past the stub; at most MAX_TOWERS towers and
MAX_FLOORS floors per tower are read, a malformed tower is skipped.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from dataclasses import dataclass
from typing import Final

__all__ = [
    "EPM_INTERFACE",
    "OPNUM_EPT_MAP",
    "Endpoint",
    "build_map_response",
    "build_tower",
    "parse_map_response",
    "parse_tower",
]

EPM_INTERFACE: Final = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"
OPNUM_EPT_MAP: Final = 3
NDR: Final = "8a885d04-1ceb-11c9-9fe8-08002b104860"
MAX_TOWERS: Final = 16
MAX_FLOORS: Final = 8
# floor protocol identifiers (C706 appendix I, [MS-RPCE] 2.2.1.2.1)
PROTO_UUID: Final = 0x0D
PROTO_RPC_CO: Final = 0x0B
PROTO_TCP: Final = 0x07
PROTO_HTTP: Final = 0x1F
PROTO_IP: Final = 0x09
TRANSPORTS: Final = {PROTO_TCP: "tcp", PROTO_HTTP: "http"}
_HANDLE: Final = 20  # the context handle that starts the response
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One tower of an ept_map answer: `interface` (version `version`) listens on `port`."""

    interface: str
    version: int
    transport: str  # "tcp" (ncacn_ip_tcp) | "http" (ncacn_http)
    port: int
    address: str = ""  # the tower's IPv4 address ("0.0.0.0": the server's own), "" if none


def _floor(lhs: bytes, rhs: bytes) -> bytes:
    return _U16.pack(len(lhs)) + lhs + _U16.pack(len(rhs)) + rhs


def build_tower(ep: Endpoint) -> bytes:
    """The tower octets of `ep` (five floors)."""
    proto = next(p for p, name in TRANSPORTS.items() if name == ep.transport)
    floors = [
        _floor(bytes([PROTO_UUID]) + uuid.UUID(ep.interface).bytes_le + _U16.pack(ep.version),
               b"\0\0"),
        _floor(bytes([PROTO_UUID]) + uuid.UUID(NDR).bytes_le + _U16.pack(2), b"\0\0"),
        _floor(bytes([PROTO_RPC_CO]), b"\0\0"),
        _floor(bytes([proto]), struct.pack(">H", ep.port)),
        _floor(bytes([PROTO_IP]), ipaddress.IPv4Address(ep.address or "0.0.0.0").packed),
    ]  # fmt: skip
    return _U16.pack(len(floors)) + b"".join(floors)


def parse_tower(data: bytes) -> Endpoint | None:
    """The endpoint a tower names, or None when it names no TCP/HTTP port of an interface."""
    if len(data) < 2:
        return None
    (count,) = _U16.unpack_from(data)
    pos = 2
    interface, version, transport, port, address = "", 0, "", -1, ""
    for index in range(min(count, MAX_FLOORS)):
        if pos + 2 > len(data):
            return None
        (lhs_len,) = _U16.unpack_from(data, pos)
        lhs = data[pos + 2 : pos + 2 + lhs_len]
        pos += 2 + lhs_len
        if len(lhs) != lhs_len or not lhs or pos + 2 > len(data):
            return None
        (rhs_len,) = _U16.unpack_from(data, pos)
        rhs = data[pos + 2 : pos + 2 + rhs_len]
        pos += 2 + rhs_len
        if len(rhs) != rhs_len:
            return None
        proto = lhs[0]
        if index == 0 and proto == PROTO_UUID and lhs_len >= 19:
            interface = str(uuid.UUID(bytes_le=lhs[1:17]))
            (version,) = _U16.unpack_from(lhs, 17)
        elif proto in TRANSPORTS and rhs_len == 2:
            transport, port = TRANSPORTS[proto], int.from_bytes(rhs, "big")
        elif proto == PROTO_IP and rhs_len == 4:
            address = str(ipaddress.IPv4Address(rhs))
    if not interface or port < 0:
        return None
    return Endpoint(interface, version, transport, port, address)


def build_map_response(endpoints: list[Endpoint], status: int = 0) -> bytes:
    """The stub of an ept_map answer (little-endian NDR) holding `endpoints`' towers."""
    n = len(endpoints)
    out = bytearray(b"\0" * _HANDLE)
    out += _U32.pack(n) + _U32.pack(n) + _U32.pack(0) + _U32.pack(n)
    out += b"".join(_U32.pack(3 + i) for i in range(n))  # referent ids (non-null pointers)
    for ep in endpoints:
        tower = build_tower(ep)
        out += _U32.pack(len(tower)) + _U32.pack(len(tower)) + tower
        out += b"\0" * (-len(out) % 4)
    return bytes(out + _U32.pack(status))


def parse_map_response(stub: bytes) -> list[Endpoint]:
    """The endpoints of an ept_map answer's stub (little-endian NDR); [] when the stub is not
    one (or names none). Never raises."""
    if len(stub) < _HANDLE + 16:
        return []
    num, max_count, offset, actual = struct.unpack_from("<IIII", stub, _HANDLE)
    if num > max_count or offset != 0 or actual > max_count or actual > MAX_TOWERS or not num:
        return []
    pos = _HANDLE + 16
    refs = []
    for _ in range(actual):
        if pos + 4 > len(stub):
            return []
        refs.append(_U32.unpack_from(stub, pos)[0])
        pos += 4
    out: list[Endpoint] = []
    for ref in refs:
        if not ref:
            continue
        if pos + 8 > len(stub):
            break
        size, length = struct.unpack_from("<II", stub, pos)
        pos += 8
        if length > size or pos + length > len(stub):
            break
        ep = parse_tower(stub[pos : pos + length])
        if ep is not None:
            out.append(ep)
        pos += length + (-(pos + length) % 4)
    return out
