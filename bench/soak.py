"""Soak: mixed benign and attack traffic through the namespace lab for a long time; figures, not
assertions (issue 15, "a soak").

Builds a bridge-mode lab (gateway.lab, name `vpsoak`: client 198.18.0.10, server 198.18.0.20
with nginx, smbd and named, `vpatch run` with the lab's config: two queues, fail open, the
bundled rules), starts gateway/testing/soakclient.py in the client namespace (benign HTTP
keep-alive and new-connection requests, DNS queries, and the rules' HTTP attack samples on new
connections), and every `--every` seconds prints one line: the RSS of every gateway process
(`vpatch run` and each worker), their CPU (% of one core over the interval), the verdict
counters (accepted, dropped, reset, bypassed), events raised and the event store's records,
queue drops and kernel-unseen packets, the client's view (benign requests ok/failed, attacks
blocked/answered) and the load average. The lab is always torn down at the end.

    sudo PYTHONPATH=. .venv/bin/python bench/soak.py                 # one hour
    sudo PYTHONPATH=. .venv/bin/python bench/soak.py --duration 600  # ten minutes
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway.control.server import control_request
from gateway.errors import VpatchError
from gateway.lab import LabSpec, lab_down, lab_up
from gateway.lab.netns import netns_popen, stop_pids
from gateway.lab.services import GATEWAY, control_socket_path, pid_file, read_pid
from gateway.match.rules import default_rule_dir, load_rules
from gateway.vocabulary import Mode

CLK_TCK = os.sysconf("SC_CLK_TCK")


def attack_requests() -> list[str]:
    """The inline HTTP attack samples of the bundled rules that cover port 80 and block by
    default (hex): each one answered is a miss."""
    out = []
    for rule in load_rules([default_rule_dir()]).rules:
        if rule.protocol != "tcp" or 80 not in rule.ports:
            continue
        if rule.default_mode is not Mode.PREVENT or not rule.action.blocks:
            continue
        for sample in rule.samples:
            if sample.kind == "attack" and sample.pcap is None and sample.to_server:
                out.append(sample.to_server.hex())
    return out


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the lab starts `vpatch run` under a keeper, and the
    workers are the gateway's children), parents first."""
    out = [pid]
    for p in out:
        out.extend(sorted(children(p)))
    return out


