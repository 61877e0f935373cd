"""The HTTPS plane in the running gateway: proxy processes, their restarts, the fail policy.

What it does: `TlsPlane(config, backend).start()` starts one proxy process per port of each
proxied service (gateway/tls/proxy.py; the configuration file's services and the policy
store's, gateway/tls/stored.py `wanted_services`; local ports numbered from
`tls_proxy.listen_port`, the lowest free ones) and installs the kernel redirect chains (nat
PREROUTING -> PREFIX-TLS -> PREFIX-TLS<n>, gateway/tls/redirect.py). `reconfigure()` (the
gateway's `reload`, after a service was added, changed or removed in the UI or API) reads the
services again and follows them live: new services get their proxies and chain, removed ones
lose them (their new connections go back to the packet plane), changed ones are made before
they are broken (the old proxies serve until a new one listens, then the chain switches and
the old ones end RETIRE_GRACE_S later, never blocking the caller), and the unchanged ones are
not touched (their processes, counters and connections go on); a service added live is
redirected once its proxy listens (until then its flows stay on the packet plane); the whole
redirect is rewritten in one atomic restore per family. The supervisor calls `supervise()` a
few times a second:
- a dead proxy process is logged, counted and started again (after `workers.restart_delay`,
  at most `workers.max_restarts` per `workers.restart_window`, as the queue workers; past
  that the plane gives up on it and leaves it to the fail policy);
- the fail policy follows what is listening: a service's redirect lists the ports of its
  proxies that listen (with several processes, the others carry its connections while one is
  restarted); with none, under `fail_policy: open` its chain is emptied: its connections
  pass the bridge uninspected by the HTTPS plane (the packet plane sees only ciphertext), and
  `status` says so (`inspecting: false`, `bypassed: true`) until a proxy listens again and
  the redirect comes back; under `closed` the redirect to every port stays, so new
  connections to a service with no proxy are refused (the client sees a reset).
`publish(what, version)` asks every proxy for a new policy or rule version (`reload`,
`rules-reload`); `status()` gives each service's mode, certificate, TLS settings and counters;
`stop()` ends the processes (SIGTERM, then SIGKILL).

Guarantees: a service is redirected only to proxies that listen, except under fail-closed
while none does (then to all: its connections are refused); under fail-open, until one
listens, the service stays on the packet plane (the gateway is ready before the proxies have
loaded the rules); the redirect is removed with the gateway's other rules (its chains carry the
gateway's prefix; the chains of removed services are emptied and removed with them at exit);
counters of a port outlive its processes (`status` shows them per port and summed); a store
that cannot be read, or a redirect that cannot be rewritten, leaves the services as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from gateway.config import FailPolicy, GatewayConfig
from gateway.database import db_errors
from gateway.errors import VpatchError
from gateway.firewall.apply import BackendInfo, run_cmd
from gateway.intake.nfqueue import WorkerStats
from gateway.tls.launch import proxy_stats, start_proxy
from gateway.tls.redirect import plane_text, service_chain_text
from gateway.tls.service import CertInfo, TlsConfigError, TlsService, check_keypair
from gateway.tls.stored import ServiceSource, Wanted, wanted_services

__all__ = ["TlsPlane"]

log = logging.getLogger("vpatch.tls")

RETIRE_GRACE_S: Final = 2.0  # a replaced or removed service's proxies end this long after
# no redirect points at them (the connections redirected to them just before finish)


class _Slot:
    """One proxy port: its current process and the counters that outlive it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stats = proxy_stats()
        self.proc: Any = None
        self.died: float | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.given_up = False

    @property
    def alive(self) -> bool:
        return bool(self.proc is not None and self.proc.is_alive())

    @property
    def listening(self) -> bool:
        return self.alive and bool(self.stats.get("bound"))


