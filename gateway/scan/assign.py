"""Applying a recommendation (gateway/scan/recommend.py) to the lifecycle state.

`apply_recommendations(store, host, recs, why, actor)` assigns the ASSIGN rules to the host and
removes the UNASSIGN ones (KEEP changes nothing), in one update of the lifecycle state
(gateway/lifecycle/state.py: one transaction, audited): every change gets a history entry
whose reason is "WHY: the recommendation's reason" and whose evidence is the recommendation's;
a change that is already so (applied twice, or made by an admin since) is skipped and gets no
entry. `extra` history entries (e.g. the scan's own summary) go in the same update, first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from gateway.lifecycle.state import HistoryEntry, LifecycleStore
from gateway.scan.recommend import RecAction, Recommendation


def apply_recommendations(
    store: LifecycleStore,
    host: str,
    recs: Iterable[Recommendation],
    why: str,
    actor: str = "cli",
    extra: Iterable[HistoryEntry] = (),
) -> int:
    """Assign/unassign per `recs` with one history entry each; returns the changes made."""
    policy = store.host(host)
    assigned = set(policy.assigned)
    history = list(extra)
    now = time.time()
    changes = 0
    for rec in recs:
        if rec.action is RecAction.KEEP:
            continue
        before = len(assigned)
        if rec.action is RecAction.ASSIGN:
            assigned.add(rec.rule_id)
        else:
            assigned.discard(rec.rule_id)
        if len(assigned) == before:
            continue  # already so (applied twice, or changed by an admin since)
        changes += 1
        history.append(
            HistoryEntry(
                now,
                host,
                rec.action.value,
                str(rec.rule_id),
                f"{why}: {rec.reason}",
                tuple((e.probe, e.saw) for e in rec.evidence),
            )
        )
    store.update_host(host, history=history, actor=actor, assigned=tuple(sorted(assigned)))
    return changes
