"""The systemd files under systemd/ (issue 15.10): the admin UI runs as its own user vpatch-ui in
the group vpatch that the gateway and the scans run with, both made by the sysusers file; the
state directory comes from the tmpfiles file (root:vpatch 0770), never from the UI's unit (a
StateDirectory= there would give it to vpatch-ui); `systemd-analyze verify` finds nothing to
say about the units (run where it is installed, with the executable replaced by /bin/true)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
UNITS = (
    "vpatch.service",
    "vpatch-ui.service",
    "vpatch-scan.service",
    "vpatch-report.service",
    "vpatch-report.timer",
    "vpatch-health.service",
    "vpatch-health.timer",
)


def service(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser["Service"]


def test_the_ui_runs_as_its_own_user_in_the_shared_group() -> None:
    ui = service("vpatch-ui.service")
    assert ui["User"] == "vpatch-ui" and ui["Group"] == "vpatch"
    assert "StateDirectory" not in ui
    assert "/var/lib/vpatch" in ui["ReadWritePaths"].split()
    report = service("vpatch-report.service")  # reads the stores and mails: the UI's user
    assert report["User"] == "vpatch-ui" and report["Group"] == "vpatch"
    assert "StateDirectory" not in report and "--email" in report["ExecStart"]
    for root in ("vpatch.service", "vpatch-scan.service"):
        unit = service(root)
        assert "User" not in unit and unit["Group"] == "vpatch", root
        assert unit["StateDirectoryMode"] == "0770", root


def test_sysusers_and_tmpfiles_make_the_user_group_and_directory() -> None:
    users = [line.split() for line in (SYSTEMD / "vpatch.sysusers.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    assert ["g", "vpatch", "-"] in users
    assert any(u[:3] == ["u", "vpatch-ui", "-:vpatch"] for u in users)
    tmpfiles = (SYSTEMD / "vpatch.tmpfiles.conf").read_text().splitlines()
    assert "d /var/lib/vpatch 0770 root vpatch -" in [" ".join(t.split()) for t in tmpfiles]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify_clean(tmp_path: Path) -> None:
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/vpatch/.venv/bin/vpatch", "/bin/true")
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(f"./{n}" for n in UNITS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_gateway_unit_is_notify_with_a_watchdog_before_the_network() -> None:
    gw = service("vpatch.service")
    assert gw["Type"] == "notify" and gw["NotifyAccess"] == "main"
    assert gw["WatchdogSec"] == "30s" and gw["Restart"] == "on-failure"
    assert "--stop-post" in gw["ExecStopPost"]  # fail-closed keeps its rules on a failure
    assert gw["CapabilityBoundingSet"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert gw["AmbientCapabilities"] == gw["CapabilityBoundingSet"]
    assert gw["ProtectSystem"] == "strict" and gw["ProtectKernelTunables"] == "yes"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((SYSTEMD / "vpatch.service").read_text())
    assert parser["Unit"]["Before"] == "network-pre.target"  # the bridge comes up after it
    assert "network-online" not in parser["Unit"].get("After", "")  # or that were a cycle


def test_the_health_check_runs_outside_the_gateway_on_a_timer() -> None:
    """It is its own oneshot unit (a dead vpatch.service cannot take it down), a failing
    condition (exit 1) is not a failure of the unit, and the timer runs it every minute."""
    health = service("vpatch-health.service")
    assert health["Type"] == "oneshot" and health["SuccessExitStatus"] == "1"
    assert "health check -c" in health["ExecStart"]
    assert health["Group"] == "vpatch" and "User" not in health
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read_string((SYSTEMD / "vpatch-health.timer").read_text())
    assert timer["Timer"]["OnUnitActiveSec"] == "1min"
