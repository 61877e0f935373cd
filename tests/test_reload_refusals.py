"""A broken policy or rule set on a live reload is refused and the one in force stays, at both
levels: the gateway process (`Gateway.reload` / `Gateway.rules_reload`, behind the control
socket's `reload` and `rules-reload`: refused before any worker is asked) and the worker (which
loads the same store or files again itself: `apply_policy` / `RuleLoader`, counting
`policy_errors` / `rules_errors` and keeping the engine's policy and rules). No kernel rule is
touched: the refusals come before. tests/test_rules_reload.py shows the same for rules on a
running gateway in the namespace lab.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.engine import Engine
from gateway.errors import ConfigError, RuleError
from gateway.firewall.apply import BackendInfo
from gateway.firewall.render import RenderedRules
from gateway.intake.nfqueue import RuleLoader, WorkerStats, apply_policy, build_engine
from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.supervisor import Gateway
from gateway.testing.traffic import SERVER, contiguous, tcp_session

MARKER_RULE = """\
id: 9000777
title: reload test marker
cve: [CVE-0000-0777]
severity: high
action: reset
protocol: tcp
ports: [80]
direction: to_server
patterns:
  - content: "VPATCH-RELOAD-REFUSAL-777"
"""
BROKEN_RULE = """\
id: 9000778
title: a rule with a broken pattern
cve: [CVE-0000-0778]
severity: high
action: reset
protocol: tcp
ports: [80]
direction: to_server
patterns:
  - pcre: "(unclosed"
"""


def config(tmp_path: Path) -> GatewayConfig:
    rules = tmp_path / "rules.d"
    rules.mkdir(exist_ok=True)
    (rules / "marker.yaml").write_text(MARKER_RULE)
    conf = tmp_path / "gateway.yaml"
    conf.write_text(
        f"protected_hosts: [{SERVER}]\n"
        f"rules: [{rules}]\n"
        f"policy: {{database: {tmp_path / 'policy.db'}}}\n"
        "events: {sqlite: null, jsonl: null}\n"
        f"control: {{socket: {tmp_path / 'control.sock'}}}\n"
    )
    return load_config(conf)


def gateway(cfg: GatewayConfig) -> Gateway:
    """The gateway process's object, never started: no worker, no kernel rule."""
    backend = BackendInfo("nft", "iptables", "ip6tables", "test")
    return Gateway(cfg, backend, RenderedRules("", "", "", (), (), "vpt"))


def fires(engine: Engine) -> bool:
    packets = tcp_session(contiguous(b"GET /VPATCH-RELOAD-REFUSAL-777 HTTP/1.1\r\n\r\n"), b"")
    return any(engine.process_ip(p, 1e9 + i).action.blocks for i, p in enumerate(packets))


def break_policy(path: Path) -> None:
    """An app-control rule that does not parse, as a hand-edited or newer store could hold."""
    with Store(path) as store:
        host = Hosts(store).save_host(SERVER, "t", name="srv")
        store.db.execute(
            "INSERT INTO app_controls (host_id, rule, updated_by, updated_at) VALUES (?, ?, ?, ?)",
            (host.id, "no such control", "t", time.time()),
        )  # the store's connection is in autocommit mode


def test_a_broken_policy_is_refused_and_the_previous_one_stays(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    engine = build_engine(cfg)
    assert isinstance(engine, Engine)
    stats = WorkerStats()
    with Store(cfg.policy.database) as store:
        Assignments(store).set_assignment(9000777, "global", None, "off", "t")
    apply_policy(engine, cfg, stats, 1)
    good = engine.policy
    assert good is not None and not fires(engine)  # the rule is off: the marker passes
    break_policy(cfg.policy.database)
    gw = gateway(cfg)
    with pytest.raises(ConfigError, match="no such control"):
        gw.reload()
    assert gw.policy_version == 1  # no new version: no worker is asked
    assert all(w.stats.get("policy_wanted") == 0 for w in gw.workers)
    apply_policy(engine, cfg, stats, 2)  # a worker that loads it anyway
    assert stats.get("policy_errors") == 1 and stats.get("policy_version") == 2
    assert engine.policy is good and not fires(engine)


def test_a_broken_rule_file_is_refused_and_the_rules_in_force_stay(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    engine = build_engine(cfg)
    assert isinstance(engine, Engine)
    ruleset = engine.ruleset
    assert fires(engine)
    (tmp_path / "rules.d" / "broken.yaml").write_text(BROKEN_RULE)
    gw = gateway(cfg)
    with pytest.raises(RuleError, match=r"broken\.yaml"):
        gw.rules_reload()
    assert gw.rules_version == 0
    assert all(w.stats.get("rules_wanted") == 0 for w in gw.workers)
    stats = WorkerStats()  # a worker asked anyway loads the same files and refuses them
    stats.set("rules_wanted", 1)
    loader = RuleLoader(cfg, stats)
    deadline = time.monotonic() + 60
    while stats.get("rules_version") != 1 and time.monotonic() < deadline:
        loader.poll(engine)
        time.sleep(0.01)
    assert stats.get("rules_errors") == 1 and stats.get("rules_version") == 1
    assert engine.ruleset is ruleset and fires(engine)
