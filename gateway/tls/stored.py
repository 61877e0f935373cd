"""HTTPS services edited in the UI and API: the policy store's `tls_services` table (migration 9).

What it does: `save_service(store, values, actor, ...)` checks a service's settings with the
configuration's own check (gateway/tls/service.py `service_from`: the same readers and bounds,
the key checked against the certificate) and stores it, audited, in one transaction;
`delete_service` removes one (its flows go back to the packet plane); `list_stored` reads them
back for the UI; `wanted_services(config)` is the gateway's view: the configuration file's
services first, then the stored ones, each checked again where the gateway runs (a stored
service whose files are gone or no longer match is left out and named in `problems`).

How the two sources combine (docs/https.md): a service in the configuration file is shown
read-only ("from the configuration file") and stays there; the store holds the editable ones;
a (host, port) is never in both: the UI and API refuse to store one the configuration proxies,
and should the configuration later claim a stored one, the configuration's wins and the stored
one is named in `problems` until it is deleted.

Guarantees: nothing is stored unless every value passes (ServiceFieldError names the field);
at most MAX_SERVICES services in all; every change writes one audit row and bumps the policy
version in its own transaction (gateway/policy/store.py `audit`), so every gateway on the store
reloads and its HTTPS plane follows (gateway/tls/plane.py `reconfigure`).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.database import Row, integrity_errors, policy_target, target_exists
from gateway.errors import ConfigError
from gateway.policy.store import MAX_LIST, Store
from gateway.tls.service import (
    MAX_SERVICES,
    CertInfo,
    ServiceFieldError,
    TlsService,
    check_keypair,
    service_from,
    service_settings,
)

__all__ = [
    "ServiceSource",
    "StoredService",
    "Wanted",
    "delete_service",
    "list_stored",
    "save_service",
    "wanted_services",
]


class ServiceSource(enum.Enum):
    """Where a proxied service is declared."""

    CONFIG = "config"  # tls_proxy.services in the configuration file (read-only in the UI)
    POLICY = "policy"  # the policy store's tls_services table (edited in the UI and API)


@dataclass(frozen=True, slots=True)
class StoredService:
    """One row of tls_services: its settings as stored (the form's values) and by whom."""

    id: int
    host: str
    port: int
    settings: dict[str, Any]
    updated_by: str
    updated_at: float

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Wanted:
    """A service the gateway's HTTPS plane should proxy, and where it comes from."""

    service: TlsService
    source: ServiceSource
    id: int | None = None  # the row's id (stored services)


def _row(r: Row) -> StoredService:
    return StoredService(
        int(r["id"]), r["host"], int(r["port"]), json.loads(r["settings_json"]),
        r["updated_by"], float(r["updated_at"]),
    )  # fmt: skip


def list_stored(store: Store) -> list[StoredService]:
    rows = store.db.execute("SELECT * FROM tls_services ORDER BY host, port LIMIT ?", (MAX_LIST,))
    return [_row(r) for r in rows]


def _get(store: Store, service_id: int) -> StoredService | None:
    r = store.db.execute("SELECT * FROM tls_services WHERE id = ?", (service_id,)).fetchone()
    return _row(r) if r else None


def save_service(
    store: Store,
    values: Mapping[str, object],
    actor: str,
    service_id: int | None = None,
    reserved: Collection[tuple[str, int]] = (),
) -> tuple[StoredService, CertInfo]:
    """Check and store a service (a new one, or row `service_id` replaced); `reserved`: the
    (host, port) the configuration file proxies. Returns the row and the certificate's facts
    (the caller warns when it is expired or close to). ServiceFieldError names the field."""
    service = service_from(values)
    info = check_keypair(service.cert, service.key)
    key = (service.host, service.port)
    if key in reserved:
        raise ServiceFieldError(
            "port", f"{service.name} is proxied by the configuration file (tls_proxy.services): "
            "change it there",
        )  # fmt: skip
    settings = service_settings(service)
    now = time.time()
    with store.transaction():
        before = None if service_id is None else _get(store, service_id)
        if service_id is not None and before is None:
            raise ServiceFieldError("id", f"no stored service {service_id}")
        count = int(store.db.execute("SELECT COUNT(*) FROM tls_services").fetchone()[0])
        if before is None and count + len(reserved) >= MAX_SERVICES:
            raise ServiceFieldError("", f"at most {MAX_SERVICES} services can be proxied")
        text = json.dumps(settings, sort_keys=True)
        try:
            if before is None:
                cur = store.db.execute(
                    "INSERT INTO tls_services(host, port, settings_json, updated_by, updated_at)"
                    " VALUES (?,?,?,?,?)",
                    (*key, text, actor, now),
                )
                row_id = int(cur.lastrowid or 0)
            else:
                store.db.execute(
                    "UPDATE tls_services SET host = ?, port = ?, settings_json = ?,"
                    " updated_by = ?, updated_at = ? WHERE id = ?",
                    (*key, text, actor, now, before.id),
                )
                row_id = before.id
        except integrity_errors() as err:
            raise ServiceFieldError("port", f"{service.name} is already proxied") from err
        after = _get(store, row_id)
        assert after is not None
        store.audit(
            actor, "tls_service.save", service.name,
            before.settings if before else None, after.settings,
        )  # fmt: skip
    return after, info


def delete_service(store: Store, service_id: int, actor: str) -> StoredService:
    """Remove a stored service: its new connections go back to the packet plane."""
    with store.transaction():
        before = _get(store, service_id)
        if before is None:
            raise ServiceFieldError("id", f"no stored service {service_id}")
        store.db.execute("DELETE FROM tls_services WHERE id = ?", (service_id,))
        store.audit(actor, "tls_service.delete", before.name, before.settings, None)
    return before


def wanted_services(config: GatewayConfig) -> tuple[list[Wanted], list[dict[str, str]]]:
    """What the gateway's HTTPS plane should proxy: the configuration's services, then the
    store's (each checked again here: files on this gateway), and the stored ones left out
    with why ({"service", "error"}). Raises StoreError or the driver's errors when the store
    cannot be read (the caller keeps what it runs)."""
    wanted = [Wanted(s, ServiceSource.CONFIG) for s in config.tls_proxy.services]
    taken = {(s.host, s.port) for s in config.tls_proxy.services}
    problems: list[dict[str, str]] = []
    target = policy_target(config)
    if not target_exists(target):
        return wanted, problems
    with Store(target) as store:
        rows = list_stored(store)
    for row in rows:
        if (row.host, row.port) in taken:
            why = "also in the configuration file (tls_proxy.services), which wins: delete it"
            problems.append({"service": row.name, "error": why})
            continue
        if len(wanted) >= MAX_SERVICES:
            problems.append({"service": row.name, "error": f"over {MAX_SERVICES} services"})
            continue
        try:
            service = service_from(row.settings)
        except ConfigError as err:
            problems.append({"service": row.name, "error": str(err)})
            continue
        wanted.append(Wanted(service, ServiceSource.POLICY, row.id))
        taken.add((row.host, row.port))
    return wanted, problems
