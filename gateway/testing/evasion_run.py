"""The evasion harness: every attack (and benign look-alike) through every technique, through the
gateway engine, judged by a model of the server's receive path (tests, benchmarks).

For one subject (a client stream with the CVEs an event must name), one technique and one
target (gateway/testing/receiver.py):
- `plan` (gateway/testing/evasion.py) gives the datagrams and the stream the server application
  must read (`intended`);
- valid: the receive model fed every datagram delivers exactly `intended` (otherwise the
  evasion does not work against that target and the case is skipped);
- through the gateway: a fresh Engine (configured as the inline queue configures it, `INLINE`)
  decides every datagram as the inline path would
  (`through_gateway`): ACCEPT/ALERT forward it, DROP does not, RESET replaces it with the reset
  the intake sends towards its destination and sends the other reset back, as
  gateway/intake/nfqueue.py does; once a decision says `final` (or `done_to_*` for a
  direction) the kernel would stop queueing, so later datagrams pass without the engine. The
  server's own datagrams always reach the model (they are what it sent);
- the rule pack as shipped; a sample of a rule off by default (`default_mode: off`: the
  heartbeat restriction, the anomaly rules) runs with that one rule on, as once assigned;
- attack: STOPPED when an event names one of the subject's CVEs (or is its rule's, for rules
  naming no CVE), or when the gateway blocked
  and the model fed what the gateway forwarded no longer delivers `intended`; else MISSED;
- benign: any event is a FALSE_POSITIVE; `broken` notes that the server did not read the whole
  stream through the gateway (the normaliser refused it), which the table counts apart.

`evaluate` runs the grid, `table` sums it per technique class, `format_table` prints it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from gateway.decode.packet import DecodeError, parse_ip
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.events.eve import Event
from gateway.flow.normalize import ChecksumMode
from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, RuleSet
from gateway.testing.corpora import NO_EXPLOIT, expected
from gateway.testing.evasion import CLASSES, Planned, Technique, plan
from gateway.testing.receiver import Receiver, Target
from gateway.testing.samples import ANY_PORT_SAMPLE_PORT
from gateway.testing.streams import StreamKey, tcp_streams
from gateway.testing.traffic import contiguous, replay_packets, tcp_session
from gateway.verdict.reset import rst_to_client, rst_to_server
from gateway.vocabulary import PROTO_TCP, Action, Direction, Mode

__all__ = [
    "GatewayRun",
    "Outcome",
    "Result",
    "Row",
    "Subject",
    "corpus_subjects",
    "evaluate",
    "format_table",
    "judge",
    "rule_subjects",
    "run_case",
    "table",
    "through_gateway",
]

HTTP_PORTS: Final = frozenset({80, 8000, 8008, 8080, 8081, 8888})
# The engine as the inline queue configures it (gateway/intake/nfqueue.py), but for the SYN
# check the kernel makes there (conntrack is not modelled: the engine must defend itself).
INLINE: Final = EngineConfig(checksums=ChecksumMode.VERIFY)
# Corpus captures whose event comes from the server side (test_evasion.py says why).
SERVER_SIDE_ONLY: Final = frozenset({"attacks/blaster-ms03-026.pcap"})


class Outcome(enum.Enum):
    INVALID = "invalid"
    STOPPED = "stopped"
    MISSED = "missed"
    CLEAN = "clean"
    FALSE_POSITIVE = "false-positive"


@dataclass(frozen=True, slots=True)
class Subject:
    """A client stream to deliver: an attack (an event must name one of `cves`, or be rule
    `sid`'s, for rules that name no CVE such as the anomaly rules) or benign."""

    name: str
    kind: str  # "attack" | "benign"
    app: str
    port: int
    to_server: bytes
    to_client: bytes = b""
    cves: frozenset[str] = frozenset()
    server: str = ""  # "iis" (IIS / HTTP.sys), "java" (Tomcat, Struts, Log4j) or "" (others)
    sid: int = 0  # the rule whose sample this is (0: a capture's exploit connection)
    assign: bool = False  # that rule is off by default: turn it on for this subject


@dataclass(frozen=True, slots=True)
class GatewayRun:
    forwarded: tuple[bytes, ...]  # what left the gateway (and what the server sent), in order
    events: tuple[Event, ...]
    blocked: bool


@dataclass(frozen=True, slots=True)
class Result:
    subject: Subject
    technique: Technique
    target: Target
    outcome: Outcome
    broken: bool = False


# ----------------------------------------------------------------------------- subjects


def _app(rule_app: str, port: int) -> str:
    return "http" if rule_app == "raw" and port in HTTP_PORTS else rule_app


_JAVA_PRODUCTS: Final = ("tomcat", "struts", "log4j")


def _server_family(rule: Rule) -> str:
    """The family of server a rule protects, for the rewrites only some families read as the
    original (evasion.py `_servers`)."""
    products = [a.product for a in rule.affected]
    if any("iis" in p or "httpapi" in p for p in products):
        return "iis"
    if any(java in p for p in products for java in _JAVA_PRODUCTS):
        return "java"
    return ""


def rule_subjects(ruleset: RuleSet) -> list[Subject]:
    """The inline TCP samples of rules that look at the client's bytes."""
    out = []
    for rule in ruleset.rules:
        if rule.protocol != "tcp" or Direction.TO_SERVER not in rule.directions:
            continue
        port = rule.ports[0] if rule.ports else ANY_PORT_SAMPLE_PORT
        family = _server_family(rule)
        for s in rule.samples:
            if s.pcap is None and s.to_server:
                out.append(
                    Subject(
                        f"rule {rule.id} line {s.line}",
                        s.kind,
                        _app(rule.app, port),
                        port,
                        s.to_server,
                        s.to_client,
                        frozenset(rule.cves),
                        family,
                        rule.id,
                        rule.default_mode is Mode.OFF,
                    )
                )
    return out


def _caught(matcher: Matcher, client: bytes, server: bytes, port: int, cves: set[str]) -> bool:
    engine = Engine(matcher.ruleset, EngineConfig(), matcher=matcher)
    try:
        events = replay_packets(engine, tcp_session(contiguous(client), server, dport=port))
    finally:
        engine.close()
    return any(set(e.cves) & cves for e in events)


_CORPUS_APPS: Final = {80: "http", 139: "smb", 445: "smb", 3389: "rdp", 443: "tls", 135: "dcerpc"}


def corpus_subjects(corpora: Path, matcher: Matcher, max_bytes: int = 1 << 17) -> list[Subject]:
    """The client stream of the connection of each attack capture that carries the exploit
    (the first whose in-order replay raises an event naming one of its CVEs), up to
    `max_bytes` long."""
    if not (corpora / "expected.tsv").is_file():
        return []
    out = []
    for rel, (kind, cves) in sorted(expected(corpora).items()):
        if kind != "attacks" or rel in NO_EXPLOIT | SERVER_SIDE_ONLY:
            continue
        path = corpora / rel
        if not path.is_file():
            continue
        streams = tcp_streams(path)
        for key, data in streams.items():
            if key.dport > key.sport and key.sport < 49152 or len(data) > max_bytes:
                continue  # a server -> client direction, or too long to be cheap
            back = streams.get(StreamKey(key.dst, key.dport, key.src, key.sport, key.index), b"")
            if _caught(matcher, data, back, key.dport, cves):
                app = _CORPUS_APPS.get(key.dport, "http" if key.dport in HTTP_PORTS else "raw")
                out.append(
                    Subject(f"corpus {rel}", "attack", app, key.dport, data, back, frozenset(cves))
                )
                break
    return out


# ----------------------------------------------------------------------------- one case


def through_gateway(engine: Engine, planned: Planned, start: float = 1.0e9) -> GatewayRun:
    """Every datagram of `planned` past the engine, as the inline path would pass it."""
    forwarded: list[bytes] = []
    events: list[Event] = []
    blocked = False
    final = False
    done = [False, False]  # the kernel stopped queueing to_server / to_client
    now = start
    for from_server, datagram in planned.packets:
        now += 0.001
        if final or done[from_server]:
            forwarded.append(datagram)
            continue
        decision = engine.process_ip(datagram, now)
        events.extend(decision.events)
        if not decision.action.blocks:
            forwarded.append(datagram)
            final = final or decision.final
            done[0] = done[0] or decision.done_to_server
            done[1] = done[1] or decision.done_to_client
            continue
        blocked = True
        if from_server:
            forwarded.append(datagram)  # the server sent it: its own state moved on
        if decision.action is Action.RESET:
            forwarded.extend(_resets(datagram, from_server))
    return GatewayRun(tuple(forwarded), tuple(events), blocked)


def _resets(datagram: bytes, from_server: bool) -> list[bytes]:
    """The intake's resets for a RESET verdict: towards the datagram's destination (in its
    place) and back to its sender."""
    try:
        pkt = parse_ip(datagram)
    except DecodeError:
        return []
    if pkt.proto != PROTO_TCP or pkt.fragment:
        return []
    return [rst_to_client(pkt) if from_server else rst_to_server(pkt)]


def _server_reads(target: Target, planned: Planned, datagrams: Iterable[bytes]) -> bytes:
    receiver = Receiver(target, planned.conn.server, planned.conn.dport)
    for datagram in datagrams:
        receiver.feed(datagram)
    return receiver.stream


def judge(subject: Subject, planned: Planned, run: GatewayRun, target: Target) -> Result:
    """One case's outcome against one target."""
    tech = planned.technique
    wanted = planned.intended
    if _server_reads(target, planned, (d for _, d in planned.packets)) != wanted:
        return Result(subject, tech, target, Outcome.INVALID)
    delivered = wanted in _server_reads(target, planned, run.forwarded)
    if subject.kind == "benign":
        outcome = Outcome.FALSE_POSITIVE if run.events else Outcome.CLEAN
        return Result(subject, tech, target, outcome, broken=not delivered)
    named = any(set(e.cves) & subject.cves or e.signature_id == subject.sid for e in run.events)
    stopped = named or (run.blocked and not delivered)
    return Result(subject, tech, target, Outcome.STOPPED if stopped else Outcome.MISSED)


def run_case(
    matcher: Matcher,
    subject: Subject,
    tech: Technique,
    targets: Sequence[Target],
    config: EngineConfig | None = None,
) -> list[Result]:
    """`tech` on `subject` through a fresh engine, judged for every target ([] if it does
    not apply)."""
    planned = plan(
        tech, subject.to_server, subject.to_client, subject.port, subject.app, subject.server
    )
    if planned is None:
        return []
    if subject.assign:
        matcher = _with_rule_on(matcher, subject.sid)
    engine = Engine(matcher.ruleset, config or INLINE, matcher=matcher)
    try:
        run = through_gateway(engine, planned)
    finally:
        engine.close()
    return [judge(subject, planned, run, target) for target in targets]


@functools.lru_cache(maxsize=16)
def _with_rule_on(matcher: Matcher, sid: int) -> Matcher:
    """`matcher`'s rules with rule `sid` in PREVENT (a rule off by default, as assigned)."""
    return Matcher(
        RuleSet(
            replace(rule, default_mode=Mode.PREVENT) if rule.id == sid else rule
            for rule in matcher.ruleset.rules
        )
    )


def evaluate(
    matcher: Matcher,
    subjects: Iterable[Subject],
    techniques: Iterable[Technique],
    targets: Sequence[Target],
    config: EngineConfig | None = None,
) -> list[Result]:
    techs = list(techniques)
    return [
        result
        for subject in subjects
        for tech in techs
        for result in run_case(matcher, subject, tech, targets, config)
    ]


# ----------------------------------------------------------------------------- the table


@dataclass(slots=True)
class Row:
    """Attack cases (per target), valid, stopped, missed; benign valid cases, false
    positives, and benign streams the gateway did not let through whole."""

    cls: str
    cases: int = 0
    valid: int = 0
    stopped: int = 0
    missed: int = 0
    benign: int = 0
    false_positives: int = 0
    broken: int = 0
    missed_by: dict[str, int] = field(default_factory=dict)

    def add(self, r: Result) -> None:
        if r.subject.kind == "benign":
            if r.outcome is not Outcome.INVALID:
                self.benign += 1
                self.false_positives += r.outcome is Outcome.FALSE_POSITIVE
                self.broken += r.broken
            return
        self.cases += 1
        if r.outcome is Outcome.INVALID:
            return
        self.valid += 1
        if r.outcome is Outcome.STOPPED:
            self.stopped += 1
        else:
            self.missed += 1
            self.missed_by[r.technique.name] = self.missed_by.get(r.technique.name, 0) + 1


def table(results: Iterable[Result]) -> list[Row]:
    rows = {cls: Row(cls) for cls in CLASSES}
    for r in results:
        rows.setdefault(r.technique.cls, Row(r.technique.cls)).add(r)
    total = Row("total")
    for row in rows.values():
        for name in ("cases", "valid", "stopped", "missed", "benign", "false_positives", "broken"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
    return [*rows.values(), total]


def format_table(rows: Sequence[Row], detail: bool = False) -> str:
    head = (
        f"{'class':<14}{'cases':>7}{'valid':>7}{'stopped':>9}{'missed':>8}"
        f"{'benign':>8}{'FP':>5}{'broken':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row.cls:<14}{row.cases:>7}{row.valid:>7}{row.stopped:>9}{row.missed:>8}"
            f"{row.benign:>8}{row.false_positives:>5}{row.broken:>8}"
        )
        if detail and row.missed_by:
            for name, n in sorted(row.missed_by.items()):
                lines.append(f"    missed {n:>4}  {name}")
    return "\n".join(lines)
