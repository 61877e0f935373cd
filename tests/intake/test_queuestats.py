"""The kernel's per-queue NFQUEUE counters: parsing, and the real counters of a full queue in
a namespace of the test's own (UDP on that namespace's loopback, queued from OUTPUT), with and
without the fail-open flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.intake.queuestats import (
    QueueCounters,
    parse_queue_counters,
    read_queue_counters,
)

REPO = Path(__file__).resolve().parents[2]

# two queues as the kernel prints them (net/netfilter/nfnetlink_queue.c seq_show)
SAMPLE = "    0  12345     3 2 65531     7     2      120 1\n    1 -4000   0 2 65531  0 0 0 1\n"


def test_parse_counters_and_skip_malformed_lines() -> None:
    reading = parse_queue_counters(SAMPLE + "garbage line\n  5 1 2\n\n")
    assert reading.available and reading.malformed == 3  # negative portid, words, too short
    q = reading.queues[0]
    assert q == QueueCounters(0, 12345, 3, 2, 65531, 7, 2, 120)
    assert q.drops == 9
    assert q.as_dict() == {
        "queue_total": 3,
        "queue_dropped": 7,
        "user_dropped": 2,
        "id_sequence": 120,
        "queue_drops": 9,
    }


def test_missing_file_is_an_empty_unavailable_reading(tmp_path: Path) -> None:
    reading = read_queue_counters(tmp_path / "absent")
    assert reading.queues == {} and not reading.available
    path = tmp_path / "nfq"
    path.write_text(SAMPLE)
    assert read_queue_counters(path).queues[0].id_sequence == 120


SCRIPT = textwrap.dedent(
    """
    import json, socket, subprocess, sys, time
    from netfilterqueue import NetfilterQueue
    from gateway.intake.nfqueue import set_queue_flags, NFQA_CFG_F_FAIL_OPEN
    from gateway.intake.queuestats import read_queue_counters

    fail_open = sys.argv[1] == "open"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True).stdout
    sh("ip", "link", "set", "lo", "up")
    sh("iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9999",
       "-j", "NFQUEUE", "--queue-num", "7")
    nfq = NetfilterQueue()
    got = []
    nfq.bind(7, lambda pkt: (got.append(1), pkt.accept()), max_len=3)
    if fail_open:
        set_queue_flags(nfq, 7, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        tx.sendto(b"x%d" % i, ("127.0.0.1", 9999))
    before = read_queue_counters().queues[7].as_dict()  # nobody has read the queue yet
    time.sleep(0.1)
    nfq.run(block=False)
    after = read_queue_counters().queues[7].as_dict()
    nfq.unbind()
    print(json.dumps({"before": before, "after": after, "received": len(got),
                      "listed_after_unbind": 7 in read_queue_counters().queues}))
    """
)


@pytest.mark.netns
@pytest.mark.parametrize("policy", ["closed", "open"])
def test_full_queue_counters_from_the_kernel(ns: str, policy: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, policy],
        check=False, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["before"]["queue_total"] == 3 and r["before"]["id_sequence"] == 3
    assert r["received"] == 3 and r["after"]["queue_total"] == 0
    if policy == "closed":  # the 7 that did not fit are counted as dropped
        assert r["before"]["queue_dropped"] == 7 and r["before"]["queue_drops"] == 7
    else:  # fail-open: accepted uninspected, the kernel counts nothing
        assert r["before"]["queue_dropped"] == 0 and r["before"]["queue_drops"] == 0
    assert r["after"]["user_dropped"] == 0
    assert not r["listed_after_unbind"]
