"""Firewall and host-mode events without a kernel: the logging rules rendered for deny, reject,
log and setup protection (rate-limited NFLOG before the verdict), the prefixes read back, the
headers of cut-short logged packets, LoggedPacket -> Event, and the kernel counters parsed
from `iptables-save -c` text. End to end in the lab: test_dropevents_lab.py."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP  # type: ignore[import-untyped]
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment  # type: ignore[import-untyped]

from gateway.events.eve import DropReason, EventType, to_eve
from gateway.firewall.dropcount import DropCount, parse_drop_counts
from gateway.firewall.dropevents import (
    FW_SID_BASE,
    SID_SETUP_IN,
    SID_SETUP_OUT,
    DropEvents,
    headers,
)
from gateway.firewall.droplog import (
    DROP_LOG_GROUP,
    LogPrefix,
    fw_prefix,
    nflog_target,
    parse_prefix,
)
from gateway.firewall.hostmodes import render_hostmodes
from gateway.firewall.policy import FirewallRule, policy_lines
from gateway.lifecycle.nflog import LoggedPacket
from gateway.lifecycle.state import Endpoint, HostMode, HostPolicy
from gateway.vocabulary import Action

HOST, PEER = "198.18.0.20", "198.18.0.10"


def _rule(rid: int, action: str, protocol: str = "tcp") -> FirewallRule:
    return FirewallRule(rid, 10, "global", None, "in", "", protocol, 8090, None, "", action,
                        "", True, "t", 0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("action", "verdict"),
    [
        ("deny", ["-j DROP"]),
        ("reject", ["-j REJECT --reject-with tcp-reset"]),
        ("log", []),
        ("allow", None),
    ],
)
def test_rules_log_rate_limited_before_their_verdict(action: str, verdict: list[str]) -> None:
    lines = policy_lines([_rule(7, action)], [], [], 4, "X-FW")[1:]  # after ESTABLISHED
    head = "-A X-FW -p tcp --dport 8090 -m comment --comment fw7 "
    if verdict is None:  # allow: no log
        assert lines == [head + "-j RETURN"]
        return
    assert lines == [head + nflog_target(DROP_LOG_GROUP, f"vpatch-fw-{action}-7")] + [
        head + v for v in verdict
    ]
    assert "-m limit --limit 100/second --limit-burst 200" in lines[0]


def test_reject_without_tcp_answers_icmp() -> None:
    lines = policy_lines([_rule(3, "reject", "udp")], [], [], 6, "X-FW")
    assert lines[-1].endswith("-j REJECT --reject-with icmp6-port-unreachable")


def test_setup_refusals_and_lockdown_are_logged_rate_limited() -> None:
    setup = HostPolicy(HOST, HostMode.SETUP, exceptions=(Endpoint(f"{PEER}/32", "tcp", 3389),))
    text = render_hostmodes([setup], "X").ipv4.splitlines()
    log_in = f"-A X-HM-SETUP-IN {nflog_target(DROP_LOG_GROUP, 'vpatch-setup-in')}"
    log_out = f"-A X-HM-SETUP-OUT {nflog_target(DROP_LOG_GROUP, 'vpatch-setup-out')}"
    # the exception returns first, the log comes right before the refusals
    assert text.index(log_in) < text.index("-A X-HM-SETUP-IN -p tcp -j REJECT --reject-with "
                                           "tcp-reset")  # fmt: skip
    assert any("-s 198.18.0.10/32 -p tcp --dport 3389 -j RETURN" in t for t in
               text[: text.index(log_in)])  # fmt: skip
    assert log_out in text
    assert "-A X-HM-LOCK -m limit --limit 100/second" in "\n".join(text)


@pytest.mark.parametrize(
    ("prefix", "parsed"),
    [
        (fw_prefix("deny", 12), LogPrefix(DropReason.FIREWALL, 12, "deny")),
        ("vpatch-fw-log-1", LogPrefix(DropReason.FIREWALL, 1, "log")),
        ("vpatch-fw-reject-99", LogPrefix(DropReason.FIREWALL, 99, "reject")),
        ("vpatch-setup-in", LogPrefix(DropReason.SETUP, 0, "reject", "in")),
        ("vpatch-setup-out", LogPrefix(DropReason.SETUP, 0, "reject", "out")),
        ("vpatch-fw-12", None),  # the old `log` prefix
        ("vpatch-fw-allow-1", None),
        ("vpatch-fw-deny-", None),
        ("vpatch-fw-deny-1x", None),
        ("vpatch-setup-sideways", None),
        ("vpatch-lockdown", None),
        ("", None),
        ("someone else's", None),
    ],
)
def test_prefixes_read_back(prefix: str, parsed: LogPrefix | None) -> None:
    assert parse_prefix(prefix) == parsed


def test_headers_of_cut_short_packets() -> None:
    big = bytes(IP(src=PEER, dst=HOST) / UDP(sport=5000, dport=9999) / (b"x" * 1000))[:128]
    h = headers(big)
    assert h is not None and (h.src, h.dst, h.proto, h.sport, h.dport) == (PEER, HOST, 17, 5000,
                                                                            9999)  # fmt: skip
    ping = headers(bytes(IP(src=PEER, dst=HOST) / ICMP(type=8)))
    assert ping is not None and (ping.proto, ping.dport, ping.sport) == (1, 8, 0)
    v6 = bytes(IPv6(src="2001:db8::10", dst="2001:db8::20") / IPv6ExtHdrFragment()
               / TCP(sport=1234, dport=445, flags="S"))  # fmt: skip
    h6 = headers(v6)
    assert h6 is not None and (h6.dst, h6.proto, h6.dport) == ("2001:db8::20", 6, 445)
    only_ip = headers(bytes(IP(src=PEER, dst=HOST) / TCP(dport=80))[:20])
    assert only_ip is not None and only_ip.dport == 0  # ports cut off: 0, not an error
    for bad in (b"", b"\x45", b"\x41" + bytes(30), b"\x60" + bytes(10), b"\x00" * 40):
        assert headers(bad) is None


def test_garbage_never_raises() -> None:
    rng = random.Random(13)
    drops = DropEvents()
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        if data and rng.random() < 0.5:
            data = bytes([0x45 if rng.random() < 0.5 else 0x60]) + data[1:]
        headers(data)
        drops.event(LoggedPacket(DROP_LOG_GROUP, 2, fw_prefix("deny", 1), data), 0.0)
    assert drops.malformed + drops.events == 3000


def _logged(prefix: str, dport: int = 8090) -> LoggedPacket:
    pkt = bytes(IP(src=PEER, dst=HOST) / TCP(sport=40000, dport=dport, flags="S"))
    return LoggedPacket(DROP_LOG_GROUP, 2, prefix, pkt)


def test_firewall_and_setup_packets_become_drop_and_flow_events() -> None:
    drops = DropEvents({7: "no 8090"})
    deny = drops.event(_logged("vpatch-fw-deny-7"), 100.0)
    assert deny is not None and deny.event_type is EventType.DROP and deny.blocked
    assert (deny.signature_id, deny.signature) == (FW_SID_BASE + 7, "firewall rule 7 deny: no 8090")
    assert (deny.src_ip, deny.dest_ip, deny.dest_port, deny.proto) == (PEER, HOST, 8090, 6)
    assert deny.reason is DropReason.FIREWALL and deny.fw_rule_id == 7
    eve = to_eve(deny)
    assert eve["event_type"] == "drop" and eve["drop"] == {"reason": "firewall"}
    assert eve["alert"]["action"] == "blocked" and eve["alert"]["category"] == "Firewall policy"
    assert eve["vpatch"]["firewall"] == {
        "mode": "firewall", "rule_id": 7, "rule": "firewall rule 7 deny: no 8090",
        "first_seen": eve["timestamp"], "last_seen": eve["timestamp"],
    }  # fmt: skip
    log = drops.event(_logged("vpatch-fw-log-8", 80), 100.0)
    assert log is not None and log.event_type is EventType.FLOW and not log.blocked
    assert "rule since changed or removed" in log.signature and log.rule_action is Action.ALERT
    assert "drop" not in to_eve(log) and to_eve(log)["event_type"] == "flow"
    rej = drops.event(_logged("vpatch-fw-reject-9"), 100.0)
    assert rej is not None and rej.rule_action is Action.RESET
    setup_in = drops.event(_logged("vpatch-setup-in", 80), 100.0)
    setup_out = drops.event(_logged("vpatch-setup-out", 80), 100.0)
    assert setup_in is not None and setup_in.signature_id == SID_SETUP_IN
    assert setup_out is not None and setup_out.signature_id == SID_SETUP_OUT
    assert setup_in.reason is DropReason.SETUP and setup_in.event_type is EventType.DROP
    assert drops.event(_logged("not ours"), 100.0) is None and drops.malformed == 1


SAVE = """# Generated by iptables-save
*filter
:X-FW - [0:0]
[0:0] -A FORWARD -j X-FW
[3:120] -A X-FW -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
[537:15036] -A X-FW -p udp -m udp --dport 9999 -m comment --comment fw4 -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-prefix vpatch-fw-deny-4 --nflog-group 19 --nflog-size 128
[100000:2800000] -A X-FW -p udp -m udp --dport 9999 -m comment --comment fw4 -j DROP
[5:300] -A X-FW -p tcp -m tcp --dport 80 -m comment --comment fw14 -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-prefix vpatch-fw-log-14 --nflog-group 19 --nflog-size 128
[2:120] -A X-HM-SETUP-IN -s 198.18.0.10/32 -p tcp -m tcp --dport 3389 -j RETURN
[4:240] -A X-HM-SETUP-IN -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-prefix vpatch-setup-in --nflog-group 19 --nflog-size 128
[3:180] -A X-HM-SETUP-IN -p tcp -j REJECT --reject-with tcp-reset
[1:60] -A X-HM-SETUP-IN -j REJECT --reject-with icmp-port-unreachable
[2:120] -A X-HM-LOCK -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-prefix vpatch-lockdown --nflog-group 18 --nflog-size 128
[2:120] -A X-HM-LOCK -m set --match-set x-hm-lockdrop4 dst -j DROP
[9:9] -A Y-FW -m comment --comment fw4 -j DROP
COMMIT
"""  # noqa: E501


def test_kernel_counters_per_rule_and_mode() -> None:
    counts: dict[str, DropCount] = {}
    parse_drop_counts(SAVE, "X", counts)
    assert counts == {
        "fw:4": DropCount(537, 100000),
        "fw:14": DropCount(5, 0),
        "setup:in": DropCount(4, 4),
        "lockdown": DropCount(2, 2),
    }
    assert counts["fw:4"].suppressed == 100000 - 537 and counts["fw:14"].suppressed == 0
    parse_drop_counts(SAVE, "X", counts)  # the other family adds up
    assert counts["fw:4"] == DropCount(1074, 200000)
