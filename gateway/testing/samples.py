"""A rule's declared samples (docs/rules.md, `samples:`) as replayable traffic, and the verdict
of the rule pack on them.

Guarantees: an inline sample becomes one TCP connection (or one UDP request/reply) to the
rule's first server port, built by gateway.testing.traffic; a `pcap` sample is used as is.
`sample_events` runs an in-process Engine (fresh per sample) so a test or a rule author sees the
same events `vpatch replay` prints for the same pcap.
"""

from __future__ import annotations

from pathlib import Path

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.events.eve import Event
from gateway.intake.pcap import read_capture
from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, Sample
from gateway.testing.traffic import (
    contiguous,
    replay_packets,
    tcp_session,
    udp_exchange,
    write_pcap,
)

__all__ = ["sample_events", "sample_packets", "sample_pcap"]
ANY_PORT_SAMPLE_PORT = 8000  # the server port of inline samples of a `ports: any` rule


def sample_packets(rule: Rule, sample: Sample, sport: int = 40000) -> list[bytes]:
    """IPv4 packets of an inline sample (ValueError for a pcap sample: use its file)."""
    if sample.pcap is not None:
        raise ValueError(f"rule {rule.id} line {sample.line}: sample is a pcap ({sample.pcap})")
    port = rule.ports[0] if rule.ports else ANY_PORT_SAMPLE_PORT
    if rule.protocol == "udp":
        return udp_exchange(sample.to_server, sample.to_client, sport=sport, dport=port)
    return tcp_session(contiguous(sample.to_server), sample.to_client, sport=sport, dport=port)


def sample_pcap(rule: Rule, sample: Sample, directory: Path, sport: int = 40000) -> Path:
    """The sample's capture: its own pcap, or the inline bytes written to `directory`."""
    if sample.pcap is not None:
        return sample.pcap
    name = f"rule-{rule.id}-line-{sample.line}-{sample.kind}.pcap"
    return write_pcap(directory / name, sample_packets(rule, sample, sport))


def sample_events(matcher: Matcher, rule: Rule, sample: Sample) -> list[Event]:
    """Events of the whole rule set (compiled in `matcher`) over one sample."""
    engine = Engine(matcher.ruleset, EngineConfig(), matcher=matcher)
    try:
        if sample.pcap is None:
            return replay_packets(engine, sample_packets(rule, sample))
        events: list[Event] = []
        for record in read_capture(sample.pcap):
            decision = engine.process_frame(record.data, record.linktype, record.timestamp)
            events.extend(decision.events)
        return events
    finally:
        engine.close()
