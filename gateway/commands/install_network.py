"""`vpatch install-network --mode bridge|routed [--ports P P] [--root DIR]`: the boot-time network
configuration of this gateway (gateway/install/network.py): bridge or router, sysctls,
br_netfilter at boot, and under `--fail-closed` bridge ports that come up only with the gateway.
`--config FILE` also sets `network.mode` in the gateway configuration when it says nothing yet.
`--uninstall` removes every file it wrote (recognised by its header). Nothing is applied to the
running system: the files take effect at the next boot or `systemctl restart systemd-networkd`
(docs/install.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.forwarding import ForwardingMode
from gateway.install.network import (
    NetFormat,
    NetworkPlan,
    ours,
    render_network,
    set_config_mode,
    write_files,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "install-network",
        help="write the boot-time bridge/router configuration (networkd or ifupdown, sysctls)",
        description="Write the bridge or router configuration, its sysctls and br_netfilter "
        "loading into the system's own files, so the gateway survives a reboot inspecting.",
    )
    p.add_argument("--mode", choices=("bridge", "routed"), default="bridge")
    p.add_argument("--bridge", default="br0", help="bridge name (default br0)")
    p.add_argument("--ports", nargs="+", default=[], metavar="PORT", help="the bridged ports")
    p.add_argument("--format", choices=[f.value for f in NetFormat], default="networkd")
    p.add_argument(
        "--fail-closed",
        action="store_true",
        help="the bridge ports come up only once vpatch.service is ready",
    )
    p.add_argument("--root", type=Path, default=Path("/"), help="target root (default /)")
    p.add_argument("--config", type=Path, help="also set network.mode in this gateway config")
    p.add_argument("--uninstall", action="store_true", help="remove the files written before")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root: Path = args.root
    if args.uninstall:
        gone = ours(root)
        for path in gone:
            path.unlink()
            print(f"vpatch install-network: removed {path}")
        if not gone:
            print("vpatch install-network: nothing to remove")
        return 0
    plan = NetworkPlan(
        ForwardingMode(args.mode), args.bridge, tuple(args.ports), NetFormat(args.format),
        args.fail_closed,
    )  # fmt: skip
    for path in write_files(render_network(plan), root):
        print(f"vpatch install-network: wrote {path}")
    if args.config is not None:
        config = root / str(args.config).lstrip("/")
        if set_config_mode(config, plan.mode):
            print(f"vpatch install-network: {config}: network.mode {plan.mode.value}")
        else:
            print(f"vpatch install-network: {config} has a network section already: check "
                  f"that network.mode is {plan.mode.value}")  # fmt: skip
    return 0
