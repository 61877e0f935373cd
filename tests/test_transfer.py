"""gateway/transfer.py on real policy stores: export -> import on a fresh store gives the
same policy (JSON and CSV, library and `vpatch policy`), an import twice changes nothing, and a
malformed import names the section, row and field and changes nothing at all."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.firewall.policy import add_rule
from gateway.lifecycle.state import Endpoint, HostMode, LifecycleStore, LockdownAction, parse_tuple
from gateway.policy.assignments import Assignments
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.transfer import (
    SECTIONS,
    TransferError,
    export_policy,
    import_policy,
    merge_csv,
    to_csv,
)

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("groups", "hosts", "assignments", "firewall_rules", "exceptions", "host_endpoints",
          "host_rules", "learned_tuples", "app_controls", "host_lifecycle")  # fmt: skip


def populate(path: Path) -> None:
    with Store(path) as store:
        hosts = Hosts(store)
        web = hosts.create_group("web", "IIS 6 servers", "t")
        hosts.create_group("dns", "", "t")
        iis = hosts.save_host("198.18.0.20", "t", name="iis6", group_id=web.id)
        hosts.save_host("198.18.0.21", "t", name="bind")
        hosts.save_host("198.18.5.0/24", "t", name="lab net")
        a = Assignments(store)
        a.set_assignment(9001001, "host", iis.id, "prevent", "t", reason="EternalBlue")
        a.set_assignment(9001019, "group", web.id, "detect", "t")
        a.set_assignment(9001017, "global", None, "off", "t", source="cli")
        add_rule(store, {"scope": "host", "scope_id": iis.id, "direction": "in",
                         "protocol": "tcp", "port_from": 23, "action": "deny",
                         "comment": "=no telnet"}, "t")  # fmt: skip
        add_rule(store, {"scope": "group", "scope_id": web.id, "direction": "both",
                         "address": "198.19.0.0/16", "protocol": "udp", "port_from": 1000,
                         "port_to": 2000, "action": "log", "enabled": False}, "t")  # fmt: skip
        add_rule(store, {"scope": "global", "protocol": "icmp", "action": "allow",
                         "mac": "02:00:00:00:00:01"}, "t")  # fmt: skip
        ex = PolicyExceptions(store)
        ex.add_exception("198.18.0.20", "false positive on /upload", "t", rule_id=9001001,
                         uri="/upload*x", port=80, expires_at=time.time() + 3600)  # fmt: skip
        ex.add_exception("198.18.0.21", "whole host, rule under review", "t")
    LifecycleStore(path).update_host(
        "198.18.0.20", mode=HostMode.SETUP, auto_apply=True,
        exceptions=(Endpoint.parse("198.19.1.0/24:tcp/3389", "t"),),
        update_sources=(Endpoint.parse("updates.example.com:tcp/443", "t", names=True),),
        lockdown_action=LockdownAction.ALERT, assigned=(9001001, 9001017),
        learned=(parse_tuple("198.19.1.5 -> 198.18.0.20:445/tcp"),),
        app_controls=("refuse-smb1", "min-tls 1.2"),
    )  # fmt: skip


def doc_of(path: Path) -> dict[str, Any]:
    with Store(path) as store:
        doc = export_policy(store)
    doc.pop("exported_at")
    return doc


def snapshot(path: Path) -> dict[str, list[Any]]:
    """Every row of the tables an import writes, and the audit trail's length."""
    with sqlite3.connect(path) as conn:
        out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}
        out["audit"] = conn.execute("SELECT COUNT(*) FROM audit").fetchall()
    return out


@pytest.fixture
def original(tmp_path: Path) -> Path:
    path = tmp_path / "a" / "vpatch.db"
    populate(path)
    return path


def test_json_round_trip_on_a_fresh_store(original: Path, tmp_path: Path) -> None:
    doc = doc_of(original)
    assert [len(doc[s]) for s in SECTIONS] == [2, 3, 3, 3, 2]
    fresh = tmp_path / "b" / "vpatch.db"
    with Store(fresh) as store:
        result = import_policy(store, json.loads(json.dumps(doc)), "import")
    assert result.written == {"groups": 2, "hosts": 3, "assignments": 3, "firewall_rules": 3,
                              "exceptions": 2}  # fmt: skip
    assert doc_of(fresh) == doc
    with Store(fresh) as store:  # again: everything is already so
        again = import_policy(store, doc, "import")
    assert sum(again.written.values()) == 0 and sum(again.unchanged.values()) == 13
    assert doc_of(fresh) == doc


