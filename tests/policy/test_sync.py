"""PolicySync (gateway/policy/sync.py) on both databases: a change audited in the store makes
the gateway reload once, the heartbeat row is written and listed, and a store that cannot be
opened is reported and retried without reloading anything (the gateway keeps its policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.database import Target
from gateway.policy.store import Store
from gateway.policy.sync import PolicySync, list_gateways


def sync(target: Target, reloads: list[int]) -> PolicySync:
    return PolicySync(target, "gw-a", lambda: reloads.append(1), lambda: {"alive": 2},
                      poll_interval=0.1, heartbeat=0.0)  # fmt: skip


def test_a_change_reloads_once_and_the_heartbeat_is_listed(store: Store) -> None:
    reloads: list[int] = []
    s = sync(store.path, reloads)
    s.applied = store.policy_version()
    s.step()
    assert reloads == []  # nothing changed since the gateway loaded
    with store.transaction():
        store.audit("alice", "rule.mode", "rule 1", None, "prevent")
    s.step()
    s.step()
    assert reloads == [1] and s.applied == store.policy_version()
    (row,) = list_gateways(store)
    assert row.name == "gw-a" and row.policy_version == s.applied
    assert row.status["alive"] == 2 and row.status["sync"]["reloads"] == 1
    s.stop()


def test_an_unreachable_store_keeps_the_policy_and_is_retried(
    tmp_path: Path, store: Store, caplog: Any
) -> None:
    reloads: list[int] = []
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "vpatch.db"  # cannot be created
    s = sync(bad if not store.postgres else "postgresql:///nodb?host=/nonexistent", reloads)
    s.applied = store.policy_version()
    s.step()
    with store.transaction():  # a change made while this gateway cannot read the store
        store.audit("alice", "rule.mode", "rule 1", None, "prevent")
    s.step()
    assert s.failing and reloads == [] and s.applied == store.policy_version() - 1
    assert sum("policy sync failing" in r.getMessage() for r in caplog.records) == 1
    s.target = store.path  # back
    s.step()
    assert not s.failing and reloads == [1]
    s.stop()
