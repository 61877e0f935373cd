"""Rule assignments in the policy store: the mode of a rule for the whole gateway, a group or a
host (table assignments of gateway/policy/store.py, migration 1; docs/policy.md "Modes").

Guarantees: at most one assignment per (rule, scope, scope id), and one global per rule; a
group or host assignment names an existing group or host; mode, scope and source are checked
against MODES, SCOPES and SOURCES; every change writes one audit row (the mode before and
after) in its transaction. Errors are `StoreError` naming the value and the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.database import Row
from gateway.policy.hosts import Hosts
from gateway.policy.store import (
    MAX_LIST,
    MAX_REASON_LEN,
    MODES,
    SCOPES,
    SOURCES,
    Store,
    StoreError,
)


@dataclass(frozen=True, slots=True)
class Assignment:
    id: int
    rule_id: int
    scope: str  # global | group | host
    scope_id: int | None  # group or host id; None for global
    mode: str  # off | detect | prevent
    source: str
    reason: str
    updated_by: str
    updated_at: float


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise StoreError(f"assignments.mode {mode!r}: must be one of {', '.join(MODES)}")
    return mode


class Assignments:
    """Rule assignments, over one `Store` (its connection and audit)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    @staticmethod
    def _assignment(r: Row) -> Assignment:
        return Assignment(
            r["id"], r["rule_id"], r["scope"], r["scope_id"], r["mode"], r["source"], r["reason"],
            r["updated_by"], r["updated_at"],
        )  # fmt: skip

    def list_assignments(self, rule_id: int | None = None) -> list[Assignment]:
        if rule_id is None:
            rows = self.db.execute(
                "SELECT * FROM assignments ORDER BY rule_id, scope, scope_id LIMIT ?", (MAX_LIST,)
            )
        else:
            rows = self.db.execute(
                "SELECT * FROM assignments WHERE rule_id = ? ORDER BY scope, scope_id", (rule_id,)
            )
        return [self._assignment(r) for r in rows]

    def find_assignment(self, rule_id: int, scope: str, scope_id: int | None) -> Assignment | None:
        """The assignment of rule_id for exactly this scope, if there is one."""
        r = self.db.execute(
            "SELECT * FROM assignments WHERE rule_id = ? AND scope = ? AND scope_id IS ?",
            (rule_id, scope, scope_id),
        ).fetchone()
        return self._assignment(r) if r else None

    def set_assignment(
        self,
        rule_id: int,
        scope: str,
        scope_id: int | None,
        mode: str | None,
        actor: str,
        source: str = "admin",
        reason: str = "",
    ) -> Assignment | None:
        """Set the mode of a rule for a scope; mode None removes the assignment (inherit)."""
        if scope not in SCOPES:
            raise StoreError(f"assignments.scope {scope!r}: must be one of {', '.join(SCOPES)}")
        if source not in SOURCES:
            raise StoreError(f"assignments.source {source!r}: must be one of {', '.join(SOURCES)}")
        if scope == "global":
            scope_id = None
        elif scope_id is None:
            raise StoreError(f"assignments.scope_id: required for scope {scope!r}")
        elif scope == "host" and Hosts(self.store).get_host(scope_id) is None:
            raise StoreError(f"assignments.scope_id {scope_id}: no such host")
        elif scope == "group" and Hosts(self.store).get_group(scope_id) is None:
            raise StoreError(f"assignments.scope_id {scope_id}: no such group")
        if mode is not None:
            _check_mode(mode)
        target = f"rule {rule_id} {scope}" + (f" {scope_id}" if scope_id is not None else "")
        reason = reason[:MAX_REASON_LEN]
        with self.store.transaction():
            before = self.find_assignment(rule_id, scope, scope_id)
            if mode is None:
                if before is not None:
                    self.db.execute("DELETE FROM assignments WHERE id = ?", (before.id,))
            elif before is None:
                self.db.execute(
                    "INSERT INTO assignments(rule_id, scope, scope_id, mode, source, reason, "
                    "updated_by, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    (rule_id, scope, scope_id, mode, source, reason, actor, time.time()),
                )
            else:
                self.db.execute(
                    "UPDATE assignments SET mode = ?, source = ?, reason = ?, updated_by = ?, "
                    "updated_at = ? WHERE id = ?",
                    (mode, source, reason, actor, time.time(), before.id),
                )
            after = self.find_assignment(rule_id, scope, scope_id)
            self.store.audit(
                actor,
                "assignment.set",
                target,
                before.mode if before else None,
                after.mode if after else None,
            )
        return after
