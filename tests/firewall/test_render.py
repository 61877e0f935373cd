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


def test_without_protected_hosts_the_host_sets_are_empty_but_ready() -> None:
    # Hosts may be added later (policy store, `reload` refills the sets): the queueing rules
    # exist and match the empty sets, so nothing is queued until then.
    r = _render("fail_policy: open\n")
    assert "--match-set vpatch-hosts4 dst" in r.ipv4 and "--match-set vpatch-hosts6 dst" in r.ipv6
    assert "create vpatch-hosts4 hash:net family inet maxelem 4096" in r.ipset
    assert not any(line.startswith("add vpatch-hosts") for line in r.ipset.splitlines())


def test_stored_hosts_are_protected_with_the_configured_ones() -> None:
    config = parse_config("protected_hosts: [198.18.0.20]\n")
    stored = [ipaddress.ip_network("198.18.5.0/24"), ipaddress.ip_network("2001:2::20")]
    r = render(config, HTTP_ONLY, stored_hosts=stored)
    adds = {line for line in r.ipset.splitlines() if line.startswith("add vpatch-hosts")}
    assert adds == {
        "add vpatch-hosts4 198.18.0.20/32",
        "add vpatch-hosts4 198.18.5.0/24",
        "add vpatch-hosts6 2001:2::20/128",
    }


def test_nothing_queued_without_covered_ports_but_the_port_sets_are_ready() -> None:
    # A rule reload may bring ports (refresh.py refills the sets): the rules exist, the port
    # sets are empty, so nothing is queued until then.
    r = _render("protected_hosts: [198.18.0.20]\n", QueuePlan())
    assert "--match-set vpatch-udp-srv dst" in r.ipv4
    listed_only = "protected_hosts: [198.18.0.20]\nengine: {identify_any_port: false}\n"
    assert "--match-set vpatch-tcp-srv dst" in _render(listed_only, QueuePlan()).ipv4
    for name in ("vpatch-tcp-srv", "vpatch-tcp-cli", "vpatch-udp-srv", "vpatch-udp-cli"):
        assert f"create {name} bitmap:port range 0-65535" in r.ipset and name in r.sets
        assert not any(line.startswith(f"add {name} ") for line in r.ipset.splitlines())


LISTED_ONLY = "engine: {identify_any_port: false}\n"


def test_only_covered_ports_and_protected_hosts() -> None:
    plan = QueuePlan(tcp_to_server=frozenset({80, 445}), udp_to_server=frozenset({53}))
    r = _render(LISTED_ONLY + "protected_hosts: [198.18.0.20, 198.18.5.0/24]\n", plan)
    assert "add vpatch-tcp-srv 80\nadd vpatch-tcp-srv 445\n" in r.ipset
    assert "add vpatch-udp-srv 53" in r.ipset
    assert "add vpatch-hosts4 198.18.0.20/32" in r.ipset
    assert "add vpatch-hosts4 198.18.5.0/24" in r.ipset
    # no rule inspects responses: their port set is empty, so no response is queued
    assert not any(x.startswith("add vpatch-tcp-cli") for x in r.ipset.splitlines())
    rules = _rules(r.ipv4)
    assert "-A VPATCH-FORWARD -m set --match-set vpatch-hosts4 dst -j VPATCH-TO-SERVER" in rules
    # Every path to the queue passes the hosts set and a port set.
    assert any("-p tcp -m set --match-set vpatch-tcp-srv dst" in x for x in rules)
    assert any("-p udp -m set --match-set vpatch-udp-srv dst" in x for x in rules)
    # no IPv6 protected host yet: the IPv6 rules match the empty set, ready for one
    assert "--match-set vpatch-hosts6 dst" in r.ipv6
    assert not any(line.startswith("add vpatch-hosts6") for line in r.ipset.splitlines())


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
    assert "vpatch-tcp-cli src" in cli[1] and "vpatch-udp-cli src" in cli[2] and len(cli) == 3
    assert "add vpatch-tcp-cli 443" in with_depth.ipset
    srv = [x for x in rules if x.startswith("-A VPATCH-TO-SERVER")]
    assert srv[0] == "-A VPATCH-TO-SERVER -m connmark --mark 0x20000000/0x20000000 -j RETURN"
    assert len(srv) == 4 and "vpatch-tcp-srv dst" in srv[1] and "vpatch-udp-srv dst" in srv[2]
    # hosts whose app control looks at every TCP port (empty set unless the policy names some)
    assert (
        srv[3]
        == "-A VPATCH-TO-SERVER -p tcp -m set --match-set vpatch-anyport4 dst -j VPATCH-TCP-DATA"
    )
    # No connbytes bound: it counts header bytes, so tiny segments would end inspection early.
    assert "connbytes" not in with_depth.ipv4


