"""App-control rule texts, the built-in virtual rules and their per-host modes in
CompiledPolicy (gateway/policy/appcontrol.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.errors import ConfigError
from gateway.lifecycle.state import LifecycleStore
from gateway.match.rules import load_rules
from gateway.policy.appcontrol import (
    ANY_PORT_SIDS,
    APP_CONTROL_RULES,
    SID_FTP,
    SID_HTTP_PORT,
    SID_SMB1,
    SID_TELNET,
    SID_TLS_MIN,
    any_port_hosts,
    parse_control,
    parse_host_controls,
    plan_rules,
    stored_controls,
)
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.store import Store
from gateway.testing.traffic import contiguous, replay_packets, tcp_session
from gateway.vocabulary import Mode

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
        app_controls=parse_host_controls(
            [(HOST, "refuse-smb1"), (HOST, "refuse-http-port-other-than 80")]
        )
    )
    assert policy.mode(HOST, by_id[SID_SMB1], 445) is Mode.PREVENT
    assert policy.mode("198.18.0.21", by_id[SID_SMB1], 445) is Mode.OFF
    assert all(policy.mode(HOST, by_id[i], 443) is Mode.OFF for i in SID_TLS_MIN["1.2"])
    assert policy.mode(HOST, by_id[SID_HTTP_PORT], 80) is Mode.OFF
    assert policy.mode(HOST, by_id[SID_HTTP_PORT], 8080) is Mode.PREVENT
    assert CompiledPolicy().mode(HOST, by_id[SID_SMB1], 445) is Mode.OFF
    with pytest.raises(ConfigError, match="not an address"):
        CompiledPolicy(app_controls=parse_host_controls([("nope", "refuse-smb1")]))
    with pytest.raises(ConfigError, match="policy app control of 198.18.0.20: app-control rule"):
        parse_host_controls([(HOST, "refuse-everything")])


def test_stored_controls_and_audit(tmp_path: Path) -> None:
    db = tmp_path / "vpatch.db"
    LifecycleStore(db).update_host(HOST, app_controls=("refuse-smb1", "min-tls 1.2"), actor="t")
    with Store(db) as store:
        assert stored_controls(store) == [(HOST, "refuse-smb1"), (HOST, "min-tls 1.2")]
        audit = store.list_audit()
        assert audit[0].action == "lifecycle.host" and audit[0].actor == "t"
        assert audit[0].detail["after"]["app_controls"] == ["refuse-smb1", "min-tls 1.2"]
        assert audit[0].detail["before"]["app_controls"] == []


def http_events(engine: Engine, port: int, data: bytes, sport: int) -> list[str]:
    packets = tcp_session(
        contiguous(data), b"HTTP/1.1 200 OK\r\n\r\n", sport=sport, dport=port, server=HOST
    )
    return [e.signature for e in replay_packets(engine, packets)]


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_any_port_sids_are_the_any_port_rules() -> None:
    rules = load_rules([APP_CONTROL_RULES])
    assert {r.id for r in rules if r.any_port} == ANY_PORT_SIDS


def test_http_on_any_port_but_the_allowed_ones() -> None:
    """`ports: any`: HTTP is identified by content on a port no rule names (5000), and refused
    there for the host with the policy; the allowed port, other protocols on 5000 and other
    hosts pass."""
    rules = load_rules([APP_CONTROL_RULES])
    title = rules.by_id[SID_HTTP_PORT].title
    policy = CompiledPolicy(
        app_controls=parse_host_controls([(HOST, "refuse-http-port-other-than 80")])
    )
    engine = Engine(rules, policy=policy)
    assert http_events(engine, 5000, REQUEST, 40001) == [title]
    assert http_events(engine, 80, REQUEST, 40002) == []
    assert http_events(engine, 5000, b"SSH-2.0-OpenSSH_9.2\r\n" + b"x" * 600, 40003) == []
    controls = parse_host_controls([("198.18.0.21", "refuse-smb1")])
    other = Engine(rules, policy=CompiledPolicy(app_controls=controls))
    assert http_events(other, 5000, REQUEST, 40004) == []
    # no policy naming an any-port rule, and no identification on any port: flows on unnamed
    # ports are not inspected at all (with it, the default, they are until identified)
    off = Engine(rules, EngineConfig(identify_any_port=False), policy=other.policy)
    assert http_events(off, 5000, REQUEST, 40005) == [] and off.stats.flows_inspected == 0
    assert other.stats.flows_inspected == 1
    matcher = Engine(rules).matcher
    assert matcher.covers(6, 5000) is False and matcher.covers(6, 445) is True
    in_group = {rules.rules[i].id for i in matcher.group(6, 0, 445).rule_indices}  # type: ignore[union-attr]
    assert {SID_HTTP_PORT, SID_SMB1} <= in_group  # an any-port rule joins every named port


def test_any_port_hosts_from_the_store(tmp_path: Path) -> None:
    db = tmp_path / "vpatch.db"
    LifecycleStore(db).update_host(HOST, app_controls=("refuse-smb1",), actor="t")
    LifecycleStore(db).update_host(
        "198.18.0.21", app_controls=("refuse-http-port-other-than 80",), actor="t"
    )
    with Store(db) as store:
        assert any_port_hosts(store) == [ipaddress.ip_network("198.18.0.21/32")]
    ruleset = load_rules([APP_CONTROL_RULES])
    assert SID_HTTP_PORT not in plan_rules(ruleset).by_id and SID_SMB1 in plan_rules(ruleset).by_id
