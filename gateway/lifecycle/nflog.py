"""A minimal NFLOG reader: bind netlink NFLOG groups and yield the logged packets.

Speaks nfnetlink_log directly over an AF_NETLINK socket (linux/netfilter/nfnetlink_log.h):
NFULNL_MSG_CONFIG with NFULA_CFG_CMD (BIND), then NFULA_CFG_MODE (COPY_PACKET, range),
NFULA_CFG_QTHRESH (QUEUE_THRESHOLD packets batched per netlink message) and NFULA_CFG_TIMEOUT
(QUEUE_TIMEOUT_CS: a batch waits at most this long) per group, then NFULNL_MSG_PACKET messages
carrying NFULA_PREFIX and NFULA_PAYLOAD (the IP packet, from the network header). Used inside
the gateway namespace by the lifecycle monitor (learning, lockdown, and the firewall's drop log:
gateway/lifecycle/monitor.py). Guarantees: every read is bounded (RECV_BUFFER bytes),
`receive(timeout)` never blocks longer than timeout, malformed messages (bad lengths, packet
messages without payload) are skipped and counted in `malformed`, never raised; messages the
kernel could not deliver (socket buffer full: ENOBUFS) are counted in `overruns`; a failure to
bind names the group and the kernel's errno.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import VpatchError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 3
NFULA_CFG_QTHRESH = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
RECV_BUFFER = 1 << 16  # one recv; the kernel batches several packets per datagram
SOCKET_RCVBUF = 1 << 20
COPY_RANGE = 128  # bytes of each packet asked for (headers only)
QUEUE_THRESHOLD = 32  # packets the kernel batches into one netlink datagram
QUEUE_TIMEOUT_CS = 10  # hundredths of a second a batch waits before it is sent anyway

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big-endian group, packed below)
_NLA = struct.Struct("=HH")


class NflogError(VpatchError):
    """The NFLOG socket could not be opened or bound."""


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    group: int
    family: int  # AF_INET / AF_INET6
    prefix: str
    payload: bytes  # the IP packet (truncated to the copy range)


def _attr(kind: int, data: bytes) -> bytes:
    raw = _NLA.pack(_NLA.size + len(data), kind) + data
    return raw + b"\x00" * (-len(raw) % 4)


def _config_msg(group: int, seq: int, attrs: bytes) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_messages(data: bytes, group_of: dict[int, int] | None = None) -> list[LoggedPacket]:
    """Every NFULNL_MSG_PACKET in one netlink datagram (others and garbage are skipped)."""
    return parse_datagram(data)[0]


def parse_datagram(data: bytes) -> tuple[list[LoggedPacket], int]:
    """(packets, malformed messages) of one netlink datagram: a length that does not fit ends
    the datagram (counted once); a packet message without payload is counted and skipped;
    other message kinds (acks, errors) are skipped."""
    out: list[LoggedPacket] = []
    malformed = 0
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            return out, malformed + 1
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            packet = _packet(data, off, length)
            if packet is None:
                malformed += 1
            else:
                out.append(packet)
        off += (length + 3) & ~3
    return out, malformed + (1 if 0 < len(data) - off < _NLMSG.size else 0)


def _packet(data: bytes, off: int, length: int) -> LoggedPacket | None:
    """The packet message at `off` (its attributes), None when it carries no payload."""
    if length < 20:
        return None
    family, _, res_id = _NFGEN.unpack_from(data, off + 16)
    group = socket.ntohs(res_id)
    prefix, payload = "", b""
    p, end = off + 20, off + length
    while p + _NLA.size <= end:
        alen, akind = _NLA.unpack_from(data, p)
        if alen < _NLA.size or p + alen > end:
            break
        value = data[p + 4 : p + alen]
        akind &= 0x3FFF
        if akind == NFULA_PAYLOAD:
            payload = value
        elif akind == NFULA_PREFIX:
            prefix = value.rstrip(b"\x00").decode("latin-1")
        p += (alen + 3) & ~3
    return LoggedPacket(group, family, prefix, payload) if payload else None


class NflogReader:
    """An NFLOG socket bound to some groups in the current network namespace."""

    def __init__(self, groups: Iterable[int]) -> None:
        self.groups = tuple(groups)
        self.malformed = 0  # netlink messages that could not be read
        self.overruns = 0  # times the kernel dropped messages (socket buffer full)
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
            self.sock.bind((0, 0))
        except OSError as err:
            raise NflogError(f"cannot open an NFLOG netlink socket: {err}") from err
        for seq, group in enumerate(self.groups, start=1):
            self._request(group, seq, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            mode = struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)
            attrs = (
                _attr(NFULA_CFG_MODE, mode)
                + _attr(NFULA_CFG_QTHRESH, struct.pack("!I", QUEUE_THRESHOLD))
                + _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", QUEUE_TIMEOUT_CS))
            )
            self._request(group, seq + 1000, attrs)

    def _request(self, group: int, seq: int, attrs: bytes) -> None:
        self.sock.send(_config_msg(group, seq, attrs))
        ready, _, _ = select.select([self.sock], [], [], 2.0)
        if not ready:
            raise NflogError(f"NFLOG group {group}: no answer to the config request")
        data = self.sock.recv(RECV_BUFFER)
        if len(data) >= _NLMSG.size + 4:
            _, kind, _, _, _ = _NLMSG.unpack_from(data)
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, _NLMSG.size)[0]
                if code:
                    raise NflogError(
                        f"NFLOG group {group}: kernel refused the binding: "
                        f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
                    )

    def receive(self, timeout: float) -> list[LoggedPacket]:
        """Packets logged since the last call (waits up to timeout seconds for the first)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        try:
            data = self.sock.recv(RECV_BUFFER)
        except OSError as err:
            if err.errno == errno.ENOBUFS:  # the kernel dropped messages: go on
                self.overruns += 1
                return []
            raise
        packets, malformed = parse_datagram(data)
        self.malformed += malformed
        return packets

    def close(self) -> None:
        self.sock.close()
