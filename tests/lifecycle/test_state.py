"""Lifecycle state file: endpoints, hosts, learned tuples, history, concurrent writers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from gateway.database import target_arg
from gateway.lifecycle.state import (
    MAX_LEARNED_PER_HOST,
    Endpoint,
    HistoryEntry,
    HostMode,
    LearnedTuple,
    LifecycleError,
    LifecycleStore,
    parse_tuple,
)


@pytest.mark.parametrize(
    ("text", "net", "proto", "port"),
    [
        ("198.18.0.0/24:tcp/3389", "198.18.0.0/24", "tcp", 3389),
        ("198.18.0.5", "198.18.0.5/32", None, None),
        ("[2001:2::/64]:udp/53", "2001:2::/64", "udp", 53),
        ("10.0.0.0/8:icmp", "10.0.0.0/8", "icmp", None),
    ],
)
def test_endpoint_parse_roundtrip(text: str, net: str, proto: str | None, port: int | None) -> None:
    e = Endpoint.parse(text, "test")
    assert (e.net, e.proto, e.port) == (net, proto, port)
    assert Endpoint.parse(str(e), "again") == e


@pytest.mark.parametrize(
    "text", ["nonsense", "198.18.0.0/24:gre/1", "198.18.0.1:tcp/70000", "300.1.1.1"]
)
def test_endpoint_errors_name_the_value(text: str) -> None:
    with pytest.raises(LifecycleError, match="--exception"):
        Endpoint.parse(text, "--exception")


def test_tuple_network_source_is_canonical() -> None:
    assert parse_tuple("198.18.0.7/24 -> 198.18.0.20:80/tcp").src == "198.18.0.0/24"
    assert parse_tuple("198.18.0.7/32 -> 198.18.0.20:80/tcp").src == "198.18.0.7"
    assert parse_tuple("ANY -> 198.18.0.20:80/tcp").src_is_net


@pytest.mark.parametrize(
    ("text", "net", "proto", "port"),
    [
        ("updates.example.com:tcp/80", "updates.example.com", "tcp", 80),
        ("WindowsUpdate.Microsoft.com.:tcp/443", "windowsupdate.microsoft.com", "tcp", 443),
        ("bad.face:udp/123", "bad.face", "udp", 123),  # hex letters: a name, not an address
        ("198.18.5.5:tcp/443", "198.18.5.5/32", "tcp", 443),
    ],
)
def test_update_source_names(text: str, net: str, proto: str, port: int) -> None:
    e = Endpoint.parse(text, "--update-source", names=True)
    assert (e.net, e.proto, e.port) == (net, proto, port)
    assert e.is_name == ("/" not in net)
    assert Endpoint.parse(str(e), "again", names=True) == e


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("updates.example.com", "needs tcp or udp and a port"),
        ("updates.example.com:tcp", "needs tcp or udp and a port"),
        ("localhost:tcp/80", "is not a host name"),
        ("-bad.example.com:tcp/80", "is not a host name"),
        ("198.18.0.300:tcp/80", "is not a host name"),
    ],
)
def test_update_source_name_errors(text: str, match: str) -> None:
    with pytest.raises(LifecycleError, match=f"--update-source: .*{match}"):
        Endpoint.parse(text, "--update-source", names=True)
    with pytest.raises(LifecycleError, match="--exception"):
        Endpoint.parse(text, "--exception")  # exceptions take no names


@pytest.mark.parametrize(
    "t",
    [
        LearnedTuple("198.18.0.10", "198.18.0.20", "tcp", 8080),
        LearnedTuple("2001:2::10", "2001:2::20", "udp", 53),
        LearnedTuple("198.18.0.10", "198.18.0.20", "icmp", 8),
        LearnedTuple("198.18.0.0/24", "198.18.0.20", "tcp", 80),
        LearnedTuple("any", "198.18.0.20", "tcp", 80),
        LearnedTuple("2001:2::/64", "2001:2::20", "tcp", 80),
    ],
)
def test_tuple_parse_roundtrip(t: LearnedTuple) -> None:
    assert parse_tuple(str(t)) == t
    assert parse_tuple(f"  [{t.src}] -> [{t.dst}]:{t.port}/{t.proto.upper()} ") == t


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("198.18.0.10 -> 198.18.0.20", "is not 'SRC -> DST:PORT/PROTO'"),
        ("198.18.0.10 -> 198.18.0.20:1/gre", "protocol 'gre'"),
        ("198.18.0.300 -> 198.18.0.20:1/tcp", "'198.18.0.300' is not an IP address"),
        ("198.18.0.0/33 -> 198.18.0.20:1/tcp", "'198.18.0.0/33' .* is not a CIDR"),
        ("0.0.0.0/0 -> 198.18.0.20:1/tcp", "write 'any' for every client"),
        ("2001:2::/64 -> 198.18.0.20:1/tcp", "mixes IPv4 and IPv6"),
        ("any -> any:80/tcp", "is not 'SRC -> DST:PORT/PROTO'"),
    ],
)
def test_tuple_errors_name_source_and_value(text: str, match: str) -> None:
    with pytest.raises(LifecycleError, match=f"event 7: .*{match}"):
        parse_tuple(text, "event 7")


def test_host_defaults_update_and_history(db_target: Any) -> None:
    store = LifecycleStore(db_target)
    assert store.host("198.18.0.20").mode is HostMode.NORMAL
    store.update_host(
        "198.18.0.20",
        mode=HostMode.SETUP,
        exceptions=(Endpoint.parse("198.18.0.0/24:tcp/3389", "t"),),
        history=[HistoryEntry(1.0, "198.18.0.20", "mode", "setup", "test")],
    )
    again = LifecycleStore(db_target).host("198.18.0.20")
    assert again.mode is HostMode.SETUP and str(again.exceptions[0]) == "198.18.0.0/24:tcp/3389"
    assert [h.action for h in store.history("198.18.0.20")] == ["mode"]
    with pytest.raises(LifecycleError, match="'bad'"):
        store.host("bad")


def test_learned_is_a_bounded_set(db_target: Any) -> None:
    store = LifecycleStore(db_target)
    t = LearnedTuple("198.18.0.10", "198.18.0.20", "tcp", 80)
    assert store.add_learned("198.18.0.20", [t, t]) == 1
    assert store.add_learned("198.18.0.20", [t]) == 0
    many = [LearnedTuple("198.18.0.10", "198.18.0.20", "udp", p) for p in range(1, 5000)]
    store.add_learned("198.18.0.20", many)
    assert len(store.host("198.18.0.20").learned) == MAX_LEARNED_PER_HOST


def _writer(path: str, port0: int) -> None:
    store = LifecycleStore(target_arg(path))
    for i in range(20):
        store.add_learned(
            "198.18.0.20", [LearnedTuple("198.18.0.10", "198.18.0.20", "tcp", port0 + i)]
        )


def test_concurrent_writers_lose_nothing(db_target: Any) -> None:
    path = str(db_target)
    procs = [multiprocessing.Process(target=_writer, args=(path, 1000 * (k + 1))) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]  # a writer's traceback is in the output
    assert len(LifecycleStore(target_arg(path)).host("198.18.0.20").learned) == 60


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    path.chmod(0o600)  # a world-readable one is refused before being read (test_statefiles.py)
    with pytest.raises(LifecycleError, match="s.json"):
        LifecycleStore(path).hosts()


def test_state_lives_in_the_policy_store_with_audit(db_target: Any) -> None:
    from gateway.policy.hosts import Hosts
    from gateway.policy.store import Store

    db = db_target
    store = LifecycleStore(db)
    store.update_host("198.18.0.20", mode=HostMode.LOCKDOWN, actor="admin")
    store.add_learned("198.18.0.20", [LearnedTuple("198.18.0.10", "198.18.0.20", "tcp", 80)])
    with Store(db) as policy:
        assert policy.schema_version >= 3
        host = Hosts(policy).host_by_address("198.18.0.20")
        assert host is not None and host.mode == "lockdown"  # the hosts table's own column
        actions = [(a.actor, a.action) for a in policy.list_audit()]
        assert actions == [("monitor", "lifecycle.learn"), ("admin", "lifecycle.host")]


def test_scan_unassignment_is_enforced_and_admin_choices_win(db_target: Any) -> None:
    """What the scan retires is switched off for the host in the assignments the gateway
    compiles (source "scan"); assigned again, the rule inherits once more; a host assignment an
    admin made is never overwritten by the scan."""
    from gateway.policy.assignments import Assignments
    from gateway.policy.hosts import Hosts
    from gateway.policy.store import Store

    db = db_target
    store = LifecycleStore(db)
    addr = "198.18.0.20"
    store.update_host(addr, assigned=(9001001, 9001002, 9010020), actor="scan")
    with Store(db) as policy:
        host = Hosts(policy).host_by_address(addr)
        assert host is not None
        # an admin pins 9001002 to detect for this host
        assignments = Assignments(policy)
        assignments.set_assignment(9001002, "host", host.id, "detect", "admin")
        assert assignments.find_assignment(9001001, "host", host.id) is None  # assign = inherit
    why = [HistoryEntry(1.0, addr, "unassign", "9001001", "scan: smb1 absent")]
    store.update_host(addr, why, assigned=(9010020,), actor="scan")
    with Store(db) as policy:
        off = Assignments(policy).find_assignment(9001001, "host", host.id)
        assert off is not None and (off.mode, off.source, off.reason) == (
            "off",
            "scan",
            "scan: smb1 absent",
        )
        pinned = Assignments(policy).find_assignment(9001002, "host", host.id)
        assert pinned is not None and (pinned.mode, pinned.source) == ("detect", "admin")
    store.update_host(addr, assigned=(9001001, 9010020), actor="scan")  # SMB1 is back
    with Store(db) as policy:
        assert Assignments(policy).find_assignment(9001001, "host", host.id) is None


def test_scan_services_are_read_back_for_the_host(db_target: Any) -> None:
    from gateway.lifecycle.state import host_services
    from gateway.policy.hosts import Hosts
    from gateway.policy.store import Store

    db = db_target
    life = LifecycleStore(db)
    assert life.scan_services("198.18.0.20") == []
    life.record_scan("198.18.0.20", [{"port": 80, "transport": "tcp", "service": "http"}])
    (row,) = life.scan_services("198.18.0.20")
    assert (row["port"], row["proto"], row["service"]) == (80, "tcp", "http")
    with Store(db) as store:
        host = Hosts(store).host_by_address("198.18.0.20")
        assert host is not None and host_services(store, host.id) == [row]
        assert host_services(store, host.id + 1) == []
