"""Rule files: YAML loading and validation -> Rule, RuleSet.

What it does: reads the minimal rule format of docs/architecture.md ("match/rules.py"): one rule
per YAML file (a mapping), or several rules in one file as a list under a single top-level key
`rules:` (used for one vulnerability that needs several signatures). Rule files are `*.yaml` /
`*.yml`; a directory is searched recursively, in sorted order. `build_rule(mapping, source,
line)` validates and builds one rule given in memory (the Suricata importer's way in), with
the same checks: both validate the YAML node tree, the form that carries a line for every
value; an in-memory mapping is represented as that tree by PyYAML's representer (no YAML text
is written or read), every node at the given line.

What it guarantees:
- Nothing is loaded unless every rule in every given path is valid: `load_rules` raises one
  RuleError listing every problem found, each as `file:line: reason` (line numbers come from the
  YAML node tree, `yaml.compose`), so an operator fixes all of them in one round; the error's
  `problems` hold the same as data (RuleProblem: path, line, reason).
- Unknown keys, duplicate keys, wrong types, out-of-range values, duplicate rule ids (across
  files), malformed Suricata-style content and regexes that Hyperscan refuses are all errors.
- Content strings follow Suricata's content syntax: text with `|hex bytes|` parts (e.g.
  `"|FF|SMB|32|"`), and a backslash escapes the next character (`\\|`, `\\\\`, `\\"`, `\\;`).
  Text is encoded as UTF-8. Regexes are Hyperscan/PCRE syntax over the raw bytes, encoded as
  UTF-8: write bytes as `\\xHH` inside single quotes in YAML.
- Bounds: `MAX_PATTERNS_PER_RULE`, `MAX_PATTERN_BYTES`, `MAX_RULE_FILE_BYTES`, `MAX_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.representer import SafeRepresenter

from gateway.decode import bundled  # noqa: F401 (registers the bundled app decoders)
from gateway.decode import registry as app_registry
from gateway.errors import RuleError, RuleProblem
from gateway.match.conditions import (
    RAW,
    All,
    Condition,
    Match,
    fields_of,
    parse_condition,
)
from gateway.match.expressions import check_regex
from gateway.vocabulary import PROTO_NAMES, PROTO_TCP, PROTO_UDP, Action, Direction, Mode

__all__ = [
    "ANY_PORT",
    "DIRECTIONS",
    "MAX_PATTERNS_PER_RULE",
    "MAX_PATTERN_BYTES",
    "MAX_RULES",
    "MAX_RULE_FILE_BYTES",
    "PROTOCOLS",
    "SEVERITIES",
    "Affected",
    "Pattern",
    "Rule",
    "RuleSet",
    "Sample",
    "build_rule",
    "default_rule_dir",
    "direction_text",
    "load_rules",
    "parse_content",
]

MAX_PATTERNS_PER_RULE: Final = 32  # patterns are ANDed through a per-stream bit mask
MAX_PATTERN_BYTES: Final = 8192  # one content / regex, after decoding
MAX_RULE_FILE_BYTES: Final = 1 << 20  # a rule file larger than this is refused unread
MAX_RULES: Final = 100_000  # rules in one RuleSet

SEVERITIES: Final = ("low", "medium", "high", "critical")
# How rule files spell the directions a rule inspects: one direction's label, or "both".
DIRECTIONS: Final[dict[str, frozenset[Direction]]] = {
    **{d.label: frozenset({d}) for d in Direction},
    "both": frozenset(Direction),
}
_PROTO_NUMBERS: Final = {PROTO_NAMES[p]: p for p in (PROTO_TCP, PROTO_UDP)}  # a rule's transports
PROTOCOLS: Final = tuple(_PROTO_NUMBERS)
ANY_PORT: Final = 0  # in port sets: "every port" (`ports: any`); no real service listens on 0
_ACTIONS: Final = {a.value: a for a in Action if a is not Action.ACCEPT}  # a rule's actions

_REQUIRED: Final = ("id", "title", "severity", "action", "protocol", "ports")
_OPTIONAL: Final = (
    "cve",
    "direction",
    "references",
    "description",
    "patterns",
    "conditions",
    "app",
    "default_mode",
    "affected",
    "samples",
)
_MODES: Final = {m.value: m for m in Mode}
SAMPLE_KINDS: Final = ("attack", "benign")
MAX_SAMPLES_PER_RULE: Final = 16
MAX_SAMPLE_BYTES: Final = 65536
_AFFECTED_KEYS: Final = ("product", "versions", "features")
_SAMPLE_KEYS: Final = (
    "kind",
    "to_server",
    "to_client",
    "hex_to_server",
    "hex_to_client",
    "pcap",
    "description",
)
_PATTERN_KEYS: Final = ("content", "regex", "nocase")
_CVE_RE: Final = re.compile(r"CVE-\d{4}-\d{4,}\Z")
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Pattern:
    """One condition on a direction's raw stream: a literal (`content`) or a regex."""

    kind: str  # "content" | "regex"
    expr: bytes  # content: the literal bytes; regex: the expression text (UTF-8)
    nocase: bool = False


