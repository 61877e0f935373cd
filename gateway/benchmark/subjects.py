"""The inspecting setups `vpatch bench` compares, each started in the lab's gateway namespace.

- kernel: the bridge alone (br_netfilter on, no queue): the ceiling.
- suricata-default: Suricata 7 inline as installed: the packaged /etc/suricata/suricata.yaml,
  one queue (`-q 0`), `iptables -A FORWARD -j NFQUEUE --queue-num 0`.
- suricata-tuned: the same Suricata tuned as its IPS/inline and nfq documentation suggests:
  two queues (`--queue-balance 0:1`, `-q 0 -q 1`, workers runmode), `--queue-bypass` and
  `nfq.fail-open` (fail-open), `stream.bypass` with `nfq.bypass-mark/-mask` = 0x1 kept in the
  connmark (restored in mangle PREROUTING, matched first in FORWARD, saved in mangle POSTROUTING
  from marked packets only). The documented recipe saves from every packet; Suricata marks just
  the one packet that triggers the bypass, so the packets already queued behind it, accepted
  unmarked, saved 0 over the bit and the flow stayed in the queue (bulk at 0.8 Gbit/s instead of
  about 13 here, `flow_bypassed.local_capture_pkts` in the hundreds of thousands).
  With that bypass Suricata stops inspecting a wrk keep-alive connection once its responses
  pass the 1 MiB depth (about 820 requests of 1 KiB each): 26,273 of 234,420 requests decoded
  in a 5 s test (`app_layer.tx.http`).
- suricata-inspect-all: suricata-tuned with `stream.reassembly.depth=0` (unlimited), so that,
  like vpatch, it inspects every request of a keep-alive connection (and every byte of a bulk
  one, which vpatch does not: it stops at its depth a stream no decoder follows).
- vpatch: `vpatch run -c <lab state dir>/gateway.yaml` (the lab's config: protect the server, two
  queues, fail open), with its own rules and kernel rules.

Every Suricata run writes its counters each second (`stats.interval=1`): for each test the
bench reports the packets it decoded (`decoder.pkts`) and the HTTP requests it parsed
(`app_layer.tx.http`) against wrk's count, as it does for vpatch, read once two blocks a second
apart agree (the last block can lag behind the traffic). The Suricata runs load only
the given rules file (`-S`), with HOME_NET set to the lab server and
logs in a directory of their own; overrides go through `--set` so the packaged file stays the
base. Guarantees: `stop()` stops the processes this module started (by PID) and deletes exactly
the iptables rules it added, in reverse order; it is safe to call twice or after a failed start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.benchmark import BenchError
from gateway.benchmark.parse import parse_suricata_stats
from gateway.control.server import ControlError, control_request
from gateway.intake.breakdown import ENV_FLAG
from gateway.lab import LabSpec
from gateway.lab import services as lab_services
from gateway.lab.netns import netns_exec, pid_alive, stop_pids

SURICATA_DEFAULT_CONFIG = Path("/etc/suricata/suricata.yaml")
# How long Suricata gets to load its rules and print "Engine started".
SURICATA_START_TIMEOUT_S = 120.0
# How long `vpatch run` gets to compile its rules and open its control socket (about 5 s on
# an idle 2-core VM, over 20 s with other jobs running).
VPATCH_START_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.2
SURICATA_STATS_INTERVAL_S = 1  # seconds between two blocks of Suricata's stats.log
SURICATA_SETTLE_READS = 8  # reads of stats.log until two agree
# Suricata's documented example bypass mark; vpatch's own bits (0x10000000) do not overlap.
SURICATA_BYPASS_MARK = 0x1

# (table, chain, rule spec) as given to `iptables -t TABLE -A CHAIN SPEC...`
IptablesRule = tuple[str, str, tuple[str, ...]]


def suricata_version() -> str | None:
    """'7.0.10' or None when suricata is not installed."""
    exe = shutil.which("suricata")
    if exe is None:
        return None
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout
    for token in out.split():
        if token[:1].isdigit():
            return token
    return out.strip() or None


@dataclass
class Subject:
    """Base: no process, no rule (the kernel alone). Subclasses start something."""

    name: str
    description: str
    spec: LabSpec
    pids: list[int] = field(default_factory=list)
    rules_added: list[IptablesRule] = field(default_factory=list)
    command: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start the subject; nothing to do for the kernel alone."""

    def inspecting_root_pids(self) -> list[int]:
        """The processes whose CPU time (with their descendants and threads) is counted."""
        return [pid for pid in self.pids if pid_alive(pid)]

    def counters(self) -> dict[str, int] | None:
        """The subject's own counters summed over its workers, None where it has none."""
        return None

    def info(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "command": self.command,
            "iptables": [" ".join(("-t", t, "-A", c, *r)) for t, c, r in self.rules_added],
        }

    def add_rules(self, rules: list[IptablesRule]) -> None:
        for table, chain, spec in rules:
            netns_exec(self.spec.gw_ns, ["iptables", "-t", table, "-A", chain, *spec])
            self.rules_added.append((table, chain, spec))

    def stop(self) -> list[str]:
        """Stop processes, then delete our rules; returns problems (never raises)."""
        problems: list[str] = []
        if self.pids:
            survivors = stop_pids(self.pids, grace=15.0)
            if survivors:
                problems.append(f"{self.name}: processes {survivors} would not die")
            self.pids = []
        for table, chain, spec in reversed(self.rules_added):
            proc = netns_exec(
                self.spec.gw_ns, ["iptables", "-t", table, "-D", chain, *spec], check=False
            )
            if proc.returncode != 0:
                problems.append(
                    f"{self.name}: could not delete rule -t {table} {chain} {' '.join(spec)}: "
                    f"{proc.stderr.strip()}"
                )
        self.rules_added = []
        return problems


