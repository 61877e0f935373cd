"""Suricata/Snort rule import and export: the subset of the Suricata 7 rule language that maps
onto vpatch rules (docs/rules.md), in both directions. docs/suricata.md lists what maps.

The package, in the order a rule goes through it:
- parse.py: rule text -> `SuricataRule` records (`parse_rules_text`, `parse_rule`), and the
  quoting both ways (`format_content`).
- convert.py: one `SuricataRule` -> a vpatch rule as plain data, or the reasons why not
  (`convert`); one handler per keyword in a dispatch table. elements.py: contents, pcres and
  byte tests, and the chains of them that become one condition each.
- importer.py: many rules -> `ImportReport` (`import_rules`), each converted rule validated in
  memory by `gateway.match.rules.build_rule`; `dump_rule` writes one as YAML.
- export.py: a loaded vpatch Rule -> one Suricata 7 rule line (`export_rule`, `export_rules`).
- compare.py: `rule_differences(a, b)`, two Rules compared by meaning (the round trip test).

What it guarantees: nothing here raises on a malformed or unconvertible rule: a line that does
not parse is a `ParseProblem` (source and line), a rule that does not convert or export says
why. Bounds: `MAX_RULE_LINE_BYTES`, `MAX_PORT_RANGE`.
"""

from __future__ import annotations

from gateway.match.suricata.compare import rule_differences
from gateway.match.suricata.convert import MAX_PORT_RANGE, Conversion, convert
from gateway.match.suricata.export import export_rule, export_rules, items_from_content_regex
from gateway.match.suricata.importer import ImportReport, dump_rule, import_rules
from gateway.match.suricata.parse import (
    MAX_RULE_LINE_BYTES,
    ParseProblem,
    SuricataOption,
    SuricataRule,
    format_content,
    parse_rule,
    parse_rules_text,
)

__all__ = [
    "MAX_PORT_RANGE",
    "MAX_RULE_LINE_BYTES",
    "Conversion",
    "ImportReport",
    "ParseProblem",
    "SuricataOption",
    "SuricataRule",
    "convert",
    "dump_rule",
    "export_rule",
    "export_rules",
    "format_content",
    "import_rules",
    "items_from_content_regex",
    "parse_rule",
    "parse_rules_text",
    "rule_differences",
]
