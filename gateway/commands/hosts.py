"""`vpatch hosts ...`: per-host protection modes (docs/lifecycle.md).

  list                         hosts with mode, exceptions, update sources, assignments
  add ADDR|CIDR [--name N]     protect a host or network: stored, and the running gateway
                               queues it within a reload (no restart, flows kept)
  remove ADDR|CIDR             stop protecting it (its assignments are deleted with it)
  set HOST [--mode M] [--exception CIDR[:proto[/port]]]... [--update-source ...]...
           [--lockdown-action drop|alert] [--auto-apply on|off]
  release HOST                 end setup protection (mode normal), with history
  allow HOST 'A -> B:P/proto'  one-step "allow this" for a lockdown event (also live in the
                               kernel set when --netns/--live is given); A may be an address,
                               a network (198.18.0.0/24) or `any` (every client)
  disallow HOST 'A -> B:P/proto'
                               delete one learned or allowed entry (new connections it let
                               in are refused from then on; established ones go on)
  learned HOST | history HOST  what was learned / what changed, when and why
  apply | unapply              install / remove the host-mode kernel rules (standalone prefix)
  monitor [--eve F] [--sqlite F] [--duration S]
                               NFLOG reader: learning tuples and lockdown events (run it in the
                               gateway namespace)
  app-control HOST [--add RULE]... [--remove RULE]... [--clear]
                               per-host application control (gateway/policy/appcontrol.py)
State lives in the policy store (`-c CONFIG`: its `policy.database`; `--state DB` overrides).
After a change, a running `vpatch run` (control socket from the config, `--socket` overrides)
is told to `reload`: it re-renders the host-mode kernel rules and the engine's app-control
policy itself. Standalone use without a gateway: `--apply` installs the host-mode rules under
the prefix VPHM, and `--netns NS` runs those kernel commands inside that namespace.
Guarantees: exit status 0 on success, 2 on bad input (VpatchError naming the value); the kernel
rules are replaced atomically by apply.apply_rules (all or nothing).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.commands import raise_interrupt
from gateway.config import Backend, EventsConfig, load_config
from gateway.control.server import notify_gateway
from gateway.database import policy_target, target_arg
from gateway.events.sink import EventSink
from gateway.firewall.apply import apply_hostmodes, probe_backend, remove_rules
from gateway.firewall.hostmodes import (
    DEFAULT_LEARN_GROUP,
    DEFAULT_LOCKDOWN_GROUP,
    STANDALONE_PREFIX,
    HostModeSettings,
    render_hostmodes,
)
from gateway.firewall.refresh import add_learned_tuple, remove_learned_tuple
from gateway.lifecycle.monitor import run_monitor
from gateway.lifecycle.state import (
    DEFAULT_STATE_PATH,
    Endpoint,
    HistoryEntry,
    HostMode,
    LifecycleError,
    LifecycleStore,
    LockdownAction,
    check_address,
    parse_tuple,
)
from gateway.policy.appcontrol import parse_control
from gateway.policy.hosts import Hosts
from gateway.policy.hosts import check_address as check_store_address
from gateway.policy.store import Store, StoreError

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hosts",
        help="host protection modes: setup protection, learning, lockdown",
        description="Per-host modes (normal, setup, learning, lockdown), setup-protection "
        "exceptions and update sources, lockdown tuples and events.",
    )
    parser.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    parser.add_argument(
        "--state",
        metavar="DB",
        type=target_arg,
        help=f"policy database (default: the config's policy.database, {DEFAULT_STATE_PATH})",
    )
    parser.add_argument(
        "--socket", type=Path, help="control socket of the running gateway (default: config)"
    )
    parser.add_argument("--netns", metavar="NS", help="run kernel commands in namespace NS")
    parser.add_argument("--learn-group", type=int, default=DEFAULT_LEARN_GROUP)
    parser.add_argument("--lockdown-group", type=int, default=DEFAULT_LOCKDOWN_GROUP)
    sub = parser.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="hosts and their modes")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "add", help="protect a host or network (the running gateway queues it at once)"
    )
    p.add_argument("host", metavar="ADDR|CIDR")
    p.add_argument("--name", default="", help="a label for the UI")
    p = sub.add_parser(
        "remove", help="stop protecting a host or network (its assignments go with it)"
    )
    p.add_argument("host", metavar="ADDR|CIDR")
    p = sub.add_parser("set", help="change a host's mode and settings")
    p.add_argument("host")
    p.add_argument("--mode", choices=[m.value for m in HostMode])
    p.add_argument("--exception", action="append", default=[], metavar="CIDR[:proto[/port]]")
    p.add_argument(
        "--update-source",
        action="append",
        default=[],
        metavar="CIDR[:proto[/port]]|NAME:proto/port",
        help="outbound allowed in setup mode; a host name is resolved by the running gateway",
    )
    p.add_argument("--clear-exceptions", action="store_true")
    p.add_argument("--lockdown-action", choices=[a.value for a in LockdownAction])
    p.add_argument("--auto-apply", choices=["on", "off"])
    p.add_argument("--apply", action="store_true", help="install the kernel rules now")
    p = sub.add_parser("app-control", help="per-host application control rules")
    p.add_argument("host")
    p.add_argument("--add", action="append", default=[], metavar="RULE")
    p.add_argument("--remove", action="append", default=[], metavar="RULE")
    p.add_argument("--clear", action="store_true")
    p = sub.add_parser("release", help="release a host from setup protection")
    p.add_argument("host")
    p.add_argument("--apply", action="store_true")
    p = sub.add_parser(
        "allow", help="allow one tuple of a locked-down host (SRC: address, CIDR or any)"
    )
    p.add_argument("host")
    p.add_argument("tuple", metavar="'SRC -> DST:PORT/PROTO'")
    p.add_argument("--apply", action="store_true", help="add it to the live kernel set too")
    p = sub.add_parser("disallow", help="delete one learned or allowed tuple of a host")
    p.add_argument("host")
    p.add_argument("tuple", metavar="'SRC -> DST:PORT/PROTO'")
    p.add_argument("--apply", action="store_true", help="remove it from the live kernel set too")
    for name in ("learned", "history"):
        p = sub.add_parser(name, help=f"a host's {name} entries")
        p.add_argument("host")
        p.add_argument("--json", action="store_true")
    sub.add_parser("apply", help="install the host-mode kernel rules from the state")
    sub.add_parser("unapply", help="remove the standalone host-mode kernel rules")
    p = sub.add_parser("print-rules", help="print the rendered host-mode kernel rules")
    p = sub.add_parser("monitor", help="NFLOG reader: learning and lockdown events")
    p.add_argument("--eve", type=Path, help="EVE JSON lines file for lockdown events")
    p.add_argument("--sqlite", type=Path, help="SQLite event store for lockdown events")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> HostModeSettings:
    return HostModeSettings(args.learn_group, args.lockdown_group)


def _history(host: str, action: str, target: str, reason: str) -> list[HistoryEntry]:
    return [HistoryEntry(time.time(), host, action, target, reason)]


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = LifecycleStore(args.state or policy_target(config))
    socket_path = args.socket or config.control.socket
    return ACTIONS[args.hosts_command](args, store, socket_path)


def _after_change(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    """Install the standalone kernel rules (--apply), or have the running gateway reload."""
    if args.apply:
        print(apply_hostmodes(store.hosts(), args.netns, _settings(args)))
    else:
        print(notify_gateway(socket_path))
    return 0


def _list(args: argparse.Namespace, store: LifecycleStore, _socket: Path) -> int:
    hosts = store.hosts()
    if args.json:
        print(json.dumps([_host_dict(h) for h in hosts], indent=2))
    for h in [] if args.json else hosts:
        print(
            f"{h.address:<20} {h.mode.value:<9} auto_apply={'on' if h.auto_apply else 'off'}"
            f" exceptions={','.join(map(str, h.exceptions)) or '-'} "
            f"update_sources={','.join(map(str, h.update_sources)) or '-'} "
            f"lockdown={h.lockdown_action.value} learned={len(h.learned)} "
            f"rules={','.join(map(str, h.assigned)) or '-'}"
        )
    return 0


def _set(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    host = check_address(args.host, "host")
    current = store.host(host)
    changes: dict[str, Any] = {}
    history: list[HistoryEntry] = []
    if args.mode:
        mode = HostMode(args.mode)
        changes["mode"] = mode
        if mode is HostMode.LEARNING and current.mode is not HostMode.LEARNING:
            changes["learned"] = ()  # a learning period starts empty
        history += _history(
            host, "mode", mode.value, f"admin: {current.mode.value} -> {mode.value}"
        )
    base_exc = () if args.clear_exceptions else current.exceptions
    base_upd = () if args.clear_exceptions else current.update_sources
    if args.exception or args.clear_exceptions:
        changes["exceptions"] = base_exc + tuple(
            Endpoint.parse(e, "--exception") for e in args.exception
        )
    if args.update_source or args.clear_exceptions:
        changes["update_sources"] = base_upd + tuple(
            Endpoint.parse(e, "--update-source", names=True) for e in args.update_source
        )
    if args.lockdown_action:
        changes["lockdown_action"] = LockdownAction(args.lockdown_action)
    if args.auto_apply:
        changes["auto_apply"] = args.auto_apply == "on"
    new = store.update_host(host, history=history, **changes)
    print(f"{host}: mode {new.mode.value}")
    return _after_change(args, store, socket_path)


def _release(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    host = check_address(args.host, "host")
    current = store.host(host)
    if current.mode is not HostMode.SETUP:
        raise LifecycleError(
            f"host {host} is in mode {current.mode.value}, not setup: nothing to release"
        )
    store.update_host(
        host,
        history=_history(host, "release", "normal", "admin released setup protection"),
        mode=HostMode.NORMAL,
    )
    print(f"{host}: released from setup protection (mode normal)")
    return _after_change(args, store, socket_path)


def _allow(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    host = check_address(args.host, "host")
    t = parse_tuple(args.tuple)
    if host not in (t.src, t.dst):
        raise LifecycleError(f"tuple {args.tuple!r} does not involve host {host}")
    store.add_learned(host, [t])
    store.update_host(host, history=_history(host, "allow", str(t), "admin: allow this"))
    if args.apply:
        add_learned_tuple(t, args.netns)
    print(f"{host}: allowed {t}")
    if not args.apply:
        print(notify_gateway(socket_path))
    return 0


def _disallow(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    host = check_address(args.host, "host")
    t = parse_tuple(args.tuple)
    store.remove_learned(host, t, history=_history(host, "disallow", str(t), "admin"))
    if args.apply:
        remove_learned_tuple(t, args.netns)
    print(f"{host}: no longer allowed {t}")
    if not args.apply:
        print(notify_gateway(socket_path))
    return 0


def _app_control(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    host = check_address(args.host, "host")
    current = store.host(host)
    controls = [] if args.clear else list(current.app_controls)
    for text in args.add:
        rule = parse_control(text, "--add").text
        if rule not in controls:
            controls.append(rule)
    for text in args.remove:
        rule = parse_control(text, "--remove").text
        if rule not in controls:
            raise LifecycleError(f"host {host}: no app-control rule {rule!r} to remove")
        controls.remove(rule)
    store.update_host(
        host,
        history=_history(host, "app-control", ";".join(controls) or "-", "admin"),
        app_controls=tuple(controls),
    )
    print(f"{host}: app control {', '.join(controls) or 'none'}")
    print(notify_gateway(socket_path))
    return 0


def _entries(args: argparse.Namespace, store: LifecycleStore, _socket: Path) -> int:
    """`learned` and `history`."""
    host = check_address(args.host, "host")
    rows: list[Any]
    if args.hosts_command == "learned":
        rows = [str(t) for t in store.host(host).learned]
    else:
        rows = [
            {
                "ts": e.ts,
                "action": e.action,
                "target": e.target,
                "reason": e.reason,
                "evidence": [list(x) for x in e.evidence],
            }
            for e in store.history(host)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(
                row
                if isinstance(row, str)
                else f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row['ts']))} "
                f"{row['action']:<9} {row['target']:<10} {row['reason']}"
            )
    return 0


def _apply(args: argparse.Namespace, store: LifecycleStore, _socket: Path) -> int:
    print(apply_hostmodes(store.hosts(), args.netns, _settings(args)))
    return 0


def _add(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    with Store(store.path) as db:
        host = Hosts(db).save_host(args.host, "cli", args.name)
    print(f"{host.address}: protected")
    print(notify_gateway(socket_path))
    return 0


def _remove_host(args: argparse.Namespace, store: LifecycleStore, socket_path: Path) -> int:
    with Store(store.path) as db:
        hosts = Hosts(db)
        host = hosts.host_by_address(check_store_address(args.host))
        if host is None:
            raise StoreError(f"hosts.address {args.host!r}: no such host")
        hosts.delete_host(host.id, "cli")
    print(f"{host.address}: no longer protected (unless protected_hosts in the config names it)")
    print(notify_gateway(socket_path))
    return 0


def _unapply(args: argparse.Namespace, _store: LifecycleStore, _socket: Path) -> int:
    removed = remove_rules(probe_backend(Backend.AUTO, args.netns), STANDALONE_PREFIX, args.netns)
    print(f"removed: {', '.join(removed) or 'nothing'}")
    return 0


def _print_rules(args: argparse.Namespace, store: LifecycleStore, _socket: Path) -> int:
    sys.stdout.write(render_hostmodes(store.hosts(), STANDALONE_PREFIX, _settings(args)).describe())
    return 0


def _monitor(args: argparse.Namespace, store: LifecycleStore, _socket: Path) -> int:
    signal.signal(signal.SIGTERM, raise_interrupt)
    window = EventsConfig().aggregate_window  # repeats and floods: one record with a count
    sink = EventSink(args.sqlite, args.eve, aggregate_window=window) if (
        args.sqlite or args.eve) else None  # fmt: skip
    try:
        run_monitor(store, _settings(args), sink, args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        if sink is not None:
            sink.close()
    return 0


Action = Callable[[argparse.Namespace, LifecycleStore, Path], int]
ACTIONS: dict[str, Action] = {
    "list": _list,
    "set": _set,
    "release": _release,
    "allow": _allow,
    "disallow": _disallow,
    "app-control": _app_control,
    "learned": _entries,
    "history": _entries,
    "add": _add,
    "remove": _remove_host,
    "apply": _apply,
    "unapply": _unapply,
    "print-rules": _print_rules,
    "monitor": _monitor,
}


def _host_dict(h: Any) -> dict[str, Any]:
    return {
        "address": h.address,
        "mode": h.mode.value,
        "auto_apply": h.auto_apply,
        "exceptions": [str(e) for e in h.exceptions],
        "update_sources": [str(e) for e in h.update_sources],
        "lockdown_action": h.lockdown_action.value,
        "assigned": list(h.assigned),
        "learned": [str(t) for t in h.learned],
        "app_controls": list(h.app_controls),
        "updated_at": h.updated_at,
    }
