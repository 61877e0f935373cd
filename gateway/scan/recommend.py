"""Recommendation: match scan findings against the rules' `affected` metadata (docs/policy.md).

`affected` is a list of entries {product, versions?, features?}; an entry matches a finding when
the product ids are equal (or the finding is a generic product of that family, see
GENERIC_PRODUCTS), any of the version constraints holds (no constraint: any version;
unknown version: matches, since the scan cannot rule it out), and every listed feature was seen
present. A rule matches a host when any entry matches any finding.

Result: for each rule either ASSIGN (matches, not yet assigned), KEEP (matches, assigned) or
UNASSIGN (assigned, no longer matches), each with evidence: the probes that saw the product,
version and features, or, for UNASSIGN, why the match failed (feature tested absent, version
outside the range, product no longer seen).

Versions compare PEP 440-like: the leading dotted numbers ("9.18.49-1~deb12u3" -> 9.18.49),
padded with zeros; constraints `<`, `<=`, `==`, `!=`, `>=`, `>`, several joined by commas
meaning AND ("[">=2.4.49,<2.4.51"]").

The rule files are read with a plain YAML load (only id, title, cve and affected are used), so
recommendation works whether or not the rule loader of gateway/match/rules.py knows `affected`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import RuleError
from gateway.scan.probes import Evidence, Finding
from gateway.scan.scanner import ScanResult

MAX_AFFECTED_ENTRIES = 64  # per rule
MAX_RULE_FILE_BYTES = 1 << 20
# A service the scan recognised by protocol but whose implementation it could not name (an
# SMB server refusing SMB1 hides its NativeOS/LanMan strings) is compared against every product
# of that family: its features (smb1 refused) still decide, and retire rules with evidence.
GENERIC_PRODUCTS: dict[str, tuple[str, ...]] = {"smb": ("samba", "microsoft-windows-smb")}
_CONSTRAINT = re.compile(r"\s*(<=|>=|==|!=|<|>)?\s*([0-9][0-9A-Za-z.+~_-]*)\s*\Z")


class RecAction(enum.Enum):
    ASSIGN = "assign"
    KEEP = "keep"
    UNASSIGN = "unassign"


@dataclass(frozen=True, slots=True)
class AffectedEntry:
    product: str
    versions: tuple[str, ...] = ()
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleAffected:
    rule_id: int
    title: str
    cves: tuple[str, ...]
    affected: tuple[AffectedEntry, ...]
    path: Path


@dataclass(frozen=True, slots=True)
class Recommendation:
    rule_id: int
    title: str
    action: RecAction
    reason: str
    evidence: tuple[Evidence, ...]


def product_id(name: str) -> str:
    """A rule's product name as the probes spell product ids: lower case, words joined by
    '-' ("Apache HTTPD" -> "apache-httpd", "microsoft iis" -> "microsoft-iis")."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def version_key(text: str) -> tuple[int, ...]:
    """The leading dotted numbers of a version string, as a tuple (empty when none)."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    pa, pb = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (pa > pb) - (pa < pb)


def version_matches(version: str, constraint: str, source: str = "versions") -> bool:
    """True if version satisfies every comma-separated comparison in constraint."""
    have = version_key(version)
    for part in constraint.split(","):
        m = _CONSTRAINT.match(part)
        if not m:
            raise RuleError(
                f"{source}: version constraint {part.strip()!r} is not "
                "'<op><version>' (ops <, <=, ==, !=, >=, >)"
            )
        op, want = m.group(1) or "==", version_key(m.group(2))
        c = _cmp(have, want)
        ok = {"<": c < 0, "<=": c <= 0, "==": c == 0, "!=": c != 0, ">=": c >= 0, ">": c > 0}[op]
        if not ok:
            return False
    return True


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise RuleError(f"{where}: expected a string or a list of strings, got {value!r}")


def _parse_affected(raw: Any, where: str) -> tuple[AffectedEntry, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_AFFECTED_ENTRIES:
        raise RuleError(
            f"{where}: `affected` must be a list of at most {MAX_AFFECTED_ENTRIES} entries"
        )
    out = []
    for i, entry in enumerate(raw):
        loc = f"{where}: affected[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("product"), str):
            raise RuleError(f"{loc}: needs a `product` string, got {entry!r}")
        unknown = set(entry) - {"product", "versions", "features"}
        if unknown:
            raise RuleError(f"{loc}: unknown keys {sorted(unknown)}")
        versions = _strings(entry.get("versions"), f"{loc}.versions")
        for v in versions:
            version_matches("0", v, f"{loc}.versions")  # syntax check
        out.append(
            AffectedEntry(
                product_id(entry["product"]),
                versions,
                _strings(entry.get("features"), f"{loc}.features"),
            )
        )
    return tuple(out)


def load_affected(paths: Iterable[Path]) -> list[RuleAffected]:
    """Every rule with `affected` metadata in the given files/directories (recursive)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    out: list[RuleAffected] = []
    for file in files:
        try:
            if file.stat().st_size > MAX_RULE_FILE_BYTES:
                raise RuleError(f"{file}: larger than {MAX_RULE_FILE_BYTES} bytes")
            doc = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise RuleError(f"{file}: cannot read rule file: {err}") from err
        docs = doc["rules"] if isinstance(doc, dict) and "rules" in doc else [doc]
        for rule in docs if isinstance(docs, list) else []:
            if not isinstance(rule, dict) or "affected" not in rule:
                continue
            where = f"{file}: rule {rule.get('id')!r}"
            if not isinstance(rule.get("id"), int):
                raise RuleError(f"{where}: rule with `affected` has no integer id")
            out.append(
                RuleAffected(
                    rule["id"],
                    str(rule.get("title", "")),
                    _strings(rule.get("cve"), f"{where}.cve"),
                    _parse_affected(rule["affected"], where),
                    file,
                )
            )
    return out


