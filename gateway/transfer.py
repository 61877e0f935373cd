"""Export and import of the policy: groups, hosts (with their host-mode settings), rule
assignments, firewall rules and policy exceptions, as one JSON document or as CSV (one file per
section) (issue 13 point 6, the "computer tree export"; docs/policy.md "Export and import").

Rows refer to each other by natural keys, never by database ids: a group by its name, a host by
its address, so a document moves between gateways. Sections and their fields: SECTIONS (the CSV
header of each section's file, in this order; list fields are joined with LIST_SEP in CSV).

What it guarantees:
- `export_policy(store)` reads everything in one read transaction (a consistent snapshot);
  `import_policy(store, doc, actor, replace)` validates every row of every section first
  (addresses, names, modes, scopes and references, firewall fields through gateway/firewall/
  policy.py `validate_rule`, endpoints and tuples through gateway/lifecycle/state.py, URIs
  through gateway/policy/exceptions.py), and only then applies all of it in one transaction of
  the policy store, with one audit row (`policy.import`, counts before/after). A bad row raises
  TransferError naming the section, the row (1-based; in CSV the line of the file) and the
  field, and nothing is written.
- Merge (default): groups and hosts are created or updated by name/address, assignments by
  (rule, scope, target); a firewall rule or an exception identical to one already stored is not
  added twice. Replace (`replace=True`): the five sections are emptied first (a host's learned
  tuples and scan results go with it), in the same transaction.
- Round trip: importing an export into an empty store and exporting again gives the same
  document (apart from `exported_at`).
- CSV cells that a spreadsheet would evaluate (leading = + - @) are written with a leading `'`
  and read back without it (OWASP CSV injection).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from gateway.database import Db
from gateway.errors import VpatchError
from gateway.firewall.policy import MAX_RULES, FirewallRuleError, validate_rule
from gateway.lifecycle.state import (
    Endpoint,
    HostMode,
    HostPolicy,
    LifecycleError,
    LifecycleStore,
    LockdownAction,
    parse_tuple,
)
from gateway.policy.appcontrol import parse_control
from gateway.policy.exceptions import MAX_URI_LEN, stored_uri_scope
from gateway.policy.hosts import check_address
from gateway.policy.store import (
    MAX_LIST,
    MAX_NAME_LEN,
    MAX_REASON_LEN,
    MODES,
    SCOPES,
    SOURCES,
    Store,
    StoreError,
)

__all__ = [
    "FORMAT",
    "LIST_SEP",
    "SECTIONS",
    "ImportResult",
    "TransferError",
    "check_policy",
    "export_policy",
    "import_policy",
    "merge_csv",
    "parse_csv",
    "to_csv",
]

FORMAT: Final = "vpatch-policy"
VERSION: Final = 1
LIST_SEP: Final = ";"
MAX_ROWS: Final = MAX_LIST  # rows per section an import accepts
SECTIONS: Final[dict[str, tuple[str, ...]]] = {
    "groups": ("name", "description"),
    "hosts": ("address", "name", "group", "mode", "auto_apply", "lockdown_action",
              "setup_exceptions", "update_sources", "scan_rules", "learned", "app_controls"),
    "assignments": ("rule_id", "scope", "target", "mode", "source", "reason"),
    "firewall_rules": ("position", "scope", "target", "direction", "address", "protocol",
                       "port_from", "port_to", "mac", "action", "comment", "enabled"),
    "exceptions": ("rule_id", "host", "port", "uri", "reason", "expires_at", "created_by"),
}  # fmt: skip
_LISTS: Final = frozenset({"setup_exceptions", "update_sources", "scan_rules", "learned",
                           "app_controls"})  # fmt: skip
_FORMULA: Final = ("=", "+", "-", "@")


class TransferError(VpatchError):
    """An import was refused: `section`, `row` (1-based; the file line for CSV) and `field`
    name the offending value; nothing was written."""

    def __init__(self, section: str, row: int, field: str, message: str) -> None:
        where = f"{section} row {row}" + (f", field {field}" if field else "")
        super().__init__(f"{where}: {message}")
        self.section = section
        self.row = row
        self.field = field


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did, per section: rows added or updated, and rows already present."""

    written: dict[str, int]
    unchanged: dict[str, int]
    replaced: bool


