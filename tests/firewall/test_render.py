"""Kernel rule rendering: what is queued, for whom, how, and the fail policy flags."""

from __future__ import annotations

import ipaddress
import re

import pytest

from gateway.config import parse_config
from gateway.firewall.render import (
    QueuePlan,
    RenderedRules,
    queue_target,
    render,
)
from gateway.match.rules import ANY_PORT

HTTP_ONLY = QueuePlan(tcp_to_server=frozenset({80}))


def _render(text: str, plan: QueuePlan = HTTP_ONLY) -> RenderedRules:
    return render(parse_config(text), plan)


def _rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("-A", "-I"))]


def test_nothing_queued_without_protected_hosts() -> None:
    r = _render("fail_policy: open\n")
    assert r.ipv4 == "" and r.ipv6 == ""
    assert "hosts" not in r.ipset


def test_nothing_queued_without_covered_ports() -> None:
    r = _render("protected_hosts: [198.18.0.20]\n", QueuePlan())
    assert r.ipv4 == "" and r.ipset == "" and r.sets == ()


LISTED_ONLY = "engine: {identify_any_port: false}\n"


def test_only_covered_ports_and_protected_hosts() -> None:
    plan = QueuePlan(tcp_to_server=frozenset({80, 445}), udp_to_server=frozenset({53}))
    r = _render(LISTED_ONLY + "protected_hosts: [198.18.0.20, 198.18.5.0/24]\n", plan)
    assert "add vpatch-tcp-srv 80\nadd vpatch-tcp-srv 445\n" in r.ipset
    assert "add vpatch-udp-srv 53" in r.ipset
    assert "add vpatch-hosts4 198.18.0.20/32" in r.ipset
    assert "add vpatch-hosts4 198.18.5.0/24" in r.ipset
    assert "vpatch-tcp-cli" not in r.ipset  # no rule inspects responses
    rules = _rules(r.ipv4)
    assert "-A VPATCH-FORWARD -m set --match-set vpatch-hosts4 dst -j VPATCH-TO-SERVER" in rules
    assert not any("VPATCH-TO-CLIENT" in x for x in rules)
    # Every path to the queue passes the hosts set and a port set.
    assert any("-p tcp -m set --match-set vpatch-tcp-srv dst" in x for x in rules)
    assert any("-p udp -m set --match-set vpatch-udp-srv dst" in x for x in rules)
    assert r.ipv6 == ""  # no IPv6 protected host


def test_to_client_only_when_a_rule_and_depth_ask_for_it() -> None:
    plan = QueuePlan(tcp_to_server=frozenset({80}), tcp_to_client=frozenset({443}))
    without = _render("protected_hosts: [198.18.0.20]\nstream_depth: {to_client: 0}\n", plan)
    assert "VPATCH-TO-CLIENT" not in without.ipv4
    with_depth = _render(
        LISTED_ONLY
        + "protected_hosts: [198.18.0.20]\nstream_depth: {to_server: 1000, to_client: 5000}\n",
        plan,
    )
    rules = _rules(with_depth.ipv4)
    assert "-A VPATCH-FORWARD -m set --match-set vpatch-hosts4 src -j VPATCH-TO-CLIENT" in rules
    cli = [x for x in rules if x.startswith("-A VPATCH-TO-CLIENT")]
    # first: a connection whose responses finished inspecting is not queued that way any more
    assert cli[0] == "-A VPATCH-TO-CLIENT -m connmark --mark 0x40000000/0x40000000 -j RETURN"
    assert len(cli) == 2 and "vpatch-tcp-cli src" in cli[1]
    srv = [x for x in rules if x.startswith("-A VPATCH-TO-SERVER")]
    assert srv[0] == "-A VPATCH-TO-SERVER -m connmark --mark 0x20000000/0x20000000 -j RETURN"
    assert len(srv) == 3 and "vpatch-tcp-srv dst" in srv[1]
    # hosts whose app control looks at every TCP port (empty set unless the policy names some)
    assert (
        srv[2]
        == "-A VPATCH-TO-SERVER -p tcp -m set --match-set vpatch-anyport4 dst -j VPATCH-TCP-DATA"
    )
    # No connbytes bound: it counts header bytes, so tiny segments would end inspection early.
    assert "connbytes" not in with_depth.ipv4


