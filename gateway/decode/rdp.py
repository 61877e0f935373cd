"""RDP connection-sequence decoder (TCP 3389), fed one direction's byte stream.

Layers, as [MS-RDPBCGR] section 1.3.1.1 stacks them:
- TPKT (RFC 1006 section 6: version 3, 16-bit length including the 4-byte header);
- X.224 class 0 TPDUs (ITU-T X.224 section 13): Connection Request with the routing token or
  `Cookie: mstshash=` line and RDP_NEG_REQ requested protocols ([MS-RDPBCGR] 2.2.1.1,
  2.2.1.1.1), Connection Confirm with RDP_NEG_RSP / RDP_NEG_FAILURE (2.2.1.2), Data TPDUs;
- MCS (ITU-T T.125): Connect-Initial / Connect-Response (BER, application tags 101 / 102) with the
  three DomainParameters (maxChannelIds first: MS12-020 is a Connect-Initial whose parameters
  the server mishandles) and the userData octet string holding the GCC Conference Create Request
  (T.124, [MS-RDPBCGR] 2.2.1.3) with its client data blocks; CS_NET (2.2.1.3.4) gives the static
  channel count and names (BlueKeep, CVE-2019-0708, is a client asking for "MS_T120");
  other MCS domain PDUs (PER, T.125 section 11: erect domain, attach user, channel join, send
  data, ...) are reported with their type and length;
- fast-path PDUs (2.2.8.1.2, 2.2.9.1.2) are framed and counted, not decoded;
- when the peer switches to TLS / CredSSP (a TLS record where a TPKT was expected) the direction
  is marked encrypted and the rest is only counted: nothing inside can be seen in cleartext.
Guarantees:
- only RdpDecodeError escapes (bad TPKT / X.224 framing), and after it the state is ERROR; a
  malformed MCS or GCC structure inside a well-framed TPKT is NOT an error: it is reported in
  the event's `malformed` field so a rule can block on it;
- the buffer holds at most one PDU (MAX_PDU: TPKT and fast-path lengths are 16-bit); at most
  MAX_CHANNELS channel names and MAX_BLOCKS data blocks are read per Connect-Initial.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from gateway.decode.registry import AppDecoder, AppProtocol, AppRecord, FieldKind, Probe, register
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_TCP, Direction

MAX_PDU = 0xFFFF
MAX_CHANNELS = 64  # names read per CS_NET (the protocol allows 31; counts are reported as sent)
MAX_BLOCKS = 32  # client data blocks read per Connect-Initial
MAX_COOKIE = 256  # bytes of the X.224 CR cookie / routing token kept

TPDU_CR = 0xE0
TPDU_CC = 0xD0
TPDU_DR = 0x80
TPDU_DT = 0xF0
TPDU_ER = 0x70

NEG_REQ = 0x01
NEG_RSP = 0x02
NEG_FAILURE = 0x03

CS_CORE = 0xC001
CS_SECURITY = 0xC002
CS_NET = 0xC003

MCS_CONNECT_INITIAL = 101
MCS_CONNECT_RESPONSE = 102
# T.125 DomainMCSPDU choice numbers (the PER first byte >> 2).
MCS_DOMAIN_PDUS = {
    0: "plumbDomainIndication",
    1: "erectDomainRequest",
    2: "mergeChannelsRequest",
    3: "mergeChannelsConfirm",
    4: "purgeChannelsIndication",
    5: "mergeTokensRequest",
    6: "mergeTokensConfirm",
    7: "purgeTokensIndication",
    8: "disconnectProviderUltimatum",
    9: "rejectMCSPDUUltimatum",
    10: "attachUserRequest",
    11: "attachUserConfirm",
    12: "detachUserRequest",
    13: "detachUserIndication",
    14: "channelJoinRequest",
    15: "channelJoinConfirm",
    16: "channelLeaveRequest",
    17: "channelConveneRequest",
    18: "channelConveneConfirm",
    19: "channelDisbandRequest",
    20: "channelDisbandIndication",
    21: "channelAdmitRequest",
    22: "channelAdmitIndication",
    23: "channelExpelRequest",
    24: "channelExpelIndication",
    25: "sendDataRequest",
    26: "sendDataIndication",
    27: "uniformSendDataRequest",
    28: "uniformSendDataIndication",
}
MCS_ERECT_DOMAIN = 1
MCS_ATTACH_USER_REQUEST = 10
MCS_CHANNEL_JOIN_REQUEST = 14
MCS_SEND_DATA_REQUEST = 25

_NEG = struct.Struct("<BBHI")
_BLOCK = struct.Struct("<HH")
_CHANNEL_DEF = struct.Struct("<8sI")


class RdpDecodeError(DecodeError):
    """The peer sent something that is not RDP framing (its fault; the state is now ERROR)."""


class State(enum.Enum):
    PDUS = "pdus"
    ENCRYPTED = "encrypted"  # TLS / CredSSP took over: bytes are counted, not decoded
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """X.224 CR ([MS-RDPBCGR] 2.2.1.1): cookie or routing token, RDP_NEG_REQ if present."""

    cookie: bytes  # the `Cookie: mstshash=...` / routing token line without CRLF (bounded)
    requested_protocols: int  # -1 when no RDP_NEG_REQ was sent (plain RDP security)
    neg_flags: int
    length: int  # TPKT length


@dataclass(frozen=True, slots=True)
class ConnectionConfirm:
    """X.224 CC (2.2.1.2): the selected protocol, or the failure code."""

    selected_protocol: int  # -1 when absent
    failure_code: int  # -1 unless RDP_NEG_FAILURE
    length: int


@dataclass(frozen=True, slots=True)
class McsConnect:
    """MCS Connect-Initial (client) or Connect-Response (server) with what GCC carries."""

    tag: int  # MCS_CONNECT_INITIAL or MCS_CONNECT_RESPONSE
    length: int  # BER length of the PDU
    target_parameters: tuple[int, ...]  # DomainParameters, maxChannelIds first (initial only)
    minimum_parameters: tuple[int, ...]
    maximum_parameters: tuple[int, ...]
    user_data_length: int
    blocks: tuple[tuple[int, int], ...]  # (type, length) of each client/server data block
    channel_count: int  # CS_NET channelCount as sent; -1 without CS_NET
    channels: tuple[str, ...]  # static channel names as sent (up to MAX_CHANNELS)
    malformed: str  # "" or why the MCS / GCC structure does not parse

    @property
    def requests_ms_t120(self) -> bool:
        """A client asking for the internal MS_T120 channel (CVE-2019-0708), case-blind."""
        return any(name.upper() == "MS_T120" for name in self.channels)


@dataclass(frozen=True, slots=True)
class McsDomainPdu:
    """A T.125 domain PDU (PER) in an X.224 Data TPDU: type number, name, length."""

    pdu_type: int
    name: str  # "" for numbers T.125 does not define
    length: int  # bytes of MCS data in the TPDU


@dataclass(frozen=True, slots=True)
class X224Pdu:
    """Any other X.224 TPDU (disconnect, error, data without MCS)."""

    code: int
    length: int


@dataclass(frozen=True, slots=True)
class FastPath:
    length: int


@dataclass(frozen=True, slots=True)
class Encrypted:
    """The direction switched to TLS / CredSSP; first byte of the record is `content_type`."""

    content_type: int


Event = (
    ConnectionRequest
    | ConnectionConfirm
    | McsConnect
    | McsDomainPdu
    | X224Pdu
    | FastPath
    | Encrypted
)


class _Malformed(Exception):
    """Internal: an MCS/GCC structure does not parse (reported in the event, never escapes)."""


def _ber_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one BER tag + length at pos; return (tag, value start, value end)."""
    if pos + 2 > end:
        raise _Malformed(f"BER header past the end at {pos}")
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # high tag number form (one continuation byte is all MCS uses)
        if pos >= end:
            raise _Malformed(f"BER tag past the end at {pos}")
        tag = data[pos]
        pos += 1
    if pos >= end:
        raise _Malformed(f"BER length past the end at {pos}")
    first = data[pos]
    pos += 1
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise _Malformed(f"BER long length of {n} bytes at {pos - 1}")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > end:
        raise _Malformed(f"BER value of {length} bytes at {pos} runs past {end}")
    return tag, pos, pos + length


