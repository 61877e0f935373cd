"""App-control rule texts, the built-in virtual rules and their per-host modes in
CompiledPolicy (gateway/policy/appcontrol.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.lifecycle.state import LifecycleStore
from gateway.match.rules import load_rules
from gateway.policy.appcontrol import (
    APP_CONTROL_RULES,
    SID_FTP,
    SID_HTTP_PORT,
    SID_SMB1,
    SID_TELNET,
    SID_TLS_MIN,
    parse_control,
    stored_controls,
)
from gateway.policy.compiled import CompiledPolicy, Mode
from gateway.policy.store import Store

HOST = "198.18.0.20"


def test_parse_forms_normalised() -> None:
    assert parse_control(" refuse-smb1 ", "t").rule_ids == {SID_SMB1}
    assert parse_control("min-tls 1.2", "t").rule_ids == set(SID_TLS_MIN["1.2"])
    assert parse_control("min-tls 1.3", "t").text == "min-tls 1.3"
    c = parse_control("refuse-cleartext telnet, FTP", "t")
    assert c.text == "refuse-cleartext ftp,telnet" and c.rule_ids == {SID_FTP, SID_TELNET}
    h = parse_control("refuse-http-port-other-than 8080,80", "t")
    assert h.text == "refuse-http-port-other-than 80,8080" and h.http_ports == {80, 8080}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "refuse-smb2",
        "min-tls 1.4",
        "min-tls 0.9",
        "refuse-cleartext ssh",
        "refuse-http-port-other-than x",
    ],
)
def test_parse_refuses_with_text_and_source(text: str) -> None:
    with pytest.raises(ConfigError, match="--add"):
        parse_control(text, "--add")


def test_virtual_rules_load_off_by_default() -> None:
    rules = load_rules([APP_CONTROL_RULES]).rules
    assert {r.default_mode for r in rules} == {Mode.OFF}
    assert all(r.title.startswith("app-control: ") for r in rules)
    assert all(9200000 <= r.id < 9200100 for r in rules)


def test_modes_per_host_and_port() -> None:
    by_id = load_rules([APP_CONTROL_RULES]).by_id
    policy = CompiledPolicy(
        app_controls=[(HOST, "refuse-smb1"), (HOST, "refuse-http-port-other-than 80")]
    )
    assert policy.mode(HOST, by_id[SID_SMB1], 445) is Mode.PREVENT
    assert policy.mode("198.18.0.21", by_id[SID_SMB1], 445) is Mode.OFF
    assert all(policy.mode(HOST, by_id[i], 443) is Mode.OFF for i in SID_TLS_MIN["1.2"])
    assert policy.mode(HOST, by_id[SID_HTTP_PORT], 80) is Mode.OFF
    assert policy.mode(HOST, by_id[SID_HTTP_PORT], 8080) is Mode.PREVENT
    assert CompiledPolicy().mode(HOST, by_id[SID_SMB1], 445) is Mode.OFF
    with pytest.raises(ConfigError, match="not an address"):
        CompiledPolicy(app_controls=[("nope", "refuse-smb1")])


def test_stored_controls_and_audit(tmp_path: Path) -> None:
    db = tmp_path / "vpatch.db"
    LifecycleStore(db).update_host(HOST, app_controls=("refuse-smb1", "min-tls 1.2"), actor="t")
    with Store(db) as store:
        assert stored_controls(store) == [(HOST, "refuse-smb1"), (HOST, "min-tls 1.2")]
        audit = store.list_audit()
        assert audit[0].action == "lifecycle.host" and audit[0].actor == "t"
        assert audit[0].detail["after"]["app_controls"] == ["refuse-smb1", "min-tls 1.2"]
        assert audit[0].detail["before"]["app_controls"] == []
