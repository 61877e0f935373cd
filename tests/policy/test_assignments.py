"""gateway/policy/assignments.py on a fresh policy store: set, change and remove a rule's
mode per scope, with the mode before and after in the audit row."""

from __future__ import annotations

import pytest

from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store, StoreError


def test_every_change_is_audited_with_the_mode_before_and_after(store: Store) -> None:
    h = Hosts(store).save_host("198.18.0.20", "alice")
    assignments = Assignments(store)
    assignments.set_assignment(9000100, "host", h.id, "detect", "alice")
    assignments.set_assignment(9000100, "host", h.id, "prevent", "bob")
    assert assignments.find_assignment(9000100, "host", h.id) is not None
    assignments.set_assignment(9000100, "host", h.id, None, "bob")
    assert assignments.find_assignment(9000100, "host", h.id) is None
    audit = [a for a in reversed(store.list_audit()) if a.action == "assignment.set"]
    assert [(a.actor, a.detail["before"], a.detail["after"]) for a in audit] == [
        ("alice", None, "detect"),
        ("bob", "detect", "prevent"),
        ("bob", "prevent", None),
    ]
    assert audit[0].target == f"rule 9000100 host {h.id}"


def test_global_has_no_scope_id_and_one_row_per_rule(store: Store) -> None:
    assignments = Assignments(store)
    assignments.set_assignment(1, "global", 7, "detect", "a")  # the id is ignored
    assignments.set_assignment(1, "global", None, "off", "a", source="cli", reason="r")
    (only,) = assignments.list_assignments(1)
    assert (only.scope_id, only.mode, only.source, only.reason) == (None, "off", "cli", "r")


def test_validation_names_the_value(store: Store) -> None:
    assignments = Assignments(store)
    with pytest.raises(StoreError, match="'sometimes'"):
        assignments.set_assignment(1, "global", None, "sometimes", "a")
    with pytest.raises(StoreError, match="'planet'"):
        assignments.set_assignment(1, "planet", None, "off", "a")
    with pytest.raises(StoreError, match="'robot'"):
        assignments.set_assignment(1, "global", None, "off", "a", source="robot")
    with pytest.raises(StoreError, match="required"):
        assignments.set_assignment(1, "host", None, "off", "a")
    with pytest.raises(StoreError, match="no such host"):
        assignments.set_assignment(1, "host", 42, "off", "a")
    with pytest.raises(StoreError, match="no such group"):
        assignments.set_assignment(1, "group", 42, "off", "a")
