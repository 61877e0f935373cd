"""Starting an HTTPS proxy process from the supervisor, without mitmproxy in the supervisor.

What it does: `proxy_stats()` makes the shared counters of one proxy slot (they outlive its
processes); `start_proxy(config, service, port, stats)` starts a process (spawn: the parent
runs threads) whose entry loads gateway/tls/proxy.py, the module that imports mitmproxy and
serves the service, by name.

Why by name: mitmproxy is about 58 MB of memory once imported, and the supervisor only starts
and watches the proxies. Importing proxy.py here would put it in the supervisor of every
gateway, with or without HTTPS services (bench/README.md "Many flows"). gateway/tls/plane.py
imports this module, never proxy.py.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.process
import os
from typing import Final

from gateway.config import GatewayConfig
from gateway.intake.nfqueue import SINK_STATS, WorkerStats
from gateway.tls.service import TlsService

__all__ = ["PROXY_MODULE", "PROXY_STAT_NAMES", "proxy_stats", "start_proxy"]

PROXY_MODULE: Final = "gateway.tls.proxy"  # its `process_entry` serves one proxy port
PROXY_STAT_NAMES: Final = (
    "requests", "blocked", "events", "tls_refused", "header_limits", "errors", "bound", "pid",
    "started", "rules", "rules_wanted", "rules_version", "rules_errors", "policy_wanted",
    "policy_version", "policy_errors", "flows_active", *SINK_STATS,
)  # fmt: skip


def proxy_stats() -> WorkerStats:
    """The shared counters of one proxy process slot (they outlive its processes)."""
    return WorkerStats(PROXY_STAT_NAMES)


def _entry(
    config: GatewayConfig, service: TlsService, port: int, stats: WorkerStats, parent: int
) -> None:
    """The proxy process's first function: mitmproxy is imported here, in the child only."""
    importlib.import_module(PROXY_MODULE).process_entry(config, service, port, stats, parent)


def start_proxy(
    config: GatewayConfig, service: TlsService, port: int, stats: WorkerStats
) -> multiprocessing.process.BaseProcess:
    """Start a proxy process of `service` (from the configuration or the policy store)
    listening on `port` (spawn: the parent runs threads)."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_entry,
        args=(config, service, port, stats, os.getpid()),
        name=f"vpatch-tls-{port}",
    )
    proc.daemon = False
    proc.start()
    return proc