# -- export -------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _targets(db: Db) -> tuple[dict[int, str], dict[int, str]]:
    hosts = {int(r[0]): str(r[1]) for r in db.execute("SELECT id, address FROM hosts")}
    groups = {int(r[0]): str(r[1]) for r in db.execute("SELECT id, name FROM groups")}
    return hosts, groups


def _target(scope: str, scope_id: int | None, hosts: dict[int, str], groups: dict[int, str]) -> str:
    if scope == "host":
        return hosts.get(scope_id or 0, "")
    if scope == "group":
        return groups.get(scope_id or 0, "")
    return ""


def _export_hosts(store: Store, groups: dict[int, str]) -> list[dict[str, Any]]:
    lifecycle = LifecycleStore(store.path)
    out = []
    for r in store.db.execute("SELECT * FROM hosts ORDER BY address LIMIT ?", (MAX_LIST,)):
        p = lifecycle.load_in(store, str(r["address"]))
        out.append({
            "address": p.address, "name": r["name"], "group": groups.get(r["group_id"] or 0, ""),
            "mode": p.mode.value, "auto_apply": p.auto_apply,
            "lockdown_action": p.lockdown_action.value,
            "setup_exceptions": [str(e) for e in p.exceptions],
            "update_sources": [str(e) for e in p.update_sources],
            "scan_rules": list(p.assigned), "learned": [str(t) for t in p.learned],
            "app_controls": list(p.app_controls),
        })  # fmt: skip
    return out


def export_policy(store: Store) -> dict[str, Any]:
    """The whole policy as one JSON-serialisable document (see the module comment)."""
    db = store.db
    db.execute("BEGIN")
    try:
        hosts, groups = _targets(db)
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION,
                               "exported_at": _iso(time.time())}  # fmt: skip
        doc["groups"] = [
            {"name": r["name"], "description": r["description"]}
            for r in db.execute("SELECT * FROM groups ORDER BY name LIMIT ?", (MAX_LIST,))
        ]
        doc["hosts"] = _export_hosts(store, groups)
        doc["assignments"] = [
            {"rule_id": r["rule_id"], "scope": r["scope"],
             "target": _target(r["scope"], r["scope_id"], hosts, groups), "mode": r["mode"],
             "source": r["source"], "reason": r["reason"]}
            for r in db.execute("SELECT * FROM assignments ORDER BY rule_id, scope, scope_id")
        ]  # fmt: skip
        doc["firewall_rules"] = [
            {"position": r["position"], "scope": r["scope"],
             "target": _target(r["scope"], r["scope_id"], hosts, groups),
             "direction": r["direction"], "address": r["address"], "protocol": r["protocol"],
             "port_from": r["port_from"], "port_to": r["port_to"], "mac": r["mac"],
             "action": r["action"], "comment": r["comment"], "enabled": bool(r["enabled"])}
            for r in db.execute("SELECT * FROM firewall_rules ORDER BY position, id")
        ]  # fmt: skip
        doc["exceptions"] = [
            {"rule_id": r["rule_id"], "host": r["host"], "port": r["port"], "uri": r["uri"],
             "reason": r["reason"], "expires_at": _iso(r["expires_at"]),
             "created_by": r["created_by"]}
            for r in db.execute("SELECT * FROM exceptions ORDER BY id LIMIT ?", (MAX_LIST,))
        ]  # fmt: skip
    finally:
        db.execute("COMMIT")
    return doc


# -- CSV ----------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return LIST_SEP.join(str(v) for v in value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def to_csv(doc: dict[str, Any], section: str) -> str:
    """One section of an exported document as CSV text (header: SECTIONS[section])."""
    columns = SECTIONS[section]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in doc.get(section, []):
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


def parse_csv(text: str, name: str = "CSV") -> tuple[str, list[dict[str, Any]]]:
    """(section, rows) of a CSV file written by `to_csv`: the section is the one whose header
    the first line is; each row has `_line` (the file line) for error messages."""
    reader = csv.reader(io.StringIO(text))
    header = tuple(next(reader, ()))
    section = next((s for s, cols in SECTIONS.items() if cols == header), None)
    if section is None:
        raise TransferError(name, 1, "", f"header {','.join(header)[:200]!r} is not the header "
                            "of a section (" + ", ".join(SECTIONS) + ")")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise TransferError(section, line, "", f"{len(cells)} cells, expected {len(header)}")
        row: dict[str, Any] = {"_line": line}
        for col, cell in zip(header, cells, strict=True):
            if cell.startswith("'") and cell[1:].startswith(_FORMULA):
                cell = cell[1:]
            if col in _LISTS:
                row[col] = [v.strip() for v in cell.split(LIST_SEP) if v.strip()]
            else:
                row[col] = None if cell == "" else cell
        rows.append(row)
    return section, rows


