"""`vpatch lab`: build, inspect and remove the namespace lab; configure a real gateway's bridge.

    vpatch lab up [--routed] [--name NAME] [--no-gateway] [--no-services] [--no-ui]
                  [--ui-listen HOST:PORT] [--offloads-off]
    vpatch lab down [--name NAME]
    vpatch lab status [--name NAME] [--json]
    vpatch lab bridge PORT PORT [--bridge br0]   (this machine: used by the Vagrant gateway VM)
    vpatch lab router                            (this machine: IPv4/IPv6 forwarding on)
    vpatch lab serve [--state-dir DIR]           (this machine: the lab server's services, in
                                                  the foreground; the Vagrant server VM)

Guarantees: exit status 0 on success, 2 with a one-line error (from the CLI) on LabError;
`status` exits 1 when the lab does not exist.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

from gateway.lab import (
    LabSpec,
    configure_bridge,
    configure_router,
    lab_down,
    lab_status,
    lab_up,
    summary,
)
from gateway.lab.serve import DEFAULT_SERVE_DIR, serve, serve_spec
from gateway.lab.services import DEFAULT_UI_LISTEN


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "lab",
        help="namespace lab: client, gateway, legacy server",
        description="Build, inspect and remove the namespace lab.",
    )
    parser.set_defaults(func=run)
    lab_sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = lab_sub.add_parser("up", help="create the namespaces, services and gateway")
    up.add_argument(
        "--name", default="vpatch", help="lab name, the namespaces' prefix (default: vpatch)"
    )
    up.add_argument(
        "--routed",
        action="store_true",
        help="the gateway routes between two subnets instead of bridging",
    )
    up.add_argument(
        "--no-gateway",
        action="store_true",
        help="do not start `vpatch run` in the gateway namespace",
    )
    up.add_argument(
        "--no-services",
        action="store_true",
        help="do not start nginx, smbd and named in the server namespace",
    )
    up.add_argument(
        "--ui-listen",
        default=DEFAULT_UI_LISTEN,
        metavar="HOST:PORT",
        help=f"where the admin UI listens, on loopback (default {DEFAULT_UI_LISTEN})",
    )
    up.add_argument("--no-ui", action="store_true", help="do not start the admin UI")
    up.add_argument(
        "--offloads-off",
        action="store_true",
        help="turn TSO/GSO/GRO and checksum offloads off on the veths (default: "
        "kernel defaults, on; measured faster, see docs/lab.md)",
    )

    down = lab_sub.add_parser("down", help="remove every namespace, process and file of a lab")
    down.add_argument("--name", default="vpatch")

    status = lab_sub.add_parser("status", help="namespaces, addresses, services, gateway")
    status.add_argument("--name", default="vpatch")
    status.add_argument("--json", action="store_true", help="print JSON")

    bridge = lab_sub.add_parser(
        "bridge",
        help="bridge two ports of THIS machine with br_netfilter on (the Vagrant gateway VM)",
    )
    bridge.add_argument("ports", nargs=2, metavar="PORT")
    bridge.add_argument("--bridge", default="br0")

    lab_sub.add_parser("router", help="turn on IPv4/IPv6 forwarding on THIS machine")

    serve_parser = lab_sub.add_parser(
        "serve",
        help="run the lab server's nginx, smbd (SMB1) and named on THIS machine, in the "
        "foreground (the Vagrant server VM)",
    )
    serve_parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_SERVE_DIR,
        help=f"configurations, pids and logs (default {DEFAULT_SERVE_DIR})",
    )


def run(args: argparse.Namespace) -> int:
    action = args.lab_command
    if action == "up":
        spec = LabSpec(name=args.name, routed=args.routed, offloads_off=args.offloads_off)
        ui_listen = None if args.no_ui or args.no_gateway else args.ui_listen
        password = lab_up(
            spec, services=not args.no_services, gateway=not args.no_gateway, ui_listen=ui_listen
        )
        print(summary(spec, services=not args.no_services, gateway=not args.no_gateway))
        if ui_listen is not None:
            print(
                f"admin UI: http://{ui_listen}/  user: admin  password: {password}\n"
                "  (shown only this once; plain HTTP on loopback with --insecure-http, lab use "
                "only;\n  new password: vpatch ui -c "
                f"{spec.state_dir / 'gateway.yaml'} --set-password admin)"
            )
        return 0
    if action == "down":
        lab_down(args.name)
        print(f"lab {args.name!r} removed")
        return 0
    if action == "status":
        info = lab_status(args.name)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(format_status(info))
        return 0 if info["exists"] else 1
    if action == "bridge":
        configure_bridge(args.ports, args.bridge)
        print(f"{args.bridge}: bridging {' '.join(args.ports)}, br_netfilter on")
        return 0
    if action == "router":
        configure_router()
        print("forwarding on")
        return 0
    if action == "serve":
        spec = serve_spec(args.state_dir)

        def ready(pids: dict[str, int]) -> None:
            started = ", ".join(f"{name} pid {pid}" for name, pid in pids.items())
            print(f"serving: {started}; files in {spec.state_dir}", flush=True)

        # until SIGTERM/Ctrl-C (the CLI unwinds `lab` on SIGTERM) or a service dies
        serve(spec, threading.Event(), on_ready=ready)
        return 0
    raise AssertionError(f"unknown lab action {action!r}")


def format_status(info: dict[str, Any]) -> str:
    if not info["exists"]:
        return f"lab {info['name']!r} does not exist"
    lines = [f"lab {info['name']!r} ({info['mode']} mode), state {info['state_dir']}"]
    for ns, data in info["namespaces"].items():
        addrs = ", ".join(f"{a['iface']} {a['addr']}" for a in data["addresses"]) or "-"
        state = "present" if data["exists"] else "MISSING"
        lines.append(f"  {ns:<24} {state:<8} {addrs}")
    for name, data in info["services"].items():
        state = "running" if data["running"] else "dead"
        lines.append(f"  {name:<8} {state:<8} pid {data['pid']}")
    gw = info["gateway"]
    if gw["pid"] is None:
        lines.append("  gateway  not started")
    else:
        state = "running" if gw["running"] else "dead"
        lines.append(f"  gateway  {state:<8} pid {gw['pid']}  log {gw['log']}")
    ui = info.get("ui")
    if ui is not None:
        state = "running" if ui["running"] else "dead"
        lines.append(f"  ui       {state:<8} pid {ui['pid']}  log {ui['log']}")
    return "\n".join(lines)