@dataclass(frozen=True, slots=True)
class Affected:
    """What the recommendation scan matches (docs/policy.md): product, versions, features."""

    product: str
    versions: tuple[str, ...] = ()
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    """Sample traffic replayed by the test suite: an attack (must fire) or a benign
    look-alike (must not). Either inline bytes per direction, or a capture file."""

    kind: str  # "attack" | "benign"
    to_server: bytes = b""
    to_client: bytes = b""
    pcap: Path | None = None
    description: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """One virtual patch. Fires when all raw `patterns` matched in one direction's stream and,
    if it has `conditions`, one decoded record of its `app` satisfied them."""

    id: int
    title: str
    cves: tuple[str, ...]
    severity: str
    action: Action
    protocol: str  # "tcp" | "udp"
    ports: tuple[int, ...]  # server ports; () for `ports: any` (every port)
    directions: frozenset[Direction]  # the directions whose traffic the rule inspects
    patterns: tuple[Pattern, ...]
    references: tuple[str, ...]
    path: Path
    line: int = 0  # 1-based line of the rule's mapping in `path`
    description: str = ""
    app: str = "raw"  # the app protocol whose records `conditions` judge ("raw": none)
    default_mode: Mode = Mode.PREVENT
    conditions: Condition | None = None  # field conditions (raw ones are in `patterns`)
    affected: tuple[Affected, ...] = ()
    samples: tuple[Sample, ...] = ()

    @property
    def proto_number(self) -> int:
        return _PROTO_NUMBERS[self.protocol]

    @property
    def any_port(self) -> bool:
        """`ports: any`: the rule looks at every server port (identification by content)."""
        return not self.ports

    @property
    def ports_text(self) -> str:
        """The server ports as written for people and Suricata: "80,8080", or "any"."""
        return ",".join(str(p) for p in self.ports) or "any"

    @property
    def ports_json(self) -> list[int] | str:
        """The server ports in JSON output: a list of numbers, or "any"."""
        return list(self.ports) or "any"

    @property
    def direction(self) -> str:
        """The directions as rule files spell them: "to_server", "to_client" or "both"."""
        return direction_text(self.directions)

    def inspects(self, direction: Direction) -> bool:
        """True if this rule looks at the given direction."""
        return direction in self.directions


class RuleSet:
    """An immutable, validated set of rules with unique ids."""

    __slots__ = ("by_id", "rules")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: r.id))
        self.by_id: dict[int, Rule] = {r.id: r for r in self.rules}
        if len(self.by_id) != len(self.rules):
            raise RuleError("rule set: duplicate rule ids")

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def ports(self, protocol: str | int, direction: Direction) -> set[int]:
        """Server ports covered by rules of `protocol` ("tcp"/"udp" or 6/17) that inspect
        `direction`; ANY_PORT (0) among them when a `ports: any` rule does."""
        proto = _proto_name(protocol)
        out: set[int] = set()
        for rule in self.rules:
            if rule.protocol == proto and direction in rule.directions:
                out.update(rule.ports or (ANY_PORT,))
        return out


