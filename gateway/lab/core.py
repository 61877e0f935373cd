"""Bring the namespace lab up, tear it down, report its status.

A lab is three namespaces, <name>-client, <name>-gw and <name>-server, joined by veth pairs;
the gateway bridges (default) or routes between the other two; the server runs nginx, smbd and
named; optionally the gateway namespace runs `vpatch run`.

Guarantees:
- `lab_up` refuses (LabError, changing nothing) when any of the lab's namespaces or its state dir
  already exists; when a step fails midway it tears down everything it made and raises LabError
  naming the step and the cause.
- `lab_down` removes every namespace, process and file of the lab, also after a crash (pid files
  gone, state dir gone, half-made lab): processes are found through the namespaces themselves
  (`ip netns pids`) as well as through pid files (checked against the lab's state dir so a
  recycled PID is never signalled). It is a no-op for a lab that does not exist.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from gateway.errors import LabError
from gateway.lab import services as svc
from gateway.lab.netns import netns_add, netns_delete, netns_exists, netns_pids, stop_pids
from gateway.lab.topology import STATE_ROOT, LabSpec, addresses, build_links, configure_addresses

LAB_FILE = "lab.json"
# How many kill-and-relist rounds `down` makes (daemons may fork while being stopped).
MAX_STOP_ROUNDS = 5


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veths, sysctls); run as root")


def lab_exists(spec: LabSpec) -> list[str]:
    """What of the lab already exists: namespace names and/or the state dir."""
    found = [ns for ns in spec.namespaces if netns_exists(ns)]
    if spec.state_dir.exists():
        found.append(str(spec.state_dir))
    return found


def lab_up(
    spec: LabSpec, services: bool = True, gateway: bool = True, ui_listen: str | None = None
) -> str | None:
    """Build the lab described by spec; see the module docstring for the guarantees.

    With ui_listen (HOST:PORT, loopback), also start the admin UI for the lab's gateway and
    return the password it set for the `admin` account (shown once), else None.
    """
    _require_root()
    existing = lab_exists(spec)
    if existing:
        raise LabError(
            f"lab {spec.name!r} already exists ({', '.join(existing)}); "
            f"run `vpatch lab down --name {spec.name}` first"
        )
    step = "state dir"
    try:
        spec.state_dir.mkdir(parents=True, mode=0o755)
        spec.state_dir.chmod(0o755)
        (spec.state_dir / LAB_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        step = "namespaces"
        for ns in spec.namespaces:
            netns_add(ns)
        step = "veth links"
        build_links(spec)
        step = f"{spec.mode} addresses and forwarding"
        configure_addresses(spec)
        if services:
            step = "services (nginx, smbd, named)"
            svc.start_services(spec)
        if gateway:
            step = "gateway (vpatch run)"
            svc.start_gateway(spec)
        if ui_listen is not None:
            step = f"admin UI (vpatch ui on {ui_listen})"
            return svc.start_ui(spec, ui_listen)
        return None
    except BaseException as err:
        try:
            lab_down(spec.name, state_dir=spec.state_dir)
            cleanup = "everything it made was removed"
        except LabError as down_err:
            cleanup = f"tear-down also failed: {down_err}"
        if isinstance(err, KeyboardInterrupt):
            raise
        raise LabError(
            f"lab {spec.name!r}: `up` failed at step {step!r}: {err}; {cleanup}"
        ) from err


def load_spec(name: str, state_dir: Path | None = None) -> LabSpec | None:
    """The spec a running lab was built with (from its lab.json), or None if it has none."""
    base = state_dir if state_dir is not None else STATE_ROOT / name
    path = base / LAB_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return LabSpec.from_dict(data, str(path))


def _pid_file_pids(spec: LabSpec) -> list[int]:
    pids: list[int] = []
    pid_dir = spec.state_dir / "pids"
    if pid_dir.is_dir():
        for path in pid_dir.glob("*.pid"):
            pid = svc.read_pid(path)
            if pid is not None and svc.is_ours(pid, spec):
                pids.append(pid)
    return pids


def lab_down(name: str, state_dir: Path | None = None) -> None:
    """Remove the lab called name: processes, namespaces (and their veths), state dir."""
    _require_root()
    spec = load_spec(name, state_dir) or LabSpec(
        name=name, state_dir=state_dir if state_dir is not None else Path("")
    )
    survivors: list[int] = []
    for _ in range(MAX_STOP_ROUNDS):
        pids = set(_pid_file_pids(spec))
        for ns in spec.namespaces:
            pids.update(netns_pids(ns))
        if not pids:
            survivors = []
            break
        survivors = stop_pids(pids)
    for ns in spec.namespaces:
        netns_delete(ns)
    if spec.state_dir.exists():
        shutil.rmtree(spec.state_dir)
    if survivors:
        raise LabError(f"lab {name!r}: processes {survivors} would not die")
    left = [ns for ns in spec.namespaces if netns_exists(ns)]
    if left:
        raise LabError(f"lab {name!r}: namespaces {left} could not be removed")


def _proc_status(spec: LabSpec, name: str) -> dict[str, Any]:
    pid = svc.read_pid(svc.pid_file(spec, name))
    running = pid is not None and svc.is_ours(pid, spec)
    return {"pid": pid, "running": running, "log": str(svc.log_file(spec, name))}


def lab_status(name: str, state_dir: Path | None = None) -> dict[str, Any]:
    """A JSON-ready description: namespaces, addresses, services and the gateway process."""
    spec = load_spec(name, state_dir)
    known = spec is not None
    if spec is None:
        spec = LabSpec(name=name, state_dir=state_dir if state_dir is not None else Path(""))
    namespaces: dict[str, Any] = {}
    for ns in spec.namespaces:
        exists = netns_exists(ns)
        namespaces[ns] = {
            "exists": exists,
            "addresses": addresses(ns) if exists else [],
            "pids": netns_pids(ns) if exists else [],
        }
    gateway = _proc_status(spec, svc.GATEWAY)
    gateway["config"] = str(svc.gateway_config_path(spec))
    gateway["control_socket"] = str(svc.control_socket_path(spec))
    return {
        "name": name,
        "mode": spec.mode if known else "unknown",
        "state_dir": str(spec.state_dir),
        "exists": any(v["exists"] for v in namespaces.values()) or spec.state_dir.exists(),
        "namespaces": namespaces,
        "services": {
            name_: _proc_status(spec, name_)
            for name_ in svc.SERVICES
            if svc.pid_file(spec, name_).exists()
        },
        "gateway": gateway,
        "ui": _proc_status(spec, svc.UI) if svc.pid_file(spec, svc.UI).exists() else None,
        "events": {
            "jsonl": str(spec.state_dir / "eve.json"),
            "sqlite": str(spec.state_dir / "events.db"),
        },
    }


def summary(spec: LabSpec, services: bool, gateway: bool) -> str:
    """What a new user needs after `vpatch lab up`: namespaces, addresses, commands to try."""
    c, s, g = spec.client_ns, spec.server_ns, spec.gw_ns
    lines = [
        f"lab {spec.name!r} is up ({spec.mode} mode); state in {spec.state_dir}",
        f"  client  {c:<22} {spec.client_ip}  {spec.client_ip6}",
    ]
    if spec.routed:
        lines.append(
            f"  gateway {g:<22} {spec.client_gw_ip} {spec.client_gw_ip6} | "
            f"{spec.server_gw_ip} {spec.server_gw_ip6} (routing)"
        )
    else:
        proxy = " ".join(a for a in (spec.bridge_ip, spec.bridge_ip6) if a not in ("", "-"))
        lines.append(
            f"  gateway {g:<22} br0 = gw-client + gw-server (transparent bridge; "
            f"{'HTTPS proxy ' + proxy if proxy else 'no addresses'})"
        )
    lines.append(f"  server  {s:<22} {spec.server_ip}  {spec.server_ip6}")
    if services:
        lines.append(
            "  services on the server: nginx :80, smbd :445/:139 (SMB1 on, share "
            "'public'), named :53 (zone lab.test.)"
        )
    if gateway:
        conf, log = svc.gateway_config_path(spec), svc.log_file(spec, svc.GATEWAY)
        lines.append(f"  gateway process: vpatch run -c {conf} (log {log})")
        lines.append(f"  events: {spec.state_dir / 'eve.json'}")
    else:
        lines.append("  no gateway process (--no-gateway): traffic passes uninspected")
    ip = spec.server_addr
    lines += [
        "try:",
        f"  ip netns exec {c} curl http://{ip}/",
        f"  ip netns exec {c} curl -g 'http://[{spec.server_addr6}]/'",
        f"  ip netns exec {c} smbclient -N -L //{ip} --option='client min protocol=NT1' -m NT1",
        f"  ip netns exec {c} smbclient -N //{ip}/public -c 'get readme.txt -'",
        f"  ip netns exec {c} dig @{ip} server.lab.test A +short",
        f"  vpatch lab status --name {spec.name}",
        f"  vpatch lab down --name {spec.name}",
    ]
    return "\n".join(lines)