class _Proxied:
    """One proxied service in the running plane: its chain number, proxy slots, redirect."""

    def __init__(
        self, wanted: Wanted, chain: int, ports: list[int], pending: bool = False,
        replaces: _Proxied | None = None,
    ) -> None:  # fmt: skip
        self.service = wanted.service
        self.source = wanted.source
        self.id = wanted.id
        self.chain = chain
        self.slots = [_Slot(p) for p in ports]
        self.redirected: tuple[int, ...] | None = None  # the ports its chain redirects to now
        self.cert = _cert(self.service.cert, self.service.key)
        self.files = _digest(self.service)
        # added or changed while the gateway runs: redirected only once a proxy of it listens
        # (until then a new service stays on the packet plane, a changed one with `replaces`)
        self.pending = pending
        self.replaces = replaces

    def same(self, service: TlsService) -> bool:
        """`service` is this one with the same settings and the same certificate and key
        files' contents (a renewed certificate at the same path restarts the proxies)."""
        return service == self.service and _digest(service) == self.files

    @property
    def key(self) -> tuple[str, int]:
        return (self.service.host, self.service.port)


class TlsPlane:
    """The proxy processes of every proxied service (empty when none is configured or
    stored); `reconfigure()` follows the services as they change while the gateway runs."""

    def __init__(self, config: GatewayConfig, backend: BackendInfo) -> None:
        self.config = config
        self.backend = backend
        self.prefix = config.firewall.chain_prefix
        self.proxied: list[_Proxied] = []
        self.problems: list[dict[str, str]] = []  # stored services left out, and why
        self._hooked: set[int] = set()  # families whose PREROUTING jumps to our top chain
        self._chains: dict[int, set[int]] = {4: set(), 6: set()}  # chain numbers created
        self._retiring: list[_Slot] = []  # proxies of services gone, ended by supervise
        self._started = False  # services added after start() wait for their proxies
        self.rules_version = 0
        self.policy_version = 1
        # reconfigure (the control socket's reload thread) and supervise (the main loop) never
        # run together: supervise skips its turn while a reconfiguration runs
        self._lock = threading.Lock()

    @property
    def services(self) -> list[TlsService]:
        return [p.service for p in self.proxied]

    @property
    def fail_open(self) -> bool:
        return self.config.fail_policy is FailPolicy.OPEN

    def start(self, wanted: list[Wanted] | None = None) -> None:
        """Start every proxy and install the redirect chains: under fail-open empty until a
        service's proxies listen (supervise fills them), under fail-closed at once (its
        connections are refused until a proxy listens). Does not wait for the proxies, so
        the gateway is ready while they load the rules. `wanted`: the services (default:
        the configuration's and the policy store's, `wanted_services`); a store that cannot
        be read is logged and the configuration's services start alone."""
        if wanted is None:
            wanted = self._read_wanted() or [
                Wanted(s, ServiceSource.CONFIG) for s in self.config.tls_proxy.services
            ]
        with self._lock:
            self._apply(wanted)
        if self.proxied:
            log.info("HTTPS plane: %d service(s), proxies starting", len(self.proxied))

    def reconfigure(self, wanted: list[Wanted] | None = None) -> dict[str, Any]:
        """Follow the services as they are now (default: read again, `wanted_services`),
        without touching the unchanged ones: a new service gets its proxies and redirect, a
        removed one loses them (its new connections go back to the packet plane), a changed
        one is stopped and started with its new settings. The whole redirect is rewritten in
        one atomic restore per family. Returns what changed (and `error` when the store could
        not be read: then nothing changes)."""
        if wanted is None:
            wanted = self._read_wanted()
            if wanted is None:
                return {"error": "the policy store could not be read: services unchanged"}
        with self._lock:
            return self._apply(wanted)

    def _read_wanted(self) -> list[Wanted] | None:
        try:
            wanted, self.problems = wanted_services(self.config)
        except db_errors(VpatchError) as err:
            log.error("HTTPS plane: stored services not read (%s): services unchanged", err)
            return None
        for problem in self.problems:
            log.error("HTTPS plane: %s not proxied: %s", problem["service"], problem["error"])
        return wanted

    def _apply(self, wanted: list[Wanted]) -> dict[str, Any]:
        old = {p.key: p for p in self.proxied}
        keep: dict[tuple[str, int], _Proxied] = {}
        for w in wanted:
            current = old.get((w.service.host, w.service.port))
            if current is not None and current.same(w.service):
                current.source, current.id = w.source, w.id
                keep[current.key] = current
        gone = [p for p in self.proxied if p.key not in keep]
        busy_ports = {s.port for p in self.proxied for s in p.slots} | self._retiring_ports()
        busy_chains = {p.chain for p in keep.values()}
        changed = {p.key: p for p in gone if any(p.key == (w.service.host, w.service.port)
                                                  for w in wanted)}  # fmt: skip
        fresh: list[_Proxied] = []
        out: list[_Proxied] = []
        for w in wanted:
            key = (w.service.host, w.service.port)
            if key in keep:
                out.append(keep[key])
                continue
            prior = changed.get(key)
            if prior is not None and prior.replaces is not None:
                prior = prior.replaces  # changed again before it switched: the one serving
            chain = prior.chain if prior is not None else _lowest_free(busy_chains, 0)
            busy_chains.add(chain)
            ports = [_lowest_free(busy_ports, self.config.tls_proxy.listen_port)
                     for _ in range(w.service.processes)]  # fmt: skip
            proxied = _Proxied(w, chain, ports, pending=self._started, replaces=prior)
            fresh.append(proxied)
            out.append(proxied)
        before, self.proxied = self.proxied, out
        try:
            self._render()
        except VpatchError as err:  # the restore is atomic: the kernel keeps the old redirect
            log.error("HTTPS plane: redirect not rewritten, services unchanged: %s", err)
            self.proxied = before
            for proxied in before:
                proxied.redirected = None  # supervise rewrites each chain again
            return {"error": f"redirect not rewritten: {err}"}
        for p in gone:  # a changed one serves on until its successor listens (supervise)
            if p.key not in changed and p.replaces is not None:
                self._retire(p.replaces)  # removed before its change had switched
            if p.key not in changed or p.replaces is not None:
                self._retire(p)  # removed, or a successor that never switched
        for proxied in fresh:
            for slot in proxied.slots:
                self._spawn(proxied.service, slot)
        self._started = True
        names = {p.service.name for p in fresh}
        result = {
            "services": [p.service.name for p in self.proxied],
            "started": sorted(names - {p.service.name for p in changed.values()}),
            "stopped": sorted({p.service.name for p in gone if p.key not in changed}),
            "changed": sorted(p.service.name for p in changed.values()),
            "problems": self.problems,
        }
        if fresh or gone:
            log.info("HTTPS plane reconfigured: %s", result)
        return result

    def _render(self) -> None:
        """Rewrite the whole redirect (both families) from `self.proxied`: each service's
        chain redirects to the ports `_wanted` gives; the chains of services gone are
        emptied (removed with the gateway's other rules at exit)."""
        for proxied in self.proxied:
            proxied.redirected = tuple(self._wanted(proxied))
        for family in (4, 6):
            mine = [p for p in self.proxied if p.service.family == family]
            if not mine and family not in self._hooked:
                continue
            entries = [(p.chain, p.service, p.redirected or ()) for p in mine]
            stale = self._chains[family] - {p.chain for p in mine}
            text = plane_text(self.prefix, family, entries, family not in self._hooked, stale)
            run_cmd([self.backend.restore(family), "--noflush"], stdin=text)
            self._hooked.add(family)
            self._chains[family] |= {p.chain for p in mine}

    def _all(self) -> list[_Slot]:
        """Every proxy that serves or may serve: the services' and those they replace."""
        out = [slot for p in self.proxied for slot in p.slots]
        return out + [slot for p in self.proxied if p.replaces for slot in p.replaces.slots]

    def _retiring_ports(self) -> set[int]:
        return {s.port for s in self._retiring} | {
            s.port for p in self.proxied if p.replaces for s in p.replaces.slots
        }

    def _retire(self, proxied: _Proxied) -> None:
        """End a service's proxies that no redirect points at any more: SIGTERM after
        RETIRE_GRACE_S (connections just redirected to them finish), SIGKILL after
        `workers.stop_timeout` more; reaped by supervise, never blocking the caller."""
        at = time.monotonic() + RETIRE_GRACE_S
        for slot in proxied.slots:
            slot.given_up = True  # not restarted
            slot.died = at  # here: when to end it
            self._retiring.append(slot)

    def _reap(self, now: float) -> None:
        """SIGTERM, then SIGKILL, the retired proxies whose time has come; forget the dead."""
        kill_after = self.config.workers.stop_timeout
        for slot in list(self._retiring):
            if not slot.alive:
                if slot.proc is not None:
                    slot.proc.join(0)
                self._retiring.remove(slot)
            elif slot.died is not None and now >= slot.died:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.proc.pid, signal.SIGTERM if now < slot.died + kill_after
                            else signal.SIGKILL)  # fmt: skip

    def _spawn(self, service: TlsService, slot: _Slot) -> None:
        for name in ("bound", "pid", "started"):
            slot.stats.set(name, 0)
        slot.stats.set("policy_wanted", self.policy_version)
        slot.stats.set("rules_wanted", self.rules_version)
        slot.proc = start_proxy(self.config, service, slot.port, slot.stats)
        log.info("HTTPS proxy on port %d started (pid %s)", slot.port, slot.proc.pid)

    def _wanted(self, proxied: _Proxied) -> list[int]:
        """The ports a service redirects to now: the listening ones; with none, under
        fail-open none (uninspected), under fail-closed all (its connections are refused). A
        pending one (added or changed live), until a proxy of it listens: those of the one it
        replaces, or none."""
        listening = [s.port for s in proxied.slots if s.listening]
        if proxied.pending and not listening:
            return self._wanted(proxied.replaces) if proxied.replaces is not None else []
        if listening or self.fail_open:
            return listening
        return [s.port for s in proxied.slots]

    def supervise(self) -> None:
        """Restart dead proxies; keep each service's redirect in line with the fail policy
        (not while a reconfiguration runs: the next turn does it)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._supervise()
        finally:
            self._lock.release()

    def _supervise(self) -> None:
        now = time.monotonic()
        wc = self.config.workers
        for proxied in self.proxied:
            for slot in proxied.slots:
                if slot.alive or slot.given_up:
                    continue
                if slot.died is None:
                    self._record_death(slot, now)
                elif now - slot.died >= wc.restart_delay and not slot.given_up:
                    slot.died = None
                    self._spawn(proxied.service, slot)
        for proxied in self.proxied:
            wanted = tuple(self._wanted(proxied))
            if wanted != proxied.redirected:
                self._redirect(proxied, wanted)
            if (
                proxied.pending
                and (
                    any(s.listening for s in proxied.slots)
                    or all(s.given_up for s in proxied.slots)
                )
                and proxied.redirected == wanted
            ):  # switched (or it never will): the old one goes
                proxied.pending = False
                if proxied.replaces is not None:
                    self._retire(proxied.replaces)
                    proxied.replaces = None
        self._reap(now)

    def _redirect(self, proxied: _Proxied, wanted: tuple[int, ...]) -> None:
        service = proxied.service
        text = service_chain_text(self.prefix, proxied.chain, service, wanted)
        try:
            run_cmd([self.backend.restore(service.family), "--noflush"], stdin=text)
        except VpatchError as err:
            log.error("HTTPS plane: redirect of %s not updated: %s", service.name, err)
            return
        proxied.redirected = wanted
        if wanted:
            log.info("HTTPS plane: %s redirected to ports %s", service.name, list(wanted))
        else:
            log.warning(
                "HTTPS plane: no proxy for %s: its connections pass UNINSPECTED "
                "(fail_policy open) until one is back", service.name,
            )  # fmt: skip

    def _record_death(self, slot: _Slot, now: float) -> None:
        wc = self.config.workers
        slot.died = now
        code = slot.proc.exitcode if slot.proc is not None else None
        while slot.restarts and now - slot.restarts[0] > wc.restart_window:
            slot.restarts.popleft()
        siblings = next((p.slots for p in self.proxied if slot in p.slots), [])
        if any(s.listening for s in siblings if s is not slot):
            effect = "go to its other proxies"
        else:
            effect = "pass uninspected" if self.fail_open else "are refused"
        log.error(
            "HTTPS proxy on port %d died (exit status %s); its service's new connections %s "
            "until it is back", slot.port, code, effect,
        )  # fmt: skip
        if len(slot.restarts) >= wc.max_restarts:
            slot.given_up = True
            log.error("HTTPS proxy on port %d: restart budget spent, not restarted", slot.port)
            return
        slot.restarts.append(now)
        slot.total_restarts += 1

    def publish(self, what: str, version: int) -> None:
        """Ask every proxy for `version` of `what` ("policy" or "rules")."""
        if what == "rules":
            self.rules_version = version
        else:
            self.policy_version = version
        for slot in self._all():
            slot.stats.set(f"{what}_wanted", version)

    def applied(self, what: str, version: int) -> bool:
        """Every live proxy shows `version` of `what`."""
        return all(
            slot.stats.get(f"{what}_version") == version for slot in self._all() if slot.listening
        )

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_procs([*self._all(), *self._retiring], timeout)

    def _stop_procs(self, slots: list[_Slot], timeout: float = 5.0) -> None:
        """End these slots' processes (SIGTERM, SIGKILL after `timeout`)."""
        procs = [slot.proc for slot in slots if slot.alive]
        for slot in slots:
            slot.given_up = True  # not restarted by supervise
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)

    def status(self) -> list[dict[str, Any]]:
        """Per proxied service: mode, where it is declared, certificate, TLS settings,
        whether it is inspected now, and per proxy port its process and counters."""
        return [_status(p, self.fail_open) for p in self.proxied]


