"""NFQUEUE intake: one worker process per queue, the only live packet I/O of the gateway.

A worker binds its queue (netfilterqueue), feeds every packet's IP datagram to
`Engine.process_ip(data, now)` with `now = time.time()` (wall clock, the same clock as capture
timestamps in `vpatch replay`, so event times agree) and applies the Decision:

- ACCEPT / ALERT: accept (held and written with the rest of the receive burst's accepts in
  one netlink message, gateway/intake/verdicts.py, unless `queues.verdict_batch` is 1), with
  vpatch's mark bits replaced (other mark bits kept, unless
  `queues.balance` flow hashed them away: then the packet leaves with ours only): none, which
  clears the "queued" bit the kernel rules set before queueing (what still carries it in
  POSTROUTING was passed uninspected and is counted there); when `decision.final` the BYPASS
  bit, which mangle POSTROUTING saves into the connmark so the kernel stops queueing the
  connection (see gateway/firewall/render.py).
- DROP: drop; with the BLOCKED bit configured, by a `repeat` verdict carrying that bit, which
  the first rules of our FORWARD chain turn into the connmark and a drop (render.py).
- RESET (TCP): the offending packet is rewritten into a RST|ACK towards its destination (its own
  addresses, ports and seq; set_payload + accept) and a RST is sent back to its sender out of
  the interface it came in on (physindev when bridged, else indev), over AF_PACKET to the
  sender's MAC with that interface's MAC as source. The rewritten packet carries the BLOCKED
  mark bit, kept in the connmark, so the kernel queues the next SYN on these ports (conntrack
  never sees these resets). RESET on non-TCP degrades to DROP.

Guarantees:
- Every packet gets exactly one verdict. Any exception while deciding gives the fail-policy
  verdict (accept when open, drop when closed) and is counted (`errors`) and logged (rate
  limited).
- Queue full: with fail_policy open the worker sets NFQA_CFG_F_FAIL_OPEN on its queue
  (include/uapi/linux/netfilter/nfnetlink_queue.h: an NFQNL_MSG_CONFIG message with
  NFQA_CFG_MASK/NFQA_CFG_FLAGS, sent on the queue's own netlink socket, which owns the queue),
  so the kernel accepts instead of dropping. The kernel's acknowledgment is awaited; packet
  messages that arrive meanwhile are handed to netfilterqueue afterwards, none is lost.
  GSO is left off (netfilterqueue's 4 KiB receive buffer cannot take GSO super-packets).
- Counters live in shared memory (`WorkerStats`, one writer: the worker) for the parent and
  the control socket: `packets` and `bytes` (IP datagram bytes handed to the engine, i.e.
  inspected), verdict counts, `errors`, `events`, policy versions, `rules` (rules loaded),
  `gc_runs`/`gc_found` (safety-valve garbage collections and the cyclic garbage they found);
  `WorkerStats.rules`: firings per rule, blocked or alerting (gateway/intake/rulecounts.py;
  a queue worker's counters only, None for other counter sets such as the HTTPS plane's).
  Events go to a per-worker EventSink (SQLite WAL handles several writers), which aggregates
  storms (gateway/events/aggregate.py) and never blocks the packet path; its counters and
  health (`events_written`, `event_records`, `events_aggregated`, `events_dropped`, `events_lost`,
  `store_errors`, `store_failing`, the writer's backlog `events_queued` and `events_retry`)
  are copied into the worker's counters once a second.
- No garbage-collection pauses: the worker turns Python's automatic cyclic collection off
  (reference counting frees what the engine allocates) and runs a full collection only when
  the net count of container objects passes GC_BASE_OBJECTS + GC_OBJECTS_PER_FLOW *
  max_flows (`collect_if_grown`, checked once a second), so memory stays bounded even if a
  reference cycle slipped in.
- SIGTERM/SIGINT: the worker finishes the packet in hand, unbinds and exits 0.
- Standby (`start_worker(..., go=Event)`): the process loads the rules and the policy, then
  waits for `go` without touching the queue or its counters; once set, it binds the queue in
  milliseconds (the supervisor sets it when the active worker dies).
- Live policy (control socket `reload`): the parent writes the wanted policy version into the
  worker's `policy_wanted` counter; the worker compares it between packet batches (at least
  every POLL_INTERVAL when idle), reads `policy_snapshot()` (gateway/policy/snapshot.py) from
  `policy.database`, builds a CompiledPolicy and hands it to `Engine.set_policy`, then
  publishes the version in `policy_version`. Flows in progress keep flowing; nothing is
  unbound or restarted. A policy that fails to load is logged and counted (`policy_errors`);
  the previous one stays.
- Live rules (control socket `rules-reload`, after the parent validated the new set): the
  parent writes the wanted rules version into `rules_wanted`; the worker loads and compiles
  the rules in a background thread (`RuleLoader`) while its main loop keeps giving verdicts,
  then swaps them in between two packet batches (`Engine.swap_rules`: new flows get the new
  rules, flows in progress finish with the ones they started with) and publishes
  `rules_version` and `rules`. A set that fails to load here is counted (`rules_errors`) and
  the previous one stays.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import logging
import multiprocessing
import multiprocessing.sharedctypes
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from gateway.config import FailPolicy, GatewayConfig
from gateway.database import db_errors, gateway_name, policy_target, target_exists
from gateway.decode.packet import parse_ip
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.events.eve import Event
from gateway.events.sink import EventSink
from gateway.flow.normalize import ChecksumMode, Reason
from gateway.intake.breakdown import STAT_NAMES as BREAKDOWN_NAMES
from gateway.intake.breakdown import Breakdown
from gateway.intake.breakdown import wanted as breakdown_wanted
from gateway.intake.rulecounts import RuleCounts
from gateway.intake.verdicts import VerdictBatch
from gateway.match.matcher import Matcher
from gateway.match.rules import RuleSet, load_rules
from gateway.policy import cache as policy_cache
from gateway.policy.appcontrol import parse_host_controls, rule_paths, stored_controls
from gateway.policy.cache import StoredPolicy
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store, StoreError
from gateway.verdict import Decision
from gateway.verdict.reset import build_ethernet, rst_to_client, rst_to_server
from gateway.vocabulary import PROTO_TCP, Action, Limit

log = logging.getLogger("vpatch.nfqueue")

# Plain constants for the per-packet handler (an enum member looked up on its class costs
# about 70 ns on Python 3.11: gateway/vocabulary.py, DIRECTIONS).
_ACCEPT = Action.ACCEPT
_ALERT = Action.ALERT
_RESET = Action.RESET

# netlink / nfnetlink_queue constants (linux/netlink.h, linux/netfilter/nfnetlink*.h)
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFNETLINK_V0 = 0
_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR_U32 = struct.Struct("=HH")  # followed by a big-endian u32
CONFIG_SEQ = 0x76700001  # our config message's sequence number
ACK_TIMEOUT = 2.0  # seconds to wait for the kernel's answer to the config message
MAX_EARLY_MESSAGES = 4096  # packet messages buffered while waiting for that answer

POLL_INTERVAL = 0.2  # seconds between checks of the stop flag when idle
EXPIRE_INTERVAL = 1.0  # seconds between engine.expire() calls
ERROR_LOG_INTERVAL = 5.0  # at most one error log line per this many seconds
# The worker does not run Python's cyclic garbage collector on its own (see collect_if_grown).
GC_OBJECTS_PER_FLOW = 64  # container objects a flow may hold (measured: about 26 for HTTP)
GC_BASE_OBJECTS = 200_000  # headroom for everything that is not a flow
SIOCGIFHWADDR = 0x8927
ETH_P_ALL = 0x0003

STAT_NAMES = (
    "packets", "accepted", "dropped", "reset", "bypassed", "bypassed_direction", "errors",
    "events", "bound", "pid", "started", "policy_wanted", "policy_version", "policy_errors",
    "bytes", "rules", "gc_runs", "gc_found", "standby_ready", "rules_wanted", "rules_version",
    "rules_errors", "events_written", "event_records", "events_aggregated", "events_dropped",
    "events_lost", "store_errors", "store_failing", "events_queued", "events_retry",
    "heartbeat",  # time.monotonic() in ms at the worker loop's last turn (the watchdog's)
    "verdict_writes", "verdict_write_errors",  # batched accept verdicts (verdicts.py)
    *BREAKDOWN_NAMES,
)  # fmt: skip
# The engine's own counters (EngineStats.as_dict), copied into the shared counters every
# EXPIRE_INTERVAL by publish_engine_counters, so that `status` shows every limit reached
# (gateway/flow/limits.py), every normaliser refusal and the defragmenter's and decoders' work.
ENGINE_STAT_NAMES = (
    *(f"limit_{limit.value}" for limit in Limit),
    *(f"norm_{reason.value}" for reason in Reason),
    "frag_held", "frag_completed", "frag_poisoned", "frag_refused",
    "flows_active", "flows_inspected", "flows_blocked", "decode_errors", "internal_errors",
    "app_decode_errors", "app_recoveries", "app_internal_errors", "app_unidentified",
    "app_records", "http_memo_hits",
)  # fmt: skip
_ALL_NAMES = STAT_NAMES + ENGINE_STAT_NAMES
_IDX = {name: i for i, name in enumerate(_ALL_NAMES)}
# WorkerStats name -> EventSink.stats() name, copied once a second (publish_sink)
SINK_STATS = {"events_written": "written_events", "event_records": "written",
              "events_aggregated": "aggregated",
              "events_dropped": "dropped", "events_lost": "lost",
              "store_errors": "write_errors", "store_failing": "failing",
              "events_queued": "queued", "events_retry": "retry_rows"}  # fmt: skip


class WorkerStats:
    """Counters of one queue's worker in shared memory: the worker writes, anyone reads.
    `names`: the counters (default: a queue worker's; the HTTPS plane has its own)."""

    def __init__(self, names: tuple[str, ...] = _ALL_NAMES) -> None:
        self._names = names
        self._idx = _IDX if names is _ALL_NAMES else {n: i for i, n in enumerate(names)}
        self._arr: Any = multiprocessing.sharedctypes.RawArray("Q", len(names))
        # the same memory as unsigned 64-bit ints: indexing it costs less than the ctypes
        # array's __getitem__/__setitem__ (the packet handler's three counters per packet)
        self._view = memoryview(self._arr).cast("B").cast("Q")
        # firings per rule (gateway/intake/rulecounts.py): a queue worker's only, the HTTPS
        # plane's own counters have none (its events are counted by the engine it replays into)
        self.rules = RuleCounts() if names is _ALL_NAMES else None

    def __getstate__(self) -> dict[str, Any]:
        """Sent to a spawned worker: the shared array (multiprocessing passes it on), not its
        view, which cannot be pickled and is made again on arrival."""
        state = dict(self.__dict__)
        del state["_view"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._view = memoryview(self._arr).cast("B").cast("Q")

    def add(self, name: str, n: int = 1) -> None:
        self._view[self._idx[name]] += n

    def received(self, nbytes: int) -> None:
        """One packet of `nbytes` bytes: `packets` and `bytes` (the handler's per-packet add)."""
        view, idx = self._view, self._idx
        view[idx["packets"]] += 1
        view[idx["bytes"]] += nbytes

    def set(self, name: str, value: int) -> None:
        self._arr[self._idx[name]] = value

    def get(self, name: str) -> int:
        return int(self._arr[self._idx[name]])

    def snapshot(self) -> dict[str, int]:
        return {name: int(self._arr[i]) for i, name in enumerate(self._names)}

    def reset(self) -> None:
        for i in range(len(self._names)):
            self._arr[i] = 0


ENGINE_GAUGES = frozenset({"flows_active"})  # engine figures that are levels, not totals


def engine_counter_base(stats: WorkerStats) -> dict[str, int]:
    """What the queue's earlier workers counted (the shared counters when this worker binds):
    added to this worker's own totals, so that a restarted worker's `status` and metrics go on
    from where the dead one last published (at most EXPIRE_INTERVAL of its counts are lost)."""
    return {name: stats.get(name) for name in ENGINE_STAT_NAMES if name not in ENGINE_GAUGES}


def publish_engine_counters(
    counters: Mapping[str, int], stats: WorkerStats, base: Mapping[str, int] | None = None
) -> None:
    """Copy the engine's counters (`EngineStats.as_dict()`) named in ENGINE_STAT_NAMES into
    the shared counters the control socket's `status` reads, on top of `base`."""
    base = base or {}
    for name in ENGINE_STAT_NAMES:
        stats.set(name, base.get(name, 0) + int(counters.get(name, 0)))


def publish_counters(counters: Mapping[str, int], stats: WorkerStats) -> None:
    """Copy counters whose names are WorkerStats names (the breakdown's) into shared memory."""
    for name, value in counters.items():
        stats.set(name, int(value))


class PacketLike(Protocol):
    """The subset of netfilterqueue.Packet the worker uses (tests may feed their own)."""

    indev: int
    physindev: int
    id: int

    def get_payload(self) -> bytes: ...
    def get_mark(self) -> int: ...
    def get_hw(self) -> bytes | None: ...
    def set_mark(self, mark: int) -> None: ...
    def set_payload(self, payload: bytes) -> None: ...
    def accept(self) -> None: ...
    def drop(self) -> None: ...
    def repeat(self) -> None: ...


class EngineLike(Protocol):
    def process_ip(self, data: bytes, now: float) -> Decision: ...
    def expire(self, now: float) -> None: ...


class _Counting(Protocol):
    def as_dict(self) -> dict[str, int]: ...


class SinkLike(Protocol):
    def emit(self, event: Event) -> object: ...
    def close(self) -> object: ...


# --------------------------------------------------------------------------------------------
# Fail-open flag on the queue


def _config_message(queue_num: int, flags: int, mask: int) -> bytes:
    attrs = b""
    for kind, value in ((NFQA_CFG_MASK, mask), (NFQA_CFG_FLAGS, flags)):
        attrs += _NLATTR_U32.pack(8, kind) + struct.pack("!I", value)
    body = _NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue_num) + attrs
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return (
        _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, CONFIG_SEQ, 0
        )
        + body
    )