def test_bypass_mark_chain_and_connmark_skip() -> None:
    r = _render(
        "protected_hosts: [198.18.0.20]\n"
        "marks: {bypass: 0x100, bypass_to_server: 0x200, bypass_to_client: 0x400, blocked: 0x800,"
        " queued: 0x1000, mask: 0x1F00}\n"
    )
    rules = _rules(r.ipv4)
    # Our chain first queues SYNs on connections a block reset (a reused client port), then
    # skips bypassed connections.
    ours = [x for x in rules if x.startswith("-A VPATCH-FORWARD")]
    assert ours[:4] == [
        # a packet a worker dropped comes back (repeat) with the blocked bit: connmark, drop
        "-A VPATCH-FORWARD -m mark --mark 0x800/0x800 -j CONNMARK --or-mark 0x800",
        "-A VPATCH-FORWARD -m mark --mark 0x800/0x800 -j DROP",
        "-A VPATCH-FORWARD -p tcp --tcp-flags SYN SYN -m connmark --mark 0x800/0x800 "
        "-j VPATCH-QUEUE",
        "-A VPATCH-FORWARD -m connmark --mark 0x100/0x100 -j RETURN",
    ]
    assert "-I POSTROUTING 1 -j VPATCH-POST" in rules
    post = [x for x in rules if x.startswith("-A VPATCH-POST")]
    assert post == [
        # still "queued": passed by the kernel without a verdict; this rule counts them
        "-A VPATCH-POST -m mark --mark 0x1000/0x1000 -j RETURN",
        # the server took a new connection on a blocked one's ports: its connmark starts afresh
        "-A VPATCH-POST -p tcp --tcp-flags SYN,ACK SYN,ACK -m connmark --mark 0x800/0x800 "
        "-j CONNMARK --set-xmark 0x0/0x1f00",
    ] + [
        # each bit a worker set is OR-ed into the connmark; no other connmark bit is touched
        f"-A VPATCH-POST -m mark --mark {b}/{b} -j CONNMARK --or-mark {b}"
        for b in ("0x100", "0x200", "0x400", "0x800")
    ]
    srv = [x for x in rules if x.startswith("-A VPATCH-TO-SERVER")]
    assert srv[0] == "-A VPATCH-TO-SERVER -m connmark --mark 0x200/0x200 -j RETURN"


@pytest.mark.parametrize(("policy", "bypass"), [("open", True), ("closed", False)])
def test_fail_policy_flags(policy: str, bypass: bool) -> None:
    r = _render(f"protected_hosts: [198.18.0.20]\nfail_policy: {policy}\n")
    queue_rules = [x for x in _rules(r.ipv4) if "-j NFQUEUE" in x]
    assert len(queue_rules) == 3  # one per queue (spread by flow), one catch-all
    for queue_rule in queue_rules:
        assert queue_rule.startswith("-A VPATCH-QUEUE ")
        assert ("--queue-bypass" in queue_rule) is bypass
        assert "--queue-cpu-fanout" not in queue_rule


def test_queue_numbers() -> None:
    one = parse_config("queues: {first: 7, count: 1}\n")
    assert queue_target(one).startswith("NFQUEUE --queue-num 7")
    many = parse_config("queues: {first: 4, count: 3}\nfail_policy: closed\n")
    assert queue_target(many) == "NFQUEUE --queue-balance 4:6"
    assert queue_target(many, 5) == "NFQUEUE --queue-num 5"


