"""Health alerts and metrics of a real `vpatch run` in the namespace lab (client -> bridged
gateway -> nginx/named): the health check runs as the real command (`python -m gateway.cli
health check`) in the root namespace, outside the gateway, against a real webhook receiver on
loopback; the metrics endpoint is scraped over HTTP inside the gateway's namespace and parsed
with prometheus_client's parser.

Held:
- metrics: the endpoint parses; after real traffic with an exploit (MS15-034 against nginx)
  the inspected packets and bytes went up and the rule's sid has a drop;
- a worker killed (SIGKILL) and restarted raises `worker restarted`;
- workers that stop reading (SIGSTOP) while datagrams arrive fill the queues; the kernel passes
  the rest uninspected (fail_policy open) and the next check raises `packets passed
  uninspected` (health.uninspected 0); with fail_policy closed the kernel drops them instead,
  `vpatch_queue_drops_total` counts them and the check raises `queue drops` past its threshold;
- `vpatch run` killed (SIGKILL): the next check raises `gateway unreachable` at the receiver.
  Stated time: the alert is at the receiver within CHECK_BOUND seconds of the kill when a
  check runs right after it; under systemd the timer runs one every minute, so within a
  minute plus that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.match.rules import default_rule_dir, load_rules
from gateway.testing.inline import in_ns, package_env, running_gateway
from tests.alerts.conftest import free_port, wait_for
from tests.health.test_check import channel
from tests.rules.test_inline_rules import _sample, send

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

SID = 9010020  # MS15-034 (HTTP.sys Range), against the lab's nginx on port 80
CHECK_BOUND = 30.0  # seconds from the kill to the alert at the receiver (one check)
SCRAPE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], " \
         "timeout=10).read().decode())"  # fmt: skip


def scrape(lab: Any, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    got = in_ns(lab.gw_ns, [sys.executable, "-c", SCRAPE, url])
    assert got.returncode == 0, got.stderr
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(got.stdout)
        for s in fam.samples
    }


def total(samples: dict[tuple[str, Any], float], name: str) -> float:
    return sum(v for (n, _labels), v in samples.items() if n == name)


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "health", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=60, env=package_env(), check=False,
    )  # fmt: skip


def titles(webhook: Any) -> list[str]:
    return [json.loads(body)["title"] for _h, body in webhook.requests]


def worker_pids(gw: Any) -> list[int]:
    """The workers' pids once every queue has a bound worker that wrote its pid (a standby
    that took over writes it after it has bound; a pid 0 would be our own process group)."""
    deadline = time.monotonic() + 30
    while True:
        queues = gw.status()["queues"].values()
        pids = [int(q["pid"]) for q in queues if q["bound"] and q["alive"]]
        if len(pids) == len(queues) and all(p > 0 for p in pids):
            return pids
        assert time.monotonic() < deadline, f"workers not bound: {list(queues)}"
        time.sleep(0.1)


def udp_burst(lab: Any, count: int) -> None:
    code = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(int(sys.argv[2])):\n"
            "    s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'"
            " + bytes([7]) + b'example' + bytes([3]) + b'com\\x00\\x00\\x01\\x00\\x01',"
            " (sys.argv[1], 53))\n")  # fmt: skip
    done = in_ns(lab.client_ns, [sys.executable, "-c", code, lab.server_addr, str(count)])
    assert done.returncode == 0, done.stderr


def gateway_config(lab: Any, tmp_path: Path, fail_policy: str, port: int) -> dict[str, Any]:
    return {
        "protected_hosts": [lab.server_addr],
        "rules": [str(default_rule_dir())],
        "queues": {"first": 0, "count": 2, "max_len": 4},
        "fail_policy": fail_policy,
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "policy": {"database": str(tmp_path / "policy.db")},
        "rule_pack": {"dir": str(tmp_path / "packs")},
        "health": {"state": str(tmp_path / "health.json"), "uninspected": 0,
                   "queue_drops": 10, "disk_min_free": 0},
        "metrics": {"address": "127.0.0.1", "port": port},
    }  # fmt: skip


def stalled_workers(gw: Any, lab: Any, datagrams: int) -> None:
    """Every worker stopped (SIGSTOP) while `datagrams` DNS queries arrive, then resumed."""
    pids = worker_pids(gw)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        udp_burst(lab, datagrams)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    time.sleep(1.5)  # the uninspected counter is read at most once a second


def test_metrics_and_health_alerts_of_a_real_gateway(
    lab: Any, tmp_path: Path, webhook: Any
) -> None:
    port = free_port()
    cfg = gateway_config(lab, tmp_path, "open", port)
    channel(tmp_path, webhook.url)
    url = f"http://127.0.0.1:{port}/metrics"
    rule = load_rules([default_rule_dir()]).by_id[SID]
    with running_gateway(lab, tmp_path, cfg) as gw:
        assert check(gw.config).returncode == 0
        before = scrape(lab, url)
        assert before[("vpatch_status_ok", ())] == 1.0
        assert send(lab, rule, _sample(rule, "benign"), 80, b"")["outcome"] in ("DATA", "EOF")
        assert send(lab, rule, _sample(rule, "attack"), 80, b"")["outcome"] == "RESET"
        after = scrape(lab, url)
        assert total(after, "vpatch_packets_inspected_total") > total(
            before, "vpatch_packets_inspected_total")  # fmt: skip
        assert total(after, "vpatch_bytes_inspected_total") > total(
            before, "vpatch_bytes_inspected_total")  # fmt: skip
        assert after.get(("vpatch_rule_drops_total", (("sid", str(SID)),)), 0) >= 1
        assert before.get(("vpatch_rule_drops_total", (("sid", str(SID)),)), 0) == 0
        assert total(after, "vpatch_verdicts_total") > total(before, "vpatch_verdicts_total")
        assert webhook.requests == []

        # a worker killed and restarted
        restarts = sum(q["restarts"] for q in gw.status()["queues"].values())
        os.kill(worker_pids(gw)[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while sum(q["restarts"] for q in gw.status()["queues"].values()) == restarts:
            assert time.monotonic() < deadline, "worker not restarted"
            time.sleep(0.1)
        assert check(gw.config).returncode == 1
        assert "health: worker restarted" in wait_for(titles(webhook))
        assert total(scrape(lab, url), "vpatch_worker_restarts_total") == restarts + 1

        # workers that stop reading: the full queues pass datagrams uninspected
        stalled_workers(gw, lab, 200)
        checked = check(gw.config)
        assert checked.returncode == 1, checked.stdout
        assert "health: packets passed uninspected" in wait_for(titles(webhook), 3)
        assert total(scrape(lab, url), "vpatch_uninspected_packets_total") > 0

        # `vpatch run` killed
        sent = len(webhook.requests)
        killed = time.monotonic()
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        down = check(gw.config)
        wait_for(webhook.requests, sent + 1)
        took = time.monotonic() - killed
    assert down.returncode == 1 and "gateway_unreachable" in down.stdout
    assert "health: gateway unreachable" in titles(webhook)[sent:]
    assert took < CHECK_BOUND, took
    print(f"\nhealth: gateway unreachable alert at the receiver {took:.2f} s after the kill")


def test_queue_drops_past_the_threshold_raise_an_alert(
    lab: Any, tmp_path: Path, webhook: Any
) -> None:
    """fail_policy closed: what full queues cannot take is dropped by the kernel, counted in
    `queue_drops` (metrics) and alerted past health.queue_drops (10 per check)."""
    port = free_port()
    channel(tmp_path, webhook.url)
    with running_gateway(lab, tmp_path, gateway_config(lab, tmp_path, "closed", port)) as gw:
        assert check(gw.config).returncode == 0
        stalled_workers(gw, lab, 200)
        checked = check(gw.config)
        drops = total(scrape(lab, f"http://127.0.0.1:{port}/metrics"), "vpatch_queue_drops_total")
    assert checked.returncode == 1, checked.stdout
    assert "queue_drops" in checked.stdout and drops > 10
    wait_for(webhook.requests)
    assert "health: queue drops" in titles(webhook)
