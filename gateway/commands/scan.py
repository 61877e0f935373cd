"""`vpatch scan HOST... [--json] [--ports LIST] [--rules PATH] [--state FILE] [--apply]`:
the recommendation scan.

What it does: for each host (an IP address the operator names; nothing else is contacted) a TCP
connect scan of the ports, protocol probes on the open ones and on the UDP services
(gateway/scan/probes.py), then recommendation against every rule's `affected` metadata
(gateway/scan/recommend.py) and the rules currently assigned to the host in the lifecycle state.
With `--apply`, or when the host's `auto_apply` setting is on, the assignments are written to the
state with history entries saying when and why (evidence included).

Output: a progress bar on stderr when stderr is a terminal; a table on stdout, or with `--json`
one JSON document {"hosts": [{scan..., "recommendations": [...], "applied": bool}]}.

`--job ID` carries out a run queued in the policy store (gateway/scan/jobs.py; how the UI and
the API start scans: a subprocess of the UI), writing progress and report into the run.
`--scheduled -c CONFIG [--once]` is the scheduled-scan loop (systemd/vpatch-scan.service):
scans the hosts whose schedule is due, auto-applies for auto-apply hosts and asks the running
gateway to reload (the config's control socket).
Ctrl-C (SIGINT; SIGTERM too for `--job`/`--scheduled`) cancels: the probe under way finishes
(within `--timeout`), then the partial report is printed marked CANCELLED (`"cancelled": true`
in JSON, with `probes_done` of `probes_total`), nothing is recorded or applied, the hosts not
reached are not scanned, and the exit status is 130; a second Ctrl-C quits at once.
Guarantees: exit status 0 when every host was scanned (whatever was found), 130 when
cancelled, 2 on bad arguments (VpatchError); bounded timeouts (`--timeout` per socket
operation).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from gateway.database import policy_target, target_arg
from gateway.lifecycle.state import DEFAULT_STATE_PATH, LifecycleStore
from gateway.match.rules import default_rule_dir
from gateway.scan import probes
from gateway.scan.assign import apply_recommendations
from gateway.scan.recommend import (
    Recommendation,
    load_affected,
    recommend,
    recommendation_to_dict,
)
from gateway.scan.scanner import ScanError, ScanResult, parse_ports, result_to_dict, scan_host

__all__ = ["register", "run"]

BAR_WIDTH = 30
EXIT_CANCELLED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="recommendation scan of protected hosts",
        description="Probe protected hosts' services (HTTP/WebDAV, SMB1/2/3, RDP, TLS, DNS, "
        "MSSQL resolution, FTP, SSH), identify products and versions, and recommend the rules "
        "to assign or unassign from the rules' `affected` metadata.",
    )
    parser.add_argument("hosts", metavar="HOST", nargs="*", help="IP address to scan")
    parser.add_argument(
        "-c", "--config", type=Path, help="gateway configuration: policy database, rules, socket"
    )
    parser.add_argument("--job", type=int, metavar="ID", help="carry out queued scan run ID")
    parser.add_argument(
        "--socket", type=Path, help="control socket of the gateway to reload after an auto-apply"
    )
    parser.add_argument(
        "--scheduled", action="store_true", help="run the scan schedules of the policy store"
    )
    parser.add_argument("--once", action="store_true", help="with --scheduled: one pass only")
    parser.add_argument("--json", action="store_true", help="JSON report on stdout")
    parser.add_argument(
        "--ports",
        help="TCP ports/ranges, UDP with a 'u' prefix (e.g. 80,445,3389,u53); "
        "default: "
        + ",".join(str(p) for p in probes.DEFAULT_TCP_PORTS)
        + ","
        + ",".join(f"u{p}" for p in probes.DEFAULT_UDP_PORTS),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=probes.DEFAULT_TIMEOUT_S,
        help="seconds per socket operation (default %(default)s)",
    )
    parser.add_argument(
        "--rules",
        metavar="PATH",
        type=Path,
        action="append",
        help="rule file or directory (repeatable; default: the bundled rules/)",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        type=target_arg,
        default=None,
        help="policy database holding the lifecycle state (default: the config's, or "
        f"{DEFAULT_STATE_PATH})",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="write the recommended assignments (as if auto_apply were on)",
    )
    parser.set_defaults(func=run)


class ProgressBar:
    """A one-line progress bar on a terminal stream; silent when the stream is not a TTY."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled or total <= 0:
            return
        filled = BAR_WIDTH * done // total
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {what[:40]:<40}"
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (BAR_WIDTH + 55) + "\r")
            self.stream.flush()


