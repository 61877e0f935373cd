"""Rule changes reach the running gateway without a restart (`vpatch rules reload`).

A real `vpatch run` in the lab's gateway namespace loads the test rule and a local rules.d
directory. A rule file dropped there blocks its pattern once `vpatch rules reload` returns; a
rule on a new port makes the kernel queue that port; an invalid file is refused with its file
and line and the rules in force stay; 50 reloads while wrk runs through the gateway cost no
connection and every queued packet got its verdict.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.control.server import control_request
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.testing.inline import REPO, RunningGateway, in_ns, package_env, running_gateway
from webui import create_app

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

NEW_RULE = """\
id: 9000301
title: rules reload test marker
cve: [CVE-0000-0301]
severity: high
action: reset
protocol: tcp
ports: [80, 8081]
direction: to_server
patterns:
  - content: "VPATCH-RELOAD-MARK-301"
"""
BAD_RULE = """\
id: 9000302
title: a rule with a broken pattern
cve: [CVE-0000-0302]
severity: high
action: reset
protocol: tcp
ports: [80]
direction: to_server
patterns:
  - regex: "(unclosed"
"""


def _config(lab: Any, tmp_path: Path, rules_d: Path) -> dict[str, Any]:
    return {
        "protected_hosts": [lab.server_addr],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml"), str(rules_d)],
        "queues": {"first": 0, "count": 2},
        "fail_policy": "closed",  # a packet without a verdict would be a lost request
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "policy": {"database": str(tmp_path / "vpatch.db")},
    }


def _reload(gw: RunningGateway) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "rules", "reload", "-c", str(gw.config)],
        capture_output=True, text=True, env=package_env(), timeout=200, check=False,
    )  # fmt: skip


def _curl(lab: Any, header: str) -> int:
    argv = ["curl", "-s", "-m", "3", "-o", "/dev/null", "-H", header, f"http://{lab.server_addr}/"]
    return in_ns(lab.client_ns, argv, timeout=10).returncode


PASSWORD = "admin-password-rules-1"


def _csrf(client: FlaskClient) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/rules/").get_data(True))
    assert m
    return m.group(1)


def _ui(tmp_path: Path, rules_d: Path) -> FlaskClient:
    """An admin's session in the UI, on the gateway's store, control socket and rule files."""
    with Store(tmp_path / "vpatch.db") as store:
        Accounts(store).create_user("admin", PASSWORD, "admin", "test")
    app = create_app({
        "TESTING": True, "POLICY_DB": str(tmp_path / "vpatch.db"),
        "EVENTS_DB": str(tmp_path / "events.db"), "CONTROL_SOCKET": str(tmp_path / "control.sock"),
        "RULE_PATHS": [str(REPO / "rules" / "vpatch-test-split.yaml"), str(rules_d)],
        "SESSION_COOKIE_SECURE": False,
    })  # fmt: skip
    client = app.test_client()
    page = client.get("/auth/login").get_data(as_text=True)
    m = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert m
    login = {"username": "admin", "password": PASSWORD, "csrf_token": m.group(1)}
    assert client.post("/auth/login", data=login).status_code == 302
    return client


def _port_queued(lab: Any, port: int) -> bool:
    test = ["ipset", "test", "vpatch-tcp-srv", str(port)]
    return in_ns(lab.gw_ns, test).returncode == 0


def test_new_rule_file_is_enforced_after_reload_and_a_bad_one_refused(
    lab: Any, tmp_path: Path
) -> None:
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    with running_gateway(lab, tmp_path, _config(lab, tmp_path, rules_d)) as gw:
        mark = "X-Test: VPATCH-RELOAD-MARK-301"
        assert _curl(lab, mark) == 0 and not _port_queued(lab, 8081)
        (rules_d / "new.yaml").write_text(NEW_RULE)
        done = _reload(gw)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "in use by every worker" in done.stdout
        assert _curl(lab, mark) == 56  # reset as soon as the reload returned
        assert _port_queued(lab, 8081)  # the kernel queues the new rule's other port
        client = _ui(tmp_path, rules_d)  # the UI, whose "Reload rule files" comes later
        assert 'id="rule-9000301"' in client.get("/rules/").get_data(as_text=True)
        (rules_d / "broken.yaml").write_text(BAD_RULE)
        refused = _reload(gw)
        assert refused.returncode == 1
        assert re.search(r"broken\.yaml:\d+: .*", refused.stderr), refused.stderr
        assert "nothing changed" in refused.stderr
        assert _curl(lab, mark) == 56  # the rules in force stay
        status = gw.status()
        assert all(q["rules_version"] == 1 for q in status["queues"].values())
        (rules_d / "broken.yaml").unlink()
        (rules_d / "new.yaml").unlink()
        page = client.post(
            "/rules/reload", data={"csrf_token": _csrf(client)}, follow_redirects=True
        )
        text = page.get_data(as_text=True)
        assert "rule files reloaded: version 2" in text, text
        assert "rule-9000301" not in text  # the UI reads the files again too
        assert _curl(lab, mark) == 0 and not _port_queued(lab, 8081)  # removed again
        assert {e["alert"]["signature_id"] for e in gw.events()} == {9000301}


def test_fifty_reloads_under_load_drop_no_connection(lab: Any, tmp_path: Path) -> None:
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    (rules_d / "new.yaml").write_text(NEW_RULE)
    with running_gateway(lab, tmp_path, _config(lab, tmp_path, rules_d)) as gw:
        wrk = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, "wrk", "-t2", "-c20", "-d120s",
             f"http://{lab.server_addr}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            for version in range(1, 51):  # the control request `vpatch rules reload` makes
                reply = control_request(gw.control, "rules-reload", timeout=200)
                assert reply["complete"] and reply["version"] == version, reply
        finally:
            wrk.send_signal(2)  # SIGINT: wrk prints its summary and exits
            out, _ = wrk.communicate(timeout=30)
        status = gw.status()
    assert "requests in" in out, out
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    assert re.search(r"(\d+) requests in", out) is not None
    assert all(q["rules_version"] == 50 for q in status["queues"].values())
    assert status["queue_drops"] == 0
    assert sum(q["kernel_unseen"] or 0 for q in status["queues"].values()) == 0
    assert sum(q["errors"] for q in status["queues"].values()) == 0


PACK_RULE = (
    NEW_RULE.replace("9000301", "9000311")
    .replace("0301", "0311")
    .replace("VPATCH-RELOAD-MARK-301", "VPATCH-PACK-MARK-311")
)


def _pack(tmp_path: Path, version: str) -> tuple[Path, str]:
    """A rule pack: the bundled rules plus one marker rule, and its SHA-256."""
    path = tmp_path / f"pack-{version}.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for rule in sorted((REPO / "rules").glob("*.yaml")):
            tar.add(rule, arcname=f"rules/{rule.name}")
        for name, text in (("manifest.yaml", f"version: {version}\n"), ("mark.yaml", PACK_RULE)):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_rule_pack_update_and_rollback_reach_the_running_gateway(lab: Any, tmp_path: Path) -> None:
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    config = _config(lab, tmp_path, rules_d)
    config["rules"] = [str(REPO / "rules"), str(rules_d)]
    config["rule_pack"] = {"dir": str(tmp_path / "packs")}
    pack, sha = _pack(tmp_path, "2026.12.6")
    with running_gateway(lab, tmp_path, config) as gw:

        def vpatch(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "gateway.cli", "rules", *argv, "-c", str(gw.config)],
                capture_output=True, text=True, env=package_env(), timeout=200, check=False,
            )  # fmt: skip

        mark = "X-Test: VPATCH-PACK-MARK-311"
        assert _curl(lab, mark) == 0
        bad = vpatch("update", str(pack), "--sha256", "0" * 64)
        assert bad.returncode == 2 and "SHA-256 mismatch" in bad.stderr
        done = vpatch("update", str(pack), "--sha256", sha)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rule pack 2026.12.6 installed" in done.stdout
        assert "in use by every worker" in done.stdout
        assert _curl(lab, mark) == 56  # the pack's rule is in force
        back = vpatch("rollback")
        assert back.returncode == 0 and "the bundled pack" in back.stdout, back.stderr
        assert _curl(lab, mark) == 0
