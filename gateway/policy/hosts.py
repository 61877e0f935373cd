"""Protected hosts and their groups in the policy store (tables hosts, groups of
gateway/policy/store.py, migration 1; docs/policy.md).

Guarantees: a host's address is stored normalised (`198.18.0.20`, `198.18.5.0/24`; one host
per address); deleting a host or a group deletes the assignments of that scope with it (the
host's other tables cascade, migration 3); every change writes one audit row (before/after)
in its transaction. Errors are `StoreError` naming the value and the table.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import asdict, dataclass

from gateway.database import Row, integrity_errors
from gateway.policy.store import (
    HOST_MODES,
    MAX_LIST,
    MAX_NAME_LEN,
    MAX_REASON_LEN,
    Store,
    StoreError,
    check_name,
)


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class Host:
    id: int
    address: str  # an address or a CIDR
    name: str
    group_id: int | None
    mode: str  # normal | setup | learning | lockdown
    auto_apply: bool
    created_at: float
    updated_at: float


def check_address(address: str) -> str:
    """The address or CIDR normalised as the hosts table keeps it (a single address has no
    /32 or /128)."""
    try:
        return str(ipaddress.ip_network(address.strip(), strict=False)).removesuffix(
            "/32" if ":" not in address else "/128"
        )
    except ValueError as err:
        raise StoreError(f"hosts.address {address!r}: not an address or CIDR") from err


class Hosts:
    """Hosts and groups, over one `Store` (its connection and audit)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # -- groups -------------------------------------------------------------------------------

    def list_groups(self) -> list[Group]:
        rows = self.db.execute("SELECT * FROM groups ORDER BY name LIMIT ?", (MAX_LIST,))
        return [Group(r["id"], r["name"], r["description"]) for r in rows]

    def get_group(self, group_id: int) -> Group | None:
        r = self.db.execute("SELECT * FROM groups WHERE id = ?", (group_id,)).fetchone()
        return Group(r["id"], r["name"], r["description"]) if r else None

    def create_group(self, name: str, description: str, actor: str) -> Group:
        name = check_name(name, "groups.name")
        with self.store.transaction():
            try:
                cur = self.db.execute(
                    "INSERT INTO groups(name, description) VALUES (?, ?)",
                    (name, description[:MAX_REASON_LEN]),
                )
            except integrity_errors() as err:
                raise StoreError(f"groups.name {name!r}: already exists") from err
            group = Group(int(cur.lastrowid or 0), name, description[:MAX_REASON_LEN])
            self.store.audit(actor, "group.create", name, None, asdict(group))
        return group

    def delete_group(self, group_id: int, actor: str) -> None:
        with self.store.transaction():
            group = self.get_group(group_id)
            if group is None:
                raise StoreError(f"groups.id {group_id}: no such group")
            self.db.execute(
                "DELETE FROM assignments WHERE scope = 'group' AND scope_id = ?", (group_id,)
            )
            self.db.execute("DELETE FROM groups WHERE id = ?", (group_id,))
            self.store.audit(actor, "group.delete", group.name, asdict(group), None)

    # -- hosts --------------------------------------------------------------------------------

    @staticmethod
    def _host(r: Row) -> Host:
        return Host(
            r["id"], r["address"], r["name"], r["group_id"], r["mode"], bool(r["auto_apply"]),
            r["created_at"], r["updated_at"],
        )  # fmt: skip

    def list_hosts(self) -> list[Host]:
        rows = self.db.execute("SELECT * FROM hosts ORDER BY address LIMIT ?", (MAX_LIST,))
        return [self._host(r) for r in rows]

    def get_host(self, host_id: int) -> Host | None:
        r = self.db.execute("SELECT * FROM hosts WHERE id = ?", (host_id,)).fetchone()
        return self._host(r) if r else None

    def host_by_address(self, address: str) -> Host | None:
        r = self.db.execute(
            "SELECT * FROM hosts WHERE address = ?", (check_address(address),)
        ).fetchone()
        return self._host(r) if r else None

    def save_host(
        self,
        address: str,
        actor: str,
        name: str = "",
        group_id: int | None = None,
        mode: str = "normal",
    ) -> Host:
        """Create the host, or update name/group/mode of the one with this address."""
        address = check_address(address)
        if mode not in HOST_MODES:
            raise StoreError(f"hosts.mode {mode!r}: must be one of {', '.join(HOST_MODES)}")
        if group_id is not None and self.get_group(group_id) is None:
            raise StoreError(f"hosts.group_id {group_id}: no such group")
        now = time.time()
        with self.store.transaction():
            before = self.host_by_address(address)
            if before is None:
                self.db.execute(
                    "INSERT INTO hosts(address, name, group_id, mode, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (address, name[:MAX_NAME_LEN], group_id, mode, now, now),
                )
            else:
                self.db.execute(
                    "UPDATE hosts SET name = ?, group_id = ?, mode = ?, updated_at = ? "
                    "WHERE id = ?",
                    (name[:MAX_NAME_LEN], group_id, mode, now, before.id),
                )
            after = self.host_by_address(address)
            assert after is not None
            self.store.audit(
                actor, "host.save", address, asdict(before) if before else None, asdict(after)
            )
        return after

    def delete_host(self, host_id: int, actor: str) -> None:
        with self.store.transaction():
            host = self.get_host(host_id)
            if host is None:
                raise StoreError(f"hosts.id {host_id}: no such host")
            self.db.execute(
                "DELETE FROM assignments WHERE scope = 'host' AND scope_id = ?", (host_id,)
            )
            self.db.execute("DELETE FROM hosts WHERE id = ?", (host_id,))
            self.store.audit(actor, "host.delete", host.address, asdict(host), None)
