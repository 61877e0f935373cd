"""The Debian package (scripts/build-deb.sh, issue 14.2): built with dpkg-deb, read back with
`dpkg-deb --info/--contents`, then installed for real with `dpkg --root` into a temporary root
(maintainer scripts run with DPKG_ROOT, --force-script-chrootless; dependencies forced, as the
root holds no other package): postinst creates the users and directories and enables the
units; remove keeps the configuration and the data; purge removes them and the users, leaving
the root as it was. The venv is built without its PyPI dependencies (--no-deps) to stay fast."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.install.test_system_install import BASE_FILES, snapshot

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dpkg --root runs as root")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    build = tmp_path_factory.mktemp("vpatch-build-dir")  # where the tree is staged (TMPDIR)
    env = dict(os.environ, TMPDIR=str(build))
    path = Path(run("bash", str(REPO / "scripts/build-deb.sh"), "--out", str(out), "--no-deps",
                    env=env).stdout.strip().splitlines()[-1])  # fmt: skip
    assert path.name.startswith("vpatch_") and path.suffix == ".deb"
    return path


def test_info_and_contents(deb: Path, tmp_path: Path) -> None:
    info = run("dpkg-deb", "--info", str(deb)).stdout
    for needle in ("Package: vpatch", "Depends: python3.11, iptables, ipset", "postinst",
                   "prerm", "postrm", "conffiles"):  # fmt: skip
        assert needle in info, needle
    assert run("dpkg-deb", "-f", str(deb), "Architecture").stdout.strip()
    listing = run("dpkg-deb", "--contents", str(deb)).stdout.splitlines()
    names = {line.split()[-1] if " -> " not in line else line.split()[-3] for line in listing}
    for path in ("./opt/vpatch/.venv/bin/vpatch", "./opt/vpatch/rules/",
                 "./etc/vpatch/gateway.yaml",
                 "./lib/systemd/system/vpatch.service", "./lib/systemd/system/vpatch-ui.service",
                 "./usr/lib/sysusers.d/vpatch.conf", "./usr/lib/tmpfiles.d/vpatch.conf",
                 "./etc/logrotate.d/vpatch"):  # fmt: skip
        assert path in names, path
    assert all(" root/root " in line for line in listing)
    assert any(n.endswith(".pyc") for n in names)  # compiled, naming /opt/vpatch (below)
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                               check=True).stdout  # fmt: skip
    assert b"conffiles" in conffiles
    # nothing in the package names the directory it was built in
    run("dpkg-deb", "-x", str(deb), str(tmp_path / "x"))
    leak = subprocess.run(["grep", "-rla", "vpatch-build-dir", str(tmp_path / "x")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert leak.stdout == "", leak.stdout


def test_dpkg_root_install_remove_purge(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers",
              "etc/systemd/system", "var/log", "opt", "lib", "usr/lib"):  # fmt: skip
        (root / d).mkdir(parents=True)
    for d in ("opt", "lib", "usr/lib", "etc/systemd/system", "var/log"):
        (root / d / ".base").write_text("")  # as in a real system, not the package's alone
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).write_text("")
    for name, text in BASE_FILES.items():
        (root / name).write_text(text)
    before = {k: v for k, v in snapshot(root).items() if not k.startswith("var/lib/dpkg")}
    dpkg = ("dpkg", f"--root={root}", "--force-script-chrootless")

    out = run(*dpkg, "--force-depends", "-i", str(deb))
    assert "Setting up vpatch" in out.stdout, out.stdout
    assert "vpatch-ui:" in (root / "etc/passwd").read_text()
    gid = next(int(line.split(":")[2]) for line in (root / "etc/group").read_text().splitlines()
               if line.startswith("vpatch:"))  # fmt: skip
    state = (root / "var/lib/vpatch").stat()
    assert (state.st_mode & 0o777, state.st_gid) == (0o770, gid)
    assert (root / "etc/vpatch/gateway.yaml").stat().st_gid == gid
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["vpatch-ui.service", "vpatch.service"]
    assert run(*dpkg[:2], "-s", "vpatch").stdout.count("install ok installed") == 1

    (root / "var/lib/vpatch/vpatch.db").write_text("policy")
    run(*dpkg, "--remove", "vpatch")
    assert (root / "var/lib/vpatch/vpatch.db").exists() and (
        root / "etc/vpatch/gateway.yaml"
    ).exists()
    assert not (root / "opt/vpatch").exists() and not wants.exists()

    run(*dpkg, "--purge", "vpatch")
    after = {k: v for k, v in snapshot(root).items() if not k.startswith("var/lib/dpkg")}
    assert after == before