@dataclass
class SuricataSubject(Subject):
    rules_file: Path = Path()
    tuned: bool = False
    unlimited_depth: bool = False  # tuned, and every byte of every stream inspected
    config: Path = SURICATA_DEFAULT_CONFIG

    def log_dir(self) -> Path:
        return self.spec.state_dir / "bench" / self.name

    def build_command(self) -> list[str]:
        exe = shutil.which("suricata") or "suricata"
        log_dir = self.log_dir()
        argv = [exe, "-c", str(self.config)]
        argv += ["-q", "0", "-q", "1"] if self.tuned else ["-q", "0"]
        argv += ["-S", str(self.rules_file), "-l", str(log_dir)]
        argv += ["--pidfile", str(log_dir / "suricata.pid")]
        overrides = {
            "vars.address-groups.HOME_NET": f"[{self.spec.server_addr}/32]",
            "unix-command.enabled": "no",  # no socket in /var/run shared with other instances
            # counters() reads stats.log after each test
            "stats.interval": str(SURICATA_STATS_INTERVAL_S),
        }
        if self.tuned:
            argv += ["--runmode", "workers"]
            overrides |= {
                "nfq.mode": "accept",
                "nfq.fail-open": "yes",
                "nfq.bypass-mark": str(SURICATA_BYPASS_MARK),
                "nfq.bypass-mask": str(SURICATA_BYPASS_MARK),
                "stream.bypass": "yes",
            }
        if self.unlimited_depth:
            overrides["stream.reassembly.depth"] = "0"
        for key, value in overrides.items():
            argv += ["--set", f"{key}={value}"]
        return argv

    def kernel_rules(self) -> list[IptablesRule]:
        if not self.tuned:
            return [("filter", "FORWARD", ("-j", "NFQUEUE", "--queue-num", "0"))]
        mark = f"{SURICATA_BYPASS_MARK:#x}"
        marked = ("-m", "mark", "--mark", f"{mark}/{mark}")
        queue = ("-j", "NFQUEUE", "--queue-balance", "0:1", "--queue-bypass")
        return [
            ("mangle", "PREROUTING", ("-j", "CONNMARK", "--restore-mark", "--mask", mark)),
            ("filter", "FORWARD", (*marked, "-j", "ACCEPT")),
            ("filter", "FORWARD", queue),
            ("mangle", "POSTROUTING", (*marked, "-j", "CONNMARK", "--save-mark", "--mask", mark)),
        ]

    def counters(self, sleep: Callable[[float], None] = time.sleep) -> dict[str, int] | None:
        """Packets decoded and HTTP requests parsed so far (stats.log's last block), once two
        blocks a second apart agree (at most SURICATA_SETTLE_READS reads): Suricata's workers
        hand their counters to the stats thread in their own time, so right after a test the
        last block can still miss seconds of it (a keep-alive test then showed 45,560 of
        84,585 requests, and the next test the rest)."""
        last: dict[str, int] | None = None
        for _ in range(SURICATA_SETTLE_READS):
            now = self._stats()
            if now == last:
                break
            last = now
            sleep(SURICATA_STATS_INTERVAL_S + 0.1)
        return last

    def _stats(self) -> dict[str, int]:
        try:
            text = (self.log_dir() / "stats.log").read_text()
        except FileNotFoundError:
            return {}
        stats = parse_suricata_stats(text, str(self.log_dir() / "stats.log"))
        return {
            "packets": stats.get("decoder.pkts", 0),
            "app_records": stats.get("app_layer.tx.http", 0),
        }

    def start(self) -> None:
        if not self.rules_file.is_file():
            raise BenchError(f"{self.name}: Suricata rules file {self.rules_file} not found")
        log_dir = self.log_dir()
        if log_dir.exists():
            shutil.rmtree(log_dir)
        log_dir.mkdir(parents=True)
        self.command = self.build_command()
        pid = lab_services.start_background(
            self.spec, self.spec.gw_ns, f"bench-{self.name}", self.command
        )
        self.pids.append(pid)
        log = log_dir / "suricata.log"
        deadline = time.monotonic() + SURICATA_START_TIMEOUT_S
        while True:
            if not pid_alive(pid):
                tail = lab_services.log_tail(lab_services.log_file(self.spec, f"bench-{self.name}"))
                raise BenchError(f"{self.name}: suricata exited during start-up: {tail}")
            try:
                if "Engine started" in log.read_text(errors="replace"):
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name}: suricata did not log 'Engine started' in {log} within "
                    f"{SURICATA_START_TIMEOUT_S:.0f}s"
                )
            time.sleep(POLL_INTERVAL_S)
        # Queue only once the reader is there, so no start-up drop is measured.
        self.add_rules(self.kernel_rules())

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["version"] = suricata_version()
        out["rules_file"] = str(self.rules_file)
        out["logs"] = str(self.log_dir())
        return out


