"""gateway/policy/exceptions.py on a fresh policy store: exceptions are validated, expire,
and are audited when added and deleted."""

from __future__ import annotations

import time

import pytest

from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.store import Store, StoreError


def test_add_list_delete_are_audited(store: Store) -> None:
    exceptions = PolicyExceptions(store)
    e = exceptions.add_exception("198.18.0.20/32", "fp", "alice", 9000100, port=80)
    assert (e.host, e.port, e.rule_id, e.created_by) == ("198.18.0.20", 80, 9000100, "alice")
    assert exceptions.list_exceptions() == [e]
    exceptions.delete_exception(e.id, "bob")
    assert exceptions.list_exceptions() == []
    with pytest.raises(StoreError, match="no such exception"):
        exceptions.delete_exception(e.id, "bob")
    audit = list(reversed(store.list_audit()))
    assert [(a.actor, a.action, a.target) for a in audit] == [
        ("alice", "exception.add", "198.18.0.20"),
        ("bob", "exception.delete", "198.18.0.20"),
    ]
    assert audit[0].detail["after"]["reason"] == "fp"


def test_expired_exceptions_are_listed_only_on_request(store: Store) -> None:
    exceptions = PolicyExceptions(store)
    e = exceptions.add_exception("198.18.0.20", "r", "a", expires_at=time.time() + 3600)
    assert e.active(time.time()) and not e.active(time.time() + 7200)
    store.db.execute("UPDATE exceptions SET expires_at = ? WHERE id = ?", (time.time() - 1, e.id))
    assert exceptions.list_exceptions(include_expired=False) == []
    assert [x.id for x in exceptions.list_exceptions()] == [e.id]


def test_validation_names_the_value(store: Store) -> None:
    exceptions = PolicyExceptions(store)
    with pytest.raises(StoreError, match="'not-an-ip'"):
        exceptions.add_exception("not-an-ip", "r", "a")
    with pytest.raises(StoreError, match="reason"):
        exceptions.add_exception("198.18.0.20", "  ", "a")
    with pytest.raises(StoreError, match="past"):
        exceptions.add_exception("198.18.0.20", "r", "a", expires_at=time.time() - 1)
    with pytest.raises(StoreError, match="65536"):
        exceptions.add_exception("198.18.0.20", "r", "a", port=65536)
    with pytest.raises(StoreError, match="uri"):
        exceptions.add_exception("198.18.0.20", "r", "a", uri="")
