"""`vpatch health check -c CONFIG [--json]`: one system-health check, run outside the gateway
(vpatch-health.timer, every minute), alerting through the alert channels on changes.

It asks the running gateway for its `status` over the control socket, looks at the disks, the
event store and the last rule-pack update, compares with the previous check (its state file,
`health.state`) and sends a message for each condition raised or resolved (gateway/health/).
`vpatch health show -c CONFIG [--json]` prints the state the last check left, sending nothing.
Exit status: 0 when nothing is failing, 1 when a condition is failing, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.health.check import run_check
from gateway.health.state import HealthState, load_state


def register(sub: Any) -> None:
    p = sub.add_parser(
        "health",
        help="system-health check and alerts (run by vpatch-health.timer)",
        description="Check the gateway's health from outside it and alert on changes.",
    )
    hsub = p.add_subparsers(dest="health_command", metavar="COMMAND", required=True)
    for name, text in (("check", "check now; alert through the channels on changes"),
                       ("show", "print what the last check found (sends nothing)")):  # fmt: skip
        c = hsub.add_parser(name, help=text, description=text)
        c.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
        c.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _state_json(state: HealthState) -> dict[str, Any]:
    return {
        "checked_at": state.checked_at,
        "failing": {c.value: s.detail for c, s in state.failing().items()},
        "undelivered": len(state.pending),
    }


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.health_command == "show":
        state = load_state(config.health.state)
        if args.json:
            print(json.dumps(_state_json(state), indent=2))
        elif not state.checked_at:
            print(f"no check recorded in {config.health.state}")
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.checked_at))
            print(f"last check {when}: {len(state.failing())} condition(s) failing")
            for cond, s in state.failing().items():
                print(f"  {cond.value}: {s.detail}")
        return 1 if state.failing() else 0
    result = run_check(config)
    if args.json:
        out = _state_json(result.state)
        out["changes"] = [{"condition": c.condition.value, "failing": c.failing,
                           "detail": c.detail} for c in result.changes]  # fmt: skip
        out["sent"] = result.sent
        print(json.dumps(out, indent=2))
    else:
        for change in result.changes:
            word = "raised" if change.failing else "resolved"
            print(f"{word}: {change.condition.value}: {change.detail}")
        for cond, detail in result.failing.items():
            print(f"failing: {cond.value}: {detail}")
        if not result.failing:
            print("healthy")
        print(f"{result.sent} message(s) sent, {result.undelivered} kept for the next check")
    return 1 if result.failing else 0