# -- validation ---------------------------------------------------------------------------------


class _Row:
    """One row being validated: typed getters raising TransferError that name it."""

    def __init__(self, section: str, number: int, data: Any) -> None:
        self.section = section
        self.number = int(data.get("_line", number)) if isinstance(data, dict) else number
        if not isinstance(data, dict):
            self.fail("", "must be an object")
        self.data: dict[str, Any] = data

    def fail(self, field: str, message: str) -> Any:
        raise TransferError(self.section, self.number, field, message)

    def text(self, field: str, max_len: int, required: bool = False) -> str:
        v = self.data.get(field)
        v = "" if v is None else v
        if not isinstance(v, str):
            self.fail(field, f"{v!r} must be text")
        if required and not v.strip():
            self.fail(field, "required")
        if len(v) > max_len:
            self.fail(field, f"longer than {max_len} characters")
        return str(v)

    def choice(self, field: str, choices: Iterable[str], default: str | None = None) -> str:
        v = self.data.get(field)
        v = default if v is None or v == "" else v
        allowed = tuple(choices)
        if v not in allowed:
            self.fail(field, f"{v!r} must be one of {', '.join(allowed)}")
        return str(v)

    def integer(self, field: str, lo: int, hi: int, required: bool = True) -> int | None:
        v = self.data.get(field)
        if v is None or v == "":
            return self.fail(field, "required") if required else None
        if isinstance(v, bool):
            self.fail(field, f"{v!r} is not a number")
        try:
            n = int(str(v).strip())
        except ValueError:
            self.fail(field, f"{v!r} is not a number")
        if not lo <= n <= hi:
            self.fail(field, f"{n} is out of range {lo}..{hi}")
        return n

    def flag(self, field: str) -> bool:
        v = self.data.get(field)
        if v is None or v == "" or isinstance(v, bool):
            return bool(v)
        if str(v).lower() in ("true", "1", "yes", "on"):
            return True
        if str(v).lower() in ("false", "0", "no", "off"):
            return False
        return bool(self.fail(field, f"{v!r} must be true or false"))

    def items(self, field: str) -> list[str]:
        v = self.data.get(field) or []
        if not isinstance(v, list) or not all(isinstance(x, (str, int)) for x in v):
            self.fail(field, "must be a list of texts")
        return [str(x) for x in v]

    def guard(self, field: str, check: Callable[..., Any], *args: Any) -> Any:
        """check(*args), with a VpatchError it raises turned into this row's error on `field`."""
        try:
            return check(*args)
        except FirewallRuleError as err:
            return self.fail(err.field, str(err).partition(": ")[2])
        except (StoreError, LifecycleError, VpatchError) as err:
            return self.fail(field, str(err))


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated document: what the transaction writes."""

    groups: list[tuple[str, str]]
    hosts: list[tuple[HostPolicy, str, str]]  # policy, name, group name
    assignments: list[tuple[int, str, str, str, str, str]]
    firewall: list[dict[str, Any]]  # validate_rule values + "target"
    exceptions: list[tuple[Any, ...]]


def _section(doc: dict[str, Any], name: str) -> list[Any]:
    rows = doc.get(name, [])
    if not isinstance(rows, list):
        raise TransferError(name, 0, "", "must be a list of rows")
    if len(rows) > MAX_ROWS:
        raise TransferError(name, MAX_ROWS + 1, "", f"more than {MAX_ROWS} rows")
    return rows


def _plan_groups(doc: dict[str, Any]) -> list[tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for i, data in enumerate(_section(doc, "groups"), 1):
        row = _Row("groups", i, data)
        name = row.text("name", MAX_NAME_LEN, required=True).strip()
        if name in out:
            row.fail("name", f"{name!r} appears twice")
        out[name] = (name, row.text("description", MAX_REASON_LEN))
    return list(out.values())


def _plan_host(row: _Row, groups: set[str]) -> tuple[HostPolicy, str, str]:
    address = row.guard("address", lambda: check_address(row.text("address", 64, True)))
    group = row.text("group", MAX_NAME_LEN).strip()
    if group and group not in groups:
        row.fail("group", f"{group!r} is neither in the groups section nor stored")
    where = f"host {address}"
    policy = HostPolicy(
        address=address,
        mode=HostMode(row.choice("mode", [m.value for m in HostMode], "normal")),
        auto_apply=row.flag("auto_apply"),
        exceptions=tuple(row.guard("setup_exceptions", lambda: [
            Endpoint.parse(e, f"{where} setup_exceptions") for e in row.items("setup_exceptions")
        ])),
        update_sources=tuple(row.guard("update_sources", lambda: [
            Endpoint.parse(e, f"{where} update_sources", names=True)
            for e in row.items("update_sources")
        ])),
        lockdown_action=LockdownAction(
            row.choice("lockdown_action", [a.value for a in LockdownAction], "drop")),
        assigned=tuple(sorted({
            row.guard("scan_rules", _rule_id, v) for v in row.items("scan_rules")})),
        learned=tuple(sorted(set(row.guard("learned", lambda: [
            parse_tuple(t, f"{where} learned") for t in row.items("learned")])))),
        app_controls=tuple(row.guard("app_controls", lambda: [
            _control(c, f"{where} app_controls") for c in row.items("app_controls")])),
    )  # fmt: skip
    row.guard("setup_exceptions", lambda: LifecycleStore.check_limits(policy))
    return policy, row.text("name", MAX_NAME_LEN), group


def _control(text: str, source: str) -> str:
    parse_control(text, source)
    return text.strip()


def _rule_id(value: object) -> int:
    try:
        n = int(str(value).strip())
    except ValueError as err:
        raise StoreError(f"rule id {value!r} is not a number") from err
    if not 0 < n < 2**62:
        raise StoreError(f"rule id {n} is out of range")
    return n


def _plan_targets(row: _Row, scope: str, hosts: set[str], groups: set[str]) -> str:
    target = row.text("target", MAX_NAME_LEN).strip()
    if scope == "global":
        if target:
            row.fail("target", f"{target!r}: a global row names no target")
        return ""
    if scope == "host":
        target = row.guard("target", lambda: check_address(target or "?"))
        if target not in hosts:
            row.fail("target", f"host {target!r} is neither in the hosts section nor stored")
    elif target not in groups:
        row.fail("target", f"group {target!r} is neither in the groups section nor stored")
    return target


def _plan(doc: dict[str, Any], store: Store, replace_all: bool) -> _Plan:
    if not isinstance(doc, dict):
        raise TransferError("document", 0, "", "must be a JSON object")
    if doc.get("format", FORMAT) != FORMAT or doc.get("version", VERSION) != VERSION:
        raise TransferError("document", 0, "format", f"expected {FORMAT} version {VERSION}")
    unknown = set(doc) - set(SECTIONS) - {"format", "version", "exported_at"}
    if unknown:
        raise TransferError("document", 0, sorted(unknown)[0], "not a section")
    stored_hosts, stored_groups = (set(), set()) if replace_all else (
        {str(r[0]) for r in store.db.execute("SELECT address FROM hosts")},
        {str(r[0]) for r in store.db.execute("SELECT name FROM groups")},
    )  # fmt: skip
    groups = _plan_groups(doc)
    group_names = stored_groups | {g for g, _ in groups}
    hosts: dict[str, tuple[HostPolicy, str, str]] = {}
    for i, data in enumerate(_section(doc, "hosts"), 1):
        row = _Row("hosts", i, data)
        planned = _plan_host(row, group_names)
        if planned[0].address in hosts:
            row.fail("address", f"{planned[0].address!r} appears twice")
        hosts[planned[0].address] = planned
    host_names = stored_hosts | set(hosts)
    assignments: dict[tuple[int, str, str], tuple[int, str, str, str, str, str]] = {}
    for i, data in enumerate(_section(doc, "assignments"), 1):
        row = _Row("assignments", i, data)
        rule_id = int(row.guard("rule_id", _rule_id, row.data.get("rule_id")))
        scope = row.choice("scope", SCOPES)
        target = _plan_targets(row, scope, host_names, group_names)
        if (rule_id, scope, target) in assignments:
            row.fail("rule_id", f"rule {rule_id} for {scope} {target!r} appears twice")
        assignments[(rule_id, scope, target)] = (
            rule_id, scope, target, row.choice("mode", MODES),
            row.choice("source", SOURCES, "admin"), row.text("reason", MAX_REASON_LEN),
        )  # fmt: skip
    return _Plan(groups, list(hosts.values()), list(assignments.values()),
                 _plan_firewall(doc, host_names, group_names),
                 _plan_exceptions(doc))  # fmt: skip


def _plan_firewall(doc: dict[str, Any], hosts: set[str], groups: set[str]) -> list[dict[str, Any]]:
    rows = _section(doc, "firewall_rules")
    if len(rows) > MAX_RULES:
        raise TransferError("firewall_rules", MAX_RULES + 1, "", f"more than {MAX_RULES} rules")
    out = []
    for i, data in enumerate(rows, 1):
        row = _Row("firewall_rules", i, data)
        scope = row.choice("scope", ("global", "host", "group"), "global")
        target = _plan_targets(row, scope, hosts, groups)
        fields = {**row.data, "scope": scope, "scope_id": None if scope == "global" else 0}
        values = row.guard("", validate_rule, fields)
        if values["position"] is None:
            row.fail("position", "required")
        out.append({**values, "target": target})
    return out


def _timestamp(row: _Row, text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (UTC unless it names an offset)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return float(row.fail("expires_at", f"{text!r} is not an ISO 8601 time"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _plan_exceptions(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    out = []
    for i, data in enumerate(_section(doc, "exceptions"), 1):
        row = _Row("exceptions", i, data)
        rule_id = row.integer("rule_id", 1, 2**62, required=False)
        host = row.guard("host", check_address, row.text("host", 64, True))
        port = row.integer("port", 1, 65535, required=False)
        uri = row.text("uri", MAX_URI_LEN) or None
        if uri is not None and row.guard("uri", stored_uri_scope, uri).stored != uri:
            row.fail("uri", f"{uri[:80]!r} is not a URI scope as vpatch stores it")
        reason = row.text("reason", MAX_REASON_LEN, required=True).strip()
        expires = row.text("expires_at", 64).strip()
        expires_at = _timestamp(row, expires) if expires else None
        created_by = row.text("created_by", MAX_NAME_LEN) or "import"
        out.append((rule_id, host, port, uri, reason, expires_at, created_by))
    return out


# -- apply --------------------------------------------------------------------------------------

_REPLACED: Final = ("firewall_rules", "assignments", "exceptions", "hosts", "groups")


def _counts(db: Db) -> dict[str, int]:
    return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in _REPLACED}


def _apply_groups_hosts(store: Store, plan: _Plan, now: float, n: dict[str, list[int]]) -> None:
    db = store.db
    for name, description in plan.groups:
        row = db.execute("SELECT description FROM groups WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] == description:
            n["groups"][1] += 1
            continue
        db.execute(
            "INSERT INTO groups(name, description) VALUES (?, ?) ON CONFLICT(name) "
            "DO UPDATE SET description = excluded.description",
            (name, description),
        )
        n["groups"][0] += 1
    groups = {str(r[1]): int(r[0]) for r in db.execute("SELECT id, name FROM groups")}
    lifecycle = LifecycleStore(store.path)
    for policy, name, group in plan.hosts:
        before = db.execute("SELECT name, group_id FROM hosts WHERE address = ?",
                            (policy.address,)).fetchone()  # fmt: skip
        old = lifecycle.load_in(store, policy.address)
        group_id = groups[group] if group else None
        if before is not None and replace(old, updated_at=0) == policy and (
            before[0], before[1]) == (name, group_id):  # fmt: skip
            n["hosts"][1] += 1
            continue
        host_id = lifecycle.write_in(store, replace(policy, updated_at=now), now)
        db.execute(
            "UPDATE hosts SET name = ?, group_id = ? WHERE id = ?", (name, group_id, host_id)
        )
        n["hosts"][0] += 1


def _apply_rest(store: Store, plan: _Plan, actor: str, now: float, n: dict[str, list[int]]) -> None:
    db = store.db
    hosts, groups = _targets(db)
    ids = {("host", a): i for i, a in hosts.items()} | {("group", g): i for i, g in groups.items()}
    for rule_id, scope, target, mode, source, reason in plan.assignments:
        scope_id = ids.get((scope, target))
        old = db.execute(
            "SELECT mode, source, reason FROM assignments WHERE rule_id = ? AND "
            "scope = ? AND scope_id IS ?",
            (rule_id, scope, scope_id),
        ).fetchone()
        if old is not None and tuple(old) == (mode, source, reason):
            n["assignments"][1] += 1
            continue
        db.execute(
            "DELETE FROM assignments WHERE rule_id = ? AND scope = ? AND scope_id IS ?",
            (rule_id, scope, scope_id),
        )
        db.execute(
            "INSERT INTO assignments(rule_id, scope, scope_id, mode, source, reason, "
            "updated_by, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            (rule_id, scope, scope_id, mode, source, reason, actor, now),
        )
        n["assignments"][0] += 1
    _apply_firewall(db, plan, actor, now, ids, n)
    _apply_exceptions(db, plan, now, n)


_FW_COLUMNS: Final = ("position", "scope", "scope_id", "direction", "address", "protocol",
                      "port_from", "port_to", "mac", "action", "comment", "enabled")  # fmt: skip


def _apply_firewall(
    db: Db, plan: _Plan, actor: str, now: float,
    ids: dict[tuple[str, str], int], n: dict[str, list[int]],
) -> None:  # fmt: skip
    columns = _FW_COLUMNS
    for values in plan.firewall:
        scope_id = ids.get((values["scope"], values["target"]))
        v = {**values, "scope_id": scope_id, "enabled": int(values["enabled"])}
        where = " AND ".join(f"{c} IS :{c}" for c in columns)
        if db.execute(f"SELECT 1 FROM firewall_rules WHERE {where}", v).fetchone() is not None:
            n["firewall_rules"][1] += 1
            continue
        db.execute(
            f"INSERT INTO firewall_rules({', '.join(columns)}, updated_by, updated_at) "
            f"VALUES ({', '.join(':' + c for c in columns)}, :actor, :now)",
            {**v, "actor": actor, "now": now},
        )
        n["firewall_rules"][0] += 1
    if _counts(db)["firewall_rules"] > MAX_RULES:
        raise TransferError("firewall_rules", 0, "", f"the policy would hold more than {MAX_RULES}")


def _apply_exceptions(db: Db, plan: _Plan, now: float, n: dict[str, list[int]]) -> None:
    for rule_id, host, port, uri, reason, expires_at, created_by in plan.exceptions:
        if (
            db.execute(
                "SELECT 1 FROM exceptions WHERE rule_id IS ? AND host = ? AND port IS ? "
                "AND uri IS ? AND reason = ? AND expires_at IS ?",
                (rule_id, host, port, uri, reason, expires_at),
            ).fetchone()
            is not None
        ):
            n["exceptions"][1] += 1
            continue
        db.execute(
            "INSERT INTO exceptions(rule_id, host, port, uri, reason, expires_at, "
            "created_by, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (rule_id, host, port, uri, reason, expires_at, created_by, now),
        )
        n["exceptions"][0] += 1  # fmt: skip


def check_policy(store: Store, doc: dict[str, Any], replace_all: bool = False) -> dict[str, int]:
    """Validate `doc` as `import_policy` would, writing nothing; rows per section."""
    plan = _plan(doc, store, replace_all)
    return {"groups": len(plan.groups), "hosts": len(plan.hosts),
            "assignments": len(plan.assignments), "firewall_rules": len(plan.firewall),
            "exceptions": len(plan.exceptions)}  # fmt: skip


def import_policy(
    store: Store, doc: dict[str, Any], actor: str, replace_all: bool = False
) -> ImportResult:
    """Validate all of `doc`, then apply it in one transaction (see the module comment)."""
    plan = _plan(doc, store, replace_all)
    now = time.time()
    n: dict[str, list[int]] = {s: [0, 0] for s in SECTIONS}
    with store.transaction():
        before = _counts(store.db)
        if replace_all:
            for table in _REPLACED:
                store.db.execute(f"DELETE FROM {table}")
        _apply_groups_hosts(store, plan, now, n)
        _apply_rest(store, plan, actor, now, n)
        store.audit(
            actor,
            "policy.import",
            "replace" if replace_all else "merge",
            before,
            {**_counts(store.db), "written": {s: v[0] for s, v in n.items()}},
        )
    return ImportResult({s: v[0] for s, v in n.items()}, {s: v[1] for s, v in n.items()},
                        replace_all)  # fmt: skip


def merge_csv(files: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A document from CSV files [(name, text)], each one section (`parse_csv`)."""
    doc: dict[str, Any] = {}
    for name, text in files:
        section, rows = parse_csv(text, name)
        if section in doc:
            raise TransferError(section, 1, "", f"{name}: a second file of this section")
        doc[section] = rows
    return doc