def test_bypass_mark_chain_and_connmark_skip() -> None:
    r = _render(
        "protected_hosts: [198.18.0.20]\n"
        "marks: {bypass: 0x100, bypass_to_server: 0x200, bypass_to_client: 0x400, mask: 0x700}\n"
    )
    rules = _rules(r.ipv4)
    # The first rule of our chain skips bypassed connections.
    ours = [x for x in rules if x.startswith("-A VPATCH-FORWARD")]
    assert ours[0] == "-A VPATCH-FORWARD -m connmark --mark 0x100/0x100 -j RETURN"
    assert "-I POSTROUTING 1 -j VPATCH-POST" in rules
    # each bit a worker set is OR-ed into the connmark; no other connmark bit is touched
    post = [x for x in rules if x.startswith("-A VPATCH-POST")]
    assert post == [
        f"-A VPATCH-POST -m mark --mark {b}/{b} -j CONNMARK --or-mark {b}"
        for b in ("0x100", "0x200", "0x400")
    ]
    srv = [x for x in rules if x.startswith("-A VPATCH-TO-SERVER")]
    assert srv[0] == "-A VPATCH-TO-SERVER -m connmark --mark 0x200/0x200 -j RETURN"


@pytest.mark.parametrize(("policy", "bypass"), [("open", True), ("closed", False)])
def test_fail_policy_flags(policy: str, bypass: bool) -> None:
    r = _render(f"protected_hosts: [198.18.0.20]\nfail_policy: {policy}\n")
    (queue_rule,) = [x for x in _rules(r.ipv4) if "-j NFQUEUE" in x]
    assert queue_rule.startswith("-A VPATCH-QUEUE ")
    assert ("--queue-bypass" in queue_rule) is bypass
    assert "--queue-cpu-fanout" not in queue_rule


def test_queue_numbers() -> None:
    one = parse_config("queues: {first: 7, count: 1}\n")
    assert queue_target(one).startswith("NFQUEUE --queue-num 7")
    many = parse_config("queues: {first: 4, count: 3}\nfail_policy: closed\n")
    assert queue_target(many) == "NFQUEUE --queue-balance 4:6"


def test_ipv6_rendered_with_its_own_host_set() -> None:
    r = _render("protected_hosts: [198.18.0.20, '2001:2::20']\n")
    assert "create vpatch-hosts6 hash:net family inet6" in r.ipset
    assert "vpatch-hosts6 dst" in r.ipv6 and "vpatch-hosts4" not in r.ipv6
    # The IPv6 payload test reads next header and payload length from the IPv6 header.
    assert '"4>>8&0xFF=6&&52>>28=8&&4>>16&0xFFFF=33:65535"' in r.ipv6


def test_tcp_payload_tests_are_exact_per_data_offset() -> None:
    r = _render("protected_hosts: [198.18.0.20]\n")
    tests = re.findall(r'--u32 "0>>22&0x3C=20&&32>>28=(\d+)&&0&0xFFFF=(\d+):65535"', r.ipv4)
    assert sorted(int(d) for d, _ in tests) == list(range(5, 16))
    for d, low in tests:
        # queued only when total length > 20 (IPv4) + 4 * data offset, i.e. payload >= 1 byte
        assert int(low) == 20 + 4 * int(d) + 1
    # SYN seeds reassembly; IP options: always queued.
    assert (
        "-A VPATCH-TCP-DATA -p tcp --tcp-flags SYN,ACK SYN -m conntrack --ctstate NEW "
        "-j VPATCH-QUEUE" in r.ipv4
    )
    assert "-A VPATCH-TCP-DATA -p tcp --tcp-flags SYN,ACK SYN,ACK -j VPATCH-QUEUE" in r.ipv4
    assert '-m u32 ! --u32 "0>>22&0x3C=20" -j VPATCH-QUEUE' in r.ipv4


def test_udp_can_be_left_out() -> None:
    plan = QueuePlan(tcp_to_server=frozenset({80}), udp_to_server=frozenset({53}))
    r = _render("protected_hosts: [198.18.0.20]\nfirewall: {queue_udp: false}\n", plan)
    assert "-p udp" not in r.ipv4


def test_chain_prefix_and_only_own_objects() -> None:
    r = _render("protected_hosts: [198.18.0.20]\nfirewall: {chain_prefix: VPT9}\n")
    for line in r.ipv4.splitlines():
        if line.startswith(":"):
            assert line.startswith(":VPT9-")
        if line.startswith("-I"):
            # the only rules in built-in chains: one jump each
            assert re.fullmatch(r"-I (FORWARD|POSTROUTING) 1 -j VPT9-\w+", line)
    assert all(name.startswith("vpt9-") for name in r.sets)
    assert not any(line.startswith(("-F", "-X", "-D")) for line in r.ipv4.splitlines())


