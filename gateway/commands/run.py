"""`vpatch run -c CONFIG [--cleanup] [--print-rules]`: the inline gateway.

Start-up, in this order (any failure stops with one clear error and leaves nothing behind):
load the configuration and the rules (fail fast), render the kernel rules
(gateway/firewall/compose.py), probe the iptables backend (and say which one is in use), then
run the gateway (gateway/supervisor.py: one worker process per queue, bound before the kernel
rules are applied atomically, the control socket, worker restarts, removal of every rule on
exit, whatever happened). After a crash of the whole process (kill -9), `vpatch run --cleanup`
removes what it left (all backends).

`--print-rules` prints the rendered ipset/iptables text and exits without touching the kernel.

Before anything touches the kernel, the namespace is checked for traffic that would bypass
netfilter (gateway/forwarding.py: br_netfilter and bridge-nf-call-* for a bridge, ip_forward
for a router, per `network.mode`); under `network.on_bypass: refuse` (the default) the gateway
does not start and the error names the sysctl to fix.

Under systemd (vpatch.service, Type=notify): READY=1 once the workers are bound and the rules
applied, WATCHDOG=1 only while every worker is alive and turning (gateway/supervisor.py).
`--cleanup --stop-post` is the unit's ExecStopPost: it removes what a killed gateway left,
except when the service failed ($SERVICE_RESULT is not `success`) under fail_policy closed:
then the rules stay, so the queues drop what they would inspect until the restart.

Host modes (docs/lifecycle.md): the setup-protection / learning / lockdown chains are rendered
from the lifecycle state in the policy store (`policy.database`) together with the queueing
rules and the firewall policy, and applied with them atomically; filter FORWARD order is
PREFIX-FW, then PREFIX-HM-FORWARD (gateway/firewall/hostmodes.py FORWARD_ORDER). `reload`
refreshes them in place (gateway/firewall/refresh.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gateway.config import FailPolicy, load_config
from gateway.firewall.apply import cleanup_all, probe_backend
from gateway.firewall.compose import render_config
from gateway.forwarding import check_forwarding, enforce
from gateway.intake.nfqueue import conntrack_lax
from gateway.supervisor import Gateway


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the inline gateway (kernel rules, NFQUEUE workers, control socket)",
        description="Run the inline gateway: install the kernel rules, inspect queued packets "
        "in one worker per queue, remove the rules on exit.",
    )
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="remove every kernel rule, chain and ipset vpatch left behind (after a crash)",
    )
    p.add_argument(
        "--stop-post",
        action="store_true",
        help="with --cleanup, as systemd's ExecStopPost: keep the rules when the service "
        "failed ($SERVICE_RESULT) under fail_policy closed",
    )
    p.add_argument(
        "--print-rules", action="store_true", help="print the rendered kernel rules and exit"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="vpatch[run] %(levelname)s %(message)s")
    config = load_config(args.config)
    if args.cleanup:
        result = os.environ.get("SERVICE_RESULT", "success")
        if args.stop_post and result != "success" and config.fail_policy is FailPolicy.CLOSED:
            print(f"vpatch run --cleanup: service result {result!r} under fail_policy closed: "
                  "kernel rules kept (queued traffic is dropped until the restart)")  # fmt: skip
            return 0
        removed = cleanup_all(config.firewall.chain_prefix)
        print("vpatch run --cleanup: " + ("; ".join(removed) if removed else "nothing to remove"))
        return 0
    rendered = render_config(config)
    if args.print_rules:
        sys.stdout.write(rendered.describe())
        return 0
    check = check_forwarding(config.network.mode)
    for warning in enforce(check, config.network.on_bypass):  # ForwardingError under refuse
        print(f"vpatch run: {warning}", file=sys.stderr, flush=True)
    print(f"vpatch run: {check.mode.value} mode, nothing bypasses netfilter"
          if check.ok else f"vpatch run: {check.mode.value} mode", flush=True)  # fmt: skip
    backend = probe_backend(config.firewall.backend)
    print(f"vpatch run: firewall backend iptables-{backend.name} ({backend.version})", flush=True)
    lax = conntrack_lax(config)
    print(
        "vpatch run: conntrack drops INVALID TCP segments (wrong checksum, outside the window) "
        "before the queue"
        if lax is None
        else f"vpatch run: the engine checks TCP checksums and windows itself ({lax})",
        flush=True,
    )
    return Gateway(config, backend, rendered).serve()
