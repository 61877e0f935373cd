"""Where a queue worker's time goes, per stage, for `vpatch bench --breakdown` (off by default).

With the environment variable VPATCH_BREAKDOWN=1 set for `vpatch run`, each worker times its
stages with `time.perf_counter_ns` accumulators (wall time, so a preempted stage counts the
time it waited) and publishes the sums in its shared counters (`bd_*_ns`, `bd_packets`, the
packets timed, `bd_run_ns`, the wall time in the receive loop, and `bd_cpu_ns`, its main
thread's CPU time, read once a second) once a second and at exit. `per_request` scales the
stages' wall times by CPU/wall so they add up to the worker's CPU on a loaded machine too.
The stages of one packet, which add up to the worker's time in the queue's receive loop:

- receive: `NetfilterQueue.run` minus the callbacks: the netlink recv() syscall,
  libnetfilter_queue's parsing and netfilterqueue's Packet object;
- decode: `Engine.process_ip` minus `Engine.process`: IP/TCP/UDP header decoding;
- flow: the rest of `Engine.process`: flow table, normaliser admission, inspection state;
- reassembly: `Normalizer.receive` (first-wins reassembly, retransmission comparison);
- match: `Matcher.scan_stream` (Hyperscan) and the engine's `AppLayer.rules` (app decoding,
  HTTP fields or the memo, field conditions; gateway/applayer.py);
- verdict: the handler minus `Engine.process_ip`, plus the write of a burst's held accept
  verdicts (gateway/intake/verdicts.py): the payload copy, the shared counters, the mark and
  the verdict's netlink write, in which the kernel re-injects the packet and forwards it
  (bridge, veth, the receiver's TCP) in the worker's own context.

Guarantees: nothing is timed and nothing is patched unless `install` is called (the worker
calls it only when VPATCH_BREAKDOWN=1); `install` changes no decision: the wrappers call the
wrapped functions with the same arguments and return their results. Matcher.scan_stream is
wrapped on the class (Matcher has slots), in the worker process only; `uninstall` restores
it. Overhead when on: about 2.5 us per packet in process (bench/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from time import perf_counter_ns, thread_time_ns
from typing import Any

from gateway.match.matcher import Matcher

ENV_FLAG = "VPATCH_BREAKDOWN"
STAGES = ("receive", "decode", "flow", "reassembly", "match", "verdict")
STAT_NAMES = ("bd_packets", "bd_run_ns", "bd_cpu_ns", *(f"bd_{stage}_ns" for stage in STAGES))


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """The breakdown is asked for (VPATCH_BREAKDOWN=1)."""
    return environ.get(ENV_FLAG, "") == "1"


class Breakdown:
    """perf_counter_ns sums of one worker's stages (one writer: the worker's main thread)."""

    def __init__(self) -> None:
        self.packets = 0
        self.run_ns = 0  # inside the receive burst (NetfilterQueue.run and the verdicts' write)
        self.handler_ns = 0  # inside the packet callback
        self.flush_ns = 0  # writing held accept verdicts after a burst (verdicts.py)
        self.process_ip_ns = 0
        self.process_ns = 0
        self.reassembly_ns = 0
        self.match_ns = 0
        self._saved_scan: Any = None
        self._cpu_start = thread_time_ns()

    # ------------------------------------------------------------------ the stages

    def stages(self) -> dict[str, int]:
        """Nanoseconds per stage (STAGES) so far."""
        return {
            "receive": max(0, self.run_ns - self.handler_ns - self.flush_ns),
            "decode": max(0, self.process_ip_ns - self.process_ns),
            "flow": max(0, self.process_ns - self.reassembly_ns - self.match_ns),
            "reassembly": self.reassembly_ns,
            "match": self.match_ns,
            "verdict": max(0, self.handler_ns - self.process_ip_ns + self.flush_ns),
        }

    def counters(self) -> dict[str, int]:
        """The shared counters' values (STAT_NAMES)."""
        out = {f"bd_{stage}_ns": ns for stage, ns in self.stages().items()}
        out["bd_packets"] = self.packets
        out["bd_run_ns"] = self.run_ns
        out["bd_cpu_ns"] = thread_time_ns() - self._cpu_start  # the main thread's CPU
        return out

    # ------------------------------------------------------------------ wrapping

    def handler(self, inner: Callable[[Any], None]) -> Callable[[Any], None]:
        """The packet callback, timed (`verdict` is what it spends outside process_ip)."""

        def timed(pkt: Any) -> None:
            start = perf_counter_ns()
            try:
                inner(pkt)
            finally:
                self.handler_ns += perf_counter_ns() - start
                self.packets += 1

        return timed

    def run(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        """NetfilterQueue.run, timed (`receive` is what it spends outside the callback)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                self.run_ns += perf_counter_ns() - start

        return timed

    def flush(self, inner: Callable[[], None]) -> Callable[[], None]:
        """The end-of-burst write of held verdicts, timed (counted as `verdict`)."""
        return self._timed(inner, "flush_ns")

    def _timed(self, inner: Callable[..., Any], attr: str) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            start = perf_counter_ns()
            try:
                return inner(*args)
            finally:
                setattr(self, attr, getattr(self, attr) + perf_counter_ns() - start)

        return timed

    def install(self, engine: Any) -> None:
        """Time the engine's stages: wrappers on this engine instance (process_ip, process,
        its app layer's rules, its normaliser's receive) and on Matcher.scan_stream
        (class-wide)."""
        engine.process_ip = self._timed(engine.process_ip, "process_ip_ns")
        engine.process = self._timed(engine.process, "process_ns")
        app = engine._app
        app.rules = self._timed(app.rules, "match_ns")
        normalizer = engine.normalizer
        normalizer.receive = self._timed(normalizer.receive, "reassembly_ns")
        if self._saved_scan is None:
            self._saved_scan = Matcher.scan_stream
            Matcher.scan_stream = self._timed(Matcher.scan_stream, "match_ns")  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Restore Matcher.scan_stream (the engine's own wrappers go with the engine)."""
        if self._saved_scan is not None:
            Matcher.scan_stream = self._saved_scan  # type: ignore[method-assign]
            self._saved_scan = None


def per_request(
    before: Mapping[str, int], after: Mapping[str, int], requests: int
) -> dict[str, float] | None:
    """CPU microseconds per request of each stage between two summed counter snapshots (None
    when nothing was timed or no request counted): each stage's wall time, scaled by the
    worker's CPU time over its wall time in the receive loop (`cpu_share`, below 1 when the
    worker was preempted: on a loaded machine a stage's wall time counts the time others ran),
    so the stages add up to the worker's CPU; `total` is their sum, `packets` the packets
    timed per request and `wall` the unscaled total."""

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    packets = delta("bd_packets")
    run = delta("bd_run_ns")
    if packets <= 0 or requests <= 0 or run <= 0:
        return None
    share = min(1.0, delta("bd_cpu_ns") / run)
    out = {stage: delta(f"bd_{stage}_ns") * share / requests / 1e3 for stage in STAGES}
    out["total"] = sum(out.values())
    out["packets"] = packets / requests
    out["wall"] = run / requests / 1e3
    out["cpu_share"] = share
    return {k: round(v, 2) for k, v in out.items()}
