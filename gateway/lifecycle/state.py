"""Per-host lifecycle state: mode, setup-protection exceptions and update sources, lockdown
action, scan-assigned rules, learned (peer, port, protocol) tuples, and the history of changes.

Kept behind a small interface (`LifecycleStore`) in a JSON file until the policy store
(gateway/policy/store.py, docs/policy.md) holds these tables; then only this module changes.
Guarantees: every update is read-modify-write under an exclusive flock on a side lock file and
lands atomically (write to a temporary file, fsync, rename), so the CLI and the NFLOG monitor
can update the same file concurrently without losing writes; tables are bounded
(MAX_HISTORY entries kept, newest last; MAX_LEARNED_PER_HOST tuples per host; MAX_HOSTS).
Errors name the file and the offending value.
"""

from __future__ import annotations

import enum
import fcntl
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.errors import VpatchError

DEFAULT_STATE_PATH = Path("/var/lib/vpatch/lifecycle.json")
MAX_HOSTS = 4096
MAX_HISTORY = 10_000
MAX_LEARNED_PER_HOST = 4096
MAX_EXCEPTIONS_PER_HOST = 256


class LifecycleError(VpatchError):
    """Bad lifecycle state, file or request (message names the value and where it came from)."""


class HostMode(enum.Enum):
    NORMAL = "normal"
    SETUP = "setup"
    LEARNING = "learning"
    LOCKDOWN = "lockdown"


class LockdownAction(enum.Enum):
    DROP = "drop"
    ALERT = "alert"


PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
_ENDPOINT = re.compile(r"\[?([0-9A-Fa-f.:/]+?)\]?(?::(tcp|udp|icmp|icmpv6)(?:/(\d+))?)?")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A network (CIDR) with an optional protocol and port: an exception or an update source."""

    net: str  # CIDR; a plain address means /32 or /128
    proto: str | None = None  # "tcp" | "udp" | None (any)
    port: int | None = None  # with proto tcp/udp only

    @classmethod
    def parse(cls, text: str, source: str) -> Endpoint:
        """'198.18.0.0/24', '198.18.0.0/24:tcp/3389', '[2001:2::/64]:udp/53'."""
        m = _ENDPOINT.fullmatch(text.strip())
        if m is None:
            raise LifecycleError(f"{source}: {text!r} is not CIDR[:proto[/port]]")
        net, proto = m.group(1), m.group(2)
        port = int(m.group(3)) if m.group(3) else None
        try:
            norm = str(ipaddress.ip_network(net, strict=False))
        except ValueError as err:
            raise LifecycleError(f"{source}: {net!r} in {text!r} is not an address/CIDR") from err
        if proto is not None and proto not in PROTOCOLS:
            raise LifecycleError(
                f"{source}: protocol {proto!r} in {text!r} is not one of {sorted(PROTOCOLS)}"
            )
        if port is not None and not (1 <= port <= 65535 and proto in ("tcp", "udp")):
            raise LifecycleError(f"{source}: port {port} in {text!r} needs tcp/udp and 1-65535")
        return cls(norm, proto, port)

    def __str__(self) -> str:
        net = f"[{self.net}]" if ":" in self.net and self.proto else self.net
        return (
            net + (f":{self.proto}" if self.proto else "") + (f"/{self.port}" if self.port else "")
        )


@dataclass(frozen=True, slots=True, order=True)
class LearnedTuple:
    """One connection shape a host was seen using: initiator -> responder:port/proto."""

    src: str
    dst: str
    proto: str  # tcp | udp | icmp | icmpv6 | number as text
    port: int  # destination port (tcp/udp), ICMP type for icmp, 0 otherwise

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}:{self.port}/{self.proto}"


@dataclass(frozen=True, slots=True)
class HostPolicy:
    address: str
    mode: HostMode = HostMode.NORMAL
    auto_apply: bool = False
    exceptions: tuple[Endpoint, ...] = ()  # setup: inbound allowed from these
    update_sources: tuple[Endpoint, ...] = ()  # setup: outbound allowed to these
    lockdown_action: LockdownAction = LockdownAction.DROP
    assigned: tuple[int, ...] = ()  # rule ids assigned by scan / admin
    learned: tuple[LearnedTuple, ...] = ()
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    ts: float
    host: str
    action: str  # assign | unassign | mode | release | learn | allow | scan
    target: str  # rule id, mode name, tuple ...
    reason: str
    evidence: tuple[tuple[str, str], ...] = field(default=())


def _host_to_json(h: HostPolicy) -> dict[str, Any]:
    d = asdict(h)
    d["mode"] = h.mode.value
    d["lockdown_action"] = h.lockdown_action.value
    d["exceptions"] = [str(e) for e in h.exceptions]
    d["update_sources"] = [str(e) for e in h.update_sources]
    d["learned"] = [[t.src, t.dst, t.proto, t.port] for t in h.learned]
    return d


def _host_from_json(d: dict[str, Any], where: str) -> HostPolicy:
    try:
        return HostPolicy(
            address=str(d["address"]),
            mode=HostMode(d.get("mode", "normal")),
            auto_apply=bool(d.get("auto_apply", False)),
            exceptions=tuple(
                Endpoint.parse(e, f"{where}.exceptions") for e in d.get("exceptions", [])
            ),
            update_sources=tuple(
                Endpoint.parse(e, f"{where}.update_sources") for e in d.get("update_sources", [])
            ),
            lockdown_action=LockdownAction(d.get("lockdown_action", "drop")),
            assigned=tuple(int(x) for x in d.get("assigned", [])),
            learned=tuple(
                LearnedTuple(str(a), str(b), str(c), int(p)) for a, b, c, p in d.get("learned", [])
            ),
            updated_at=float(d.get("updated_at", 0.0)),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise LifecycleError(f"{where}: bad host entry {d!r}: {err}") from err


def check_address(text: str, source: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as err:
        raise LifecycleError(f"{source}: {text!r} is not an IP address") from err


class LifecycleStore:
    """The lifecycle state in a JSON file (see module docstring)."""

    def __init__(self, path: Path = DEFAULT_STATE_PATH) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"hosts": {}, "history": []}
        except (OSError, ValueError) as err:
            raise LifecycleError(f"{self.path}: cannot read lifecycle state: {err}") from err
        if not isinstance(data, dict):
            raise LifecycleError(f"{self.path}: lifecycle state is not a JSON object")
        data.setdefault("hosts", {})
        data.setdefault("history", [])
        return data

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)

    # --- reading ---

    def hosts(self) -> list[HostPolicy]:
        data = self._read()
        return [
            _host_from_json(d, f"{self.path}: hosts[{a}]") for a, d in sorted(data["hosts"].items())
        ]

    def host(self, address: str) -> HostPolicy:
        """The host's policy; a default (normal mode) policy when it has none yet."""
        address = check_address(address, "host")
        d = self._read()["hosts"].get(address)
        return (
            HostPolicy(address)
            if d is None
            else _host_from_json(d, f"{self.path}: hosts[{address}]")
        )

    def history(self, host: str | None = None) -> list[HistoryEntry]:
        out = []
        for d in self._read()["history"]:
            if host is None or d.get("host") == host:
                out.append(
                    HistoryEntry(
                        float(d["ts"]),
                        d["host"],
                        d["action"],
                        d["target"],
                        d["reason"],
                        tuple(tuple(e) for e in d.get("evidence", [])),
                    )
                )
        return out

    # --- writing ---

    def put_host(self, policy: HostPolicy, history: list[HistoryEntry] | None = None) -> None:
        with self._locked() as data:
            if policy.address not in data["hosts"] and len(data["hosts"]) >= MAX_HOSTS:
                raise LifecycleError(f"{self.path}: more than {MAX_HOSTS} hosts")
            if len(policy.exceptions) + len(policy.update_sources) > MAX_EXCEPTIONS_PER_HOST:
                raise LifecycleError(
                    f"host {policy.address}: more than "
                    f"{MAX_EXCEPTIONS_PER_HOST} exceptions/update sources"
                )
            data["hosts"][policy.address] = _host_to_json(replace(policy, updated_at=time.time()))
            self._append_history(data, history or [])

    def update_host(
        self, address: str, history: list[HistoryEntry] | None = None, **changes: Any
    ) -> HostPolicy:
        """Read, change the given fields, write; returns the new policy."""
        address = check_address(address, "host")
        with self._locked() as data:
            d = data["hosts"].get(address)
            current = HostPolicy(address) if d is None else _host_from_json(d, str(self.path))
            new = replace(current, updated_at=time.time(), **changes)
            data["hosts"][address] = _host_to_json(new)
            self._append_history(data, history or [])
        return new

    def add_learned(self, address: str, tuples: list[LearnedTuple]) -> int:
        """Add tuples to a host's learned set; returns how many were new (bounded)."""
        with self._locked() as data:
            d = data["hosts"].get(address)
            current = HostPolicy(address) if d is None else _host_from_json(d, str(self.path))
            have = set(current.learned)
            new = [t for t in dict.fromkeys(tuples) if t not in have][
                : MAX_LEARNED_PER_HOST - len(have)
            ]
            if new:
                data["hosts"][address] = _host_to_json(
                    replace(current, learned=tuple(sorted(have | set(new))))
                )
            return len(new)

    @staticmethod
    def _append_history(data: dict[str, Any], entries: list[HistoryEntry]) -> None:
        for e in entries:
            data["history"].append(
                {
                    "ts": e.ts,
                    "host": e.host,
                    "action": e.action,
                    "target": e.target,
                    "reason": e.reason,
                    "evidence": [list(x) for x in e.evidence],
                }
            )
        del data["history"][:-MAX_HISTORY]
