"""gateway/policy/hosts.py on a fresh policy store: hosts and groups, normalised addresses,
audit rows with before/after, deletes that take the scope's assignments along."""

from __future__ import annotations

import pytest

from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts, check_address
from gateway.policy.store import Store, StoreError


def test_addresses_are_normalised() -> None:
    assert check_address(" 198.18.0.20 ") == "198.18.0.20"
    assert check_address("198.18.5.7/24") == "198.18.5.0/24"
    assert check_address("2001:db8::20/128") == "2001:db8::20"
    with pytest.raises(StoreError, match="'not-an-ip'"):
        check_address("not-an-ip")


def test_every_change_is_audited_with_before_and_after(store: Store) -> None:
    hosts = Hosts(store)
    g = hosts.create_group("web", "front", "alice")
    h = hosts.save_host("198.18.0.20", "alice", "srv", g.id)
    hosts.save_host("198.18.0.20", "bob", "srv2", g.id)
    hosts.delete_host(h.id, "bob")
    hosts.delete_group(g.id, "bob")
    audit = list(reversed(store.list_audit()))
    assert [(a.actor, a.action) for a in audit] == [
        ("alice", "group.create"), ("alice", "host.save"), ("bob", "host.save"),
        ("bob", "host.delete"), ("bob", "group.delete"),
    ]  # fmt: skip
    assert audit[2].detail["before"]["name"] == "srv" and audit[2].detail["after"]["name"] == "srv2"


def test_validation_names_the_value(store: Store) -> None:
    hosts = Hosts(store)
    with pytest.raises(StoreError, match="'not-an-ip'"):
        hosts.save_host("not-an-ip", "a")
    with pytest.raises(StoreError, match="'sometimes'"):
        hosts.save_host("198.18.0.20", "a", mode="sometimes")
    with pytest.raises(StoreError, match="no such group"):
        hosts.save_host("198.18.0.20", "a", group_id=42)
    hosts.create_group("web", "", "a")
    with pytest.raises(StoreError, match="already exists"):
        hosts.create_group("web", "", "a")


def test_deleting_a_host_or_group_deletes_its_assignments(store: Store) -> None:
    hosts, assignments = Hosts(store), Assignments(store)
    g = hosts.create_group("web", "", "a")
    h = hosts.save_host("198.18.0.20", "a", group_id=g.id)
    assignments.set_assignment(9000100, "host", h.id, "off", "a")
    assignments.set_assignment(9000100, "group", g.id, "detect", "a")
    assignments.set_assignment(9000100, "global", None, "prevent", "a")
    hosts.delete_host(h.id, "a")
    assert [a.scope for a in assignments.list_assignments()] == ["global", "group"]
    hosts.delete_group(g.id, "a")
    assert [a.scope for a in assignments.list_assignments()] == ["global"]