def _find_ack(datagram: bytes) -> int | None:
    """The error code of the kernel's answer to our config message in a datagram, if there."""
    off = 0
    while off + _NLMSGHDR.size <= len(datagram):
        length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(datagram, off)
        if length < _NLMSGHDR.size:
            return None
        if mtype == NLMSG_ERROR and seq == CONFIG_SEQ:
            (code,) = struct.unpack_from("=i", datagram, off + _NLMSGHDR.size)
            return int(code)
        off += (length + 3) & ~3
    return None


class _Replay:
    """A socket stand-in for NetfilterQueue.run_socket: hands over buffered datagrams once."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self._datagrams = datagrams

    def recv(self, _size: int) -> bytes:
        if not self._datagrams:
            raise BlockingIOError(errno.EAGAIN, "drained")
        return self._datagrams.pop(0)


def set_queue_flags(nfq: Any, queue_num: int, flags: int, mask: int) -> None:
    """Send NFQNL_MSG_CONFIG flags for our bound queue on its own socket; wait for the ACK.

    Packet messages received while waiting are passed to netfilterqueue afterwards.
    Raises OSError when the kernel refuses (errno from its answer).
    """
    sock = socket.socket(fileno=os.dup(nfq.get_fd()))
    early: list[bytes] = []
    try:
        sock.send(_config_message(queue_num, flags, mask))
        deadline = time.monotonic() + ACK_TIMEOUT
        code: int | None = None
        while code is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise OSError(
                    errno.ETIMEDOUT, f"no answer to NFQNL_MSG_CONFIG for queue {queue_num}"
                )
            datagram = sock.recv(65536)
            code = _find_ack(datagram)
            if code is None and len(early) < MAX_EARLY_MESSAGES:
                early.append(datagram)
        if code != 0:
            raise OSError(
                -code,
                f"NFQNL_MSG_CONFIG flags {flags:#x} on queue {queue_num}: {os.strerror(-code)}",
            )
    finally:
        sock.close()  # our dup only; netfilterqueue's descriptor stays open
        if early:
            nfq.run_socket(_Replay(early))


# --------------------------------------------------------------------------------------------
# The per-packet handler (no I/O of its own except the client RST)


class ResetSender:
    """Sends Ethernet frames out of an interface by index (AF_PACKET), MACs cached."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}
        self._macs: dict[int, bytes] = {}

    def _sock(self, ifindex: int) -> socket.socket:
        s = self._socks.get(ifindex)
        if s is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            name = socket.if_indextoname(ifindex)
            s.bind((name, 0))
            req = struct.pack("256s", name.encode()[:15])
            self._macs[ifindex] = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]
            self._socks[ifindex] = s
        return s

    def send(self, ifindex: int, dst_mac: bytes, ip_datagram: bytes) -> None:
        s = self._sock(ifindex)
        s.send(build_ethernet(dst_mac[:6], self._macs[ifindex], ip_datagram))

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


