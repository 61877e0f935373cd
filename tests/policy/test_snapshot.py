"""gateway/policy/snapshot.py on a fresh policy store: active host-wide exceptions folded in
as `off`, and CompiledPolicy accepting the snapshot."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.match.rules import load_rules
from gateway.policy.assignments import Assignments
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Hosts
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store


def test_snapshot_folds_active_host_exceptions_in_as_off(store: Store) -> None:
    hosts, assignments, exceptions = Hosts(store), Assignments(store), PolicyExceptions(store)
    g = hosts.create_group("web", "", "a")
    h = hosts.save_host("198.18.0.20", "a", group_id=g.id)
    hosts.save_host("198.18.5.0/24", "a")
    assignments.set_assignment(9000100, "global", None, "prevent", "a")
    assignments.set_assignment(9000100, "host", h.id, "prevent", "a")
    exceptions.add_exception("198.18.0.20", "fp", "a", rule_id=9000100)
    exceptions.add_exception(
        "198.18.0.30", "fp", "a", rule_id=9000100, expires_at=time.time() + 3600
    )
    exceptions.add_exception("198.18.0.40", "port only", "a", rule_id=9000100, port=80)
    ex = exceptions.add_exception(
        "198.18.0.50", "expired", "a", rule_id=9000100, expires_at=time.time() + 3600
    )
    snap_hosts, groups, snap_assignments = policy_snapshot(
        store, now=ex.expires_at + 1 if ex.expires_at else None
    )
    by_addr = {x.address: x for x in snap_hosts}
    assert "198.18.5.0/24" in by_addr and [gr.name for gr in groups] == ["web"]
    address_of = {x.id: x.address for x in snap_hosts}
    host_modes = {
        (address_of[a.scope_id], a.mode, a.source) for a in snap_assignments if a.scope == "host"
    }
    assert ("198.18.0.20", "off", "exception") in host_modes
    assert ("198.18.0.20", "prevent", "admin") not in host_modes  # the exception replaced it
    assert "198.18.0.40" not in by_addr  # port-scoped: not part of the snapshot


def test_compiled_policy_accepts_the_snapshot(store: Store) -> None:
    h = Hosts(store).save_host("198.18.0.20", "a")
    Assignments(store).set_assignment(9000100, "host", h.id, "off", "a")
    Assignments(store).set_assignment(9000100, "global", None, "detect", "a")
    policy = CompiledPolicy(*policy_snapshot(store))
    rule = load_rules(
        [Path(__file__).resolve().parents[2] / "rules" / "vpatch-test-split.yaml"]
    ).by_id[9000100]
    assert policy.mode("198.18.0.20", rule).value == "off"
    assert policy.mode("198.18.0.21", rule).value == "detect"