def proc_figures(pid: int) -> tuple[float, float] | None:
    """(RSS MiB, CPU seconds) of one process, None when gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")), 0)  # fmt: skip
    return rss / 1024, (int(stat[11]) + int(stat[12])) / CLK_TCK


def totals(status: dict[str, Any]) -> dict[str, int]:
    queues = status.get("queues", {}).values()
    names = ("packets", "accepted", "dropped", "reset", "bypassed", "events", "errors",
             "kernel_unseen", "queue_drops", "restarts")  # fmt: skip
    return {n: sum(int(q.get(n) or 0) for q in queues) for n in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    ap.add_argument("--every", type=float, default=60.0, help="seconds between lines")
    ap.add_argument("--name", default="vpsoak", help="lab name")
    ap.add_argument("--keepalive", type=float, default=40.0, help="keep-alive requests/s")
    ap.add_argument("--new-conn", type=float, default=10.0, help="new-connection requests/s")
    ap.add_argument("--dns", type=float, default=5.0, help="DNS queries/s")
    ap.add_argument("--attacks", type=float, default=2.0, help="attacks/s")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the soak needs root (network namespaces)", file=sys.stderr)
        return 2
    spec = LabSpec(name=args.name)
    lab_down(spec.name)
    # SIGTERM (and SIGINT, which a shell's background job ignores) end the soak early: the
    # lab is torn down all the same
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    started = time.monotonic()
    client = None
    try:
        lab_up(spec, services=True, gateway=True)
        plan = {
            "server": spec.server_addr, "duration": args.duration, "keepalive": args.keepalive,
            "new_conn": args.new_conn, "dns": args.dns, "attacks_per_s": args.attacks,
            "attacks": attack_requests(), "out": str(spec.state_dir / "soak-client.json"),
        }  # fmt: skip
        plan_path = spec.state_dir / "soak-plan.json"
        plan_path.write_text(json.dumps(plan))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        client = netns_popen(
            spec.client_ns, [sys.executable, "-m", "gateway.testing.soakclient", str(plan_path)],
            env=env, stdout=sys.stderr, stderr=sys.stderr,
        )  # fmt: skip
        run_pid = read_pid(pid_file(spec, GATEWAY))
        assert run_pid is not None
        print(
            f"# soak: lab {spec.name} up in {time.monotonic() - started:.0f} s, vpatch run pid "
            f"{run_pid}, {len(plan['attacks'])} attack samples, rates/s: keep-alive "
            f"{args.keepalive}, new conn {args.new_conn}, dns {args.dns}, attacks {args.attacks}; "
            f"{os.cpu_count()} cores",
            flush=True,
        )
        print(
            "# min  rss_MiB(keeper+run+workers)  cpu_%(same)  pkts accepted dropped reset "
            "bypassed  events records(events) store_failing  queue_drops kernel_unseen "
            "restarts  client: keepalive_ok/failed new_ok/failed dns_ok/failed "
            "attacks_blocked/answered  load1",
            flush=True,
        )
        soak(spec, run_pid, args)
    except VpatchError as err:
        print(f"soak failed: {err}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            stop_pids([client.pid])
        lab_down(spec.name)
    return 0


def soak(spec: LabSpec, run_pid: int, args: argparse.Namespace) -> None:
    sock = control_socket_path(spec)
    out = spec.state_dir / "soak-client.json"
    t0 = time.monotonic()
    cpu_before: dict[int, float] = {}
    last = t0
    while True:
        time.sleep(max(0.0, args.every - (time.monotonic() - last)))
        now = time.monotonic()
        interval, last = now - last, now
        pids = descendants(run_pid)
        rss, cpu = [], []
        for pid in pids:
            fig = proc_figures(pid)
            if fig is None:
                continue
            rss.append(f"{fig[0]:.0f}")
            cpu.append(f"{100 * (fig[1] - cpu_before.get(pid, fig[1])) / interval:.0f}")
            cpu_before[pid] = fig[1]
        try:
            status = control_request(sock, "status", timeout=10.0)
        except VpatchError as err:
            print(f"# status unavailable: {err}", flush=True)
            status = {}
        t = totals(status)
        store = status.get("event_store") or {}
        try:
            c = json.loads(out.read_text())
        except (OSError, ValueError):
            c = {}
        print(
            f"{(now - t0) / 60:5.1f}  {'+'.join(rss)}  {'+'.join(cpu)}  {t['packets']} "
            f"{t['accepted']} {t['dropped']} {t['reset']} {t['bypassed']}  {t['events']} "
            f"{store.get('records', '-')}({store.get('written', '-')})"
            f" {store.get('failing', '-')}  {t['queue_drops']} {t['kernel_unseen']} "
            f"{t['restarts']}  {c.get('keepalive_ok', 0)}/{c.get('keepalive_failed', 0)} "
            f"{c.get('new_conn_ok', 0)}/{c.get('new_conn_failed', 0)} "
            f"{c.get('dns_ok', 0)}/{c.get('dns_failed', 0)} "
            f"{c.get('attack_blocked', 0)}/{c.get('attack_answered', 0)}  "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        failures = {k: v for k, v in c.items() if k.startswith(("new_conn_", "keepalive_"))
                    and not k.endswith(("_ok", "_failed"))}  # fmt: skip
        if failures:
            print(f"#      client failures by kind: {failures}", flush=True)
        if now - t0 >= args.duration:
            return


if __name__ == "__main__":
    sys.exit(main())