def _domain_parameters(data: bytes, start: int, end: int) -> tuple[int, ...]:
    values: list[int] = []
    pos = start
    while pos < end and len(values) < 8:
        tag, vstart, vend = _ber_tlv(data, pos, end)
        if tag != 0x02:
            raise _Malformed(f"DomainParameters holds tag 0x{tag:02x} at {pos}, not INTEGER")
        values.append(int.from_bytes(data[vstart:vend], "big"))
        pos = vend
    return tuple(values)


def _per_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise _Malformed(f"PER length past the end at {pos}")
    first = data[pos]
    if first & 0x80:
        if pos + 1 >= end:
            raise _Malformed(f"PER length past the end at {pos}")
        return ((first & 0x7F) << 8) | data[pos + 1], pos + 2
    return first, pos + 1


def _client_blocks(
    user_data: bytes,
) -> tuple[tuple[tuple[int, int], ...], int, tuple[str, ...]]:
    """GCC Conference Create Request / Response user data: the data blocks and CS_NET channels."""
    h221 = user_data.find(b"Duca", 0, 64)
    if h221 < 0:
        h221 = user_data.find(b"McDn", 0, 64)
    if h221 < 0:
        raise _Malformed("GCC user data has no H.221 key (Duca/McDn) in its first 64 bytes")
    length, pos = _per_length(user_data, h221 + 4, len(user_data))
    end = min(len(user_data), pos + length)
    blocks: list[tuple[int, int]] = []
    channel_count = -1
    channels: list[str] = []
    while pos + _BLOCK.size <= end and len(blocks) < MAX_BLOCKS:
        btype, blen = _BLOCK.unpack_from(user_data, pos)
        blocks.append((btype, blen))
        if blen < _BLOCK.size or pos + blen > end:
            raise _Malformed(f"data block 0x{btype:04x} of length {blen} at {pos} is invalid")
        if btype == CS_NET and blen >= 8:
            channel_count = int.from_bytes(user_data[pos + 4 : pos + 8], "little")
            p = pos + 8
            while (
                len(channels) < min(channel_count, MAX_CHANNELS)
                and p + _CHANNEL_DEF.size <= pos + blen
            ):
                raw, _options = _CHANNEL_DEF.unpack_from(user_data, p)
                channels.append(raw.split(b"\0", 1)[0].decode("latin-1"))
                p += _CHANNEL_DEF.size
        pos += blen
    return tuple(blocks), channel_count, tuple(channels)