def _proto_name(protocol: str | int) -> str:
    if isinstance(protocol, int):
        for name, number in _PROTO_NUMBERS.items():
            if number == protocol:
                return name
        raise RuleError(f"rule set: protocol number {protocol} is not tcp (6) or udp (17)")
    p = protocol.lower()
    if p not in PROTOCOLS:
        raise RuleError(f"rule set: protocol {protocol!r} is not one of {PROTOCOLS}")
    return p


def direction_text(directions: frozenset[Direction]) -> str:
    """How rule files spell `directions`: one direction's label, or "both"."""
    if len(directions) == 1:
        return next(iter(directions)).label
    return "both"


def default_rule_dir() -> Path:
    """The bundled rule pack: the `rules/` directory beside the `gateway` package."""
    return Path(__file__).resolve().parent.parent.parent / "rules"


def parse_content(text: str) -> bytes:
    """Decode Suricata content syntax: text, `|hex bytes|` parts, backslash escapes.

    Raises ValueError naming the offending character and its position.
    """
    out = bytearray()
    in_hex = False
    hex_digits: list[str] = []
    hex_start = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_hex:
            if c == "|":
                if hex_digits:
                    raise ValueError(f"odd number of hex digits in |...| starting at {hex_start}")
                in_hex = False
            elif c in " \t":
                if hex_digits:
                    raise ValueError(f"hex byte split by a space at position {i}")
            elif c in _HEX_DIGITS:
                hex_digits.append(c)
                if len(hex_digits) == 2:
                    out.append(int("".join(hex_digits), 16))
                    hex_digits.clear()
            else:
                raise ValueError(f"{c!r} at position {i} is not a hex digit inside |...|")
        elif c == "|":
            in_hex = True
            hex_start = i
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError(f"trailing backslash at position {i}")
            out += text[i + 1].encode("utf-8")
            i += 1
        else:
            out += c.encode("utf-8")
        i += 1
    if in_hex:
        raise ValueError(f"|...| opened at position {hex_start} is not closed")
    return bytes(out)


