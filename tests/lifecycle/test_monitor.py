"""The lifecycle monitor's core (no sockets): NFLOG messages -> learned tuples and lockdown
events. The NFLOG message parser is in test_nflog.py."""

from __future__ import annotations

import io
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP  # type: ignore[import-untyped]

from gateway.events.eve import DropReason, EventType
from gateway.firewall.hostmodes import HostModeSettings
from gateway.firewall.policy import add_rule
from gateway.lifecycle.monitor import SID_NEW_PEER, SID_NEW_PORT, STALE_RETRY_S, LifecycleMonitor
from gateway.lifecycle.nflog import LoggedPacket
from gateway.lifecycle.state import (
    HostMode,
    LearnedTuple,
    LifecycleStore,
    LockdownAction,
)
from gateway.policy.store import Store
from gateway.vocabulary import Action

S = HostModeSettings()
HOST = "198.18.0.20"


def _syn(src: str, dport: int) -> bytes:
    return bytes(IP(src=src, dst=HOST) / TCP(sport=40000, dport=dport, flags="S"))


def test_learning_records_tuples_for_learning_hosts(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path / "s.json")
    store.update_host(HOST, mode=HostMode.LEARNING)
    mon = LifecycleMonitor(store, S)
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", _syn("198.18.0.10", 80)))
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", _syn("198.18.0.10", 80)))
    out = bytes(IP(src=HOST, dst="198.18.0.53") / UDP(sport=5353, dport=53))
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", out))
    ping = bytes(IP(src="198.18.0.10", dst=HOST) / ICMP(type=8))
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", ping))
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", b"\x45garbage"))
    assert mon.flush() == 3
    assert set(store.host(HOST).learned) == {
        LearnedTuple("198.18.0.10", HOST, "tcp", 80),
        LearnedTuple(HOST, "198.18.0.53", "udp", 53),
        LearnedTuple("198.18.0.10", HOST, "icmp", 8),
    }


def test_lockdown_events_name_new_peer_or_port_each_time_printed_once(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path / "s.json")
    store.update_host(
        HOST,
        mode=HostMode.LOCKDOWN,
        lockdown_action=LockdownAction.DROP,
        learned=(LearnedTuple("198.18.0.10", HOST, "tcp", 80),),
    )
    now = [1000.0]
    out = io.StringIO()
    mon = LifecycleMonitor(store, S, out=out, clock=lambda: now[0])
    ev = mon.handle(LoggedPacket(S.lockdown_group, 2, "", _syn("198.18.0.10", 8080)))
    assert ev is not None and ev.signature_id == SID_NEW_PORT and ev.blocked
    assert ev.signature == f"lockdown: new port 198.18.0.10 -> {HOST}:8080/tcp not learned"
    assert ev.rule_action is Action.DROP and ev.dest_port == 8080
    assert ev.event_type is EventType.DROP and ev.reason is DropReason.LOCKDOWN
    # the retransmitted SYN is an event too (the sink's aggregation counts it), printed once
    again = mon.handle(LoggedPacket(S.lockdown_group, 2, "", _syn("198.18.0.10", 8080)))
    assert again is not None and again.signature == ev.signature
    ev2 = mon.handle(LoggedPacket(S.lockdown_group, 2, "", _syn("198.18.0.99", 80)))
    assert ev2 is not None and ev2.signature_id == SID_NEW_PEER
    assert "new peer 198.18.0.99" in ev2.signature
    assert out.getvalue().count("new port 198.18.0.10") == 1
    now[0] += 61
    assert mon.handle(LoggedPacket(S.lockdown_group, 2, "", _syn("198.18.0.10", 8080)))
    assert out.getvalue().count("new port 198.18.0.10") == 2
    assert mon.events == 4


def test_firewall_drops_are_named_from_the_policy_store(tmp_path: Path) -> None:
    db = tmp_path / "vpatch.db"
    with Store(db) as store:
        rid = add_rule(store, {"protocol": "tcp", "port_from": "23", "action": "deny",
                               "comment": "no telnet"}, "t").id  # fmt: skip
    now = [1000.0]
    mon = LifecycleMonitor(LifecycleStore(db), S, clock=lambda: now[0])
    syn = _syn("198.18.0.10", 23)
    ev = mon.handle(LoggedPacket(S.log_group, 2, f"vpatch-fw-deny-{rid}", syn))
    assert ev is not None and ev.signature == f"firewall rule {rid} deny: no telnet"
    with Store(db) as store:  # a rule added later is named as soon as it logs (1 s retry)
        later = add_rule(store, {"protocol": "tcp", "port_from": "25", "action": "reject",
                                 "comment": "no smtp"}, "t").id  # fmt: skip
    now[0] += 1.0
    ev = mon.handle(LoggedPacket(S.log_group, 2, f"vpatch-fw-reject-{later}", syn))
    assert ev is not None and ev.signature.endswith("reject: no smtp")
    assert mon.handle(LoggedPacket(S.log_group, 2, "vpatch-setup-in", b"\x45")) is None
    assert mon.stats()["malformed_packets"] == 1 and mon.stats()["drop_events"] == 2


def test_a_copy_for_a_host_the_view_misses_rereads_the_modes(tmp_path: Path) -> None:
    """The kernel logs learning copies only for hosts in its learning set, refreshed before a
    mode change returns; the monitor's view, read once a second, can be older: such a copy
    makes it read the modes again at once (at most every STALE_RETRY_S)."""
    store = LifecycleStore(tmp_path / "s.json")
    now = [1000.0]
    mon = LifecycleMonitor(store, S, clock=lambda: now[0])  # the view: no host in any mode
    store.update_host(HOST, mode=HostMode.LEARNING)  # the change, after the view was read
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", _syn("198.18.0.10", 80)))
    assert mon.flush() == 1
    assert set(store.host(HOST).learned) == {LearnedTuple("198.18.0.10", HOST, "tcp", 80)}
    other = "198.18.0.21"
    store.update_host(other, mode=HostMode.LEARNING)
    syn = bytes(IP(src="198.18.0.10", dst=other) / TCP(sport=40000, dport=22, flags="S"))
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", syn))  # within STALE_RETRY_S
    assert mon.flush() == 0
    now[0] += STALE_RETRY_S
    mon.handle(LoggedPacket(S.learn_group, 2, "vpatch-learn", syn))
    assert mon.flush() == 1
