"""webui/static/dashboard.js polls only after the previous answer (issue 15, finding 3): run in
Node.js against a stub DOM and a fetch() whose answers the harness holds back
(tests/webui/js/dashboard_poll.js), the dashboard never has two requests in flight, arms no
interval, and plans the next request (REFRESH_MS later) once an answer or a failure arrived."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.webui.conftest import REPO

NODE = shutil.which("node") or shutil.which("nodejs")
SCRIPT = REPO / "webui" / "static" / "dashboard.js"


@pytest.mark.skipif(NODE is None, reason="needs Node.js (Debian package nodejs)")
def test_the_next_poll_waits_for_the_answer() -> None:
    assert NODE is not None
    out = subprocess.run(
        [NODE, str(REPO / "tests" / "webui" / "js" / "dashboard_poll.js"), str(SCRIPT)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    steps = {s["step"]: s for s in json.loads(out.stdout)}
    assert all(s["intervals"] == 0 for s in steps.values())
    assert steps["started"] | {"step": 0} == {"step": 0, "fetches": 1, "in_flight": 1,
                                              "intervals": 0, "timers": []}  # fmt: skip
    assert steps["a minute, no answer"]["fetches"] == 1  # nothing asked again meanwhile
    assert steps["answered"]["timers"] == [5000] and steps["answered"]["in_flight"] == 0
    assert steps["next poll"]["fetches"] == 2 and steps["next poll"]["timers"] == []
    assert steps["failed"]["timers"] == [5000]  # a failure plans the next poll too


def test_the_script_arms_no_interval() -> None:
    assert "setInterval" not in SCRIPT.read_text()