def _entry_vs_finding(entry: AffectedEntry, f: Finding) -> tuple[bool, list[Evidence]]:
    """(matches, evidence): evidence supports the match, or explains the mismatch."""
    if f.product != entry.product and entry.product not in GENERIC_PRODUCTS.get(
        f.product or "", ()
    ):
        return False, []
    ev: list[Evidence] = list(f.evidence[:1])
    if entry.versions and f.version is not None:
        if not any(version_matches(f.version, c) for c in entry.versions):
            return False, ev + [
                Evidence(
                    "version",
                    f"{entry.product} {f.version} is outside {' or '.join(entry.versions)}",
                )
            ]
        ev.append(
            Evidence(
                "version", f"{entry.product} {f.version} matches {' or '.join(entry.versions)}"
            )
        )
    for feat in entry.features:
        checks = [c for c in f.features if c.feature == feat]
        present = [c for c in checks if c.present]
        if not present:
            why = checks[0].evidence if checks else Evidence("scan", f"{feat} not tested/seen")
            return False, ev + [Evidence(why.probe, f"{feat} absent: {why.saw}")]
        ev.append(present[0].evidence)
    return True, ev


def match_rule(rule: RuleAffected, findings: Iterable[Finding]) -> tuple[bool, list[Evidence]]:
    """Whether the rule applies to a host with these findings, and the evidence either way."""
    against: list[Evidence] = []
    for f in findings:
        for entry in rule.affected:
            ok, ev = _entry_vs_finding(entry, f)
            if ok:
                return True, [Evidence(e.probe, f"{f.port}/{f.transport}: {e.saw}") for e in ev]
            against.extend(Evidence(e.probe, f"{f.port}/{f.transport}: {e.saw}") for e in ev)
    if not against:
        products = ", ".join(sorted(e.product for e in rule.affected))
        against.append(Evidence("scan", f"no service identified as {products}"))
    return False, against


def recommend(
    result: ScanResult, rules: Iterable[RuleAffected], assigned: Iterable[int] = ()
) -> list[Recommendation]:
    """Rules to assign, keep and unassign for the scanned host (see module docstring)."""
    current = set(assigned)
    out: list[Recommendation] = []
    for rule in sorted(rules, key=lambda r: r.rule_id):
        ok, ev = match_rule(rule, result.findings)
        if ok:
            action = RecAction.KEEP if rule.rule_id in current else RecAction.ASSIGN
            reason = "host runs an affected product" + (
                f" ({', '.join(rule.cves)})" if rule.cves else ""
            )
        elif rule.rule_id in current:
            action, reason = RecAction.UNASSIGN, "evidence of the vulnerable product is gone"
        else:
            continue
        out.append(Recommendation(rule.rule_id, rule.title, action, reason, tuple(ev)))
    return out


def recommendation_to_dict(rec: Recommendation) -> dict[str, object]:
    return {
        "rule_id": rec.rule_id,
        "title": rec.title,
        "action": rec.action.value,
        "reason": rec.reason,
        "evidence": [{"probe": e.probe, "saw": e.saw} for e in rec.evidence],
    }
