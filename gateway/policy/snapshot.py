"""The gateway's read of the policy store: hosts, groups and assignments in one transaction,
as plain records (frozen dataclasses) for `gateway.policy.compiled.CompiledPolicy`
(docs/policy.md "Snapshot handed to the gateway").

Guarantees: the three lists are read in one transaction (a consistent view while the UI
writes); active host-wide exceptions are folded in as `off` host assignments (source
"exception"), unless the caller asks for them to be left out.
"""

from __future__ import annotations

import time

from gateway.policy.assignments import Assignment, Assignments
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Group, Host, Hosts
from gateway.policy.store import Store


def policy_snapshot(
    store: Store, now: float | None = None, fold_exceptions: bool = True
) -> tuple[list[Host], list[Group], list[Assignment]]:
    """(hosts, groups, assignments) for CompiledPolicy, read in one transaction.

    Active exceptions that cover a whole host (no port, no URI) for one rule are added as
    host assignments with mode `off` and source `exception` (most specific, so they win);
    the host is matched by address (a host entry is synthesised, id < 0, when the address
    has none). Port- and URI-scoped exceptions are not part of the snapshot (see
    docs/webui.md). `fold_exceptions=False` leaves all exceptions out: the gateway passes
    `PolicyExceptions.list_exceptions(include_expired=False)` to CompiledPolicy's exception
    scopes instead, which also expire on time without a reload.
    """
    now = time.time() if now is None else now
    store.db.execute("BEGIN")
    try:
        hosts = Hosts(store).list_hosts()
        groups = Hosts(store).list_groups()
        assignments = Assignments(store).list_assignments()
        exceptions = PolicyExceptions(store).list_exceptions(include_expired=False)
    finally:
        store.db.execute("COMMIT")
    by_addr = {h.address: h for h in hosts}
    synthetic = -1
    for exc in exceptions if fold_exceptions else ():
        if exc.port is not None or exc.uri is not None or exc.rule_id is None:
            continue
        host = by_addr.get(exc.host)
        if host is None:
            host = Host(
                synthetic, exc.host, "", None, "normal", False, exc.created_at, exc.created_at
            )
            synthetic -= 1
            by_addr[exc.host] = host
            hosts.append(host)
        assignments = [
            a for a in assignments
            if not (a.scope == "host" and a.scope_id == host.id and a.rule_id == exc.rule_id)
        ]  # fmt: skip
        folded = Assignment(
            -exc.id, exc.rule_id, "host", host.id, "off", "exception", exc.reason,
            exc.created_by, exc.created_at,
        )  # fmt: skip
        assignments.append(folded)
    return hosts, groups, assignments
