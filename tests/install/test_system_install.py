"""`scripts/install.sh --system` and `--uninstall [--purge]` into a temporary root (issue 14.2):
what goes where, the users and directories made with systemd-sysusers/-tmpfiles --root, the
units enabled, a venv whose scripts name /opt/vpatch (not the temporary root); uninstall keeps
the configuration and the data, --purge leaves the root as it was before the install. The venv
is made without its PyPI dependencies (--no-deps) to keep this fast: the tree is checked, not
run (vpatch itself is run by the other tests)."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_DIRS = (
    "etc/systemd/system",
    "etc/systemd/network",
    "etc/logrotate.d",
    "etc/sysusers.d",
    "etc/tmpfiles.d",
    "etc/sysctl.d",
    "etc/modules-load.d",
    "opt",
    "var/lib",
    "var/log",
)
BASE_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
    "etc/group": "root:x:0:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/gshadow": "root:*::\n",
}
ENTRY = Path("/opt/vpatch/.venv/bin/vpatch")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the system install runs as root")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content (files) or kind; backups (`passwd-`) left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.endswith("-") or rel.endswith(".pwd.lock"):
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text(errors="replace")
        else:
            out[rel] = "dir"
    return out


def script(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in BASE_DIRS:
        (root / d).mkdir(parents=True)
    for name, text in BASE_FILES.items():
        (root / name).write_text(text)
    return root


def gid_in(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, _ = line.split(":")
        if name == group:
            return int(gid)
    raise AssertionError(f"no group {group} in {root}/etc/group")


def test_install_uninstall_purge_leaves_the_root_as_it_was(root: Path) -> None:
    before = snapshot(root)
    script("--system", "--root", str(root), "--no-deps")
    opt = root / "opt/vpatch"
    assert (opt / "rules").is_dir() and (opt / "gateway/cli.py").is_file()
    assert (root / ENTRY.relative_to("/")).read_text().startswith(f"#!{ENTRY.parent}/python\n")
    assert str(root) not in (opt / ".venv/bin/pip").read_text()  # made under root, names /opt
    pth = list((opt / ".venv/lib").glob("python3*/site-packages/vpatch.pth"))
    assert [p.read_text().strip() for p in pth] == ["/opt/vpatch"]
    units = root / "etc/systemd/system"
    for name in ("vpatch.service", "vpatch-ui.service"):
        assert (units / "multi-user.target.wants" / name).is_symlink()
    assert not (units / "multi-user.target.wants/vpatch-scan.service").exists()
    assert "copytruncate" in (root / "etc/logrotate.d/vpatch").read_text()
    # users and directories: sysusers/tmpfiles with --root
    assert any(
        line.startswith("vpatch-ui:") for line in (root / "etc/passwd").read_text().splitlines()
    )
    gid = gid_in(root, "vpatch")
    state = (root / "var/lib/vpatch").stat()
    assert (state.st_mode & 0o7777, state.st_uid, state.st_gid) == (0o770, 0, gid)
    assert (root / "var/log/vpatch").stat().st_gid == gid
    conf = (root / "etc/vpatch/gateway.yaml").stat()
    assert (conf.st_mode & 0o777, conf.st_gid) == (0o640, gid)

    # the network step, then a gateway's data
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "install-network",
            "--ports",
            "e1",
            "e2",
            "--root",
            str(root),
            "--config",
            "/etc/vpatch/gateway.yaml",
        ],
        check=True,
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    (root / "var/lib/vpatch/vpatch.db").write_text("policy")
    (root / "var/log/vpatch/eve.json").write_text("{}\n")

    script("--uninstall", "--root", str(root))
    left = set(snapshot(root)) - set(before)
    assert left == {
        "etc/vpatch",
        "etc/vpatch/gateway.yaml",
        "var/lib/vpatch",
        "var/lib/vpatch/vpatch.db",
        "var/log/vpatch",
        "var/log/vpatch/eve.json",
    }, left
    assert "network: {mode: bridge}" in (root / "etc/vpatch/gateway.yaml").read_text()
    assert gid_in(root, "vpatch") == gid  # the users stay with the data

    script("--uninstall", "--purge", "--root", str(root))
    assert snapshot(root) == before


def test_install_keeps_an_existing_configuration(root: Path) -> None:
    (root / "etc/vpatch").mkdir()
    (root / "etc/vpatch/gateway.yaml").write_text("protected_hosts: [198.18.0.20]\n")
    script("--system", "--root", str(root), "--no-deps")
    assert (root / "etc/vpatch/gateway.yaml").read_text() == "protected_hosts: [198.18.0.20]\n"
    assert grp.getgrgid(0)  # the host's own groups untouched (the root's are separate)
    script("--uninstall", "--purge", "--root", str(root))