class _Problems:
    """Collects problems (RuleProblem: path, line, reason) and turns them into one RuleError."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int, int, RuleProblem]] = []  # file order, line, seq, problem
        self._file_order: dict[Path, int] = {}

    def add(self, path: Path, node: Node | None, reason: str, line: int | None = None) -> None:
        if line is None:
            line = node.start_mark.line + 1 if node is not None else 0
        order = self._file_order.setdefault(path, len(self._file_order))
        self.found.append((order, line, len(self.found), RuleProblem(path, line, reason)))

    @property
    def items(self) -> list[RuleProblem]:
        """Problems in file order, then line order."""
        return [problem for *_, problem in sorted(self.found)]

    def error(self) -> RuleError:
        """One RuleError listing every problem as `file:line: reason`."""
        items = self.items
        count = len(items)
        return RuleError(
            f"{count} problem{'s' if count > 1 else ''} in rules, nothing loaded:\n  "
            + "\n  ".join(str(p) for p in items),
            items,
        )


def _rule_files(paths: Iterable[Path | str], problems: _Problems) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(x for x in p.rglob("*") if x.suffix in (".yaml", ".yml") and x.is_file())
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.add(p, None, "no such rule file or directory", line=0)
    return files


def all_rules_on(ruleset: RuleSet) -> RuleSet:
    """The same rules with every `default_mode: off` rule in PREVENT: what they do once an admin
    or the recommendation scan assigns them (`vpatch replay --all-rules`, the sample tests)."""
    return RuleSet(
        replace(rule, default_mode=Mode.PREVENT) if rule.default_mode is Mode.OFF else rule
        for rule in ruleset.rules
    )


def load_rules(paths: Iterable[Path | str]) -> RuleSet:
    """Load and validate every rule under `paths` (files or directories).

    Raises RuleError listing every problem (file:line: reason); loads nothing if any is found.
    """
    problems = _Problems()
    rules: list[Rule] = []
    first_seen: dict[int, tuple[Path, int]] = {}
    for path in _rule_files(paths, problems):
        for rule in _load_file(path, problems):
            if rule.id in first_seen:
                other, other_line = first_seen[rule.id]
                problems.add(
                    path, None, f"id {rule.id} already used at {other}:{other_line}", rule.line
                )
                continue
            first_seen[rule.id] = (rule.path, rule.line)
            rules.append(rule)
    if len(rules) > MAX_RULES:
        problems.add(Path("rule set"), None, f"{len(rules)} rules, more than {MAX_RULES}", 0)
    if problems.found:
        raise problems.error()
    return RuleSet(rules)


def build_rule(data: Mapping[str, Any], source: Path | str, line: int = 0) -> Rule:
    """Validate one rule given in memory (the mapping a rule file holds, as plain data: str,
    int, bool, lists and mappings) and build it, with exactly the checks of `load_rules`.

    `source` and `line` say where the rule came from: they become `Rule.path` and `Rule.line`
    and every problem is reported there. Raises RuleError listing every problem (its
    `problems` hold them as data).
    """
    problems = _Problems()
    try:
        node = _node_of(data, line)
    except yaml.YAMLError as err:  # an object that is not plain data
        what = ": ".join(str(a) for a in err.args) or type(err).__name__
        problems.add(Path(source), None, f"not plain data: {what}", line)
        raise problems.error() from err
    rule = _build_rule(node, Path(source), problems)
    if problems.found or rule is None:
        raise problems.error()
    return rule


def _node_of(data: Mapping[str, Any], line: int) -> Node:
    """`data` as the node tree the YAML loader validates (PyYAML's representer, in memory: no
    YAML text is written or read), every node placed at `line`."""
    representer = SafeRepresenter(default_flow_style=False, sort_keys=False)
    root: Node = representer.represent_data(data)
    mark = Mark("<memory>", 0, line - 1, 0, None, 0)
    todo = [root]
    while todo:
        node = todo.pop()
        node.start_mark = node.end_mark = mark
        if isinstance(node, SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, MappingNode):
            todo.extend(n for pair in node.value for n in pair)
    return root


def _load_file(path: Path, problems: _Problems) -> list[Rule]:
    try:
        size = path.stat().st_size
        if size > MAX_RULE_FILE_BYTES:
            problems.add(path, None, f"file is {size} bytes, over {MAX_RULE_FILE_BYTES}", 0)
            return []
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.add(path, None, f"cannot read: {err}", 0)
        return []
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problems.add(path, None, f"YAML syntax: {getattr(err, 'problem', None) or err}", line)
        return []
    finally:
        loader.dispose()
    if root is None:
        problems.add(path, None, "empty file: expected a rule mapping", 1)
        return []
    if not isinstance(root, MappingNode):
        problems.add(path, root, "expected a mapping (one rule) or `rules:` with a list")
        return []
    keys = _mapping(root, path, problems)
    if keys is None:
        return []
    if "rules" in keys:
        if len(keys) != 1:
            problems.add(path, root, "a file with `rules:` must hold nothing else at top level")
            return []
        seq = keys["rules"][1]
        if not isinstance(seq, SequenceNode) or not seq.value:
            problems.add(path, seq, "`rules` must be a non-empty list of rule mappings")
            return []
        out = []
        for item in seq.value:
            rule = _build_rule(item, path, problems)
            if rule is not None:
                out.append(rule)
        return out
    rule = _build_rule(root, path, problems)
    return [rule] if rule is not None else []


def _mapping(
    node: MappingNode, path: Path, problems: _Problems
) -> dict[str, tuple[Node, Node]] | None:
    """Key name -> (key node, value node); reports non-string and duplicate keys."""
    out: dict[str, tuple[Node, Node]] = {}
    ok = True
    for knode, vnode in node.value:
        if not isinstance(knode, ScalarNode) or knode.tag != "tag:yaml.org,2002:str":
            problems.add(path, knode, f"key {getattr(knode, 'value', knode)!r} is not a string")
            ok = False
            continue
        if knode.value in out:
            problems.add(path, knode, f"duplicate key {knode.value!r}")
            ok = False
            continue
        out[knode.value] = (knode, vnode)
    return out if ok else None


def _scalar(node: Node) -> Any:
    """Construct a plain scalar's Python value (int, str, bool, None...)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _build_rule(node: Node, path: Path, problems: _Problems) -> Rule | None:
    before = len(problems.found)
    if not isinstance(node, MappingNode):
        problems.add(path, node, "a rule must be a mapping")
        return None
    keys = _mapping(node, path, problems)
    if keys is None:
        return None
    for name, (knode, _) in keys.items():
        if name not in _REQUIRED and name not in _OPTIONAL:
            allowed = ", ".join(_REQUIRED + _OPTIONAL)
            problems.add(path, knode, f"unknown key {name!r} (allowed: {allowed})")
    for name in _REQUIRED:
        if name not in keys:
            problems.add(path, node, f"missing required key {name!r}")

    def get(name: str) -> tuple[Node, Any] | None:
        if name not in keys:
            return None
        vnode = keys[name][1]
        if isinstance(vnode, ScalarNode):
            return vnode, _scalar(vnode)
        return vnode, None

    rule_id = 0
    if (got := get("id")) is not None:
        vnode, value = got
        if type(value) is not int or not 1 <= value <= 0xFFFFFFFF:
            problems.add(path, vnode, f"id {_show(vnode)} must be an integer 1..4294967295")
        else:
            rule_id = value
    title = _string(get("title"), "title", path, problems)
    description = _string(get("description"), "description", path, problems, allow_empty=True)
    severity = _choice(get("severity"), "severity", SEVERITIES, path, problems)
    action_name = _choice(get("action"), "action", tuple(_ACTIONS), path, problems)
    protocol = _choice(get("protocol"), "protocol", PROTOCOLS, path, problems)
    direction = _choice(get("direction"), "direction", tuple(DIRECTIONS), path, problems)
    ports = _ports(keys.get("ports", (None, None))[1], path, problems)
    cves = _string_list(keys.get("cve", (None, None))[1], "cve", path, problems)
    for vnode_cve, cve in cves:
        if not _CVE_RE.match(cve):
            problems.add(path, vnode_cve, f"cve {cve!r} is not of the form CVE-YYYY-NNNN")
    refs = _string_list(keys.get("references", (None, None))[1], "references", path, problems)
    patterns = _patterns(keys.get("patterns", (None, None))[1], path, problems)
    app = _app(get("app"), protocol, path, problems)
    mode_name = _choice(get("default_mode"), "default_mode", tuple(_MODES), path, problems)
    affected = _affected(keys.get("affected", (None, None))[1], path, problems)
    samples = _samples(keys.get("samples", (None, None))[1], path, problems)
    conditions: Condition | None = None
    if "conditions" in keys and app is not None:
        raw, conditions = _conditions(keys["conditions"][1], app, path, problems)
        if len(patterns) + len(raw) > MAX_PATTERNS_PER_RULE:
            problems.add(
                path,
                keys["conditions"][1],
                f"{len(patterns) + len(raw)} raw patterns, more than {MAX_PATTERNS_PER_RULE}",
            )
        patterns.extend(raw)
    if "patterns" not in keys and "conditions" not in keys:
        problems.add(path, node, "a rule needs `conditions` (or the older `patterns`)")
    elif not patterns and conditions is None and len(problems.found) == before:
        problems.add(path, keys["conditions"][1], "conditions are empty")
    if len(problems.found) != before:
        return None
    assert title is not None and severity and action_name and protocol and app is not None
    return Rule(
        id=rule_id,
        title=title,
        cves=tuple(c for _, c in cves),
        severity=severity,
        action=_ACTIONS[action_name],
        protocol=protocol,
        ports=tuple(sorted(set(ports))),
        directions=DIRECTIONS[direction or Direction.TO_SERVER.label],
        patterns=tuple(patterns),
        references=tuple(r for _, r in refs),
        path=path,
        line=node.start_mark.line + 1,
        description=description or "",
        app=app,
        default_mode=_MODES[mode_name] if mode_name else Mode.PREVENT,
        conditions=conditions,
        affected=tuple(affected),
        samples=tuple(samples),
    )


