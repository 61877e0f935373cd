"""gateway/firewall/policy.py: validation names the field, storage is ordered and audited,
the compiled text is what iptables-restore needs (first match wins, both families, group
expansion), and in the namespace lab a real deny blocks a real connection while an allow
placed before it wins, a MAC rule matches only that MAC, and `refresh_policy`
(gateway/firewall/refresh.py) swaps the chain in place."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from gateway.firewall.apply import apply_rules, probe_backend, remove_rules
from gateway.firewall.policy import (
    FirewallRuleError,
    add_rule,
    chain_name,
    delete_rule,
    list_rules,
    move_rule,
    render_from_store,
    update_rule,
    validate_rule,
)
from gateway.firewall.refresh import refresh_policy
from gateway.lab.topology import HOST_PORT
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store

PREFIX = "VPFWT"


@pytest.fixture
def store(db_target: Any) -> Any:  # SQLite and PostgreSQL (tests/conftest.py)
    with Store(db_target) as s:
        yield s


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scope": "site", "action": "deny"}, "scope"),
        ({"scope": "host", "action": "deny"}, "scope_id"),
        ({"scope": "host", "scope_id": "99", "action": "deny"}, "scope_id"),
        ({"scope": "group", "scope_id": "x", "action": "deny"}, "scope_id"),
        ({"direction": "sideways", "action": "deny"}, "direction"),
        ({"address": "198.18.0.300", "action": "deny"}, "address"),
        ({"protocol": "sctp", "action": "deny"}, "protocol"),
        ({"protocol": "icmp", "port_from": "80", "action": "deny"}, "protocol"),
        ({"protocol": "tcp", "port_from": "0", "action": "deny"}, "port_from"),
        ({"protocol": "tcp", "port_from": "90", "port_to": "80", "action": "deny"}, "port_to"),
        ({"protocol": "tcp", "port_to": "80", "action": "deny"}, "port_from"),
        ({"mac": "02:00:00:00:00", "action": "deny"}, "mac"),
        ({"action": "refuse"}, "action"),
        ({"action": "deny", "comment": "x" * 201}, "comment"),
    ],
)
def test_validation_names_the_field(store: Any, data: dict[str, Any], field: str) -> None:
    with pytest.raises(FirewallRuleError) as info:
        add_rule(store, data, "alice")
    assert info.value.field == field and str(info.value).startswith(field + ":")
    assert list_rules(store) == []  # nothing stored


def test_normalisation() -> None:
    v = validate_rule({"address": "198.18.0.10/24", "protocol": "TCP", "port_from": "80",
                       "port_to": "80", "mac": "02-AA-00-00-00-01", "action": "deny"})  # fmt: skip
    assert (v["address"], v["protocol"], v["port_from"], v["port_to"], v["mac"]) == (
        "198.18.0.0/24",
        "tcp",
        80,
        None,
        "02:aa:00:00:00:01",
    )
    assert validate_rule({"address": "any", "action": "log"})["address"] == ""


def test_order_audit_and_compile(store: Any) -> None:
    hosts = Hosts(store)
    g = hosts.create_group("web", "", "alice")
    h1 = hosts.save_host("198.18.0.20", "alice", group_id=g.id)
    hosts.save_host("2001:db8::20", "alice", group_id=g.id)
    r1 = add_rule(store, {"scope": "global", "direction": "in", "protocol": "tcp",
                          "port_from": "22", "action": "deny"}, "alice")  # fmt: skip
    r2 = add_rule(store, {"scope": "host", "scope_id": h1.id, "direction": "both",
                          "address": "198.18.0.10", "action": "allow"}, "alice")  # fmt: skip
    r3 = add_rule(store, {"scope": "group", "scope_id": g.id, "direction": "in",
                          "protocol": "udp", "port_from": "1000", "port_to": "2000",
                          "mac": "02:00:00:00:00:0a", "action": "log"}, "alice")  # fmt: skip
    assert [r.id for r in list_rules(store)] == [r1.id, r2.id, r3.id]
    move_rule(store, r2.id, -1, "bob")
    assert [r.id for r in list_rules(store)] == [r2.id, r1.id, r3.id]
    update_rule(store, r1.id, {"enabled": False}, "bob")
    text = render_from_store(store, PREFIX)
    chain = chain_name(PREFIX)
    v4 = text.ipv4.splitlines()
    assert v4[:4] == [
        "*filter",
        f":{chain} - [0:0]",
        f"-I FORWARD 1 -j {chain}",
        f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
    ]
    body = [line for line in v4[4:-1]]
    assert body == [
        f"-A {chain} -d 198.18.0.20 -s 198.18.0.10/32 -m comment --comment fw{r2.id} -j RETURN",
        f"-A {chain} -s 198.18.0.20 -d 198.18.0.10/32 -m comment --comment fw{r2.id} -j RETURN",
        (
            f"-A {chain} -d 198.18.0.20 -p udp --dport 1000:2000 -m mac --mac-source "
            f"02:00:00:00:00:0a -m comment --comment fw{r3.id} -m limit --limit 100/second "
            f"--limit-burst 200 -j NFLOG --nflog-group 19 --nflog-prefix vpatch-fw-log-{r3.id} "
            "--nflog-size 128"
        ),
    ]  # r1 disabled
    assert "-d 2001:db8::20 -p udp --dport 1000:2000" in text.ipv6
    assert "198.18.0.10" not in text.ipv6  # an IPv4 peer never lands in the IPv6 table
    delete_rule(store, r3.id, "bob")
    actions = [a.action for a in store.list_audit()]
    assert actions[:5] == ["firewall.delete", "firewall.update", "firewall.move",
                           "firewall.add", "firewall.add"]  # fmt: skip
    with pytest.raises(FirewallRuleError, match="id: firewall rule 12345 does not exist"):
        delete_rule(store, 12345, "bob")


CONNECT = textwrap.dedent(
    """
    import socket, sys
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        print("OK", s.recv(12).decode())
    except OSError as err:
        print("FAIL", type(err).__name__)
    """
)


def connect(lab: Any, port: int = 80) -> str:
    argv = [sys.executable, "-c", CONNECT, lab.server_addr, str(port)]
    r = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, *argv],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return r.stdout.strip() or r.stderr.strip()


@pytest.mark.netns
def test_deny_blocks_real_connection_in_lab(lab: Any, store: Any) -> None:
    backend = probe_backend(netns=lab.gw_ns)
    host = Hosts(store).save_host(lab.server_addr, "alice")
    mac = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, "cat", f"/sys/class/net/{HOST_PORT}/address"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        assert connect(lab).startswith("OK HTTP/1.1"), "lab web server unreachable before"
        deny = add_rule(store, {"scope": "host", "scope_id": host.id, "direction": "in",
                                "address": lab.client_addr, "protocol": "tcp", "port_from": "80",
                                "action": "deny"}, "alice")  # fmt: skip
        apply_rules(render_from_store(store, PREFIX), backend, lab.gw_ns)
        assert connect(lab) == "FAIL TimeoutError"
        # an allow for the client's MAC placed before the deny wins (first match)
        allow = add_rule(
            store,
            {
                "scope": "host",
                "scope_id": host.id,
                "direction": "in",
                "mac": mac,
                "action": "allow",
                "position": "1",
            },
            "alice",
        )
        assert (
            refresh_policy(store, backend, PREFIX, lab.gw_ns) == 5
        )  # v4: conntrack + allow + the deny's log and drop, v6: conntrack
        assert connect(lab).startswith("OK HTTP/1.1")
        # the MAC rule for another MAC does not match: denied again
        update_rule(store, allow.id, {"mac": "02:00:00:00:00:99"}, "alice")
        refresh_policy(store, backend, PREFIX, lab.gw_ns)
        assert connect(lab) == "FAIL TimeoutError"
        # other ports are not covered by the deny
        update_rule(store, deny.id, {"port_from": "81"}, "alice")
        refresh_policy(store, backend, PREFIX, lab.gw_ns)
        assert connect(lab).startswith("OK HTTP/1.1")
    finally:
        remove_rules(backend, PREFIX, lab.gw_ns)
    out = subprocess.run(["ip", "netns", "exec", lab.gw_ns, backend.save(4)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert PREFIX not in out
