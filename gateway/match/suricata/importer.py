"""Import many Suricata rules: convert each, drop repeated sids, and check every result with
the real rule validator, so what comes back validates.

What it does: `import_rules(rules)` converts every parsed rule (gateway/match/suricata/
convert.py) and builds each converted mapping into a Rule with `gateway.match.rules.build_rule`
(in memory, the same checks as `load_rules`); a mapping the validator refuses moves to the
skipped ones with the validator's reason (a pcre Hyperscan refuses is named as such).
`ImportReport` counts what was seen, converted and skipped, with histograms of the reasons.
`dump_rule(mapping)` is the YAML text of one converted rule.

What it guarantees: every mapping in `ImportReport.converted` passed `build_rule`, so the
YAML written from it passes `vpatch rules validate`; nothing is written to disk here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from gateway.errors import RuleError
from gateway.match.expressions import check_regex
from gateway.match.rules import build_rule
from gateway.match.suricata.convert import Conversion, convert
from gateway.match.suricata.parse import ParseProblem, SuricataRule

__all__ = ["ImportReport", "dump_rule", "import_rules"]


@dataclass
class ImportReport:
    """What an import saw, converted and skipped (each skipped rule with its reasons)."""

    total: int = 0
    disabled_seen: int = 0
    converted: list[Conversion] = field(default_factory=list)
    skipped: list[Conversion] = field(default_factory=list)
    parse_problems: list[ParseProblem] = field(default_factory=list)

    def histogram(self) -> list[tuple[str, int]]:
        """Skip reasons (keyword or construct, without the rule-specific detail) by count;
        a rule with several reasons counts once in each."""
        return _histogram(conv.reasons for conv in self.skipped)

    def warning_histogram(self) -> list[tuple[str, int]]:
        """The same for the caveats of converted rules."""
        return _histogram(conv.warnings for conv in self.converted)


def _histogram(texts: Iterable[tuple[str, ...]]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for one in texts:
        for key in {r.split(":", 1)[0] for r in one}:
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def import_rules(
    rules: Iterable[SuricataRule],
    include_disabled: bool = False,
    any_ports: tuple[int, ...] = (),
) -> ImportReport:
    """Convert every rule; each converted one is also checked by the real rule validator (so
    the YAML written from `report.converted` passes `vpatch rules validate`)."""
    report = ImportReport()
    seen: set[int] = set()
    pending: list[Conversion] = []
    for rule in rules:
        if not rule.enabled:
            report.disabled_seen += 1
            if not include_disabled:
                continue
        report.total += 1
        conv = convert(rule, any_ports)
        if conv.rule is not None and conv.sid in seen:
            conv = _refused(conv, f"sid: {conv.sid} repeated")
        if conv.rule is None:
            report.skipped.append(conv)
            continue
        assert conv.sid is not None
        seen.add(conv.sid)
        pending.append(conv)
    for conv in pending:  # validated last: the refused ones follow the unconvertible ones
        checked = _validated(conv)
        (report.skipped if checked.rule is None else report.converted).append(checked)
    return report


def _refused(conv: Conversion, reason: str) -> Conversion:
    return Conversion(conv.sid, conv.source, conv.line, None, (reason,))


def _validated(conv: Conversion) -> Conversion:
    """`conv` if its mapping builds a valid Rule, else a refusal saying why."""
    assert conv.rule is not None
    try:
        build_rule(conv.rule, conv.source, conv.line)
    except RuleError as err:
        rejected = _hyperscan_rejection(conv.rule)
        if rejected is not None:
            return _refused(conv, f"pcre rejected by Hyperscan: {rejected}")
        reason = err.problems[-1].reason if err.problems else str(err)
        return _refused(conv, f"rejected by vpatch validation: {reason}")
    return conv


def _hyperscan_rejection(rule: dict[str, Any]) -> str | None:
    """Hyperscan's complaint about the first regex condition it refuses, or None."""
    for cond in rule.get("conditions", ()):
        leaf = cond.get("not", cond)
        if "regex" in leaf:
            reason = check_regex(str(leaf["regex"]).encode("utf-8"), bool(leaf.get("nocase")))
            if reason:
                return reason
    return None


def dump_rule(rule: dict[str, Any]) -> str:
    """One converted rule mapping as the YAML text of a rule file."""
    return yaml.safe_dump(rule, sort_keys=False, allow_unicode=False, width=100)
