"""A small lab for the report tests: real rule samples replayed through the real engine (the
bundled rule pack, a compiled policy from a real policy store) into a real event store written
by the gateway's EventSink, at known times, with a second host in detect-only for one rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import BUNDLED_RULES
from gateway.engine import Engine
from gateway.events.sink import EventSink
from gateway.lifecycle.state import HistoryEntry, HostMode, LifecycleStore
from gateway.match.rules import Rule, RuleSet, load_rules
from gateway.policy.assignments import Assignments
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.hosts import Hosts
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store
from gateway.testing.traffic import contiguous, replay_packets, tcp_session

DAY1 = datetime(2026, 12, 5, tzinfo=UTC)
WEB, FILES, OTHER = "198.18.0.20", "198.18.0.21", "198.18.0.22"
CLIENTS = ("198.19.1.10", "198.19.1.11", "198.19.1.12")
RULE_IDS = (9001001, 9001017, 9001019)  # rules with inline TCP attack samples
DETECT_RULE = 9001019  # detect-only for FILES


@dataclass(frozen=True)
class Lab:
    events: Path
    policy: Path
    rules: RuleSet
    rule_paths: tuple[Path, ...]


def _packets(rule: Rule, client: str, server: str, sport: int) -> list[bytes]:
    """The rule's first inline attack sample as one TCP connection client -> server."""
    sample = next(s for s in rule.samples if s.kind == "attack" and s.pcap is None)
    return tcp_session(contiguous(sample.to_server), sample.to_client, sport=sport,
                       dport=rule.ports[0], client=client, server=server)  # fmt: skip


def build_lab(tmp_path: Path) -> Lab:
    rules = load_rules([BUNDLED_RULES])
    policy = tmp_path / "state" / "vpatch.db"
    with Store(policy) as store:
        hosts = Hosts(store)
        web = hosts.create_group("web", "web servers", "test")
        hosts.save_host(WEB, "test", name="iis", group_id=web.id)
        files = hosts.save_host(FILES, "test", name="files")
        hosts.save_host(OTHER, "test", name="spare")
        Assignments(store).set_assignment(DETECT_RULE, "host", files.id, "detect", "test")
        compiled = CompiledPolicy(*policy_snapshot(store))
    life = LifecycleStore(policy)
    t0 = DAY1.timestamp()
    setup = HistoryEntry(t0 + 60, FILES, "mode", "setup", "new host")
    release = HistoryEntry(t0 + 120, FILES, "release", "normal", "admin")
    life.update_host(FILES, history=[setup], mode=HostMode.SETUP)
    life.update_host(FILES, history=[release], mode=HostMode.NORMAL)
    events = tmp_path / "events" / "events.db"
    sink = EventSink(events, tmp_path / "events" / "eve.json")
    try:
        engine = Engine(rules, policy=compiled)
        start = DAY1.timestamp() + 3600
        n = 0
        for day in (0, 1):  # two days: the report of one must leave the other out
            for i, rule_id in enumerate(RULE_IDS):
                rule = rules.by_id[rule_id]
                for server in (WEB, FILES):
                    for c, client in enumerate(CLIENTS[: i + 1 + day]):
                        packets = _packets(rule, client, server, 41000 + n)
                        t = start + day * 86400 + n * 7.0 + c
                        for event in replay_packets(engine, packets, start=t):
                            sink.emit(event)
                        n += 1
        engine.close()
    finally:
        sink.close()
    return Lab(events, policy, rules, (BUNDLED_RULES,))
