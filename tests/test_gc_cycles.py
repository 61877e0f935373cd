"""The engine makes no reference cycles, so the NFQUEUE worker may run with Python's automatic
cyclic garbage collection off (gateway/intake/nfqueue.py): everything it allocates for a packet
or a flow must be freed by reference counting. Fed every capture of the corpora (attacks,
malformed, benign) and a few thousand HTTP connections, then all flows expired, a collection
must find nothing; the same after policy reloads with a stored policy. Also the worker's safety
valve, `collect_if_grown`, on real cycles."""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.errors import CaptureError
from gateway.intake.nfqueue import WorkerStats, apply_policy, build_engine, collect_if_grown
from gateway.intake.pcap import read_capture
from gateway.lifecycle.state import LifecycleStore
from gateway.policy.assignments import Assignments
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.testing.traffic import SERVER, contiguous, tcp_session
from gateway.vocabulary import Mode


@pytest.fixture
def no_auto_gc() -> Iterator[None]:
    """Automatic collection off, as in the worker; cycles kept for the report."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> Counter[str]:
    """Types of the objects a collection finds now; then those objects are really freed."""
    gc.collect()
    found = Counter(type(o).__name__ for o in gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()  # saved objects still form their cycles: free them for good
    gc.set_debug(gc.DEBUG_SAVEALL)
    return found


def worker_config(tmp_path: Path) -> Any:
    conf = tmp_path / "gateway.yaml"
    conf.write_text(
        f"protected_hosts: [{SERVER}]\n"
        f"policy: {{database: {tmp_path / 'policy.db'}}}\n"
        "events: {sqlite: null, jsonl: null}\n"
    )
    return load_config(conf)


def worker_engine(tmp_path: Path) -> Any:
    engine = build_engine(worker_config(tmp_path))
    cyclic_garbage()  # what loading the rules left, collected once as the worker does
    return engine


def test_corpora_leave_no_cycles(tmp_path: Path, corpora: Path, no_auto_gc: None) -> None:
    engine = worker_engine(tmp_path)
    frames = 0
    for path in sorted(corpora.rglob("*")):
        if path.suffix not in (".pcap", ".pcapng") or not path.is_file():
            continue
        try:
            for rec in read_capture(path):
                engine.process_frame(rec.data, rec.linktype, rec.timestamp)
                frames += 1
        except CaptureError:
            pass  # the malformed captures: what was read has been processed
        engine.expire(1e12)
        assert cyclic_garbage() == Counter(), f"reference cycles after {path.name}"
    assert frames > 10_000


def test_http_connections_leave_no_cycles(tmp_path: Path, no_auto_gc: None) -> None:
    engine = worker_engine(tmp_path)
    req = b"GET /index.html?a=%2e%2e/x HTTP/1.1\r\nHost: lab\r\nCookie: a=b\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok"
    attack = b"GET /cgi-bin/x HTTP/1.1\r\nUser-Agent: () { :; }; /bin/id\r\n\r\n"
    before = len(gc.get_objects())
    for i in range(3000):
        body = attack if i % 50 == 0 else req
        packets = tcp_session(contiguous(body), resp, sport=20000 + i, close=i % 2 == 0)
        for n, pkt in enumerate(packets):
            engine.process_ip(pkt, 1000.0 + i * 0.001 + n * 1e-6)
    assert len(gc.get_objects()) > before + 3000  # the flows are alive
    engine.expire(1e12)
    assert cyclic_garbage() == Counter()
    assert len(gc.get_objects()) < before + 500  # and gone, by reference counting alone


def test_safety_valve_collects_cycles_past_the_limit(
    no_auto_gc: None, caplog: pytest.LogCaptureFixture
) -> None:
    stats = WorkerStats()
    gc.set_debug(0)
    gc.collect()
    assert collect_if_grown(stats, 1000, 3) is None  # nothing grew
    for _ in range(2000):
        cycle: list[Any] = []
        cycle.append(cycle)
    del cycle
    assert collect_if_grown(stats, 10**9, 3) is None  # under the limit: no pause
    with caplog.at_level(logging.WARNING, logger="vpatch"):
        found = collect_if_grown(stats, 1000, 3)
    assert found is not None and found >= 2000
    assert stats.get("gc_runs") == 1 and stats.get("gc_found") == found
    assert any("queue 3" in r.getMessage() and "reference cycles" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert gc.get_count()[0] < 1000  # the count starts again


def test_policy_reloads_leave_no_cycles(tmp_path: Path, no_auto_gc: None) -> None:
    """A worker applies the stored policy on every reload (control `reload`, UI changes)."""
    config = worker_config(tmp_path)
    engine = build_engine(config)
    sids = sorted(rule.id for rule in engine.ruleset.rules)[:3]
    with Store(config.policy.database) as store:
        hosts, assignments, exceptions = Hosts(store), Assignments(store), PolicyExceptions(store)
        group = hosts.create_group("legacy", "", "t")
        host = hosts.save_host(SERVER, "t", name="srv", group_id=group.id)
        assignments.set_assignment(sids[0], "host", host.id, "prevent", "t")
        assignments.set_assignment(sids[1], "group", group.id, "detect", "t")
        assignments.set_assignment(sids[2], "global", None, "off", "t")
        exceptions.add_exception(SERVER, "test", "t", rule_id=sids[0], uri="/x")
        exceptions.add_exception(SERVER, "test", "t", port=8080)
    LifecycleStore(config.policy.database).update_host(
        SERVER, app_controls=("refuse-smb1", "min-tls 1.2"), actor="t"
    )
    cyclic_garbage()  # what building the engine left, collected once as the worker does
    stats = WorkerStats()
    for version in range(1, 6):
        apply_policy(engine, config, stats, version)
    assert stats.get("policy_version") == 5 and stats.get("policy_errors") == 0
    rules = {rule.id: rule for rule in engine.ruleset.rules}
    assert engine.policy is not None  # the stored policy really was applied
    assert engine.policy.mode(SERVER, rules[sids[0]]) is Mode.PREVENT
    assert engine.policy.mode(SERVER, rules[sids[1]]) is Mode.DETECT
    assert cyclic_garbage() == Counter()
