"""One HTTPS proxy process: mitmproxy in transparent mode with the vpatch addon, for one service.

What it does: `process_entry(config, service, port, stats, parent)` is the body of a proxy
process (started by gateway/tls/launch.py `start_proxy`, which loads this module by name in the
child only, so that the supervisor never imports mitmproxy). It loads the rules and the policy
(the packet plane's loaders: gateway/intake/nfqueue.py), builds an `ExchangeJudge` around an
engine, and runs mitmproxy listening on `port` (the kernel redirects the service's connections
there, gateway/tls/redirect.py) with:
- the service's own certificate and key for every client (`certs *=...`; never a generated CA),
  clients offered `client_min` and up (default TLS 1.2 and 1.3);
- toward the server `server_min` and up with `server_ciphers` (mitmproxy lowers OpenSSL's
  security level itself below TLS 1.2), the server's certificate not verified (it is the
  protected server, often self-signed);
- `connection_strategy=lazy`: the server is contacted only for a request that passed;
- bodies over the service's `depth` streamed (`stream_large_bodies`), never held whole.
While it runs, every TICK seconds it applies a new policy or rule version the supervisor asked
for (`policy_wanted`, `rules_wanted` in its shared counters, as the queue workers do), expires
the engine's flows and publishes its counters. It dies with its parent (PR_SET_PDEATHSIG).

Guarantees: the combined PEM mitmproxy needs (certificate and key in one file) and mitmproxy's
own state directory live in a private temporary directory (mode 0700) removed on exit; the
process touches nothing else on disk but the event store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from mitmproxy import options as mitm_options
from mitmproxy.tools.dump import DumpMaster

from gateway.config import FailPolicy, GatewayConfig
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.intake.nfqueue import (
    RuleLoader,
    SinkLike,
    WorkerStats,
    apply_policy,
    build_sink,
    die_with_parent,
    publish_sink,
)
from gateway.match.rules import load_rules
from gateway.policy.appcontrol import rule_paths
from gateway.tls.addon import VpatchAddon
from gateway.tls.inspect import ExchangeJudge
from gateway.tls.service import TlsService

__all__ = ["TICK", "process_entry", "proxy_engine_config", "proxy_options"]

log = logging.getLogger("vpatch.tls")

TICK: Final = 0.2  # seconds between checks of the wanted policy/rule versions


def proxy_engine_config(config: GatewayConfig) -> EngineConfig:
    """The packet plane's engine settings for replayed exchanges: the segments are built
    whole and in order here, so the kernel-side checks count as done; protocols are
    identified by content (HTTP rules for port 80 judge HTTP on 443)."""
    return replace(
        EngineConfig.from_gateway(config),
        kernel_checked_syn=True,
        kernel_checked_tcp=True,
        identify_any_port=True,
    )


def proxy_options(service: TlsService, port: int, pem: Path, confdir: Path) -> dict[str, Any]:
    """mitmproxy's options for one service's proxy listening on `port`."""
    options: dict[str, Any] = {
        "mode": [f"transparent@{port}"],
        "confdir": str(confdir),
        "certs": [f"*={pem}"],
        "tls_version_client_min": service.client_min.value,
        "tls_version_server_min": service.server_min.value,
        "ssl_insecure": True,
        "upstream_cert": False,
        "connection_strategy": "lazy",
        "stream_large_bodies": str(max(service.depth, 1)),
    }
    if service.server_ciphers:
        options["ciphers_server"] = service.server_ciphers
    return options


def _combined_pem(service: TlsService, directory: Path) -> Path:
    pem = directory / "service.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(service.key.read_bytes().rstrip(b"\n") + b"\n")
        out.write(service.cert.read_bytes())
    return pem


async def _tick(
    addon: VpatchAddon, config: GatewayConfig, stats: WorkerStats, sink: SinkLike | None
) -> None:
    """Policy and rule versions, flow expiry and counters, every TICK seconds."""
    engine = addon.judge.engine
    loader = RuleLoader(config, stats)
    applied = stats.get("policy_wanted")
    while True:
        await asyncio.sleep(TICK)
        try:
            wanted = stats.get("policy_wanted")
            if wanted != applied:
                applied = wanted
                apply_policy(engine, config, stats, wanted)
            loader.poll(engine)
            engine.expire(time.time())
            stats.set("flows_active", engine.stats.flows_active)
            publish_sink(stats, sink)
        except Exception as err:  # noqa: BLE001 (the proxy goes on; counted)
            stats.add("errors")
            log.error("proxy housekeeping failed: %r", err)


async def _serve(config: GatewayConfig, service: TlsService, port: int, stats: WorkerStats) -> None:
    rules_loaded = stats.get("rules_wanted")
    engine = Engine(load_rules(rule_paths(config)), proxy_engine_config(config))
    apply_policy(engine, config, stats, stats.get("policy_wanted"))
    stats.set("rules", len(engine.ruleset.rules))
    stats.set("rules_version", rules_loaded)
    sink = build_sink(config, 0)
    fail_open = config.fail_policy is FailPolicy.OPEN
    addon = VpatchAddon(service, ExchangeJudge(engine), sink, stats, fail_open)
    private = Path(tempfile.mkdtemp(prefix="vpatch-tls-"))
    try:
        opts = mitm_options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        master.addons.add(addon)  # type: ignore[no-untyped-call]
        settings = proxy_options(service, port, _combined_pem(service, private), private)
        opts.update(**settings)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, master.shutdown)
        ticker = loop.create_task(_tick(addon, config, stats, sink))
        stats.set("pid", os.getpid())
        stats.set("started", int(time.time()))
        running = loop.create_task(master.run())
        await _announce_bound(running, port, stats, service)
        await running
        ticker.cancel()
    finally:
        stats.set("bound", 0)
        shutil.rmtree(private, ignore_errors=True)
        if sink is not None:
            sink.close()
            publish_sink(stats, sink)


async def _announce_bound(
    running: asyncio.Task[None], port: int, stats: WorkerStats, service: TlsService
) -> None:
    """Set `bound` once something listens on `port` (mitmproxy's server started)."""
    while not running.done():
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            stats.set("bound", 1)
            log.info("proxy for %s listening on port %d (pid %d)", service.name, port, os.getpid())
            return
        await asyncio.sleep(0.05)


def process_entry(
    config: GatewayConfig, service: TlsService, port: int, stats: WorkerStats, parent: int
) -> None:
    die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format=f"vpatch[tls {port}] %(levelname)s %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # not a line per connection
    code = 0
    try:
        asyncio.run(_serve(config, service, port, stats))
    except Exception as err:  # noqa: BLE001
        log.error("proxy on port %d failed: %r", port, err)
        code = 1
    sys.stdout.flush()
    os._exit(code)
