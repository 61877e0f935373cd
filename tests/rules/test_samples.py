"""Every rule's own samples through the real CLI: `vpatch replay` on pcaps.

For every rule in rules/ (all authors), each inline sample is written as a constructed
connection to a pcap in tmp_path (unique client port per sample, so an event names its sample
through `src_port`/`dest_port`), and `pcap:` samples are replayed as they are. The attack
sample must raise an event of its own rule; the benign look-alike must raise no event of any
rule. Also: every rule has at least one attack and one benign sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.match.rules import Rule, Sample, default_rule_dir, load_rules
from gateway.testing.samples import sample_pcap
from gateway.vocabulary import Mode

REPO = Path(__file__).resolve().parents[2]
OFF_BY_DEFAULT = frozenset(
    r.id for r in load_rules([default_rule_dir()]).rules if r.default_mode is Mode.OFF
)
FIRST_PORT = 20000  # client ports FIRST_PORT, FIRST_PORT+1, ... one per inline sample


def replay(pcaps: list[Path]) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "replay", "--all-rules", *map(str, pcaps)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _sid(event: dict[str, object]) -> int:
    alert = event["alert"]
    assert isinstance(alert, dict)
    return int(alert["signature_id"])


def test_every_rule_declares_attack_and_benign_samples() -> None:
    missing = [
        f"{rule.path.name}:{rule.line} rule {rule.id}"
        for rule in load_rules([default_rule_dir()]).rules
        if rule.id != 9000100  # the self-test marker rule has no vulnerability to mimic
        and {s.kind for s in rule.samples} != {"attack", "benign"}
    ]
    assert not missing, missing


def test_samples_through_vpatch_replay(tmp_path: Path) -> None:
    rules = load_rules([default_rule_dir()]).rules
    inline: dict[int, tuple[Rule, Sample]] = {}
    captures: list[tuple[Rule, Sample]] = []
    pcaps: list[Path] = []
    for rule in rules:
        for sample in rule.samples:
            if sample.pcap is not None:
                captures.append((rule, sample))
                continue
            port = FIRST_PORT + len(inline)
            inline[port] = (rule, sample)
            pcaps.append(sample_pcap(rule, sample, tmp_path, sport=port))
    assert inline, "no inline samples at all"
    by_port: dict[int, set[int]] = {port: set() for port in inline}
    for event in replay(pcaps):
        for key in ("src_port", "dest_port"):
            port = event[key]
            if isinstance(port, int) and port in by_port:
                by_port[port].add(_sid(event))
    problems: list[str] = []
    for port, (rule, sample) in inline.items():
        problems += _judge(rule, sample, by_port[port])
    for rule, sample in captures:
        assert sample.pcap is not None
        problems += _judge(rule, sample, {_sid(e) for e in replay([sample.pcap])})
    print(f"\nsamples: {len(inline)} inline, {len(captures)} pcap, problems: {len(problems)}")
    assert not problems, "\n".join(problems)


def _judge(rule: Rule, sample: Sample, sids: set[int]) -> list[str]:
    # Rules off by default are judged on (--all-rules); one of them firing on another rule's
    # benign sample is what it does once assigned (the heartbeat restriction refuses every
    # heartbeat, well-formed or not), not a false positive of the pack as shipped.
    sids = {sid for sid in sids if sid == rule.id or sid not in OFF_BY_DEFAULT}
    where = f"{rule.path.name}:{sample.line} rule {rule.id} {sample.kind} ({sample.description})"
    if sample.kind == "attack" and rule.id not in sids:
        return [f"{where}: not caught, events {sorted(sids)}"]
    if sample.kind == "benign" and sids:
        return [f"{where}: false positive, events {sorted(sids)}"]
    return []