def _app(
    got: tuple[Node, Any] | None, protocol: str | None, path: Path, problems: _Problems
) -> str | None:
    if got is None:
        return "raw"
    vnode, value = got
    known = ["raw", *(p.name for p in app_registry.protocols())]
    if value not in known:
        problems.add(path, vnode, f"app {_show(vnode)} must be one of: {', '.join(known)}")
        return None
    proto = app_registry.get(str(value))
    if (
        proto is not None
        and protocol in _PROTO_NUMBERS
        and _PROTO_NUMBERS[protocol] not in proto.transports
    ):
        problems.add(path, vnode, f"app {value!r} does not run over {protocol}")
        return None
    return str(value)


def _conditions(
    vnode: Node, app: str, path: Path, problems: _Problems
) -> tuple[list[Pattern], Condition | None]:
    """Parse `conditions`; split the top-level raw matches (-> raw stream patterns) from the
    field conditions (-> Rule.conditions)."""

    def field_kind(name: str) -> str | None:
        if app == "raw" or not name.startswith(app + "."):
            return None
        kind = app_registry.field_kind(name)
        return None if kind is None else kind.value

    def problem(node: Node | None, reason: str) -> None:
        problems.add(path, node if node is not None else vnode, reason)

    cond = parse_condition(vnode, problem, field_kind, parse_content, check_regex)
    if cond is None:
        return [], None
    members = cond.items if isinstance(cond, All) else (cond,)
    raw = [m for m in members if isinstance(m, Match) and m.field == RAW]
    rest = tuple(m for m in members if not (isinstance(m, Match) and m.field == RAW))
    patterns = [Pattern("regex", m.expr, m.nocase) for m in raw]
    if not rest:
        return patterns, None
    field_cond: Condition = rest[0] if len(rest) == 1 and not isinstance(cond, All) else All(rest)
    if RAW in fields_of(field_cond):  # parse_condition already refuses this; keep it explicit
        problems.add(path, vnode, "conditions on `raw` may only be members of the top-level `all`")
    return patterns, field_cond