def parse_mcs_connect(data: bytes) -> McsConnect:
    """Decode an MCS Connect-Initial / Connect-Response (data starts at the 0x7F tag byte)."""
    tag = data[1] if len(data) > 1 else -1
    params: list[tuple[int, ...]] = []
    user_data = b""
    blocks: tuple[tuple[int, int], ...] = ()
    channel_count = -1
    channels: tuple[str, ...] = ()
    length = 0
    try:
        tag, start, end = _ber_tlv(data, 0, len(data))
        length = end - start
        pos = start
        while pos < end:
            item, vstart, vend = _ber_tlv(data, pos, end)
            if item == 0x30:
                params.append(_domain_parameters(data, vstart, vend))
            elif item == 0x04:
                user_data = data[vstart:vend]  # the last octet string is userData
            pos = vend
        if user_data:
            blocks, channel_count, channels = _client_blocks(user_data)
        malformed = ""
    except _Malformed as err:
        malformed = str(err)
    params += [()] * (3 - len(params))
    return McsConnect(
        tag,
        length,
        params[0] if tag == MCS_CONNECT_INITIAL else (),
        params[1] if tag == MCS_CONNECT_INITIAL else (),
        params[2] if tag == MCS_CONNECT_INITIAL else (),
        len(user_data),
        blocks,
        channel_count,
        channels,
        malformed,
    )


