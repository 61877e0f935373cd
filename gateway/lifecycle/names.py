"""Update sources by name: real DNS queries for the host names of setup-protection update
sources, and the table of their current addresses with the TTLs of the answers that gave them.

`vpatch run` (gateway/supervisor.py) runs a `NameResolver` thread: every name a setup host's
update sources use is asked (A and AAAA) of the configured DNS servers (config `resolver.*`;
default the `nameserver` lines of /etc/resolv.conf) with a small stdlib client (RFC 1035 4.1
messages over UDP, TCP when the answer is truncated, CNAME chains followed) — never a
system resolver's cache, whose TTLs we could not see. Each answer's addresses go to the
kernel's `names` sets (gateway/firewall/hostmodes.py) with a per-element timeout of the
answer's TTL plus GRACE_S, and the name is asked again when the TTL runs out (bounded by
`resolver.min_ttl` / `max_ttl`). So:

- an address a new answer adds is allowed as soon as the answer arrives;
- an address a new answer no longer holds stays allowed until the answer that gave it expires
  (a host may still connect to what it was told) and is then removed by the kernel itself;
- when no server answers, nothing is extended: addresses expire with their TTLs (fail closed)
  and the name is asked again after RETRY_S;
- a negative answer (NXDOMAIN, no data) adds nothing and is asked again after its SOA
  minimum (RFC 2308 5), bounded the same way.

`NameTable` is the clock-driven core (no I/O: `due(now)`, `record(...)`, `fail(...)`,
`resolved(now)`); `query()` the I/O; `NameResolver` the thread tying them to a callback that
updates the kernel. Bounds: MAX_NAMES names, MAX_ADDRESSES_PER_ANSWER addresses taken from one
answer, MAX_CNAME_CHAIN, MAX_RECORDS parsed per message. Errors: DnsError naming the server
and the name.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import ResolverConfig
from gateway.errors import VpatchError
from gateway.lifecycle.state import HostMode, HostPolicy

log = logging.getLogger("vpatch.names")

RESOLV_CONF = Path("/etc/resolv.conf")
DNS_PORT = 53
GRACE_S = 2  # seconds an address outlives its answer's TTL (the next answer's query time)
RETRY_S = 5.0  # seconds before a name no server answered is asked again
MAX_NAMES = 1024
MAX_SERVERS = 8
MAX_ADDRESSES_PER_ANSWER = 64
MAX_CNAME_CHAIN = 8
MAX_RECORDS = 256
MAX_UDP_ANSWER = 4096
MAX_TCP_ANSWER = 65535
MAX_TIMEOUT_S = 2_147_483  # the largest ipset element timeout

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
FLAG_QR, FLAG_TC, FLAG_RD = 0x8000, 0x0200, 0x0100
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
CLASS_IN = 1
TYPE_CNAME, TYPE_SOA = 5, 6


class RRType(enum.IntEnum):
    """The record types asked for an update-source name."""

    A = 1
    AAAA = 28


class DnsError(VpatchError):
    """No usable answer for a name (names the server, the name and what went wrong)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The addresses a server gave for (name, type) and for how long (seconds). An empty
    tuple is a negative answer whose `ttl` is the negative-caching time."""

    addresses: tuple[str, ...]
    ttl: int


# -- messages (RFC 1035 4.1) ------------------------------------------------------------------


def build_query(name: str, rrtype: RRType, qid: int) -> bytes:
    """A recursive (RD) query for name/type IN."""
    qname = b"".join(bytes([len(x)]) + x.encode("ascii") for x in name.split(".")) + b"\0"
    return _HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + qname + struct.pack("!HH", rrtype, CLASS_IN)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """(name in lower case, position after it), following compression pointers (4.1.4)."""
    labels: list[str] = []
    end = -1
    for _ in range(128):  # a loop of pointers ends here
        if pos >= len(data):
            raise ValueError("name runs past the message")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise ValueError("truncated compression pointer")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length & 0xC0:
            raise ValueError(f"label type {length >> 6} unknown")
        pos += 1
        if length == 0:
            return ".".join(labels).lower(), end if end >= 0 else pos
        labels.append(data[pos : pos + length].decode("ascii", "replace"))
        pos += length
    raise ValueError("compression pointer loop")


@dataclass(slots=True)
class _Records:
    by_owner: dict[tuple[str, int], list[tuple[int, bytes | str]]] = field(default_factory=dict)
    soa_min: int | None = None


def _read_records(data: bytes, pos: int, count: int, out: _Records, authority: bool) -> int:
    for _ in range(count):
        owner, pos = _read_name(data, pos)
        if pos + _RR.size > len(data):
            raise ValueError("record header runs past the message")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
        pos += _RR.size
        rdata_at, pos = pos, pos + rdlen
        if pos > len(data):
            raise ValueError("record data runs past the message")
        if rclass != CLASS_IN:
            continue
        ttl &= 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set counts as 0
        if rtype == TYPE_CNAME and not authority:
            target, _ = _read_name(data, rdata_at)
            out.by_owner.setdefault((owner, rtype), []).append((ttl, target))
        elif rtype in (RRType.A, RRType.AAAA) and not authority:
            out.by_owner.setdefault((owner, rtype), []).append((ttl, data[rdata_at:pos]))
        elif rtype == TYPE_SOA and authority:
            _, at = _read_name(data, rdata_at)  # MNAME
            _, at = _read_name(data, at)  # RNAME
            if at + 20 <= pos:
                minimum = struct.unpack_from("!I", data, at + 16)[0]
                out.soa_min = min(ttl, minimum)
    return pos


def parse_response(data: bytes, qid: int, name: str, rrtype: RRType) -> tuple[Answer, bool]:
    """(answer, truncated) of a response to build_query(name, rrtype, qid); ValueError for a
    response that does not belong to the query or cannot be read, DnsError for an error
    rcode (SERVFAIL, REFUSED ...)."""
    if len(data) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    rid, flags, qd, an, ns, _ar = _HEADER.unpack_from(data)
    if rid != qid or not flags & FLAG_QR or qd != 1:
        raise ValueError("not the answer to our query (id, QR bit or question count)")
    qname, pos = _read_name(data, _HEADER.size)
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    if (qname, qtype, qclass) != (name, rrtype, CLASS_IN):
        raise ValueError(f"answer for another question ({qname} type {qtype})")
    if flags & FLAG_TC:
        return Answer((), 0), True
    rcode = flags & 0x0F
    if rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        raise DnsError(f"{name} {rrtype.name}: rcode {rcode}")
    if an + ns > MAX_RECORDS:
        raise ValueError(f"{an + ns} records, more than {MAX_RECORDS}")
    recs = _Records()
    pos = _read_records(data, pos + 4, an, recs, authority=False)
    _read_records(data, pos, ns, recs, authority=True)
    return _follow(name, rrtype, recs), False


def _follow(name: str, rrtype: RRType, recs: _Records) -> Answer:
    """The addresses at the end of name's CNAME chain; TTL the smallest along the way."""
    owner, ttl = name, MAX_TIMEOUT_S
    for _ in range(MAX_CNAME_CHAIN + 1):
        found = recs.by_owner.get((owner, rrtype))
        if found:
            size = 4 if rrtype is RRType.A else 16
            addrs = [
                str(ipaddress.ip_address(raw))
                for _t, raw in found
                if isinstance(raw, bytes) and len(raw) == size
            ]
            ttl = min([ttl, *(t for t, _raw in found)])
            return Answer(tuple(dict.fromkeys(addrs))[:MAX_ADDRESSES_PER_ANSWER], ttl)
        alias = recs.by_owner.get((owner, TYPE_CNAME))
        if not alias:
            break
        ttl = min(ttl, alias[0][0])
        target = alias[0][1]
        assert isinstance(target, str)
        owner = target
    negative = recs.soa_min if recs.soa_min is not None else 0
    return Answer((), min(ttl, negative))


