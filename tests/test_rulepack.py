"""Rule pack updates (gateway/rulepack.py, `vpatch rules update|rollback|packs`) against a real
HTTP server on loopback: a good pack is installed and put in force, a corrupt one, a wrong
checksum, a bad rule, an unsafe member and a server that is down change nothing, rollback goes
back (to the previous pack, then to the bundled one), and old packs are pruned."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import BUNDLED_RULES, parse_config
from gateway.policy.appcontrol import rule_paths
from gateway.rulepack import RulePackError, RulePacks, effective_rule_paths
from gateway.testing.inline import package_env
from gateway.testing.loopback import serve_http

RULE = """\
id: {sid}
title: pack test rule {sid}
cve: [CVE-0000-{sid4}]
severity: high
action: reset
protocol: tcp
ports: [80]
direction: to_server
patterns:
  - content: "PACK-MARK-{sid}"
"""


def make_pack(version: str | None, sids: list[int], extra: dict[str, bytes] | None = None) -> bytes:
    files = {}
    if version is not None:
        files["manifest.yaml"] = f"version: {version}\ndescription: test pack\n".encode()
    for sid in sids:
        files[f"rules/r{sid}.yaml"] = RULE.format(sid=sid, sid4=str(sid)[-4:]).encode()
    files.update(extra or {})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def publish(folder: Path, name: str, data: bytes, sha: str | None = None) -> None:
    (folder / name).write_bytes(data)
    (folder / f"{name}.sha256").write_text(f"{sha or hashlib.sha256(data).hexdigest()}  {name}\n")


def validate(pack: Path) -> int:
    from gateway.match.matcher import Matcher
    from gateway.match.rules import load_rules

    ruleset = load_rules([pack])
    Matcher(ruleset)
    return len(ruleset)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with serve_http(handler) as port:  # type: ignore[arg-type]  # a partial of the class
        yield folder, f"http://127.0.0.1:{port}"


def test_good_pack_installed_and_in_force_then_rolled_back(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    folder, base = served
    packs = RulePacks(tmp_path / "packs", keep=2)
    publish(folder, "p1.tgz", make_pack("2026.1", [9500001]))
    publish(folder, "p2.tgz", make_pack("2026.2", [9500001, 9500002]))
    info = packs.install(f"{base}/p1.tgz", None, validate)
    assert (info.version, info.rules) == ("2026.1", 1)
    assert packs.current() is not None and packs.current().version == "2026.1"  # type: ignore[union-attr]
    assert not (tmp_path / "packs" / "2026.1" / "manifest.yaml").exists()
    packs.install(f"{base}/p2.tgz", None, validate)
    assert packs.current().version == "2026.2"  # type: ignore[union-attr]
    # the bundled pack's place in `rules` is taken by the pack in force
    paths = effective_rule_paths([BUNDLED_RULES, tmp_path / "local"], tmp_path / "packs")
    assert paths == [tmp_path / "packs" / "current", tmp_path / "local"]
    assert packs.previous() == "2026.1"
    packs.switch(packs.previous())
    assert packs.current().version == "2026.1"  # type: ignore[union-attr]
    assert packs.previous() is None  # then the bundled pack
    packs.switch(None)
    assert packs.current() is None
    assert effective_rule_paths([BUNDLED_RULES], tmp_path / "packs") == [BUNDLED_RULES]
    publish(folder, "p3.tgz", make_pack("2026.3", [9500003]))
    packs.install(f"{base}/p3.tgz", None, validate)
    assert [p.version for p in packs.history()] == ["2026.3", "2026.2"]  # keep=2: pruned
    assert not (tmp_path / "packs" / "2026.1").exists()


@pytest.mark.parametrize(
    ("name", "data", "sha", "message"),
    [
        ("corrupt.tgz", make_pack("9", [9500001])[:100], None, "not a readable tarball"),
        ("badsum.tgz", make_pack("9", [9500001]), "0" * 64, "SHA-256 mismatch"),
        ("badrule.tgz", make_pack("9", [], {"rules/bad.yaml": b"id: 1\ntitle: x\n"}), None,
         r"(?s)badrule.tgz \(version 9\): .*\n  rules/bad\.yaml:1: missing required key"),
        ("escape.tgz", make_pack("9", [], {"../evil.yaml": b"x: 1\n"}), None, "unsafe path"),
        ("notrule.tgz", make_pack("9", [], {"run.sh": b"#!/bin/sh\n"}), None, "only rule files"),
        ("nomanifest.tgz", make_pack(None, [9500001]), None, "no manifest.yaml"),
        ("badversion.tgz", make_pack("../x", [9500001]), None, "version '../x'"),
        ("empty.tgz", b"", None, "not a readable tarball"),
    ],
)  # fmt: skip
def test_bad_packs_change_nothing(
    served: tuple[Path, str], tmp_path: Path, name: str, data: bytes, sha: str | None, message: str
) -> None:
    folder, base = served
    packs = RulePacks(tmp_path / "packs")
    publish(folder, "good.tgz", make_pack("1", [9500001]))
    packs.install(f"{base}/good.tgz", None, validate)
    publish(folder, name, data, sha)
    with pytest.raises(RulePackError, match=message):
        packs.install(f"{base}/{name}", None, validate)
    assert packs.current().version == "1"  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == [
        "1",
        "current",
        "history.json",
    ]


def test_server_down_and_missing_checksum(tmp_path: Path) -> None:
    packs = RulePacks(tmp_path / "packs")
    with serve_http(http.server.SimpleHTTPRequestHandler) as port:
        pass  # the port is free again: nothing listens there now
    with pytest.raises(RulePackError, match="cannot download"):
        packs.install(f"http://127.0.0.1:{port}/p.tgz", None, validate)
    pack = tmp_path / "local.tgz"
    pack.write_bytes(make_pack("1", [9500001]))
    with pytest.raises(RulePackError, match=r"local\.tgz\.sha256: cannot read"):
        packs.install(str(pack), None, validate)  # no checksum published: refused
    info = packs.install(str(pack), hashlib.sha256(pack.read_bytes()).hexdigest(), validate)
    assert info.version == "1" and packs.current() is not None


def test_cli_update_packs_and_rollback_without_a_gateway(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    folder, base = served
    publish(folder, "p.tgz", make_pack("7.0", [9500007]))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"rule_pack: {{dir: {tmp_path / 'packs'}}}\ncontrol: {{socket: {tmp_path / 'none.sock'}}}\n"
    )

    def vpatch(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "rules", *argv, "-c", str(config)],
            capture_output=True, text=True, env=package_env(), timeout=120, check=False,
        )  # fmt: skip

    done = vpatch("update", f"{base}/p.tgz")
    assert done.returncode == 0, done.stderr
    assert "rule pack 7.0 installed (1 rules" in done.stdout and "no gateway running" in done.stdout
    paths = rule_paths(parse_config(config.read_text()))
    assert paths[0] == tmp_path / "packs" / "current"  # in place of the bundled pack
    assert "in force: 7.0 (1 rules" in vpatch("packs").stdout
    again = vpatch("update", f"{base}/p.tgz")  # what a daily timer does most days
    assert again.returncode == 0 and "in force already: nothing to do" in again.stdout
    back = vpatch("rollback")
    assert back.returncode == 0 and "the bundled pack" in back.stdout
    stale = vpatch("update", f"{base}/p.tgz")  # installed, not in force: say how to get it
    assert stale.returncode == 2 and "rollback --to 7.0" in stale.stderr
    assert rule_paths(parse_config(config.read_text()))[0] == BUNDLED_RULES