class RdpDecoder:
    """Decodes one direction of an RDP connection."""

    def __init__(self) -> None:
        self.state = State.PDUS
        self._buf = bytearray()
        self.encrypted_bytes = 0

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes, get the events they complete."""
        if self.state is State.ERROR:
            raise RdpDecodeError("decoder is in ERROR state after an earlier error")
        if self.state is State.ENCRYPTED:
            self.encrypted_bytes += len(data)
            return []
        self._buf += data
        events: list[Event] = []
        try:
            while len(self._buf) >= 4:
                first = self._buf[0]
                if first == 0x03:
                    if self._buf[1] != 0:
                        raise RdpDecodeError(f"TPKT reserved byte is 0x{self._buf[1]:02x}")
                    length = int.from_bytes(self._buf[2:4], "big")
                    if length < 7:
                        raise RdpDecodeError(f"TPKT length {length} below the X.224 minimum")
                elif first in (0x14, 0x15, 0x16, 0x17) and self._buf[1] == 0x03:
                    self.state = State.ENCRYPTED
                    self.encrypted_bytes = len(self._buf)
                    self._buf.clear()
                    events.append(Encrypted(first))
                    break
                elif first & 0x03 == 0:
                    length, header = self._buf[1], 2
                    if length & 0x80:
                        length, header = ((length & 0x7F) << 8) | self._buf[2], 3
                    if length < header:
                        raise RdpDecodeError(f"fast-path length {length} shorter than its header")
                else:
                    raise RdpDecodeError(f"not TPKT, fast-path or TLS: first byte 0x{first:02x}")
                if len(self._buf) < length:
                    break
                pdu = bytes(self._buf[:length])
                del self._buf[:length]
                if first == 0x03:
                    events.append(_x224(pdu))
                else:
                    events.append(FastPath(length))
        except RdpDecodeError:
            self.state = State.ERROR
            raise
        return events


def _x224(pdu: bytes) -> Event:
    li = pdu[4]
    if li < 2 or 5 + li > len(pdu):
        raise RdpDecodeError(f"X.224 length indicator {li} does not fit TPKT of {len(pdu)} bytes")
    code = pdu[5] & 0xF0
    if code == TPDU_CR:
        return _connection_request(pdu, li)
    if code == TPDU_CC:
        return _connection_confirm(pdu, li)
    if code == TPDU_DT:
        mcs = pdu[5 + li :]
        if not mcs:
            return X224Pdu(code, len(pdu))
        if mcs[0] == 0x7F:
            return parse_mcs_connect(mcs)
        pdu_type = mcs[0] >> 2
        return McsDomainPdu(pdu_type, MCS_DOMAIN_PDUS.get(pdu_type, ""), len(mcs))
    if code in (TPDU_DR, TPDU_ER):
        return X224Pdu(code, len(pdu))
    raise RdpDecodeError(f"unknown X.224 TPDU code 0x{pdu[5]:02x}")


def _negotiation(pdu: bytes, li: int, expected: tuple[int, ...]) -> tuple[int, int, int]:
    """The RDP_NEG_* structure that ends the X.224 variable part, or (-1, 0, -1)."""
    end = 5 + li
    if end - _NEG.size >= 11 and pdu[end - _NEG.size] in expected:
        neg_type, flags, length, value = _NEG.unpack_from(pdu, end - _NEG.size)
        if length == _NEG.size:
            return neg_type, flags, value
    return -1, 0, -1


def _connection_request(pdu: bytes, li: int) -> ConnectionRequest:
    if li < 6:
        raise RdpDecodeError(f"X.224 Connection Request length indicator {li} below 6")
    variable = pdu[11 : 5 + li]
    cookie = b""
    line_end = variable.find(b"\r\n")
    if line_end >= 0:
        cookie = variable[: min(line_end, MAX_COOKIE)]
    neg_type, flags, protocols = _negotiation(pdu, li, (NEG_REQ,))
    return ConnectionRequest(cookie, protocols if neg_type == NEG_REQ else -1, flags, len(pdu))


def _connection_confirm(pdu: bytes, li: int) -> ConnectionConfirm:
    if li < 6:
        raise RdpDecodeError(f"X.224 Connection Confirm length indicator {li} below 6")
    neg_type, _flags, value = _negotiation(pdu, li, (NEG_RSP, NEG_FAILURE))
    return ConnectionConfirm(
        value if neg_type == NEG_RSP else -1, value if neg_type == NEG_FAILURE else -1, len(pdu)
    )


def event_records(event: Event) -> list[AppRecord]:
    """A decoder event as rule records (rdp.*); a Connect-Initial adds one record per channel."""
    fields: dict[str, int | bytes]
    if isinstance(event, McsConnect):
        fields = {
            "rdp.mcs.type": event.tag,
            "rdp.mcs.length": event.length,
            "rdp.mcs.max_channel_ids": (
                event.target_parameters[0] if event.target_parameters else -1
            ),
            "rdp.mcs.user_data_length": event.user_data_length,
            "rdp.channels": "\n".join(event.channels).encode("latin-1"),
            "rdp.channel_count": event.channel_count,
            "rdp.malformed": event.malformed.encode("latin-1", "replace"),
        }
        records = [AppRecord("rdp", fields)]
        for name in event.channels:
            per_channel = dict(fields)
            per_channel["rdp.channel"] = name.encode("latin-1")
            records.append(AppRecord("rdp", per_channel))
        return records
    if isinstance(event, McsDomainPdu):
        fields = {"rdp.mcs.type": event.pdu_type, "rdp.mcs.length": event.length}
    elif isinstance(event, ConnectionRequest):
        fields = {
            "rdp.cookie": event.cookie,
            "rdp.requested_protocols": event.requested_protocols,
            "rdp.pdu_length": event.length,
        }
    elif isinstance(event, ConnectionConfirm):
        fields = {
            "rdp.selected_protocol": event.selected_protocol,
            "rdp.failure_code": event.failure_code,
            "rdp.pdu_length": event.length,
        }
    elif isinstance(event, Encrypted):
        fields = {"rdp.encrypted": 1}
    elif isinstance(event, X224Pdu):
        fields = {"rdp.x224.code": event.code, "rdp.pdu_length": event.length}
    else:
        fields = {"rdp.fastpath": 1, "rdp.pdu_length": event.length}
    return [AppRecord("rdp", fields)]


class RdpAdapter:
    """App-layer adapter for RDP (TCP 3389)."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = RdpDecoder()

    def feed(self, data: bytes) -> list[AppRecord]:
        return [r for e in self._decoder.receive_data(data) for r in event_records(e)]