def _table(result: ScanResult, recs: list[Recommendation], applied: bool) -> str:
    ports = ", ".join(map(str, result.open_tcp)) or "none"
    took = result.finished - result.started
    lines = [f"host {result.host}: open TCP {ports} ({took:.1f}s)"]
    if result.cancelled:
        lines.append(
            f"  CANCELLED: partial report, {result.probes_done} of {result.probes_total} probes "
            "done; no recommendation"
        )
    lines.append(f"  {'PORT':<10} {'SERVICE':<17} {'PRODUCT':<22} {'VERSION':<12} FEATURES")
    for f in result.findings:
        feats = ",".join(c.feature for c in f.features if c.present) or "-"
        lines.append(
            f"  {f'{f.port}/{f.transport}':<10} {f.service:<17} {f.product or '?':<22} "
            f"{f.version or '?':<12} {feats}"
        )
        for e in dict.fromkeys(f.evidence + tuple(c.evidence for c in f.features)):
            lines.append(f"      {e.probe}: {e.saw}")
    for port in result.unidentified:
        lines.append(f"  {f'{port}/tcp':<10} {'(unidentified)':<17}")
    if recs:
        lines.append(f"  recommendations{' (applied)' if applied else ''}:")
    for r in recs:
        lines.append(f"    {r.action.value.upper():<9} {r.rule_id:<9} {r.title}: {r.reason}")
        for e in r.evidence:
            lines.append(f"        {e.probe}: {e.saw}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.config is not None or args.state is None:
        from gateway.config import load_config

        config = load_config(args.config) if args.config is not None else None
        if args.state is None:
            args.state = policy_target(config) if config else DEFAULT_STATE_PATH
        if config is not None:
            args.rules = args.rules or list(config.rules)
            args.socket = args.socket or config.control.socket
    if args.scheduled or args.job is not None:
        return _run_jobs(args)
    if not args.hosts:
        raise ScanError("vpatch scan: name at least one HOST (or --job / --scheduled)")
    if args.ports:
        tcp, udp = parse_ports(args.ports)
    else:
        tcp, udp = probes.DEFAULT_TCP_PORTS, probes.DEFAULT_UDP_PORTS
    rules = load_affected(args.rules or [default_rule_dir()])
    store = LifecycleStore(args.state)
    bar = ProgressBar(sys.stderr)
    reports: list[dict[str, Any]] = []
    stop = threading.Event()
    cancelled = False
    previous = signal.signal(signal.SIGINT, _cancel_handler(stop))
    try:
        for host in args.hosts:
            result = scan_host(host, tcp, udp, timeout=args.timeout, progress=bar,
                               cancelled=stop.is_set)  # fmt: skip
            bar.finish()
            report = _report(args, store, result, rules)
            if args.json:
                reports.append(report)
            if result.cancelled:
                cancelled = True
                break
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        json.dump({"hosts": reports, "cancelled": cancelled}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_CANCELLED if cancelled else 0


def _cancel_handler(stop: threading.Event) -> Any:
    """First Ctrl-C: stop after the probe under way; the second one quits at once."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write(
            "\nvpatch scan: cancelling after the probe under way (Ctrl-C again: quit now)\n"
        )
        sys.stderr.flush()

    return handler


def _report(
    args: argparse.Namespace, store: LifecycleStore, result: ScanResult, rules: Any
) -> dict[str, Any]:
    """Recommend, record and apply (unless the scan was cancelled), print the table; the
    JSON form of the host's report."""
    recs: list[Recommendation] = []
    applied = False
    if not result.cancelled:  # a partial scan proves nothing absent: no recommendation
        policy = store.host(result.host)
        recs = recommend(result, rules, policy.assigned)
        findings = result_to_dict(result)["findings"]
        store.record_scan(result.host, findings if isinstance(findings, list) else [])
        applied = bool(args.apply or policy.auto_apply)
        if applied:
            apply_recommendations(store, result.host, recs, "scan")
    if not args.json:
        print(_table(result, recs, applied), flush=True)
    return {
        **result_to_dict(result),
        "applied": applied,
        "recommendations": [recommendation_to_dict(r) for r in recs],
    }


def _run_jobs(args: argparse.Namespace) -> int:
    """--job ID (one queued run) or --scheduled (the schedule loop)."""
    from gateway.scan.jobs import ScanJobs, run_scheduler

    if args.ports:
        tcp, udp = parse_ports(args.ports)
    else:
        tcp, udp = probes.DEFAULT_TCP_PORTS, probes.DEFAULT_UDP_PORTS
    paths = args.rules or [default_rule_dir()]
    jobs = ScanJobs(args.state)
    if args.job is not None:
        queued = jobs.get(args.job)
        if queued is None:
            raise ScanError(f"--job {args.job}: no such scan run in {args.state}")
        if args.hosts and args.hosts != [queued.host]:
            raise ScanError(f"--job {args.job}: the run is for {queued.host}, not {args.hosts}")
        try:
            rules = load_affected(paths)
        except Exception as err:
            jobs.fail(args.job, f"rules: {err}")
            raise
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: stop.set())
        done = jobs.execute(args.job, rules, tcp, udp, args.timeout, control_socket=args.socket,
                            force_apply=args.apply, stop=stop)  # fmt: skip
        if args.json:
            json.dump(done.as_dict(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(f"scan run {done.id} ({done.host}): {done.status} {done.error}".rstrip())
        return {"done": 0, "cancelled": EXIT_CANCELLED}.get(done.status, 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    print(f"vpatch scan --scheduled: schedules from {args.state}", flush=True)
    count = run_scheduler(
        jobs, lambda: load_affected(paths), tcp_ports=tcp, udp_ports=udp, timeout=args.timeout,
        control_socket=args.socket, stop=stop, once=args.once, out=sys.stdout,
    )  # fmt: skip
    print(f"vpatch scan --scheduled: {count} run(s), stopping", flush=True)
    return 0
