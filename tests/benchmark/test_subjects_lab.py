"""gateway/benchmark/subjects.py: the tuned Suricata the benchmark compares against really
takes a finished flow out of the queue (its connmark bypass works), in the lab, with the real
Suricata 7 and the ET Open rules of the corpora. Before the fix the mark was saved from every
packet, the packets queued behind the one Suricata marked overwrote it with 0, and a bulk
transfer stayed in the queue for its whole length."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.benchmark.runner import _start_iperf_server
from gateway.benchmark.subjects import SURICATA_BYPASS_MARK, make_subjects
from gateway.lab import netns_exec
from gateway.lab.netns import stop_pids

pytestmark = pytest.mark.netns

IPERF_PORT = 5301


def forward_counters(ns: str) -> dict[str, int]:
    """Packets per FORWARD rule target ('mark-accept', 'NFQUEUE')."""
    out = netns_exec(ns, ["iptables", "-L", "FORWARD", "-v", "-x", "-n"]).stdout
    counters: dict[str, int] = {}
    for line in out.splitlines()[2:]:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "ACCEPT" and "mark match" in line:
            counters["mark-accept"] = int(fields[0])
        elif len(fields) > 2 and fields[2] == "NFQUEUE":
            counters["NFQUEUE"] = int(fields[0])
    return counters


def test_tuned_suricata_bypasses_a_bulk_flow(lab: Any, corpora: Path) -> None:
    if shutil.which("suricata") is None:
        if os.environ.get("CI"):  # scripts/test.sh installs it: CI must not skip this check
            pytest.fail("suricata is not installed although CI is set (scripts/install-bench.sh)")
        pytest.skip("suricata is not installed (scripts/install-bench.sh installs it)")
    rules = corpora / "rules" / "etopen-target-cves.rules"
    (subject,) = make_subjects(["suricata-tuned"], lab, rules)
    iperf = None
    try:
        subject.start()
        iperf = _start_iperf_server(lab, IPERF_PORT)
        done = netns_exec(
            lab.client_ns,
            ["iperf3", "-c", lab.server_addr, "-p", str(IPERF_PORT), "-t", "2", "-J"],
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
        counters = forward_counters(lab.gw_ns)
        conntrack = netns_exec(lab.gw_ns, ["conntrack", "-L", "-p", "tcp", "--dport",
                                           str(IPERF_PORT)], check=False).stdout  # fmt: skip
        print("\nFORWARD packets:", counters)
        # the data flow carries the bypass bit in its connmark and most of its packets went by
        # the mark rule, not through the queue
        assert f"mark={SURICATA_BYPASS_MARK}" in conntrack, conntrack
        assert counters["mark-accept"] > 10 * counters["NFQUEUE"] > 0, counters
    finally:
        if iperf is not None:
            stop_pids([iperf])
        problems = subject.stop()
    assert problems == []
    left = netns_exec(lab.gw_ns, ["iptables-save"]).stdout
    assert "NFQUEUE" not in left and "CONNMARK" not in left