def _probe(data: bytes, direction: Direction) -> Probe:
    """A TPKT holding an X.224 Connection Request (client) or Confirm (server)."""
    if len(data) < 6:
        return Probe.NEED_DATA if data[:2] in (b"", b"\x03", b"\x03\x00") else Probe.NO
    code = TPDU_CR if direction is Direction.TO_SERVER else TPDU_CC
    ok = data[:2] == b"\x03\x00" and data[5] & 0xF0 == code
    return Probe.YES if ok else Probe.NO


def _new_decoder(transport: int, direction: Direction) -> AppDecoder:
    return RdpAdapter()


_I, _B = FieldKind.INT, FieldKind.BYTES
register(
    AppProtocol(
        name="rdp",
        transports=frozenset({PROTO_TCP}),
        ports=frozenset({3389}),
        fields={
            "rdp.cookie": _B,
            "rdp.requested_protocols": _I,
            "rdp.selected_protocol": _I,
            "rdp.failure_code": _I,
            "rdp.pdu_length": _I,
            "rdp.mcs.type": _I,
            "rdp.mcs.length": _I,
            "rdp.mcs.max_channel_ids": _I,
            "rdp.mcs.user_data_length": _I,
            "rdp.channel": _B,
            "rdp.channels": _B,
            "rdp.channel_count": _I,
            "rdp.malformed": _B,
            "rdp.encrypted": _I,
            "rdp.x224.code": _I,
            "rdp.fastpath": _I,
        },
        new_decoder=_new_decoder,
        probe=_probe,
        description="RDP: TPKT, X.224, MCS Connect-Initial with GCC channels (MS-RDPBCGR)",
    )
)