def test_plan_from_ruleset(repo_root: object) -> None:
    from pathlib import Path

    from gateway.match.rules import load_rules

    ruleset = load_rules([Path(str(repo_root)) / "rules" / "vpatch-test-split.yaml"])
    plan = QueuePlan.from_rules(ruleset)
    assert plan.tcp_to_server == frozenset({80})
    assert plan.tcp_to_client == frozenset() and plan.udp_to_server == frozenset()


def test_identify_any_port_queues_every_tcp_port_and_keeps_listed_responses_out() -> None:
    """engine.identify_any_port (the default): every TCP port of a protected host is queued
    to the server (the engine bypasses what it finds no rules for); responses: the ports
    whose responses rules read, and the ports no rule lists, but not port 80, listed only to
    the server, whose responses were never queued (the common port costs what it did)."""
    plan = QueuePlan(
        tcp_to_server=frozenset({80, 443}),
        tcp_to_client=frozenset({443}),
        udp_to_server=frozenset({53}),
    )
    r = _render("protected_hosts: [198.18.0.20]\n", plan)
    rules = _rules(r.ipv4)
    srv = [x for x in rules if x.startswith("-A VPATCH-TO-SERVER")]
    assert srv[1:] == [
        "-A VPATCH-TO-SERVER -p tcp -j VPATCH-TCP-DATA",
        "-A VPATCH-TO-SERVER -p udp -m set --match-set vpatch-udp-srv dst -j VPATCH-QUEUE",
    ]
    cli = [x for x in rules if x.startswith("-A VPATCH-TO-CLIENT")]
    assert cli[1:] == [
        "-A VPATCH-TO-CLIENT -p tcp -m set --match-set vpatch-tcp-cli src -j VPATCH-TCP-DATA",
        "-A VPATCH-TO-CLIENT -p tcp -m set --match-set vpatch-tcp-srv src -j RETURN",
        "-A VPATCH-TO-CLIENT -p tcp -j VPATCH-TCP-DATA",
    ]
    # the any-port host sets still exist (a reload refills them) but need no rule of their own
    assert "vpatch-anyport4" in r.sets and "vpatch-anyport4" not in r.ipv4
    # no response rule at all: responses are not queued on any port
    only_requests = _rules(_render("protected_hosts: [198.18.0.20]\n").ipv4)
    assert not any("VPATCH-TO-CLIENT" in x for x in only_requests)


def test_any_port_rule_queues_every_port() -> None:
    plan = QueuePlan(tcp_to_server=frozenset({ANY_PORT, 80}))
    r = _render("protected_hosts: [198.18.0.20]\n", plan)
    srv = [x for x in _rules(r.ipv4) if x.startswith("-A VPATCH-TO-SERVER")]
    assert "-A VPATCH-TO-SERVER -p tcp -j VPATCH-TCP-DATA" in srv  # no port test at all
    assert "vpatch-tcp-srv" not in r.ipset and "vpatch-tcp-srv" not in r.sets


def test_any_port_hosts_fill_their_own_set() -> None:
    config = parse_config(LISTED_ONLY + "protected_hosts: [198.18.0.0/24, 2001:2::/64]\n")
    hosts = [ipaddress.ip_network("198.18.0.20/32"), ipaddress.ip_network("2001:2::20/128")]
    r = render(config, HTTP_ONLY, any_port_hosts=hosts)
    assert {"vpatch-anyport4", "vpatch-anyport6"} <= set(r.sets)
    assert "add vpatch-anyport4 198.18.0.20/32" in r.ipset.splitlines()
    assert "add vpatch-anyport6 2001:2::20/128" in r.ipset.splitlines()
    for text, name in ((r.ipv4, "vpatch-anyport4"), (r.ipv6, "vpatch-anyport6")):
        assert f"-A VPATCH-TO-SERVER -p tcp -m set --match-set {name} dst -j VPATCH-TCP-DATA" in (
            _rules(text)
        )
    # the sets exist even when empty, so a reload can refill them
    empty = render(config, HTTP_ONLY)
    assert "create vpatch-anyport4 hash:net family inet maxelem 4096" in empty.ipset.splitlines()