def _digest(service: TlsService) -> str:
    """SHA-256 over the service's certificate and key files ("" when one cannot be read)."""
    h = hashlib.sha256()
    try:
        for path in (service.cert, service.key):
            h.update(path.read_bytes())
    except OSError:
        return ""
    return h.hexdigest()


def _lowest_free(busy: set[int], start: int) -> int:
    """The lowest number from `start` not in `busy` (added to it)."""
    n = start
    while n in busy:
        n += 1
    busy.add(n)
    return n


def _status(proxied: _Proxied, fail_open: bool) -> dict[str, Any]:
    service = proxied.service
    slots = proxied.slots
    serving = slots + (proxied.replaces.slots if proxied.replaces is not None else [])
    listening = any(s.listening for s in serving)
    return {
        "service": service.name,
        "host": service.host,
        "port": service.port,
        "mode": "https-proxy",
        "source": proxied.source.value,
        "id": proxied.id,
        "certificate": proxied.cert,
        "tls": {
            "client_min": service.client_min.value,
            "server_min": service.server_min.value,
            "server_ciphers": service.server_ciphers,
        },
        "blocked": service.blocked.value,
        "depth": service.depth,
        "max_header_bytes": service.max_header_bytes,
        "max_headers": service.max_headers,
        "forwarded": service.forwarded,
        "processes": service.processes,
        "inspecting": listening and bool(proxied.redirected),
        # changed or added live, its own proxies not yet listening: the previous settings'
        # proxies serve meanwhile (a new service: the packet plane)
        "pending": proxied.pending,
        "bypassed": fail_open and not proxied.redirected,
        "proxies": [_slot_status(s, s.port in (proxied.redirected or ())) for s in slots],
        "counters": _sum(s.stats for s in slots),
    }


def _cert(cert: Any, key: Any) -> dict[str, Any]:
    try:
        info: CertInfo = check_keypair(cert, key)
    except TlsConfigError as err:
        return {"error": str(err)}
    return {**info.as_dict(), "expired_at_start": info.expired(datetime.now(UTC))}


def _slot_status(slot: _Slot, redirected: bool) -> dict[str, Any]:
    snap = slot.stats.snapshot()
    return {
        "port": slot.port,
        "alive": slot.alive,
        "listening": slot.listening,
        "redirected": redirected,
        "pid": snap["pid"],
        "restarts": slot.total_restarts,
        "given_up": slot.given_up,
        "rules": snap["rules"],
        "rules_version": snap["rules_version"],
        "policy_version": snap["policy_version"],
        "counters": {name: snap[name] for name in _SUMMED},
    }


_SUMMED: Final = ("requests", "blocked", "events", "tls_refused", "header_limits", "errors")


def _sum(stats: Any) -> dict[str, int]:
    snaps: list[WorkerStats] = list(stats)
    return {name: sum(s.get(name) for s in snaps) for name in _SUMMED}
