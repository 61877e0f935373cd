"""Per-host lifecycle state: mode, setup-protection exceptions and update sources, lockdown
action, scan-assigned rules, learned (peer, port, protocol) tuples, application-control rules,
scan results, and the history of changes.

Kept behind a small interface (`LifecycleStore`) over the SQLite policy store
(gateway/policy/store.py, migration 3; docs/policy.md, docs/lifecycle.md): `hosts.mode` and
`hosts.auto_apply` plus the tables host_lifecycle, host_endpoints, host_rules, learned_tuples,
lifecycle_history, scan_services and app_controls; `host_services(store, host_id)` reads a
host's scan_services over a store the caller already has open (the UI's). Guarantees: every
update is one `BEGIN IMMEDIATE` transaction (read-modify-write, so the CLI, the UI and the
NFLOG monitor inside `vpatch run` can write concurrently without losing writes) and writes one
audit row (`lifecycle.*` actions, before/after) in the same transaction; tables are bounded
(MAX_HISTORY entries kept, newest last; MAX_LEARNED_PER_HOST tuples per host; MAX_HOSTS;
MAX_APP_CONTROLS_PER_HOST). Errors name the database and the offending value.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gateway.database import Db, Row, Target, db_errors
from gateway.errors import VpatchError
from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from gateway.policy.store import DEFAULT_DATABASE, MAX_LIST, Store, StoreError
from gateway.vocabulary import PROTO_NAMES

DEFAULT_STATE_PATH = DEFAULT_DATABASE  # the policy database (config `policy.database`)
MAX_HOSTS = 4096
MAX_HISTORY = 10_000
MAX_LEARNED_PER_HOST = 4096
MAX_EXCEPTIONS_PER_HOST = 256
MAX_APP_CONTROLS_PER_HOST = 32
MAX_SCAN_SERVICES_PER_HOST = 256


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


PROTOCOLS = {name: number for number, name in PROTO_NAMES.items()}
_ENDPOINT = re.compile(r"\[?([0-9A-Fa-f.:/]+?)\]?(?::(tcp|udp|icmp|icmpv6)(?:/(\d+))?)?")
_NAMED = re.compile(r"([A-Za-z0-9_.-]+?)\.?(?::(tcp|udp|icmp|icmpv6)(?:/(\d+))?)?")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_TUPLE = re.compile(
    r"\s*\[?([0-9A-Fa-f.:/]+?|any)\]?\s*->\s*\[?([0-9A-Fa-f.:]+?)\]?:(\d+)/(\w+)\s*\Z",
    re.IGNORECASE,
)
ANY_SOURCE = "any"  # a lockdown entry's source meaning every client
MAX_NAME_LEN = 253  # RFC 1035 2.3.4 (presentation form, without the root dot)


def check_name(text: str, source: str) -> str:
    """A DNS host name in canonical form (lower case, no trailing dot): labels of letters,
    digits, '-' and '_' (RFC 1123 2.1, underscores as seen in service names), at least two
    labels and not all-numeric; LifecycleError naming `source` otherwise."""
    name = text.strip().rstrip(".").lower()
    labels = name.split(".")
    if (
        not name
        or len(name) > MAX_NAME_LEN
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise LifecycleError(f"{source}: {text!r} is not a host name (like updates.example.com)")
    return name


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A network (CIDR), or for update sources a host name, with an optional protocol and
    port: a setup-protection exception or update source."""

    net: str  # CIDR (a plain address means /32 or /128), or a host name (`is_name`)
    proto: str | None = None  # "tcp" | "udp" | None (any)
    port: int | None = None  # with proto tcp/udp only

    @property
    def is_name(self) -> bool:
        """True when `net` is a host name the gateway resolves (gateway/lifecycle/names.py)."""
        return not any(ch in self.net for ch in ":/") and not self.net.replace(".", "").isdigit()

    @classmethod
    def parse(cls, text: str, source: str, *, names: bool = False) -> Endpoint:
        """'198.18.0.0/24', '198.18.0.0/24:tcp/3389', '[2001:2::/64]:udp/53'; with `names`
        also 'updates.example.com:tcp/443' (a host name needs tcp or udp and a port: the
        kernel set that holds its addresses is hash:ip,port,ip)."""
        text = text.strip()
        m = _ENDPOINT.fullmatch(text)
        norm, named = None, False
        if m is not None:
            try:
                norm = str(ipaddress.ip_network(m.group(1), strict=False))
            except ValueError as err:
                if not names or _NAMED.fullmatch(text) is None:
                    raise LifecycleError(
                        f"{source}: {m.group(1)!r} in {text!r} is not an address/CIDR"
                    ) from err
        if norm is None:
            m = _NAMED.fullmatch(text) if names else None
            if m is None:
                what = "CIDR|NAME" if names else "CIDR"
                raise LifecycleError(f"{source}: {text!r} is not {what}[:proto[/port]]")
            norm, named = check_name(m.group(1), source), True
        assert m is not None
        proto = m.group(2)
        port = int(m.group(3)) if m.group(3) else None
        if proto is not None and proto not in PROTOCOLS:
            raise LifecycleError(
                f"{source}: protocol {proto!r} in {text!r} is not one of {sorted(PROTOCOLS)}"
            )
        if port is not None and not (1 <= port <= 65535 and proto in ("tcp", "udp")):
            raise LifecycleError(f"{source}: port {port} in {text!r} needs tcp/udp and 1-65535")
        if named and port is None:
            raise LifecycleError(
                f"{source}: host name {norm!r} in {text!r} needs tcp or udp and a port "
                f"(NAME:tcp/PORT)"
            )
        return cls(norm, proto, port)

    def __str__(self) -> str:
        net = f"[{self.net}]" if ":" in self.net and self.proto else self.net
        return (
            net + (f":{self.proto}" if self.proto else "") + (f"/{self.port}" if self.port else "")
        )


