"""Accept verdicts in batches: one netlink write for the packets of one receive burst.

A queue worker drains every packet waiting on its queue, then gives their verdicts. With
netfilterqueue alone each accepted packet is one `sendmsg`, in which the kernel re-injects it
and forwards it on (bridge, veth, the receiver's TCP) before the worker sees its next packet.
`VerdictBatch` collects the accept verdicts of a burst (packet id and mark) as
NFQNL_MSG_VERDICT messages (include/uapi/linux/netfilter/nfnetlink_queue.h) and writes them
in one datagram on the queue's own netlink socket; the kernel handles the messages of one
datagram in order (netlink_rcv_skb), so the packets leave in the order they were queued.

Guarantees:
- A verdict added is written by the next `flush`, which the worker calls when `accept` says
  `limit` verdicts are held (so no packet waits behind more than `limit - 1` others) and when
  its receive burst ends.
- Verdicts leave in the order they were added. Anything that gives a verdict another way
  (drop, reset, repeat, a fail-policy verdict through netfilterqueue) flushes first, so the
  packets of one flow keep their order.
- A failed write is raised as OSError after the held verdicts were discarded (none is written
  twice); the kernel then still holds those packets, which the caller must account for.
"""

from __future__ import annotations

import os
import socket
import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NLM_F_REQUEST = 1
NF_ACCEPT = 1
DEFAULT_LIMIT = 16

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, packed by hand)
_NLATTR = struct.Struct("=HH")  # nla_len, nla_type (host order)
# after the constant header: the verdict header (verdict, packet id) and the mark, big endian
_BODY = struct.Struct(">II4sI")
MESSAGE_SIZE = _NLMSGHDR.size + _NFGENMSG.size + _NLATTR.size + _BODY.size


def verdict_header(queue_num: int) -> bytes:
    """The constant first 24 bytes of an accept message for `queue_num`."""
    return (
        _NLMSGHDR.pack(
            MESSAGE_SIZE, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, 0
        )
        + _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(queue_num))
        + _NLATTR.pack(_NLATTR.size + 8, NFQA_VERDICT_HDR)
    )


_MARK_ATTR = _NLATTR.pack(_NLATTR.size + 4, NFQA_MARK)


class VerdictBatch:
    """Accept verdicts of one queue, written together (see the module's guarantees)."""

    __slots__ = ("_sock", "_header", "_held", "limit")

    def __init__(self, fd: int, queue_num: int, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"verdict batch limit {limit} must be at least 1")
        # our own descriptor on the queue's socket: same netlink port, so the kernel takes
        # these verdicts for the packets it handed to netfilterqueue
        self._sock = socket.socket(fileno=os.dup(fd))
        self._header = verdict_header(queue_num)
        self._held: list[bytes] = []
        self.limit = limit

    def accept(self, packet_id: int, mark: int) -> bool:
        """Hold an accept verdict; True when `limit` are held (the caller flushes)."""
        held = self._held
        held.append(self._header + _BODY.pack(NF_ACCEPT, packet_id, _MARK_ATTR, mark))
        return len(held) >= self.limit

    def __len__(self) -> int:
        return len(self._held)

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        data = b"".join(held)
        held.clear()
        self._sock.send(data)  # to the kernel: synchronous, each message handled in order

    def close(self) -> None:
        self._sock.close()
