"""The HTTPS plane in the running gateway: proxy processes, their restarts, the fail policy.

What it does: `TlsPlane(config, backend)` starts one proxy process per port of each proxied
service (gateway/tls/proxy.py, ports from gateway/tls/redirect.py plane_ports) and installs
the kernel redirect chains (nat PREROUTING -> PREFIX-TLS -> PREFIX-TLS<i>). The
supervisor calls `supervise()` a few times a second:
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
while none does (then to all: refused); under fail-open, until one listens, the service stays
on the packet plane (the gateway is ready before the proxies have loaded the rules); the
redirect is removed with the gateway's other rules (its chains carry the gateway's prefix);
counters of a port outlive its processes (`status` shows them per port and summed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from gateway.config import FailPolicy, GatewayConfig
from gateway.errors import VpatchError
from gateway.firewall.apply import BackendInfo, run_cmd
from gateway.intake.nfqueue import WorkerStats
from gateway.tls.proxy import proxy_stats, start_proxy
from gateway.tls.redirect import plane_ports, redirect_text, service_chain_text
from gateway.tls.service import CertInfo, TlsConfigError, check_keypair

__all__ = ["TlsPlane"]

log = logging.getLogger("vpatch.tls")


class _Slot:
    """One proxy port: its current process and the counters that outlive it."""

    def __init__(self, index: int, port: int) -> None:
        self.index = index  # the service's
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


class TlsPlane:
    """The proxy processes of every proxied service (empty when none is configured)."""

    def __init__(self, config: GatewayConfig, backend: BackendInfo) -> None:
        self.config = config
        self.backend = backend
        self.prefix = config.firewall.chain_prefix
        self.services = config.tls_proxy.services
        ports = plane_ports(config)
        self.slots = [[_Slot(i, p) for p in ports[i]] for i in range(len(self.services))]
        self._redirected: list[tuple[int, ...] | None] = [None] * len(self.services)
        self._certs = [_cert(s.cert, s.key) for s in self.services]  # checked at load already
        self.rules_version = 0
        self.policy_version = 1

    @property
    def fail_open(self) -> bool:
        return self.config.fail_policy is FailPolicy.OPEN

    def start(self) -> None:
        """Start every proxy and install the redirect chains: under fail-open empty until a
        service's proxies listen (supervise fills them), under fail-closed at once (its
        connections are refused until a proxy listens). Does not wait for the proxies, so
        the gateway is ready while they load the rules."""
        if not self.services:
            return
        for slot in self._all():
            self._spawn(slot)
        live = [self._wanted(i) for i in range(len(self.services))]
        for family in (4, 6):
            text = redirect_text(self.config, family, live)
            if text:
                run_cmd([self.backend.restore(family), "--noflush"], stdin=text)
        self._redirected = [tuple(ports) for ports in live]
        log.info("HTTPS plane: %d service(s), proxies starting", len(self.services))

    def _all(self) -> list[_Slot]:
        return [slot for slots in self.slots for slot in slots]

    def _spawn(self, slot: _Slot) -> None:
        for name in ("bound", "pid", "started"):
            slot.stats.set(name, 0)
        slot.stats.set("policy_wanted", self.policy_version)
        slot.stats.set("rules_wanted", self.rules_version)
        slot.proc = start_proxy(self.config, slot.index, slot.port, slot.stats)
        log.info("HTTPS proxy on port %d started (pid %s)", slot.port, slot.proc.pid)

    def _wanted(self, index: int) -> list[int]:
        """The ports service `index` redirects to now: the listening ones; with none, under
        fail-open none (uninspected), under fail-closed all (its connections are refused)."""
        slots = self.slots[index]
        listening = [s.port for s in slots if s.listening]
        if listening or self.fail_open:
            return listening
        return [s.port for s in slots]

    def supervise(self) -> None:
        """Restart dead proxies; keep each service's redirect in line with the fail policy."""
        now = time.monotonic()
        wc = self.config.workers
        for slot in self._all():
            if slot.alive or slot.given_up:
                continue
            if slot.died is None:
                self._record_death(slot, now)
            elif now - slot.died >= wc.restart_delay and not slot.given_up:
                slot.died = None
                self._spawn(slot)
        for i, service in enumerate(self.services):
            wanted = tuple(self._wanted(i))
            if wanted == self._redirected[i]:
                continue
            text = service_chain_text(self.prefix, i, service, wanted)
            try:
                run_cmd([self.backend.restore(service.family), "--noflush"], stdin=text)
            except VpatchError as err:
                log.error("HTTPS plane: redirect of %s not updated: %s", service.name, err)
                continue
            self._redirected[i] = wanted
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
        if any(s.listening for s in self.slots[slot.index] if s is not slot):
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
        procs = [slot.proc for slot in self._all() if slot.alive]
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
        """Per proxied service: mode, certificate, TLS settings, whether it is inspected now,
        and per proxy port its process and counters."""
        out: list[dict[str, Any]] = []
        for i, service in enumerate(self.services):
            redirected = self._redirected[i]
            slots = self.slots[i]
            listening = any(s.listening for s in slots)
            out.append(
                {
                    "service": service.name,
                    "host": service.host,
                    "port": service.port,
                    "mode": "https-proxy",
                    "certificate": self._certs[i],
                    "tls": {
                        "client_min": service.client_min.value,
                        "server_min": service.server_min.value,
                        "server_ciphers": service.server_ciphers,
                    },
                    "blocked": service.blocked.value,
                    "depth": service.depth,
                    "forwarded": service.forwarded,
                    "inspecting": listening and bool(redirected),
                    "bypassed": self.fail_open and not redirected,
                    "proxies": [_slot_status(s, s.port in (redirected or ())) for s in slots],
                    "counters": _sum(s.stats for s in slots),
                }
            )
        return out


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