def test_csv_round_trip_on_a_fresh_store(original: Path, tmp_path: Path) -> None:
    doc = doc_of(original)
    files = [(f"{s}.csv", to_csv(doc, s)) for s in reversed(SECTIONS)]  # any order
    assert "'=no telnet" in files[1][1]  # no formula reaches a spreadsheet
    fresh = tmp_path / "c" / "vpatch.db"
    with Store(fresh) as store:
        import_policy(store, merge_csv(files), "import")
    assert doc_of(fresh) == doc


BAD_ROWS = [
    ("hosts", 2, "mode", lambda d: d["hosts"][1].update(mode="sideways")),
    ("hosts", 1, "group", lambda d: d["hosts"][0].update(group="nope")),
    ("hosts", 1, "setup_exceptions",
     lambda d: d["hosts"][0]["setup_exceptions"].append("198.19.1.0/24:tcp/99999")),
    ("assignments", 3, "target", lambda d: d["assignments"][2].update(scope="host",
                                                                      target="198.18.9.9")),
    ("firewall_rules", 2, "port_to", lambda d: d["firewall_rules"][1].update(port_to=10)),
    ("firewall_rules", 1, "action", lambda d: d["firewall_rules"][0].update(action="maybe")),
    ("exceptions", 2, "reason", lambda d: d["exceptions"][1].update(reason="  ")),
    ("groups", 3, "name", lambda d: d["groups"].append(dict(d["groups"][0]))),
]  # fmt: skip


@pytest.mark.parametrize(("section", "row", "field", "spoil"), BAD_ROWS)
def test_a_bad_row_is_named_and_nothing_changes(
    original: Path, tmp_path: Path, section: str, row: int, field: str, spoil: Any
) -> None:
    doc = doc_of(original)
    spoil(doc)
    target = tmp_path / "d" / "vpatch.db"
    with Store(target) as store:
        Hosts(store).create_group("keep me", "", "t")
    before = snapshot(target)
    with Store(target) as store, pytest.raises(TransferError) as err:
        import_policy(store, doc, "import", replace_all=True)
    assert (err.value.section, err.value.row, err.value.field) == (section, row, field)
    assert f"{section} row {row}, field {field}" in str(err.value)
    assert snapshot(target) == before


def test_a_bad_csv_cell_names_its_line(original: Path, tmp_path: Path) -> None:
    text = to_csv(doc_of(original), "firewall_rules").replace(",icmp,", ",sctp,")
    with Store(original) as store, pytest.raises(TransferError) as err:
        import_policy(store, merge_csv([("firewall_rules.csv", text)]), "import")
    assert (err.value.section, err.value.row, err.value.field) == ("firewall_rules", 4, "protocol")


def test_replace_empties_first_merge_keeps(original: Path, tmp_path: Path) -> None:
    doc = doc_of(original)
    other = tmp_path / "e" / "vpatch.db"
    with Store(other) as store:
        Hosts(store).save_host("198.18.0.99", "t")
        import_policy(store, doc, "import")
        assert len(Hosts(store).list_hosts()) == 4
        import_policy(store, doc, "import", replace_all=True)
        assert len(Hosts(store).list_hosts()) == 3
        (audit,) = [e for e in store.list_audit() if e.action == "policy.import"][:1]
        assert audit.target == "replace"
    assert doc_of(other) == doc


def vpatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_export_import(original: Path, tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    r = vpatch("policy", "export", "--state", str(original), "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = vpatch("policy", "export", "--state", str(original), "--format", "csv",
               "-o", str(tmp_path / "csv"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    fresh = tmp_path / "f" / "vpatch.db"
    r = vpatch("policy", "import", "--state", str(fresh), *sorted(
        str(p) for p in (tmp_path / "csv").glob("*.csv")))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert doc_of(fresh) == doc_of(original) == {
        k: v for k, v in json.loads(out.read_text()).items() if k != "exported_at"}  # fmt: skip
    bad = json.loads(out.read_text())
    bad["hosts"][2]["address"] = "198.18.0.300"
    out.write_text(json.dumps(bad))
    empty = tmp_path / "g" / "vpatch.db"
    r = vpatch("policy", "import", "--state", str(empty), str(out))
    assert r.returncode == 2
    assert "hosts row 3, field address" in r.stderr and "198.18.0.300" in r.stderr
    with Store(empty) as store:
        assert Hosts(store).list_hosts() == []
    r = vpatch("policy", "import", "--dry-run", "--state", str(original), str(tmp_path / "csv" /
               "hosts.csv"))  # fmt: skip
    assert r.returncode == 0 and "3 hosts" in r.stdout
