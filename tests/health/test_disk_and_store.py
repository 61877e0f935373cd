"""Disk low and a read-only event store, for real: a small tmpfs mounted in a mount namespace
the test creates (`unshare -m`, root only; nothing is mounted in the test's own namespace), as
tests/events/test_store_failures.py does. A child process in the namespace runs the health
check (gateway/health/check.py) four times: disk filled past health.disk_min_free, space back,
the store's filesystem remounted read-only, writable again. Held: each change raises or
resolves its condition once, and the messages reach a real webhook receiver on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.inline import package_env
from tests.alerts.conftest import wait_for
from tests.health.test_check import channel, config

CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    from gateway.config import load_config
    from gateway.health.check import run_check

    cfg = load_config(Path(sys.argv[1]))
    root = Path(sys.argv[2])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "vpatch-test",
                    str(root)], check=True)
    (root / "events.db").write_bytes(b"")
    out = {}

    def step(name):
        result = run_check(cfg)
        out[name] = [(c.condition.value, c.failing) for c in result.changes]
        out[name + "_detail"] = {c.value: d for c, d in result.failing.items()}

    step("start")
    vfs = os.statvfs(root)
    (root / "filler").write_bytes(bytes(vfs.f_bavail * vfs.f_frsize - 256 * 1024))
    step("full")
    (root / "filler").unlink()
    step("space")
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    step("readonly")
    subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    step("writable")
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs in a mount namespace needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) not installed")
def test_disk_low_and_read_only_store_raise_and_resolve(tmp_path: Path, webhook: Any) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    path = config(tmp_path, disk_min_free=20)
    text = path.read_text().replace(str(tmp_path / "events.db"), str(mnt / "events.db"))
    path.write_text(text)
    channel(tmp_path, webhook.url)
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", CHILD, str(path),
         str(mnt)],
        capture_output=True, text=True, timeout=120, env=package_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # no gateway runs in this test: it is unreachable from the first check on
    assert out["start"] == [["gateway_unreachable", True]]
    assert out["full"] == [["disk_low", True]]
    assert out["full_detail"]["disk_low"].startswith(f"{mnt}: ")
    assert out["space"] == [["disk_low", False]]
    assert out["readonly"] == [["event_store", True]]
    assert "mounted read-only" in out["readonly_detail"]["event_store"]
    assert out["writable"] == [["event_store", False]]
    got = [json.loads(body)["title"] for _h, body in wait_for(webhook.requests, 5)]
    assert got == ["health: gateway unreachable", "health: disk space low",
                   "resolved: disk space low", "health: event store not writable",
                   "resolved: event store not writable"]  # fmt: skip