@dataclass
class VpatchSubject(Subject):
    breakdown: bool = False  # workers time their stages (gateway/intake/breakdown.py)

    def start(self) -> None:
        conf = lab_services.gateway_config_path(self.spec)
        self.command = ["vpatch", "run", "-c", str(conf)]
        # The lab starts it (PID file in the lab's state dir) and waits for the control socket.
        saved = os.environ.get(ENV_FLAG)
        os.environ[ENV_FLAG] = "1" if self.breakdown else "0"  # the gateway inherits it
        try:
            pid = lab_services.start_gateway(self.spec, VPATCH_START_TIMEOUT_S)
        except Exception as err:
            # a failed start may leave the process or its pid file: stop what the pid file names
            pid_path = lab_services.pid_file(self.spec, lab_services.GATEWAY)
            left = lab_services.read_pid(pid_path)
            if left is not None and lab_services.is_ours(left, self.spec):
                stop_pids([left])
            raise BenchError(f"{self.name}: `vpatch run -c {conf}` did not start: {err}") from err
        finally:
            if saved is None:
                del os.environ[ENV_FLAG]
            else:
                os.environ[ENV_FLAG] = saved
        self.pids.append(pid)

    def counters(self) -> dict[str, int] | None:
        """The workers' counters (control socket `status`), summed over the queues."""
        try:
            status = control_request(lab_services.control_socket_path(self.spec), "status")
        except ControlError:
            return None
        total: dict[str, int] = {}
        for queue in status["queues"].values():
            for name, value in queue.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[name] = total.get(name, 0) + value
        return total

    def stop(self) -> list[str]:
        problems = super().stop()
        sock = lab_services.control_socket_path(self.spec)
        if sock.exists():
            sock.unlink()  # so the next start waits for a fresh socket
        return problems

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["config"] = str(lab_services.gateway_config_path(self.spec))
        out["log"] = str(lab_services.log_file(self.spec, lab_services.GATEWAY))
        return out


def make_subjects(
    names: list[str], spec: LabSpec, suricata_rules: Path, breakdown: bool = False
) -> list[Subject]:
    """Subjects in table order for the given names (kernel, suricata-*, vpatch); `breakdown`:
    vpatch's workers time their stages (VPATCH_BREAKDOWN=1)."""
    made: list[Subject] = []
    for name in names:
        if name == "kernel":
            made.append(Subject(name, "kernel bridge alone (br_netfilter, no queue)", spec))
        elif name == "suricata-default":
            made.append(
                SuricataSubject(
                    name,
                    "Suricata inline as installed: packaged config, one queue",
                    spec,
                    rules_file=suricata_rules,
                    tuned=False,
                )
            )
        elif name == "suricata-tuned":
            made.append(
                SuricataSubject(
                    name,
                    "Suricata inline tuned: 2 queues (workers), fail-open, stream.bypass with "
                    "connmark bypass",
                    spec,
                    rules_file=suricata_rules,
                    tuned=True,
                )
            )
        elif name == "suricata-inspect-all":
            made.append(
                SuricataSubject(
                    name,
                    "Suricata inline tuned, stream depth unlimited: every request inspected",
                    spec,
                    rules_file=suricata_rules,
                    tuned=True,
                    unlimited_depth=True,
                )
            )
        elif name == "vpatch":
            made.append(
                VpatchSubject(
                    name, "vpatch run with its rules (lab gateway.yaml)", spec, breakdown=breakdown
                )
            )
        else:
            raise BenchError(f"unknown benchmark subject {name!r}")
    return made
