"""Applying a recommendation to the lifecycle state (gateway/scan/assign.py)."""

from __future__ import annotations

from pathlib import Path

from gateway.lifecycle.state import HistoryEntry, LifecycleStore
from gateway.scan.assign import apply_recommendations
from gateway.scan.probes import Evidence
from gateway.scan.recommend import RecAction, Recommendation

HOST = "198.18.0.20"
SAW = (Evidence("http", "Server: Microsoft-IIS/6.0"),)


def rec(rule_id: int, action: RecAction) -> Recommendation:
    return Recommendation(rule_id, f"rule {rule_id}", action, f"reason {rule_id}", SAW)


def test_assign_unassign_keep_with_history(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path / "p.db")
    store.update_host(HOST, assigned=(1, 2))
    summary = HistoryEntry(1.0, HOST, "scan", "run 1", "summary")
    recs = [rec(1, RecAction.KEEP), rec(2, RecAction.UNASSIGN), rec(3, RecAction.ASSIGN)]
    assert apply_recommendations(store, HOST, recs, "scan", "alice", [summary]) == 2
    assert store.host(HOST).assigned == (1, 3)
    history = store.history(HOST)
    assert [(h.action, h.target, h.reason) for h in history] == [
        ("scan", "run 1", "summary"),
        ("unassign", "2", "scan: reason 2"),
        ("assign", "3", "scan: reason 3"),
    ]
    assert history[-1].evidence == (("http", "Server: Microsoft-IIS/6.0"),)


def test_what_is_already_so_changes_nothing(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path / "p.db")
    store.update_host(HOST, assigned=(3,))
    recs = [rec(3, RecAction.ASSIGN), rec(4, RecAction.UNASSIGN)]
    assert apply_recommendations(store, HOST, recs, "scan") == 0
    assert store.host(HOST).assigned == (3,)
    assert store.history(HOST) == []