def _affected(vnode: Node | None, path: Path, problems: _Problems) -> list[Affected]:
    if vnode is None:
        return []
    if not isinstance(vnode, SequenceNode):
        problems.add(path, vnode, "affected must be a list of {product, versions, features}")
        return []
    out = []
    for item in vnode.value:
        if not isinstance(item, MappingNode):
            problems.add(path, item, "an affected entry must be a mapping with `product`")
            continue
        keys = _mapping(item, path, problems)
        if keys is None:
            continue
        for name, (knode, _) in keys.items():
            if name not in _AFFECTED_KEYS:
                problems.add(
                    path,
                    knode,
                    f"unknown affected key {name!r} (allowed: product, versions, features)",
                )
        pnode = keys.get("product", (None, None))[1]
        product = _scalar(pnode) if isinstance(pnode, ScalarNode) else None
        if not isinstance(product, str) or not product:
            problems.add(
                path, pnode if pnode is not None else item, "affected entry needs a product name"
            )
            continue
        versions = _string_list(keys.get("versions", (None, None))[1], "versions", path, problems)
        features = _string_list(keys.get("features", (None, None))[1], "features", path, problems)
        out.append(Affected(product, tuple(v for _, v in versions), tuple(f for _, f in features)))
    return out


def _samples(vnode: Node | None, path: Path, problems: _Problems) -> list[Sample]:
    if vnode is None:
        return []
    if not isinstance(vnode, SequenceNode):
        problems.add(path, vnode, "samples must be a list of {kind, to_server, to_client | pcap}")
        return []
    if len(vnode.value) > MAX_SAMPLES_PER_RULE:
        problems.add(path, vnode, f"{len(vnode.value)} samples, more than {MAX_SAMPLES_PER_RULE}")
        return []
    out = []
    for item in vnode.value:
        if not isinstance(item, MappingNode):
            problems.add(path, item, "a sample must be a mapping")
            continue
        keys = _mapping(item, path, problems)
        if keys is None:
            continue
        ok = True
        for name, (knode, _) in keys.items():
            if name not in _SAMPLE_KEYS:
                problems.add(
                    path, knode, f"unknown sample key {name!r} (allowed: {', '.join(_SAMPLE_KEYS)})"
                )
                ok = False
        kind_node = keys.get("kind", (None, None))[1]
        kind = _scalar(kind_node) if isinstance(kind_node, ScalarNode) else None
        if kind not in SAMPLE_KINDS:
            problems.add(
                path,
                kind_node if kind_node is not None else item,
                f"sample kind must be one of: {', '.join(SAMPLE_KINDS)}",
            )
            ok = False
        data = [b"", b""]  # indexed by Direction
        for d in Direction:
            for key, is_hex in ((d.label, False), ("hex_" + d.label, True)):
                if key not in keys:
                    continue
                dnode = keys[key][1]
                text = _scalar(dnode) if isinstance(dnode, ScalarNode) else None
                if not isinstance(text, str):
                    problems.add(path, dnode, f"sample {key} must be a string")
                    ok = False
                    continue
                try:
                    value = bytes.fromhex(text) if is_hex else parse_content(text)
                except ValueError as err:
                    problems.add(path, dnode, f"sample {key}: {err}")
                    ok = False
                    continue
                if len(value) > MAX_SAMPLE_BYTES:
                    problems.add(
                        path, dnode, f"sample {key} is {len(value)} bytes, over {MAX_SAMPLE_BYTES}"
                    )
                    ok = False
                data[d] += value
        pcap: Path | None = None
        if "pcap" in keys:
            pnode = keys["pcap"][1]
            ptext = _scalar(pnode) if isinstance(pnode, ScalarNode) else None
            candidate = default_rule_dir().parent / "tests" / "data" / "rules" / str(ptext)
            if (
                not isinstance(ptext, str)
                or ".." in ptext
                or ptext.startswith("/")
                or not candidate.is_file()
            ):
                problems.add(
                    path, pnode, f"sample pcap {_show(pnode)} is not a file under tests/data/rules/"
                )
                ok = False
            else:
                pcap = candidate
        if ok and not (any(data) or pcap):
            problems.add(path, item, "a sample needs to_server/to_client bytes or a pcap")
            ok = False
        descr = _scalar(keys["description"][1]) if "description" in keys else ""
        if ok:
            out.append(
                Sample(
                    str(kind),
                    data[Direction.TO_SERVER],
                    data[Direction.TO_CLIENT],
                    pcap,
                    str(descr or ""),
                    item.start_mark.line + 1,
                )
            )
    return out


