"""The gateway's copy of the last shared policy it read (gateway/policy/cache.py): a read of a
PostgreSQL store that cannot be reached falls back to it, so a worker restarted during an
outage enforces what the others do; with no copy the error stands."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.intake.nfqueue import load_policy
from gateway.match.rules import load_rules
from gateway.policy.assignments import Assignments
from gateway.policy.cache import cache_path
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store, StoreError
from gateway.testing.inline import REPO
from gateway.vocabulary import Mode


def config(url: str, state: Path) -> GatewayConfig:
    return parse_config(f"database: {{url: '{url}'}}\npolicy: {{database: {state / 'p.db'}}}\n")


def test_an_unreachable_store_gives_the_last_policy_read(postgres_url: str, tmp_path: Path) -> None:
    with Store(postgres_url) as store:
        Hosts(store).save_host("198.18.0.20", "test")
        Assignments(store).set_assignment(9000100, "global", None, "detect", "test")
    rule = load_rules([REPO / "rules" / "vpatch-test-split.yaml"]).by_id[9000100]
    live = load_policy(config(postgres_url, tmp_path))
    assert live is not None and live.mode("198.18.0.20", rule) is Mode.DETECT
    assert cache_path(config(postgres_url, tmp_path)).stat().st_mode & 0o777 == 0o600
    away = "postgresql:///nodb?host=/nonexistent-socket-dir"
    cached = load_policy(config(away, tmp_path))
    assert cached is not None and cached.mode("198.18.0.20", rule) is Mode.DETECT
    with pytest.raises(StoreError):
        load_policy(config(away, tmp_path / "elsewhere"))  # nothing read before: no policy