@dataclass(frozen=True, slots=True, order=True)
class LearnedTuple:
    """One connection shape a host was seen using, or an admin allowed: initiator ->
    responder:port/proto. The initiator is an address (learned), or a network or ANY_SOURCE
    (an allow entry: every client of that network, or every client)."""

    src: str  # an address, a CIDR ("198.18.0.0/24") or "any"
    dst: str
    proto: str  # tcp | udp | icmp | icmpv6 | number as text
    port: int  # destination port (tcp/udp), ICMP type for icmp, 0 otherwise

    @property
    def src_is_net(self) -> bool:
        """True for a network or "any" initiator (an allow entry, not a learned connection)."""
        return self.src == ANY_SOURCE or "/" in self.src

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
    app_controls: tuple[str, ...] = ()  # gateway/policy/appcontrol.py rule texts


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
    d["app_controls"] = list(h.app_controls)
    return d


def check_address(text: str, source: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as err:
        raise LifecycleError(f"{source}: {text!r} is not an IP address") from err


def parse_tuple(text: str, source: str = "tuple") -> LearnedTuple:
    """'198.18.0.10 -> 198.18.0.20:8080/tcp' (as LearnedTuple prints), a network source
    '198.18.0.0/24 -> 198.18.0.20:80/tcp' or every client 'any -> 198.18.0.20:80/tcp' ->
    LearnedTuple (a /32 or /128 network becomes its address); LifecycleError naming `source`
    and the text otherwise."""
    m = _TUPLE.match(text)
    if not m:
        raise LifecycleError(
            f"{source}: {text!r} is not 'SRC -> DST:PORT/PROTO' (SRC: an address, a CIDR or any)"
        )
    dst = check_address(m.group(2), source)
    raw_src = m.group(1)
    if raw_src.lower() == ANY_SOURCE:
        src = ANY_SOURCE
    elif "/" in raw_src:
        try:
            net = ipaddress.ip_network(raw_src, strict=False)
        except ValueError as err:
            raise LifecycleError(f"{source}: {raw_src!r} in {text!r} is not a CIDR") from err
        if net.prefixlen == 0:
            raise LifecycleError(f"{source}: {raw_src!r} in {text!r}: write 'any' for every client")
        src = str(net.network_address) if net.num_addresses == 1 else str(net)
    else:
        src = check_address(raw_src, source)
    if src != ANY_SOURCE and ipaddress.ip_network(src).version != ipaddress.ip_address(dst).version:
        raise LifecycleError(f"{source}: {text!r} mixes IPv4 and IPv6")
    proto = m.group(4).lower()
    if proto not in ("tcp", "udp", "icmp", "icmpv6"):
        raise LifecycleError(f"{source}: protocol {proto!r} in {text!r} is not tcp/udp/icmp")
    port = int(m.group(3))
    if port > 65535 or (proto in ("icmp", "icmpv6") and port > 255):
        raise LifecycleError(f"{source}: port {port} in {text!r} is out of range")
    return LearnedTuple(src, dst, proto, port)


def host_services(store: Store, host_id: int) -> list[dict[str, Any]]:
    """The services of the host's last scan (rows of `scan_services`, written by
    `LifecycleStore.record_scan`), over the caller's open store; none when they cannot be read."""
    try:
        rows = store.db.execute(
            "SELECT * FROM scan_services WHERE host_id = ? LIMIT ?", (host_id, MAX_LIST)
        )
        return [dict(r) for r in rows]
    except db_errors():
        return []


class LifecycleStore:
    """The lifecycle state in the SQLite policy store (see module docstring).

    `path` is the policy database (config `policy.database`); each call opens its own
    connection, so one LifecycleStore may be shared by threads.
    """

    def __init__(self, path: Target = DEFAULT_STATE_PATH) -> None:
        self.path = path

    @contextmanager
    def _store(self) -> Iterator[Store]:
        try:
            store = Store(self.path)
        except db_errors(StoreError) as err:
            raise LifecycleError(f"{self.path}: cannot open the policy database: {err}") from err
        try:
            yield store
        except db_errors() as err:
            raise LifecycleError(f"{self.path}: lifecycle state: {err}") from err
        finally:
            store.close()

    # --- rows <-> records ---

    @staticmethod
    def _host_id(db: Db, address: str) -> int | None:
        row = db.execute("SELECT id FROM hosts WHERE address = ?", (address,)).fetchone()
        return None if row is None else int(row[0])

    def _load(self, db: Db, row: Row) -> HostPolicy:
        hid, address = int(row["id"]), str(row["address"])
        where = f"{self.path}: host {address}"
        life = db.execute(
            "SELECT lockdown_action FROM host_lifecycle WHERE host_id = ?", (hid,)
        ).fetchone()
        ends = db.execute(
            "SELECT kind, endpoint FROM host_endpoints WHERE host_id = ? ORDER BY kind, position",
            (hid,),
        ).fetchall()
        rules = db.execute(
            "SELECT rule_id FROM host_rules WHERE host_id = ? ORDER BY rule_id", (hid,)
        ).fetchall()
        learned = db.execute(
            "SELECT src, dst, proto, port FROM learned_tuples WHERE host_id = ? "
            "ORDER BY src, dst, proto, port",
            (hid,),
        ).fetchall()
        controls = db.execute(
            "SELECT rule FROM app_controls WHERE host_id = ? ORDER BY id", (hid,)
        ).fetchall()
        try:
            return HostPolicy(
                address=address,
                mode=HostMode(row["mode"]),
                auto_apply=bool(row["auto_apply"]),
                exceptions=tuple(
                    Endpoint.parse(e, f"{where} exceptions") for k, e in ends if k == "exception"
                ),
                update_sources=tuple(
                    Endpoint.parse(e, f"{where} update_sources", names=True)
                    for k, e in ends
                    if k == "update_source"
                ),
                lockdown_action=LockdownAction(life[0] if life else "drop"),
                assigned=tuple(int(r[0]) for r in rules),
                learned=tuple(
                    LearnedTuple(str(a), str(b), str(c), int(p)) for a, b, c, p in learned
                ),
                updated_at=float(row["updated_at"]),
                app_controls=tuple(str(r[0]) for r in controls),
            )
        except ValueError as err:
            raise LifecycleError(f"{where}: bad stored value: {err}") from err

    def _get(self, db: Db, address: str) -> HostPolicy:
        row = db.execute("SELECT * FROM hosts WHERE address = ?", (address,)).fetchone()
        return HostPolicy(address) if row is None else self._load(db, row)

    def _write(self, store: Store, policy: HostPolicy, now: float) -> int:
        """Write every field of `policy` (creating the host row when needed); returns its id."""
        db = store.db
        hid = self._host_id(db, policy.address)
        if hid is None:
            count = int(db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0])
            if count >= MAX_HOSTS:
                raise LifecycleError(f"{self.path}: more than {MAX_HOSTS} hosts")
            cur = db.execute(
                "INSERT INTO hosts(address, mode, auto_apply, created_at, updated_at) "
                "VALUES (?,?,?,?,?)",
                (policy.address, policy.mode.value, int(policy.auto_apply), now, now),
            )
            hid = int(cur.lastrowid or 0)
        else:
            db.execute(
                "UPDATE hosts SET mode = ?, auto_apply = ?, updated_at = ? WHERE id = ?",
                (policy.mode.value, int(policy.auto_apply), now, hid),
            )
        db.execute(
            "INSERT INTO host_lifecycle(host_id, lockdown_action) VALUES (?, ?) "
            "ON CONFLICT(host_id) DO UPDATE SET lockdown_action = excluded.lockdown_action",
            (hid, policy.lockdown_action.value),
        )
        db.execute("DELETE FROM host_endpoints WHERE host_id = ?", (hid,))
        for kind, items in (
            ("exception", policy.exceptions),
            ("update_source", policy.update_sources),
        ):
            db.executemany(
                "INSERT INTO host_endpoints(host_id, kind, endpoint, position) VALUES (?,?,?,?)",
                [(hid, kind, str(e), i) for i, e in enumerate(items)],
            )
        db.execute("DELETE FROM host_rules WHERE host_id = ?", (hid,))
        db.executemany(
            "INSERT INTO host_rules(host_id, rule_id) VALUES (?, ?)",
            [(hid, r) for r in sorted(set(policy.assigned))],
        )
        have = {
            LearnedTuple(str(a), str(b), str(c), int(p))
            for a, b, c, p in db.execute(
                "SELECT src, dst, proto, port FROM learned_tuples WHERE host_id = ?", (hid,)
            )
        }
        if have != set(policy.learned):
            db.execute("DELETE FROM learned_tuples WHERE host_id = ?", (hid,))
            db.executemany(
                "INSERT INTO learned_tuples(host_id, src, dst, proto, port, learned_at) "
                "VALUES (?,?,?,?,?,?)",
                [(hid, t.src, t.dst, t.proto, t.port, now) for t in sorted(set(policy.learned))][
                    :MAX_LEARNED_PER_HOST
                ],
            )
        db.execute("DELETE FROM app_controls WHERE host_id = ?", (hid,))
        db.executemany(
            "INSERT INTO app_controls(host_id, rule, updated_by, updated_at) VALUES (?,?,?,?)",
            [(hid, r, "lifecycle", now) for r in dict.fromkeys(policy.app_controls)],
        )
        return hid

    @staticmethod
    def _check(policy: HostPolicy) -> None:
        if len(policy.exceptions) + len(policy.update_sources) > MAX_EXCEPTIONS_PER_HOST:
            raise LifecycleError(
                f"host {policy.address}: more than "
                f"{MAX_EXCEPTIONS_PER_HOST} exceptions/update sources"
            )
        if len(policy.app_controls) > MAX_APP_CONTROLS_PER_HOST:
            raise LifecycleError(
                f"host {policy.address}: more than {MAX_APP_CONTROLS_PER_HOST} app-control rules"
            )

    @staticmethod
    def _summary(h: HostPolicy) -> dict[str, Any]:
        d = _host_to_json(h)
        d.pop("updated_at", None)
        d["learned"] = len(h.learned)  # the audit row stays small; tuples are in their table
        return d

    # --- reading ---

    def hosts(self) -> list[HostPolicy]:
        with self._store() as store:
            rows = store.db.execute(
                "SELECT * FROM hosts WHERE address NOT LIKE '%/%' ORDER BY address LIMIT ?",
                (MAX_HOSTS,),
            ).fetchall()
            return [self._load(store.db, r) for r in rows]

    def host(self, address: str) -> HostPolicy:
        """The host's policy; a default (normal mode) policy when it has none yet."""
        address = check_address(address, "host")
        with self._store() as store:
            return self._get(store.db, address)

    def history(self, host: str | None = None) -> list[HistoryEntry]:
        with self._store() as store:
            if host is None:
                rows = store.db.execute("SELECT * FROM lifecycle_history ORDER BY id").fetchall()
            else:
                rows = store.db.execute(
                    "SELECT * FROM lifecycle_history WHERE host = ? ORDER BY id", (host,)
                ).fetchall()
        return [
            HistoryEntry(
                float(r["ts"]),
                r["host"],
                r["action"],
                r["target"],
                r["reason"],
                tuple(tuple(e) for e in json.loads(r["evidence_json"])),
            )
            for r in rows
        ]

    def load_in(self, store: Store, address: str) -> HostPolicy:
        """The host's policy read over the caller's open store (e.g. inside its transaction)."""
        return self._get(store.db, address)

    # --- writing ---

    @classmethod
    def check_limits(cls, policy: HostPolicy) -> None:
        """LifecycleError when `policy` holds more entries than a host may have."""
        cls._check(policy)

    def write_in(self, store: Store, policy: HostPolicy, now: float) -> int:
        """Write `policy` over the caller's open store, in the caller's transaction, without
        audit or history (the caller audits: gateway/transfer.py); its host id."""
        self._check(policy)
        return self._write(store, policy, now)

    def put_host(
        self, policy: HostPolicy, history: list[HistoryEntry] | None = None, *, actor: str = "cli"
    ) -> None:
        self._check(policy)
        with self._store() as store, store.transaction():
            before = self._get(store.db, policy.address)
            self._write(store, policy, time.time())
            store.audit(
                actor,
                "lifecycle.host",
                policy.address,
                self._summary(before),
                self._summary(policy),
            )
            self._append_history(store, history or [])

    def update_host(
        self,
        address: str,
        history: list[HistoryEntry] | None = None,
        *,
        actor: str = "cli",
        **changes: Any,
    ) -> HostPolicy:
        """Read, change the given fields, write (one transaction); returns the new policy."""
        address = check_address(address, "host")
        with self._store() as store, store.transaction():
            current = self._get(store.db, address)
            now = time.time()
            new = replace(current, updated_at=now, **changes)
            self._check(new)
            self._write(store, new, now)
            store.audit(
                actor, "lifecycle.host", address, self._summary(current), self._summary(new)
            )
            self._append_history(store, history or [])
        if "assigned" in changes:
            self._enforce_assignment(address, current, new, history or [], actor)
        return new

    def _enforce_assignment(
        self,
        address: str,
        current: HostPolicy,
        new: HostPolicy,
        history: list[HistoryEntry],
        actor: str,
    ) -> None:
        """Make the scan's (un)assignments what the gateway enforces: a rule the scan retires
        is switched `off` for this host (source "scan"); a rule it assigns again inherits
        (group, global or the rule's default) once more. An assignment an admin made for the
        host (any other source) is the admin's decision and is left as it is."""
        added = set(new.assigned) - set(current.assigned)
        removed = set(current.assigned) - set(new.assigned)
        if not (added or removed):
            return
        why = {entry.target: entry.reason for entry in history}
        with self._store() as store:
            host = Hosts(store).host_by_address(address)
            if host is None:
                return
            assignments = Assignments(store)
            for rule_id, mode in [(r, None) for r in sorted(added)] + [
                (r, "off") for r in sorted(removed)
            ]:
                existing = assignments.find_assignment(rule_id, "host", host.id)
                if existing is not None and existing.source != "scan":
                    continue  # an admin's explicit choice for this host wins over the scan
                if existing is None and mode is None:
                    continue  # already inherits
                assignments.set_assignment(
                    rule_id, "host", host.id, mode, actor, source="scan",
                    reason=why.get(str(rule_id), "scan recommendation"),
                )  # fmt: skip

    def add_learned(
        self, address: str, tuples: list[LearnedTuple], *, actor: str = "monitor"
    ) -> int:
        """Add tuples to a host's learned set; returns how many were new (bounded)."""
        address = check_address(address, "host")
        with self._store() as store, store.transaction():
            db = store.db
            hid = self._host_id(db, address)
            if hid is None:
                hid = self._write(store, HostPolicy(address), time.time())
            count = int(
                db.execute(
                    "SELECT COUNT(*) FROM learned_tuples WHERE host_id = ?", (hid,)
                ).fetchone()[0]
            )
            now = time.time()
            added: list[str] = []
            for t in dict.fromkeys(tuples):
                if count >= MAX_LEARNED_PER_HOST:
                    break
                cur = db.execute(
                    "INSERT OR IGNORE INTO learned_tuples(host_id, src, dst, proto, port, "
                    "learned_at) VALUES (?,?,?,?,?,?)",
                    (hid, t.src, t.dst, t.proto, t.port, now),
                )
                if cur.rowcount:
                    count += 1
                    added.append(str(t))
            if added:
                store.audit(actor, "lifecycle.learn", address, None, added)
            return len(added)

    def remove_learned(
        self,
        address: str,
        t: LearnedTuple,
        *,
        history: list[HistoryEntry] | None = None,
        actor: str = "cli",
    ) -> HostPolicy:
        """Delete one learned or allowed tuple of the host (one transaction, audited);
        LifecycleError naming it when the host has no such entry."""
        address = check_address(address, "host")
        with self._store() as store, store.transaction():
            hid = self._host_id(store.db, address)
            cur = store.db.execute(
                "DELETE FROM learned_tuples WHERE host_id = ? AND src = ? AND dst = ? "
                "AND proto = ? AND port = ?",
                (hid, t.src, t.dst, t.proto, t.port),
            )
            if not cur.rowcount:
                raise LifecycleError(f"host {address}: no learned or allowed entry {str(t)!r}")
            store.audit(actor, "lifecycle.disallow", address, str(t), None)
            self._append_history(store, history or [])
            return self._get(store.db, address)

    def record_scan(
        self, address: str, services: list[dict[str, Any]], *, actor: str = "scan"
    ) -> None:
        """Replace the host's last scan results (rows of `scan_services`, shown by the UI)."""
        address = check_address(address, "host")
        with self._store() as store, store.transaction():
            db = store.db
            hid = self._host_id(db, address)
            if hid is None:
                hid = self._write(store, HostPolicy(address), time.time())
            db.execute("DELETE FROM scan_services WHERE host_id = ?", (hid,))
            now = time.time()
            db.executemany(
                "INSERT INTO scan_services(host_id, port, proto, service, product, version, "
                "features_json, evidence_json, scanned_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        hid,
                        int(s.get("port", 0)),
                        str(s.get("transport", s.get("proto", ""))),
                        str(s.get("service", "")),
                        str(s.get("product") or ""),
                        str(s.get("version") or ""),
                        json.dumps(s.get("features", {})),
                        json.dumps(s.get("evidence", [])),
                        now,
                    )
                    for s in services[:MAX_SCAN_SERVICES_PER_HOST]
                ],
            )
            store.audit(actor, "lifecycle.scan", address, None, len(services))

    def scan_services(self, address: str) -> list[dict[str, Any]]:
        address = check_address(address, "host")
        with self._store() as store:
            hid = self._host_id(store.db, address)
            if hid is None:
                return []
            return host_services(store, hid)

    @staticmethod
    def _append_history(store: Store, entries: list[HistoryEntry]) -> None:
        db = store.db
        for e in entries:
            db.execute(
                "INSERT INTO lifecycle_history(ts, host, action, target, reason, evidence_json) "
                "VALUES (?,?,?,?,?,?)",
                (
                    e.ts,
                    e.host,
                    e.action,
                    e.target,
                    e.reason,
                    json.dumps([list(x) for x in e.evidence]),
                ),
            )
        if entries:
            db.execute(
                "DELETE FROM lifecycle_history WHERE id <= "
                "(SELECT MAX(id) FROM lifecycle_history) - ?",
                (MAX_HISTORY,),
            )