class PacketHandler:
    """Decides and gives the verdict for one packet; never raises, never skips a verdict."""

    def __init__(
        self,
        engine: EngineLike,
        stats: WorkerStats,
        fail_policy: FailPolicy,
        bypass: int,
        mask: int,
        sink: SinkLike | None = None,
        resets: ResetSender | None = None,
        clock: Callable[[], float] = time.time,
        direction_bits: tuple[int, int] = (0, 0),
        blocked_bit: int = 0,
        keep_other_bits: bool = True,
        batch: VerdictBatch | None = None,
    ) -> None:
        self.engine = engine
        # accept verdicts collected and written once per receive burst (verdicts.py); None:
        # each through netfilterqueue at once
        self.batch = batch
        self.bypass_to_server, self.bypass_to_client = direction_bits
        self.stats = stats
        self.fail_open = fail_policy is FailPolicy.OPEN
        self.bypass = bypass
        self.mask = mask
        # the mark bits that are not ours, kept; none when the kernel's flow hash took them
        self.keep = ~mask & 0xFFFFFFFF if keep_other_bits else 0
        self.blocked_bit = blocked_bit
        self.sink = sink
        self.resets = resets if resets is not None else ResetSender()
        self.clock = clock
        self._last_error_log = 0.0

    def __call__(self, pkt: PacketLike) -> None:
        stats = self.stats
        done = counted = False
        decision: Decision | None = None
        try:
            data = pkt.get_payload()
            stats.received(len(data))  # packets and bytes
            counted = True
            decision = self.engine.process_ip(data, self.clock())
            action = decision.action
            if action is _ACCEPT or action is _ALERT:
                # our bits replace the ones the packet came with: the kernel's "queued" bit
                # is cleared on every packet given a verdict here (render.py counts the rest)
                bits = 0
                if decision.final:
                    bits = self.bypass
                    stats.add("bypassed")
                elif decision.done_to_server or decision.done_to_client:
                    bits = (
                        self.bypass_to_server if decision.done_to_server else self.bypass_to_client
                    )
                    if bits:
                        stats.add("bypassed_direction")
                if decision.reopening:
                    bits |= self.blocked_bit  # keep the kernel queueing the handshake
                mark = (pkt.get_mark() & self.keep) | bits if self.keep else bits
                done = True
                batch = self.batch
                if batch is not None:
                    if batch.accept(pkt.id, mark):  # full
                        self.flush()
                else:
                    pkt.set_mark(mark)
                    pkt.accept()
                stats.add("accepted")
            elif action is _RESET:
                self.flush()  # the flow's earlier packets leave before the reset
                done = self._reset(pkt, data)
            else:
                self.flush()
                done = True
                self._drop(pkt)
                stats.add("dropped")
            done = True
        except Exception as err:  # noqa: BLE001 - the catch-all of the fail policy
            if not counted:
                stats.add("packets")
            stats.add("errors")
            self._log_error(err)
            if not done:
                self._fail_verdict(pkt)
        if decision is not None and decision.events:
            self._emit(decision)

    def _reset(self, pkt: PacketLike, data: bytes) -> bool:
        """RESET verdict, always given here: resets for TCP, a drop otherwise. True when given."""
        try:
            parsed = parse_ip(data)
            replacement = rst_to_server(parsed) if parsed.proto == PROTO_TCP else None
            if parsed.fragment:
                replacement = None
        except Exception as err:  # noqa: BLE001 - undecodable but blocked: drop it
            self._log_error(err)
            replacement = None
        if replacement is None:
            pkt.drop()
            self.stats.add("dropped")
            return True
        pkt.set_payload(replacement)
        # the "blocked" bit goes into the connmark (render.py): the next SYN on these ports
        # is queued, so a reused client port opens a new flow instead of meeting this one
        pkt.set_mark((pkt.get_mark() & self.keep) | self.blocked_bit)
        pkt.accept()
        self.stats.add("reset")
        try:
            hw = pkt.get_hw()
            ifindex = pkt.physindev or pkt.indev
            if hw and ifindex:
                self.resets.send(ifindex, hw, rst_to_client(parsed))
        except OSError as err:
            self.stats.add("errors")
            self._log_error(err)
        return True

    def _drop(self, pkt: PacketLike) -> None:
        """DROP verdict. With a blocked bit: the packet goes back through the hook (`repeat`)
        carrying it, where the kernel rules put it in the connmark and drop the packet
        (render.py), as the RESET's rewritten packet does on its way out; a packet that came
        with the bit (the rules are not there) is dropped here, so it never loops."""
        mark = pkt.get_mark()
        if not self.blocked_bit or mark & self.blocked_bit:
            pkt.drop()
            return
        pkt.set_mark((mark & self.keep) | self.blocked_bit)
        pkt.repeat()

    def flush(self) -> None:
        """Write the held accept verdicts (see verdicts.py). A failed write is counted and
        logged; the kernel keeps those packets until the queue is unbound (then drops them),
        or passes new ones uninspected when the queue is full and fail-open."""
        batch = self.batch
        if batch is None or not len(batch):
            return
        try:
            batch.flush()
        except OSError as err:
            self.stats.add("errors")
            self.stats.add("verdict_write_errors")
            self._log_error(err)
        self.stats.add("verdict_writes")

    def _fail_verdict(self, pkt: PacketLike) -> None:
        self.flush()
        try:
            if self.fail_open:
                pkt.accept()
                self.stats.add("accepted")
            else:
                pkt.drop()
                self.stats.add("dropped")
        except Exception as err:  # noqa: BLE001 - verdict already given or queue gone: nothing left to do
            self._log_error(err)

    def _emit(self, decision: Decision) -> None:
        if self.sink is None:
            return
        rules = self.stats.rules  # a queue worker's counters always have them
        for event in decision.events:
            try:
                if rules is not None:
                    rules.count(event.signature_id, event.blocked, event.count)
                self.sink.emit(event)  # never blocks: a storm is aggregated (events/sink.py)
                self.stats.add("events")
            except Exception as err:  # noqa: BLE001
                self.stats.add("errors")
                self._log_error(err)

    def _log_error(self, err: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.error(
                "packet handling failed (%s errors so far): %r", self.stats.get("errors"), err
            )


# --------------------------------------------------------------------------------------------
# The worker process


CONNTRACK_SYSCTLS = Path("/proc/sys/net/netfilter")
# sysctl -> the value under which conntrack marks wrong segments INVALID
_CONNTRACK_STRICT = {"nf_conntrack_checksum": "1", "nf_conntrack_tcp_be_liberal": "0"}


def conntrack_lax(config: GatewayConfig, sysctls: Path = CONNTRACK_SYSCTLS) -> str | None:
    """None when the kernel rules drop the TCP segments with a wrong checksum or outside the
    tracked window before they are queued (`firewall.drop_invalid` on, and conntrack in this
    namespace verifying both); otherwise why not (then the engine checks them itself)."""
    if not config.firewall.drop_invalid:
        return "firewall.drop_invalid is off"
    for name, strict in _CONNTRACK_STRICT.items():
        try:
            value = (sysctls / name).read_text().strip()
        except OSError as err:
            return f"cannot read net.netfilter.{name}: {err.strerror}"
        if value != strict:
            return f"net.netfilter.{name} is {value}, not {strict}"
    return None


def engine_config(config: GatewayConfig, sysctls: Path = CONNTRACK_SYSCTLS) -> EngineConfig:
    """The engine's EngineConfig from the gateway configuration, for packets from the queue
    (whose SYNs the kernel rules have checked with conntrack, and whose checksums are those on
    the wire: every wrong one is dropped, by the kernel when `conntrack_lax` is None)."""
    return replace(
        EngineConfig.from_gateway(config),
        kernel_checked_syn=True,
        kernel_checked_tcp=conntrack_lax(config, sysctls) is None,
        checksums=ChecksumMode.VERIFY,
    )


def build_engine(config: GatewayConfig) -> EngineLike:
    engine: EngineLike = Engine(load_rules(rule_paths(config)), engine_config(config))
    return engine


def build_sink(config: GatewayConfig, queue_num: int) -> SinkLike | None:
    ev = config.events
    if ev.sqlite is None and ev.jsonl is None:
        return None
    sink: SinkLike = EventSink(  # strict=False: a store that cannot be opened must not
        ev.sqlite,
        ev.jsonl,
        ev.max_queue,
        ev.aggregate_window,
        ev.aggregate_keys,
        strict=False,
        gateway=gateway_name(config),
    )  # stop the worker from inspecting: it is reported and retried instead
    return sink


def publish_sink(stats: WorkerStats, sink: SinkLike | None) -> None:
    """Copy the event sink's counters and health into the shared counters (SINK_STATS)."""
    read = getattr(sink, "stats", None)
    if read is None:
        return
    values = read()
    for name, key in SINK_STATS.items():
        stats.set(name, int(values[key]))


def event_store_health(queues: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The event sinks of the workers (their `WorkerStats` snapshots) in sum, for `status`:
    `failing` (queues whose store's last write failed: inspection goes on, records are held
    for retry), and the totals of written events (in `records` rows), aggregated, dropped
    and lost events and of failed writes; `backlog`: events waiting for the writers (queued
    or held for retry)."""
    snaps = list(queues)
    total = {name: sum(int(q.get(name) or 0) for q in snaps) for name in SINK_STATS}
    return {
        "failing": total.pop("store_failing"),
        "written": total["events_written"],
        "records": total["event_records"],
        "aggregated": total["events_aggregated"],
        "dropped": total["events_dropped"],
        "lost": total["events_lost"],
        "write_errors": total["store_errors"],
        "backlog": total["events_queued"] + total["events_retry"],
    }


def load_policy(config: GatewayConfig) -> CompiledPolicy | None:
    """The CompiledPolicy of the policy store, or None when there is no store file yet. With
    a shared store (`database.url`) each read is cached on disk and a store that cannot be
    read falls back to that cache (gateway/policy/cache.py), logged."""
    if not target_exists(policy_target(config)):
        return None
    try:
        with Store(policy_target(config)) as store:
            hosts, groups, assignments = policy_snapshot(store, fold_exceptions=False)
            stored = StoredPolicy(
                hosts, groups, assignments,
                PolicyExceptions(store).list_exceptions(include_expired=False),
                stored_controls(store),
            )  # fmt: skip
    except db_errors(StoreError) as err:
        cached = policy_cache.load(policy_cache.cache_path(config)) if config.database.url else None
        if cached is None:
            raise
        log.warning("policy store unreachable (%s): the last policy read is applied", err)
        stored = cached
    else:
        if config.database.url:
            try:
                policy_cache.save(policy_cache.cache_path(config), stored)
            except OSError as err:
                log.warning("policy cache %s: %s", policy_cache.cache_path(config), err)
    return CompiledPolicy(
        stored.hosts, stored.groups, stored.assignments, stored.exceptions,
        app_controls=parse_host_controls(stored.app_controls),
    )  # fmt: skip


class RuleLoader:
    """Loads and compiles the configuration's rules in a background thread for one worker,
    so that its packets keep getting verdicts meanwhile; `poll` swaps them in when ready."""

    def __init__(self, config: GatewayConfig, stats: WorkerStats) -> None:
        self._config = config
        self._stats = stats
        self._thread: threading.Thread | None = None
        self._version = 0
        self._result: tuple[RuleSet, Matcher] | BaseException | None = None

    def _build(self) -> None:
        try:
            ruleset = load_rules(rule_paths(self._config))
            self._result = (ruleset, Matcher(ruleset, self._config.engine.identify_any_port))
        except BaseException as err:  # noqa: BLE001 - reported by poll in the main thread
            self._result = err

    def poll(self, engine: Any) -> None:
        """Start a build when a new version is wanted; swap a finished one in (main thread)."""
        stats = self._stats
        if self._thread is None:
            wanted = stats.get("rules_wanted")
            if wanted != stats.get("rules_version"):
                self._version, self._result = wanted, None
                self._thread = threading.Thread(target=self._build, daemon=True)
                self._thread.start()
            return
        if self._thread.is_alive():
            return
        self._thread, result = None, self._result
        if isinstance(result, tuple):
            ruleset, matcher = result
            engine.swap_rules(ruleset, matcher)
            stats.set("rules", len(ruleset.rules))
            log.info("rules version %d: %d rules in use", self._version, len(ruleset.rules))
        else:
            stats.add("rules_errors")
            log.error("rules version %d not loaded, previous rules kept: %r", self._version, result)
        stats.set("rules_version", self._version)  # also on failure: no retry in a loop
        gc.collect()  # the old set's objects once no flow holds them; then out of sight again
        gc.freeze()


def apply_policy(engine: Any, config: GatewayConfig, stats: WorkerStats, wanted: int) -> None:
    """Load the stored policy into the engine and publish `wanted` as applied (never raises)."""
    try:
        policy = load_policy(config)
        if policy is not None:
            engine.set_policy(policy)
        stats.set("policy_version", wanted)
        log.info("policy version %d applied", wanted)
    except Exception as err:  # noqa: BLE001 - a bad policy must not kill the worker
        stats.add("policy_errors")
        stats.set("policy_version", wanted)  # do not retry the same version in a loop
        log.error("policy version %d not applied, previous policy kept: %r", wanted, err)


def collect_if_grown(stats: WorkerStats, limit: int, queue_num: int) -> int | None:
    """The worker's garbage-collection safety valve; returns the objects found, or None.

    With automatic collection off, `gc.get_count()[0]` is the net number of container objects
    allocated since the last collection (CPython counts every allocation up and every free
    down). Live flows keep it below `limit`; only objects kept alive by reference cycles can
    push it past. Then one full collection runs: it is counted (`gc_runs`, `gc_found`), and
    logged as a warning when it found cycles, which is a bug to report (the engine must not
    make any), so memory stays bounded even then.
    """
    if gc.get_count()[0] <= limit:
        return None
    started = time.perf_counter()
    found = gc.collect()
    took = (time.perf_counter() - started) * 1000
    stats.add("gc_runs")
    stats.add("gc_found", found)
    if found:
        log.warning(
            "queue %d: %d objects held only by reference cycles collected (%.0f ms); "
            "the engine should make none, please report this",
            queue_num, found, took,
        )  # fmt: skip
    else:
        log.info("queue %d: full garbage collection found no cycles (%.0f ms)", queue_num, took)
    return found


class GoSignal(Protocol):
    """What a standby worker waits on (multiprocessing.Event)."""

    def wait(self, timeout: float | None = None) -> bool: ...


def _prepare(
    config: GatewayConfig, stats: WorkerStats, go: GoSignal | None, stopped: Callable[[], bool]
) -> tuple[EngineLike, int] | None:
    """Build the engine and load the policy; a standby then waits for `go` (None when it was
    stopped first). Writes the queue's counters only once it is the active worker: a standby
    shares them with the worker it stands in for."""
    rules_loaded = stats.get("rules_wanted")  # the rule files as of this version are read now
    engine = build_engine(config)
    ruleset = getattr(engine, "ruleset", None)
    scratch = WorkerStats()  # the policy outcome, published when active
    applied = stats.get("policy_wanted")
    apply_policy(engine, config, scratch, applied)
    # Reference counting frees everything the engine allocates (tests/test_gc_cycles.py holds
    # it to that), so the cyclic collector would only stall packets: a young-generation pass
    # over the objects of thousands of new flows took up to 150 ms, the p99 of the
    # new-connection benchmark. The rule set and decoders built so far are frozen out of its
    # sight; automatic collection is off; collect_if_grown() is the safety valve.
    gc.collect()
    gc.freeze()
    gc.disable()
    if go is not None:
        stats.set("standby_ready", 1)  # the one counter a standby writes
        while not go.wait(POLL_INTERVAL):
            if stopped():
                return None
        stats.set("standby_ready", 0)
        log.info("standby taking over")
    stats.set("pid", os.getpid())
    stats.set("started", int(time.time()))
    stats.set("rules", len(ruleset.rules) if ruleset is not None else 0)
    stats.set("rules_version", rules_loaded)  # a later version is built by RuleLoader
    stats.set("policy_version", scratch.get("policy_version"))
    stats.add("policy_errors", scratch.get("policy_errors"))
    return engine, applied


def worker_main(
    queue_num: int, config: GatewayConfig, stats: WorkerStats, go: GoSignal | None = None
) -> int:
    """Body of one queue's worker process; returns the exit status. With `go`, a standby: it
    prepares everything, then waits for `go` before it binds the queue."""
    from netfilterqueue import NetfilterQueue

    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    prepared = _prepare(config, stats, go, lambda: stop)
    if prepared is None:
        return 0
    engine, applied = prepared
    loader = RuleLoader(config, stats)  # rules reloaded since they were loaded: built anew
    sink = build_sink(config, queue_num)
    gc_limit = GC_BASE_OBJECTS + GC_OBJECTS_PER_FLOW * config.engine.max_flows
    marks = config.marks
    handler = PacketHandler(
        engine, stats, config.fail_policy, marks.bypass, marks.mask, sink,
        direction_bits=(marks.bypass_to_server, marks.bypass_to_client),
        blocked_bit=marks.blocked, keep_other_bits=not config.queues.hashed,
    )  # fmt: skip
    nfq = NetfilterQueue()
    timing = Breakdown() if breakdown_wanted() else None  # VPATCH_BREAKDOWN=1 (breakdown.py)
    callback: Callable[[Any], None] = handler
    flush: Callable[[], None] = handler.flush

    def drain() -> None:
        """Every packet waiting on the queue, then their held accept verdicts."""
        nfq.run(block=False)
        flush()

    run: Callable[[], None] = drain
    if timing is not None:
        timing.install(engine)
        callback, run, flush = timing.handler(handler), timing.run(drain), timing.flush(flush)
    try:
        nfq.bind(queue_num, callback, max_len=config.queues.max_len)
        if config.fail_policy is FailPolicy.OPEN:
            set_queue_flags(nfq, queue_num, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN)
        if config.queues.verdict_batch > 1:
            handler.batch = VerdictBatch(nfq.get_fd(), queue_num, config.queues.verdict_batch)
        stats.set("bound", 1)
        base = engine_counter_base(stats)
        log.info(
            "queue %d bound (pid %d, fail %s)", queue_num, os.getpid(), config.fail_policy.value
        )
        fd = nfq.get_fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        last_expire = time.monotonic()
        while not stop:
            if poller.poll(POLL_INTERVAL * 1000):
                run()
            wanted = stats.get("policy_wanted")
            if wanted != applied:
                applied = wanted
                apply_policy(engine, config, stats, wanted)
            loader.poll(engine)
            mono = time.monotonic()
            stats.set("heartbeat", int(mono * 1000))
            if mono - last_expire >= EXPIRE_INTERVAL:
                last_expire = mono
                try:
                    engine.expire(time.time())
                except Exception as err:  # noqa: BLE001 - expiry must not kill the worker
                    stats.add("errors")
                    log.error("engine.expire failed: %r", err)
                collect_if_grown(stats, gc_limit, queue_num)
                counting: _Counting | None = getattr(engine, "stats", None)
                if counting is not None:
                    publish_engine_counters(counting.as_dict(), stats, base)
                publish_sink(stats, sink)
                if timing is not None:
                    publish_counters(timing.counters(), stats)
    finally:
        stats.set("bound", 0)
        if timing is not None:
            publish_counters(timing.counters(), stats)
            timing.uninstall()
        handler.flush()
        if handler.batch is not None:
            handler.batch.close()
        nfq.unbind()
        handler.resets.close()
        if sink is not None:
            sink.close()
            publish_sink(stats, sink)
    return 0


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent goes (a killed `vpatch run` leaves no reader)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _process_entry(
    queue_num: int, config: GatewayConfig, stats: WorkerStats, parent: int, go: GoSignal | None
) -> None:
    die_with_parent(parent)
    logging.basicConfig(
        level=logging.INFO, format=f"vpatch[queue {queue_num}] %(levelname)s %(message)s"
    )
    try:
        code = worker_main(queue_num, config, stats, go)
    except Exception as err:  # noqa: BLE001
        log.error("worker for queue %d failed: %s", queue_num, err)
        code = 1
    sys.stdout.flush()
    os._exit(code)


def start_worker(
    queue_num: int, config: GatewayConfig, stats: WorkerStats, go: GoSignal | None = None
) -> multiprocessing.process.BaseProcess:
    """Start the worker process of one queue (a standby when `go` is given, see worker_main).

    spawn, not fork: the parent runs the control-socket thread, and forking a threaded process
    can copy a lock held by that thread. The worker loads the rules itself.
    """
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_process_entry,
        args=(queue_num, config, stats, os.getpid(), go),
        name=f"vpatch-queue-{queue_num}" + ("-standby" if go is not None else ""),
    )
    proc.daemon = False
    proc.start()
    return proc
