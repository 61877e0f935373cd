"""Applying and removing kernel rules in the test's own namespace, with foreign rules present."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator

import pytest

from gateway.config import parse_config
from gateway.errors import FirewallError
from gateway.firewall.apply import (
    apply_rules,
    cleanup_all,
    probe_backend,
    remove_rules,
    run_cmd,
)
from gateway.firewall.render import QueuePlan, render

pytestmark = pytest.mark.netns

# Someone else's rules and set: they must survive our apply/remove untouched and in order.
FOREIGN_IPSET = "create other-set hash:ip family inet\nadd other-set 198.18.9.9\n"
FOREIGN_V4 = """*mangle
:OTHER-CHAIN - [0:0]
-A FORWARD -p icmp -j OTHER-CHAIN
-A POSTROUTING -p udp --dport 5353 -j MARK --set-xmark 0x1/0x1
-A OTHER-CHAIN -j RETURN
COMMIT
*filter
-A FORWARD -m set --match-set other-set src -j DROP
COMMIT
"""
FOREIGN_V6 = """*mangle
-A FORWARD -p tcp --dport 22 -j ACCEPT
COMMIT
"""
CONFIG = """
protected_hosts: [198.18.0.20, '2001:2::20']
fail_policy: open
"""
PLAN = QueuePlan(tcp_to_server=frozenset({80, 445}), udp_to_server=frozenset({53}))


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vptfw{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        backend = probe_backend(netns=name)
        run_cmd(["ipset", "restore"], name, stdin=FOREIGN_IPSET)
        run_cmd([backend.restore(4), "--noflush"], name, stdin=FOREIGN_V4)
        run_cmd([backend.restore(6), "--noflush"], name, stdin=FOREIGN_V6)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _state(ns: str) -> str:
    """iptables-save of both families plus ipset names, without comments and counters."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = run_cmd([tool], ns).stdout
        out += [line.split(" [")[0] for line in text.splitlines() if not line.startswith("#")]
    out += sorted(run_cmd(["ipset", "list", "-n"], ns).stdout.split())
    return "\n".join(out)


def test_apply_then_remove_restores_exact_state(ns: str) -> None:
    backend = probe_backend(netns=ns)
    before = _state(ns)
    rendered = render(parse_config(CONFIG), PLAN)
    apply_rules(rendered, backend, ns)
    during = _state(ns)
    assert "-A FORWARD -j VPATCH-FORWARD" in during
    assert "-A POSTROUTING -j VPATCH-POST" in during
    v4 = run_cmd(["iptables", "-t", "mangle", "-S", "FORWARD"], ns).stdout.splitlines()
    # our jump comes first; the foreign rule is still there after it
    assert v4[1] == "-A FORWARD -j VPATCH-FORWARD"
    assert "-A FORWARD -p icmp -j OTHER-CHAIN" in v4
    for name in ("vpatch-hosts4", "vpatch-hosts6", "vpatch-tcp-srv", "vpatch-udp-srv", "other-set"):
        assert name in during
    # Applying again replaces, never duplicates.
    apply_rules(rendered, backend, ns)
    assert _state(ns) == during
    removed = remove_rules(backend, "VPATCH", ns)
    assert any(r == "ipset vpatch-hosts4" for r in removed)
    assert _state(ns) == before
    # Idempotent: nothing left, nothing to do, no error.
    assert remove_rules(backend, "VPATCH", ns) == []
    assert _state(ns) == before


def test_failed_ipv6_apply_rolls_back_ipv4(ns: str) -> None:
    backend = probe_backend(netns=ns)
    before = _state(ns)
    rendered = render(parse_config(CONFIG), PLAN)
    broken = dataclasses.replace(
        rendered, ipv6=rendered.ipv6.replace("-j VPATCH-QUEUE", "-j NO-SUCH-CHAIN", 1)
    )
    with pytest.raises(FirewallError, match="ip6tables-nft-restore|ip6tables-legacy-restore"):
        apply_rules(broken, backend, ns)
    assert _state(ns) == before


def test_cleanup_all_after_crash(ns: str) -> None:
    backend = probe_backend(netns=ns)
    before = _state(ns)
    apply_rules(render(parse_config(CONFIG), PLAN), backend, ns)
    assert cleanup_all("VPATCH", ns)
    assert _state(ns) == before


def test_firewall_error_names_command_and_stderr(ns: str) -> None:
    with pytest.raises(FirewallError) as info:
        run_cmd(["iptables", "-t", "mangle", "-A", "NO-SUCH-CHAIN", "-j", "ACCEPT"], ns)
    msg = str(info.value)
    assert "iptables -t mangle -A NO-SUCH-CHAIN" in msg
    assert "failed:" in msg and len(msg.split("failed:")[1].strip()) > 0


def test_probe_says_which_backend(ns: str) -> None:
    backend = probe_backend(netns=ns)
    assert backend.name in ("nft", "legacy")
    assert backend.version.startswith("iptables v")
    assert ("nf_tables" in backend.version) == (backend.name == "nft")