def _show(node: Node) -> str:
    return repr(node.value) if isinstance(node, ScalarNode) else f"<{type(node).__name__}>"


def _string(
    got: tuple[Node, Any] | None,
    key: str,
    path: Path,
    problems: _Problems,
    allow_empty: bool = False,
) -> str | None:
    if got is None:
        return None
    vnode, value = got
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        problems.add(path, vnode, f"{key} {_show(vnode)} must be a non-empty string")
        return None
    return value


def _choice(
    got: tuple[Node, Any] | None,
    key: str,
    choices: tuple[str, ...],
    path: Path,
    problems: _Problems,
) -> str | None:
    if got is None:
        return None
    vnode, value = got
    if value not in choices:
        problems.add(path, vnode, f"{key} {_show(vnode)} must be one of: {', '.join(choices)}")
        return None
    return str(value)


def _ports(vnode: Node | None, path: Path, problems: _Problems) -> list[int]:
    """The `ports` list; [] for `ports: any`."""
    if vnode is None:
        return []
    if isinstance(vnode, ScalarNode) and vnode.value == "any":
        return []
    if not isinstance(vnode, SequenceNode) or not vnode.value:
        problems.add(path, vnode, "ports must be `any` or a non-empty list of port numbers")
        return []
    out = []
    for item in vnode.value:
        value = _scalar(item) if isinstance(item, ScalarNode) else None
        if type(value) is not int or not 1 <= value <= 65535:
            problems.add(path, item, f"port {_show(item)} must be an integer 1..65535")
        else:
            out.append(value)
    return out


