"""SQL Server Resolution Protocol decoder (UDP 1434), one datagram at a time.

Follows [MC-SQLR] section 2.2: CLNT_BCAST_EX (0x02, 2.2.1), CLNT_UCAST_EX (0x03, 2.2.2),
CLNT_UCAST_INST (0x04 + INSTANCENAME, 2.2.3), CLNT_UCAST_DAC (0x0F + protocol version +
INSTANCENAME, 2.2.4) and SVR_RESP (0x05 + RESP_SIZE + RESP_DATA, 2.2.5). INSTANCENAME is a
NUL-terminated string of at most 32 bytes (MAX_INSTANCE_NAME); SQL Slammer (MS02-039,
CVE-2002-0649) is a CLNT_UCAST_INST whose name runs on for hundreds of bytes with no NUL, so
`instance_length` counts the name bytes as sent (up to the NUL or the end of the datagram) and
`oversized` says whether it exceeds the limit. Other first bytes (0x08 and 0x0A in MS02-039's
other two bugs) are reported with their type and length, not refused.
Guarantees:
- `parse_datagram` raises only MssqlDecodeError (empty datagram, truncated DAC/SVR_RESP header);
- it keeps at most MAX_INSTANCE_KEEP bytes of a name and MAX_DATAGRAM bytes are looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.decode.registry import AppDecoder, AppProtocol, AppRecord, FieldKind, register
from gateway.errors import DecodeError
from gateway.vocabulary import PROTO_UDP, Direction

MAX_DATAGRAM = 65535
MAX_INSTANCE_NAME = 32  # [MC-SQLR] 2.2.3: at most 32 bytes excluding the terminating NUL
MAX_INSTANCE_KEEP = 256  # name bytes kept in the event (its length is counted in full)
SVR_RESP_MAX_DATA = 1024  # [MC-SQLR] 2.2.5: RESP_DATA of a CLNT_UCAST_INST answer

CLNT_BCAST_EX = 0x02
CLNT_UCAST_EX = 0x03
CLNT_UCAST_INST = 0x04
SVR_RESP = 0x05
CLNT_UCAST_DAC = 0x0F
MESSAGE_NAMES = {
    CLNT_BCAST_EX: "CLNT_BCAST_EX",
    CLNT_UCAST_EX: "CLNT_UCAST_EX",
    CLNT_UCAST_INST: "CLNT_UCAST_INST",
    SVR_RESP: "SVR_RESP",
    CLNT_UCAST_DAC: "CLNT_UCAST_DAC",
}


class MssqlDecodeError(DecodeError):
    """The datagram is not an MC-SQLR message (the sender's fault)."""


@dataclass(frozen=True, slots=True)
class SqlrMessage:
    msg_type: int
    name: str  # MESSAGE_NAMES entry, "" for types the protocol does not define
    length: int  # datagram length
    instance: bytes  # INSTANCENAME without its NUL (first MAX_INSTANCE_KEEP bytes)
    instance_length: int  # name bytes as sent, up to the NUL or the end of the datagram; -1 if none
    terminated: bool  # the name ended with a NUL inside the datagram
    protocol_version: int  # CLNT_UCAST_DAC only, else -1
    resp_size: int  # SVR_RESP only: RESP_SIZE as sent, else -1

    @property
    def oversized(self) -> bool:
        """An instance name longer than MC-SQLR allows (the MS02-039 overflow condition)."""
        return self.instance_length > MAX_INSTANCE_NAME


def _instance(data: bytes, start: int) -> tuple[bytes, int, bool]:
    end = data.find(b"\0", start)
    terminated = end >= 0
    if not terminated:
        end = len(data)
    return data[start : min(end, start + MAX_INSTANCE_KEEP)], end - start, terminated


def parse_datagram(data: bytes) -> SqlrMessage:
    """Decode one UDP 1434 datagram."""
    if not data:
        raise MssqlDecodeError("empty MC-SQLR datagram")
    data = data[:MAX_DATAGRAM]
    msg_type = data[0]
    name = MESSAGE_NAMES.get(msg_type, "")
    instance, instance_length, terminated = b"", -1, False
    version = resp_size = -1
    if msg_type == CLNT_UCAST_INST:
        instance, instance_length, terminated = _instance(data, 1)
    elif msg_type == CLNT_UCAST_DAC:
        if len(data) < 2:
            raise MssqlDecodeError("CLNT_UCAST_DAC without its protocol version byte")
        version = data[1]
        instance, instance_length, terminated = _instance(data, 2)
    elif msg_type == SVR_RESP:
        if len(data) < 3:
            raise MssqlDecodeError(f"SVR_RESP of {len(data)} bytes has no RESP_SIZE")
        resp_size = int.from_bytes(data[1:3], "little")
    return SqlrMessage(
        msg_type, name, len(data), instance, instance_length, terminated, version, resp_size
    )


class SqlrAdapter:
    """App-layer adapter: one record per datagram (fields mssql.*)."""

    __slots__ = ()

    def feed(self, data: bytes) -> list[AppRecord]:
        return [AppRecord("mssql", message_fields(parse_datagram(data)))]


def message_fields(message: SqlrMessage) -> dict[str, int | bytes]:
    """A message as rule fields (mssql.*)."""
    return {
        "mssql.type": message.msg_type,
        "mssql.length": message.length,
        "mssql.instance": message.instance,
        "mssql.instance_length": message.instance_length,
        "mssql.instance_terminated": int(message.terminated),
        "mssql.protocol_version": message.protocol_version,
        "mssql.resp_size": message.resp_size,
    }


def _new_decoder(transport: int, direction: Direction) -> AppDecoder:
    return SqlrAdapter()


register(
    AppProtocol(
        name="mssql",
        transports=frozenset({PROTO_UDP}),
        ports=frozenset({1434}),
        fields={
            "mssql.type": FieldKind.INT,
            "mssql.length": FieldKind.INT,
            "mssql.instance": FieldKind.BYTES,
            "mssql.instance_length": FieldKind.INT,
            "mssql.instance_terminated": FieldKind.INT,
            "mssql.protocol_version": FieldKind.INT,
            "mssql.resp_size": FieldKind.INT,
        },
        new_decoder=_new_decoder,
        probe=None,  # by port: Slammer's first byte is a legal message type
        description="SQL Server Resolution Protocol on UDP 1434 (MC-SQLR)",
    )
)