def test_queued_bit_set_before_the_queue() -> None:
    """Every way into a queue marks the packet "queued" first (the worker's verdict clears it;
    what still carries it in POSTROUTING passed uninspected)."""
    for balance, count in (("address", 2), ("flow", 1)):
        r = _render(
            f"protected_hosts: [198.18.0.20]\nqueues: {{count: {count}, balance: {balance}}}\n"
        )
        queue = [x for x in _rules(r.ipv4) if x.startswith("-A VPATCH-QUEUE")]
        assert queue[0] == "-A VPATCH-QUEUE -j MARK --or-mark 0x4000000"
        assert len(queue) == 2 and "-j NFQUEUE" in queue[1]
        assert "HMARK" not in r.ipv4


def test_flows_spread_over_queues_by_a_symmetric_hash() -> None:
    r = _render("protected_hosts: [198.18.0.20, '2001:2::20']\nqueues: {first: 4, count: 3}\n")
    for text in (r.ipv4, r.ipv6):
        queue = [x for x in _rules(text) if x.startswith("-A VPATCH-QUEUE")]
        assert queue == [
            # the hash (0..2) overwrites the mark; the "queued" bit is added after it
            "-A VPATCH-QUEUE -j HMARK --hmark-tuple src,dst,sport,dport,proto --hmark-mod 3 "
            "--hmark-rnd 0x76706174",
            "-A VPATCH-QUEUE -j MARK --or-mark 0x4000000",
            "-A VPATCH-QUEUE -m mark --mark 0x4000000 -j NFQUEUE --queue-num 4 --queue-bypass",
            "-A VPATCH-QUEUE -m mark --mark 0x4000001 -j NFQUEUE --queue-num 5 --queue-bypass",
            "-A VPATCH-QUEUE -m mark --mark 0x4000002 -j NFQUEUE --queue-num 6 --queue-bypass",
            # a packet HMARK could not hash keeps its mark: it still goes to a queue
            "-A VPATCH-QUEUE -j NFQUEUE --queue-num 4 --queue-bypass",
        ]


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
        "-A VPATCH-TO-CLIENT -p udp -m set --match-set vpatch-udp-cli src -j VPATCH-QUEUE",
    ]
    # the any-port host sets still exist (a reload refills them) but need no rule of their own
    assert "vpatch-anyport4" in r.sets and "vpatch-anyport4" not in r.ipv4
    # no response rule at all: the same rules (a rule reload only refills sets), the response
    # port set empty: listed ports' responses stay unqueued, unlisted ones until identified
    only_requests = _render("protected_hosts: [198.18.0.20]\n")
    assert [x for x in _rules(only_requests.ipv4) if x.startswith("-A VPATCH-TO-CLIENT")] == cli
    assert not any(x.startswith("add vpatch-tcp-cli") for x in only_requests.ipset.splitlines())


def test_any_port_rule_queues_every_port() -> None:
    plan = QueuePlan(tcp_to_server=frozenset({ANY_PORT, 80}))
    listed_only = "protected_hosts: [198.18.0.20]\nengine: {identify_any_port: false}\n"
    r = _render(listed_only, plan)
    srv = [x for x in _rules(r.ipv4) if x.startswith("-A VPATCH-TO-SERVER")]
    assert (
        "-A VPATCH-TO-SERVER -p tcp -m set --match-set vpatch-tcp-srv dst -j VPATCH-TCP-DATA" in srv
    )
    adds = [x for x in r.ipset.splitlines() if x.startswith("add vpatch-tcp-srv ")]
    assert adds == ["add vpatch-tcp-srv 0-65535"]  # every port, in the set a reload refills


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


def test_invalid_segments_dropped_before_the_queue_unless_turned_off() -> None:
    rules = _rules(_render("protected_hosts: [198.18.0.20]\n").ipv4)
    tcp = [r for r in rules if r.startswith("-A VPATCH-TCP-DATA ")]
    assert tcp[0] == "-A VPATCH-TCP-DATA -m conntrack --ctstate INVALID -j DROP"
    off = _rules(_render("protected_hosts: [198.18.0.20]\nfirewall: {drop_invalid: false}\n").ipv4)
    assert not any("INVALID" in r for r in off)