def _string_list(
    vnode: Node | None, key: str, path: Path, problems: _Problems
) -> list[tuple[Node, str]]:
    if vnode is None:
        return []
    if not isinstance(vnode, SequenceNode):
        problems.add(path, vnode, f"{key} must be a list of strings")
        return []
    out = []
    for item in vnode.value:
        value = _scalar(item) if isinstance(item, ScalarNode) else None
        if not isinstance(value, str) or not value:
            problems.add(path, item, f"{key} entry {_show(item)} must be a non-empty string")
        else:
            out.append((item, value))
    return out


def _patterns(vnode: Node | None, path: Path, problems: _Problems) -> list[Pattern]:
    if vnode is None:
        return []
    if not isinstance(vnode, SequenceNode) or not vnode.value:
        problems.add(path, vnode, "patterns must be a non-empty list of {content|regex, nocase}")
        return []
    if len(vnode.value) > MAX_PATTERNS_PER_RULE:
        problems.add(path, vnode, f"{len(vnode.value)} patterns, more than {MAX_PATTERNS_PER_RULE}")
        return []
    out = []
    for item in vnode.value:
        pattern = _pattern(item, path, problems)
        if pattern is not None:
            out.append(pattern)
    return out


def _pattern(node: Node, path: Path, problems: _Problems) -> Pattern | None:
    if not isinstance(node, MappingNode):
        problems.add(path, node, "a pattern must be a mapping with `content` or `regex`")
        return None
    keys = _mapping(node, path, problems)
    if keys is None:
        return None
    bad = False
    for name, (knode, _) in keys.items():
        if name not in _PATTERN_KEYS:
            problems.add(
                path, knode, f"unknown pattern key {name!r} (allowed: content, regex, nocase)"
            )
            bad = True
    kinds = [k for k in ("content", "regex") if k in keys]
    if len(kinds) != 1:
        problems.add(path, node, "a pattern needs exactly one of `content` or `regex`")
        return None
    nocase = False
    if "nocase" in keys:
        nnode = keys["nocase"][1]
        value = _scalar(nnode) if isinstance(nnode, ScalarNode) else None
        if not isinstance(value, bool):
            problems.add(path, nnode, f"nocase {_show(nnode)} must be true or false")
            bad = True
        else:
            nocase = value
    kind = kinds[0]
    vnode = keys[kind][1]
    text = _scalar(vnode) if isinstance(vnode, ScalarNode) else None
    if not isinstance(text, str) or not text:
        problems.add(path, vnode, f"{kind} {_show(vnode)} must be a non-empty string")
        return None
    if kind == "content":
        try:
            expr = parse_content(text)
        except ValueError as err:
            problems.add(path, vnode, f"content {text!r}: {err}")
            return None
        if not expr:
            problems.add(path, vnode, f"content {text!r} is empty")
            return None
    else:
        expr = text.encode("utf-8")
        reason = check_regex(expr, nocase)
        if reason:
            problems.add(path, vnode, f"regex {text!r} rejected by Hyperscan: {reason}")
            return None
    if len(expr) > MAX_PATTERN_BYTES:
        problems.add(path, vnode, f"{kind} is {len(expr)} bytes, over {MAX_PATTERN_BYTES}")
        return None
    if bad:
        return None
    return Pattern(kind=kind, expr=expr, nocase=nocase)