# -- queries (I/O) ----------------------------------------------------------------------------


def _udp(server: str, wire: bytes, timeout: float) -> bytes:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((server, DNS_PORT))  # replies from elsewhere are not ours
        s.send(wire)
        return s.recv(MAX_UDP_ANSWER)


def _tcp(server: str, wire: bytes, timeout: float) -> bytes:
    with socket.create_connection((server, DNS_PORT), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        head = _recv_exactly(s, 2)
        return _recv_exactly(s, struct.unpack("!H", head)[0])


def _recv_exactly(s: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = s.recv(min(size - len(buf), MAX_TCP_ANSWER))
        if not chunk:
            raise OSError("connection closed in the middle of the answer")
        buf += chunk
    return buf


def query(name: str, rrtype: RRType, servers: Sequence[str], timeout: float) -> Answer:
    """Ask each server in turn until one answers (UDP, then TCP if truncated); DnsError
    naming every server's failure when none does."""
    problems = []
    for server in servers[:MAX_SERVERS]:
        qid = secrets.randbits(16)
        wire = build_query(name, rrtype, qid)
        try:
            answer, truncated = parse_response(_udp(server, wire, timeout), qid, name, rrtype)
            if truncated:
                answer, _ = parse_response(_tcp(server, wire, timeout), qid, name, rrtype)
            return answer
        except (OSError, ValueError, DnsError) as err:
            problems.append(f"{server}: {err}")
    raise DnsError(f"{name} {rrtype.name}: no answer ({'; '.join(problems) or 'no DNS server'})")


def resolv_conf_servers(path: Path = RESOLV_CONF) -> list[str]:
    """The `nameserver` addresses of a resolv.conf (scoped IPv6 and bad lines skipped)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and "%" not in parts[1]:
            try:
                out.append(str(ipaddress.ip_address(parts[1])))
            except ValueError:
                continue
    return out[:MAX_SERVERS]


# -- the table (clock passed in) --------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    next_query: float = 0.0
    expires: dict[str, float] = field(default_factory=dict)  # address -> when it leaves


@dataclass(slots=True)
class NameTable:
    """Names to follow and the addresses their answers gave, with expiry times."""

    min_ttl: float = 5.0
    max_ttl: float = 3600.0
    entries: dict[tuple[str, RRType], _Entry] = field(default_factory=dict)

    def want(self, names: Iterable[str]) -> None:
        """Follow exactly these names (new ones are due at once; dropped ones forgotten)."""
        wanted = list(dict.fromkeys(names))[:MAX_NAMES]
        keys = {(n, t) for n in wanted for t in RRType}
        for key in list(self.entries):
            if key not in keys:
                del self.entries[key]
        for key in sorted(keys - set(self.entries)):
            self.entries[key] = _Entry()

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.min_ttl), max(self.max_ttl, self.min_ttl))

    def due(self, now: float) -> list[tuple[str, RRType]]:
        return sorted(k for k, e in self.entries.items() if e.next_query <= now)

    def next_due(self) -> float | None:
        return min((e.next_query for e in self.entries.values()), default=None)

    def record(
        self, name: str, rrtype: RRType, answer: Answer, now: float
    ) -> list[tuple[str, int]]:
        """Take an answer; returns its (address, kernel timeout in seconds) pairs."""
        entry = self.entries.get((name, rrtype))
        if entry is None:
            return []
        wait = self.clamp(answer.ttl)
        entry.next_query = now + wait
        timeout = min(math.ceil(wait) + GRACE_S, MAX_TIMEOUT_S)
        out = []
        for addr in answer.addresses:
            until = max(entry.expires.get(addr, 0.0), now + timeout)
            entry.expires[addr] = until
            out.append((addr, math.ceil(until - now)))  # never shortens a longer answer
        self._prune(entry, now)
        return out

    def fail(self, name: str, rrtype: RRType, now: float) -> None:
        """No answer: ask again after RETRY_S; nothing is extended."""
        entry = self.entries.get((name, rrtype))
        if entry is not None:
            entry.next_query = now + RETRY_S
            self._prune(entry, now)

    @staticmethod
    def _prune(entry: _Entry, now: float) -> None:
        for addr in [a for a, t in entry.expires.items() if t <= now]:
            del entry.expires[addr]

    def resolved(self, now: float) -> dict[str, list[tuple[str, int]]]:
        """name -> [(address, whole seconds left)] of the answers still valid."""
        out: dict[str, list[tuple[str, int]]] = {}
        for (name, _t), entry in sorted(self.entries.items()):
            for addr, until in sorted(entry.expires.items()):
                left = int(until - now)
                if left > 0:
                    out.setdefault(name, []).append((addr, left))
        return out


# -- the thread -------------------------------------------------------------------------------

Apply = Callable[[dict[str, list[tuple[str, int]]]], None]  # name -> [(address, timeout)]
Query = Callable[[str, RRType, Sequence[str], float], Answer]


class NameResolver:
    """Follows the wanted names in a thread and hands each answer's addresses to `apply`
    (which adds them to the kernel sets). `lock` is held while `apply` runs, and callers
    that rewrite the same sets (a `reload`) hold it too, so no answer is lost in a swap."""

    def __init__(
        self,
        servers: Sequence[str],
        apply: Apply,
        min_ttl: float = 5.0,
        max_ttl: float = 3600.0,
        timeout: float = 2.0,
        ask: Query = query,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = list(servers)[:MAX_SERVERS]
        self.apply = apply
        self.timeout = timeout
        self.ask = ask
        self.clock = clock
        self.table = NameTable(min_ttl, max_ttl)
        self.lock = threading.RLock()
        self.errors = 0
        self.answers = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def want(self, names: Iterable[str]) -> None:
        """Follow these names from now on (new ones are asked at once)."""
        with self.lock:
            self.table.want(names)
        self._wake.set()

    def resolved(self) -> dict[str, list[tuple[str, int]]]:
        with self.lock:
            return self.table.resolved(self.clock())

    def step(self) -> float | None:
        """Ask every due name once; returns when the next one is due (None: no names)."""
        with self.lock:
            due = self.table.due(self.clock())
        for name, rrtype in due:
            if self._stop.is_set():
                break
            try:
                answer = self.ask(name, rrtype, self.servers, self.timeout)
            except DnsError as err:
                self.errors += 1
                self.last_error = str(err)
                log.warning("update-source name: %s (its addresses expire with their TTLs)", err)
                with self.lock:
                    self.table.fail(name, rrtype, self.clock())
                continue
            self.answers += 1
            with self.lock:
                added = self.table.record(name, rrtype, answer, self.clock())
                if added:
                    try:
                        self.apply({name: added})
                    except VpatchError as err:
                        log.error("update-source name %s: kernel set not updated: %s", name, err)
        with self.lock:
            return self.table.next_due()

    def run(self) -> None:
        while not self._stop.is_set():
            next_due = self.step()
            wait = 3600.0 if next_due is None else max(0.05, next_due - self.clock())
            self._wake.wait(wait)
            self._wake.clear()

    def start(self) -> None:
        if not self.servers:
            log.warning("update-source names: no DNS server (resolver.servers, /etc/resolv.conf)")
        self._thread = threading.Thread(target=self.run, name="update-source-names", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout * len(self.servers or [1]) * 2 + 1)

    def status(self) -> dict[str, object]:
        return {
            "servers": self.servers,
            "names": self.resolved(),
            "answers": self.answers,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def resolver_servers(config: ResolverConfig) -> list[str]:
    """The DNS servers to ask: the configured ones, else /etc/resolv.conf's."""
    if config.servers:
        return [str(net.network_address) for net in config.servers][:MAX_SERVERS]
    return resolv_conf_servers()


def update_source_names(policies: Iterable[HostPolicy]) -> list[str]:
    """The host names the update sources of hosts in setup mode use."""
    return list(
        dict.fromkeys(
            e.net
            for p in policies
            if p.mode is HostMode.SETUP
            for e in p.update_sources
            if e.is_name
        )
    )
