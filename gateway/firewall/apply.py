"""Put the rendered kernel rules in place, and take them away again.

- `probe_backend(choice)`: which iptables flavour to drive. Both iptables-nft and
  iptables-legacy use the xtables NFQUEUE/CONNMARK/conntrack/set/u32 extensions; nft's native
  `queue` statement is not used (it is missing on kernels without CONFIG_NFT_QUEUE). `auto`
  takes the flavour `iptables` points at, unless only the other one already holds rules here.
- `apply_rules(rendered, backend)`: removes any leftovers of ours, creates the ipsets
  (`ipset restore`), then one `iptables-restore --noflush` per family. Each restore is one
  transaction; if the IPv6 one fails, the IPv4 rules and the ipsets are removed again, so the
  kernel holds either all of our rules or none of them.
- `remove_rules(backend, prefix)`: deletes every jump into a PREFIX-* chain, flushes and deletes
  those chains (one restore per family and table: atomic), then destroys our ipsets. Idempotent:
  safe after a crash (`vpatch run --cleanup`) and when nothing is there.
- `apply_hostmodes(policies, netns)`: the host-mode rules on their own (`vpatch hosts apply`,
  prefix hostmodes.STANDALONE_PREFIX), replaced atomically like apply_rules; removed when no
  host is in a special mode.
- Rendering is elsewhere and pure (render.py, hostmodes.py, policy.py); this module and
  refresh.py (in-place rewrites on `reload`) are the only ones that run firewall commands.
- Nobody else's rules are touched. Every failure raises FirewallError naming the command and
  its stderr.
- `netns`: run every command inside that network namespace (`ip netns exec`), for tests and
  tools working from the root namespace; the gateway itself runs inside its namespace and
  passes None.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.config import Backend
from gateway.errors import FirewallError
from gateway.firewall.hostmodes import (
    DEFAULT_SETTINGS,
    STANDALONE_PREFIX,
    HostModeSettings,
    render_hostmodes,
)
from gateway.firewall.render import RenderedRules, set_prefix
from gateway.lifecycle.state import HostPolicy

COMMAND_TIMEOUT = 30.0  # seconds for any one iptables/ipset invocation
TABLES = ("mangle", "filter", "raw", "nat")  # tables searched for our chains on removal


@dataclass(frozen=True, slots=True)
class BackendInfo:
    name: str  # "nft" or "legacy"
    iptables: str
    ip6tables: str
    version: str  # what `iptables -V` printed

    def restore(self, family: int) -> str:
        return f"{self.iptables if family == 4 else self.ip6tables}-restore"

    def save(self, family: int) -> str:
        return f"{self.iptables if family == 4 else self.ip6tables}-save"


def _prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def run_cmd(
    argv: Sequence[str], netns: str | None = None, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one firewall tool; FirewallError with the command and its stderr when it fails."""
    full = _prefix(netns) + list(argv)
    try:
        proc = subprocess.run(
            full, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FirewallError(f"{' '.join(full)}: {err}") from err
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        where = ""
        if stdin:
            m = re.search(r"line:? (\d+)", detail)
            if m and 0 < int(m.group(1)) <= len(stdin.splitlines()):
                where = f" (input line {m.group(1)}: {stdin.splitlines()[int(m.group(1)) - 1]!r})"
        raise FirewallError(f"{' '.join(full)} failed: {detail}{where}")
    return proc


def _backend(name: str) -> BackendInfo | None:
    ipt, ip6t = f"iptables-{name}", f"ip6tables-{name}"
    if not shutil.which(ipt) or not shutil.which(f"{ipt}-restore"):
        return None
    return BackendInfo(name, ipt, ip6t, "")


def _has_rules(b: BackendInfo, netns: str | None) -> bool:
    proc = run_cmd([b.save(4)], netns, check=False)
    return proc.returncode == 0 and any(line.startswith("-A ") for line in proc.stdout.splitlines())


def probe_backend(choice: Backend = Backend.AUTO, netns: str | None = None) -> BackendInfo:
    """Pick and check the iptables flavour; FirewallError when none works here."""
    names = [choice.value] if choice is not Backend.AUTO else []
    if not names:
        default = "nft"
        path = shutil.which("iptables")
        if path:
            proc = run_cmd([path, "-V"], None, check=False)
            default = "legacy" if "legacy" in proc.stdout else "nft"
        other = "legacy" if default == "nft" else "nft"
        names = [default, other]
        a, b = _backend(default), _backend(other)
        if a and b and not _has_rules(a, netns) and _has_rules(b, netns):
            names = [other, default]
    errors = []
    for name in names:
        b = _backend(name)
        if b is None:
            errors.append(f"iptables-{name}: not installed")
            continue
        proc = run_cmd([b.iptables, "-t", "mangle", "-S", "FORWARD"], netns, check=False)
        if proc.returncode != 0:
            errors.append(f"{b.iptables} -t mangle -S FORWARD: {proc.stderr.strip()}")
            continue
        ver = run_cmd([b.iptables, "-V"], netns, check=False).stdout.strip()
        return BackendInfo(b.name, b.iptables, b.ip6tables, ver)
    raise FirewallError("no usable iptables backend: " + "; ".join(errors))


def _family_text(family: int, r: RenderedRules) -> str:
    return r.ipv4 if family == 4 else r.ipv6


def apply_rules(rendered: RenderedRules, backend: BackendInfo, netns: str | None = None) -> None:
    """Install the rendered rules: all of them or (after a failure) none of them."""
    remove_rules(backend, rendered.prefix, netns)
    try:
        if rendered.ipset:
            run_cmd(["ipset", "restore"], netns, stdin=rendered.ipset)
        for family in (4, 6):
            text = _family_text(family, rendered)
            if text:
                run_cmd([backend.restore(family), "--noflush"], netns, stdin=text)
    except FirewallError:
        # the original error is the one worth reporting
        with contextlib.suppress(FirewallError):
            remove_rules(backend, rendered.prefix, netns)
        raise


def apply_hostmodes(
    policies: Iterable[HostPolicy],
    netns: str | None = None,
    settings: HostModeSettings = DEFAULT_SETTINGS,
) -> str:
    """Install the standalone host-mode rules for these host policies (atomic replace), or
    remove them when no host is in setup/learning/lockdown mode; returns a summary line."""
    rendered = render_hostmodes(policies, STANDALONE_PREFIX, settings)
    backend = probe_backend(Backend.AUTO, netns)
    if not rendered.ipv4 and not rendered.ipv6:
        remove_rules(backend, STANDALONE_PREFIX, netns)
        return "no host in setup/learning/lockdown mode: host-mode rules removed"
    apply_rules(rendered, backend, netns)
    return f"host-mode rules installed: {len(rendered.chains)} chains, {len(rendered.sets)} sets"


SWAP_SUFFIX = "-n"  # temporary set names during a refill (ipset names: at most 31 chars)


def refill_sets(ipset_text: str, names: Iterable[str], netns: str | None = None) -> None:
    """Replace the contents of the running sets `names` by those `ipset_text` (`ipset restore`
    create/add lines for exactly those sets) describes: each set is filled under NAME-n, then
    swapped with NAME (atomic per set) and the old contents destroyed. Rules referring to
    the sets never see a missing or half-filled set. FirewallError when ipset refuses."""
    names = list(names)
    for name in names:
        run_cmd(["ipset", "destroy", name + SWAP_SUFFIX], netns, check=False)
    lines: list[str] = []
    for line in ipset_text.splitlines():
        verb, name, rest = (line.split(" ", 2) + [""])[:3]
        lines.append(f"{verb} {name}{SWAP_SUFFIX} {rest}".rstrip())
    for name in names:
        lines += [f"swap {name} {name}{SWAP_SUFFIX}", f"destroy {name}{SWAP_SUFFIX}"]
    run_cmd(["ipset", "restore"], netns, stdin="\n".join(lines) + "\n")


_RULE_JUMP = re.compile(r"^-A (\S+) (.*)-j (\S+)(.*)$")


def _removal_script(save_text: str, prefix: str) -> dict[str, list[str]]:
    """Per table: restore lines deleting our jumps, then flushing and deleting our chains."""
    out: dict[str, list[str]] = {}
    table = ""
    ours = f"{prefix}-"
    deletes: list[str] = []
    chains: list[str] = []
    for line in save_text.splitlines():
        if line.startswith("*"):
            table, deletes, chains = line[1:], [], []
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(ours):
                chains.append(name)
        elif line.startswith("-A "):
            m = _RULE_JUMP.match(line)
            if m and m.group(3).startswith(ours) and not m.group(1).startswith(ours):
                deletes.append("-D " + line[3:])
        elif line == "COMMIT" and (deletes or chains):
            out[table] = deletes + [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
    return out


def remove_rules(backend: BackendInfo, prefix: str, netns: str | None = None) -> list[str]:
    """Remove our chains, jumps and ipsets; returns what was removed (for logs)."""
    removed: list[str] = []
    for family in (4, 6):
        proc = run_cmd([backend.save(family)], netns, check=False)
        if proc.returncode != 0:
            if family == 6:
                continue  # no IPv6 here: nothing of ours either
            raise FirewallError(f"{backend.save(family)} failed: {proc.stderr.strip()}")
        script = _removal_script(proc.stdout, prefix)
        if not script:
            continue
        text = "".join(
            f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n" for table, lines in script.items()
        )
        run_cmd([backend.restore(family), "--noflush"], netns, stdin=text)
        removed.extend(f"ipv{family} {t}: {len(lines)} lines" for t, lines in script.items())
    sp = set_prefix(prefix)
    proc = run_cmd(["ipset", "list", "-n"], netns, check=False)
    if proc.returncode == 0:
        for name in proc.stdout.split():
            if name.startswith(sp):
                run_cmd(["ipset", "destroy", name], netns)
                removed.append(f"ipset {name}")
    return removed


def cleanup_all(prefix: str, netns: str | None = None) -> list[str]:
    """Remove our objects from every installed backend (after a crash, whichever was used)."""
    removed: list[str] = []
    errors: list[str] = []
    for name in ("nft", "legacy"):
        b = _backend(name)
        if b is None:
            continue
        try:
            removed += [f"{name}: {r}" for r in remove_rules(b, prefix, netns)]
        except FirewallError as err:
            errors.append(str(err))
    if errors:
        raise FirewallError("; ".join(errors))
    return removed
