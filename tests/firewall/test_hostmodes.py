"""Host-mode kernel rules as text (the lab tests in tests/lifecycle/ check them in a kernel)."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.firewall.hostmodes import render_hostmodes, set_names, tuple_element
from gateway.firewall.render import QueuePlan, merge, render
from gateway.lifecycle.state import (
    Endpoint,
    HostMode,
    HostPolicy,
    LearnedTuple,
    LockdownAction,
    parse_tuple,
)

SETUP = HostPolicy(
    "198.18.0.20",
    HostMode.SETUP,
    exceptions=(Endpoint.parse("198.18.0.0/24:tcp/3389", "t"),),
    update_sources=(Endpoint.parse("198.18.5.5:tcp/443", "t"),),
)
LOCK = HostPolicy(
    "198.18.0.21",
    HostMode.LOCKDOWN,
    lockdown_action=LockdownAction.ALERT,
    learned=(
        LearnedTuple("198.18.0.10", "198.18.0.21", "tcp", 80),
        LearnedTuple("198.18.0.21", "198.18.0.53", "udp", 53),
        LearnedTuple("198.18.0.10", "198.18.0.21", "icmp", 8),
    ),
)


def test_normal_hosts_render_nothing() -> None:
    r = render_hostmodes([HostPolicy("198.18.0.20")])
    assert (r.ipset, r.ipv4, r.ipv6) == ("", "", "")


def test_setup_exceptions_and_update_sources_come_before_reject() -> None:
    r = render_hostmodes([SETUP])
    lines = r.ipv4.splitlines()
    exc = lines.index(
        "-A VPHM-HM-SETUP-IN -d 198.18.0.20 -s 198.18.0.0/24 -p tcp --dport 3389 -j RETURN"
    )
    rej = lines.index("-A VPHM-HM-SETUP-IN -p tcp -j REJECT --reject-with tcp-reset")
    assert exc < rej
    assert (
        "-A VPHM-HM-SETUP-OUT -s 198.18.0.20 -d 198.18.5.5/32 -p tcp --dport 443 -j RETURN" in lines
    )
    # established traffic is never judged: first rule of the chain
    assert lines[lines.index("-I FORWARD 1 -j VPHM-HM-FORWARD") + 1].endswith(
        "--ctstate ESTABLISHED,RELATED -j RETURN"
    )
    assert "add vphm-hm-setup4 198.18.0.20" in r.ipset
    assert r.ipv6 == ""


def test_lockdown_alert_mode_logs_but_does_not_drop() -> None:
    r = render_hostmodes([LOCK])
    names = set_names("VPHM", 4)
    assert f"add {names['lockalert']} 198.18.0.21" in r.ipset
    assert f"add {names['tuples']} 198.18.0.21,tcp:80,198.18.0.10" in r.ipset
    assert f"add {names['tuples']} 198.18.0.21,icmp:8/0,198.18.0.10" in r.ipset
    assert "NFLOG --nflog-group 18" in r.ipv4
    drop_lines = [x for x in r.ipv4.splitlines() if x.endswith("-j DROP")]
    assert all(names["lockdrop"] in x for x in drop_lines)  # alert hosts are never dropped


def test_tuple_element_for_other_protocols_is_none() -> None:
    assert tuple_element(LearnedTuple("198.18.0.1", "198.18.0.2", "47", 0)) is None


def test_merge_under_the_gateway_prefix() -> None:
    config = parse_config("protected_hosts: [198.18.0.20]\n")
    base = render(config, QueuePlan(tcp_to_server=frozenset({80})))
    merged = merge(base, render_hostmodes([SETUP], config.firewall.chain_prefix))
    assert merged.ipv4.startswith(base.ipv4)
    assert "*filter" in merged.ipv4 and "VPATCH-HM-FORWARD" in merged.chains
    assert "vpatch-hm-setup4" in merged.sets and merged.prefix == base.prefix


def test_always_renders_both_families_at_position() -> None:
    from gateway.firewall.hostmodes import HM_POSITION_WITH_FIREWALL, render_hostmodes

    empty = render_hostmodes([], "VPATCH", always=True, position=HM_POSITION_WITH_FIREWALL)
    assert "-I FORWARD 2 -j VPATCH-HM-FORWARD" in empty.ipv4
    assert "-I FORWARD 2 -j VPATCH-HM-FORWARD" in empty.ipv6
    assert "create vpatch-hm-setup4 hash:ip" in empty.ipset
    assert "create vpatch-hm-tuples6 hash:ip,port,net" in empty.ipset
    assert "create vpatch-hm-anytuples6 hash:ip,port" in empty.ipset
    assert "create vpatch-hm-names4 hash:ip,port,ip family inet maxelem 65536 timeout 0" in (
        empty.ipset
    )
    assert render_hostmodes([], "VPATCH").ipv4 == ""  # without always: nothing


def test_lockdown_entries_with_a_network_or_any_client() -> None:
    host = HostPolicy(
        "198.18.0.21",
        HostMode.LOCKDOWN,
        learned=(
            parse_tuple("198.18.0.0/24 -> 198.18.0.21:80/tcp"),
            parse_tuple("any -> 198.18.0.21:443/tcp"),
        ),
    )
    r = render_hostmodes([host])
    v4 = set_names("VPHM", 4)
    assert f"add {v4['tuples']} 198.18.0.21,tcp:80,198.18.0.0/24" in r.ipset
    assert f"add {v4['anytuples']} 198.18.0.21,tcp:443" in r.ipset
    v6 = render_hostmodes([HostPolicy("2001:2::21", HostMode.LOCKDOWN, learned=(
        parse_tuple("[2001:2::/64] -> 2001:2::21:80/tcp"),))])  # fmt: skip
    assert f"add {set_names('VPHM', 6)['tuples']} 2001:2::21,tcp:80,2001:2::/64" in v6.ipset
    lock = [x for x in r.ipv4.splitlines() if x.startswith("-A VPHM-HM-LOCK ")]
    assert lock[0] == f"-A VPHM-HM-LOCK -m set --match-set {v4['tuples']} dst,dst,src -j RETURN"
    assert lock[1] == f"-A VPHM-HM-LOCK -m set --match-set {v4['anytuples']} dst,dst -j RETURN"
    assert tuple_element(parse_tuple("any -> 198.18.0.21:8/icmp")) == (
        "anytuples",
        "198.18.0.21,icmp:8/0",
    )


def test_named_update_sources_fill_the_names_set_with_timeouts() -> None:
    host = HostPolicy(
        "198.18.0.20",
        HostMode.SETUP,
        update_sources=(
            Endpoint.parse("updates.lab.test:tcp/80", "t", names=True),
            Endpoint.parse("198.18.5.5:tcp/443", "t"),
        ),
    )
    resolved = {"updates.lab.test": [("198.18.0.10", 30), ("2001:2::10", 30), ("198.18.0.11", 0)]}
    r = render_hostmodes([host], resolved=resolved, dns_servers=["198.18.0.53", "127.0.0.53"])
    names = set_names("VPHM", 4)["names"]
    assert f"add {names} 198.18.0.20,tcp:80,198.18.0.10 timeout 30" in r.ipset
    assert "198.18.0.11" not in r.ipset  # an expired answer is not put back
    assert "2001:2::10" not in r.ipset  # the host is IPv4
    out = [x for x in r.ipv4.splitlines() if x.startswith("-A VPHM-HM-SETUP-OUT ")]
    assert "-A VPHM-HM-SETUP-OUT -s 198.18.0.20 -d 198.18.0.53 -p udp --dport 53 -j RETURN" in out
    assert "-A VPHM-HM-SETUP-OUT -s 198.18.0.20 -d 198.18.0.53 -p tcp --dport 53 -j RETURN" in out
    assert not any("127.0.0.53" in x for x in out)  # the gateway's own stub: no use to the host
    assert not any("updates.lab.test" in x for x in out)  # a name never reaches iptables
    named = out.index(f"-A VPHM-HM-SETUP-OUT -m set --match-set {names} src,dst,dst -j RETURN")
    assert named < out.index("-A VPHM-HM-SETUP-OUT -p tcp -j REJECT --reject-with tcp-reset")
