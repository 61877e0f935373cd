"""gateway/testing/samples.py: a rule's declared samples as traffic (TCP to the rule's first
port, UDP as one request and reply, `ports: any` to ANY_SAMPLE_PORT, pcap samples as their own
file) and `sample_events`, the verdict of a whole rule set on one sample, as a rule author runs
it. (tests/rules/test_samples.py replays every sample of the pack through `vpatch replay`.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP  # type: ignore[import-untyped]

from gateway.intake.pcap import read_capture
from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, Sample, default_rule_dir, load_rules
from gateway.testing.samples import (
    ANY_PORT_SAMPLE_PORT,
    sample_events,
    sample_packets,
    sample_pcap,
)

PACK = load_rules([default_rule_dir()])


def pack_rule(rule_id: int) -> Rule:
    (rule,) = [r for r in PACK.rules if r.id == rule_id]
    return rule


def sample(rule: Rule, kind: str, pcap: bool = False) -> Sample:
    return next(s for s in rule.samples if s.kind == kind and (s.pcap is not None) == pcap)


def payload_by_direction(packets: list[bytes], server_port: int) -> tuple[bytes, bytes]:
    to_server, to_client = b"", b""
    for raw in packets:
        pkt = IP(raw)
        layer = pkt[TCP] if TCP in pkt else pkt[UDP]
        data = bytes(layer.payload)
        if layer.dport == server_port:
            to_server += data
        else:
            to_client += data
    return to_server, to_client


def test_inline_tcp_sample_is_a_connection_to_the_rules_first_port() -> None:
    rule = pack_rule(9010070)  # Heartbleed: ports 443, 465, ...
    attack = sample(rule, "attack")
    packets = sample_packets(rule, attack, sport=41234)
    assert all(TCP in IP(p) and IP(p)[TCP].sport in (41234, 443) for p in packets)
    assert str(IP(packets[0])[TCP].flags) == "S" and IP(packets[0])[TCP].dport == rule.ports[0]
    assert payload_by_direction(packets, 443) == (attack.to_server, attack.to_client)


def test_inline_udp_sample_is_one_request_and_its_reply() -> None:
    rule = pack_rule(9001020)  # Slammer: UDP 1434
    attack = sample(rule, "attack")
    packets = sample_packets(rule, attack)
    assert len(packets) == 1 and UDP in IP(packets[0]) and IP(packets[0])[UDP].dport == 1434
    assert payload_by_direction(packets, 1434) == (attack.to_server, b"")
    exchange = Sample("benign", to_server=b"\x03", to_client=b"\x05\x00\x00reply")
    packets = sample_packets(rule, exchange, sport=40200)
    assert len(packets) == 2 and payload_by_direction(packets, 1434) == (
        b"\x03",
        b"\x05\x00\x00reply",
    )
    assert (IP(packets[1])[UDP].sport, IP(packets[1])[UDP].dport) == (1434, 40200)


def test_any_port_rule_samples_go_to_the_any_port_sample_port() -> None:
    rule = replace(pack_rule(9010070), ports=())  # `ports: any`
    packets = sample_packets(rule, rule.samples[0])
    assert IP(packets[0])[TCP].dport == ANY_PORT_SAMPLE_PORT


def test_pcap_samples_are_their_own_file(tmp_path: Path) -> None:
    rule = pack_rule(9001024)
    attack = sample(rule, "attack", pcap=True)
    assert attack.pcap is not None and sample_pcap(rule, attack, tmp_path) == attack.pcap
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=rf"rule {rule.id} line {attack.line}: sample is a pcap"):
        sample_packets(rule, attack)


def test_inline_samples_are_written_as_named_pcaps(tmp_path: Path) -> None:
    rule = pack_rule(9010070)
    benign = sample(rule, "benign")
    path = sample_pcap(rule, benign, tmp_path, sport=40100)
    assert path == tmp_path / f"rule-9010070-line-{benign.line}-benign.pcap"
    assert [r.data for r in read_capture(path)] == sample_packets(rule, benign, sport=40100)


def test_sample_events_attack_fires_its_rule_benign_none() -> None:
    matcher = Matcher(PACK)
    for rule_id in (9010070, 9001020, 9001024):
        rule = pack_rule(rule_id)
        for s in rule.samples:
            ids = {e.signature_id for e in sample_events(matcher, rule, s)}
            if s.kind == "attack":
                assert rule_id in ids, (rule_id, s.line)
            else:
                assert ids == set(), (rule_id, s.line)
