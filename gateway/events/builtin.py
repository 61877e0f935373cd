"""The events the gateway raises by itself, with no rule file behind them: what each one means
and which setting decides what happens (the UI's rules page lists them beside the rules).

- the limits of the packet path (gateway/flow/limits.py `LIMIT_RULES`, sids 9300010-9300018):
  their policy is the configuration's `limits.<name>`, overridden per server by `hosts:`
  entries (docs/architecture.md "Limits");
- the HTTPS plane's refusals (gateway/tls/addon.py, sids 9300030-9300031): set per service in
  `tls_proxy.services` (`client_min`, `max_header_bytes`, `max_headers`).
The protocol-anomaly events (9300001-9300004) are rules (rules/vpatch-anomalies.yaml), toggled
like any rule, so they are not listed here.

Guarantees: `BUILTIN_EVENTS` is sorted by sid, every sid appears once, and none is a sid of the
bundled rule pack (tests/events/test_builtin.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.flow.limits import LIMIT_RULES
from gateway.tls.service import SID_HEADER_LIMIT, SID_TLS_REFUSED

__all__ = ["BUILTIN_EVENTS", "BuiltinEvent"]


@dataclass(frozen=True, slots=True)
class BuiltinEvent:
    """One event the gateway raises itself: its sid, title, severity and deciding setting."""

    sid: int
    title: str
    severity: str
    decided_by: str


BUILTIN_EVENTS: Final = tuple(
    sorted(
        [
            *(
                BuiltinEvent(
                    rule.sid,
                    rule.title,
                    rule.severity,
                    f"limits.{limit.value} (per server: hosts:)",
                )
                for limit, rule in LIMIT_RULES.items()
            ),
            BuiltinEvent(
                SID_TLS_REFUSED,
                "vpatch TLS: client below the service's floor (it offered only older versions)",
                "medium",
                "tls_proxy.services[].client_min (the connection is refused)",
            ),
            BuiltinEvent(
                SID_HEADER_LIMIT,
                "vpatch HTTPS: request header fields over the service's bound",
                "medium",
                "tls_proxy.services[].max_header_bytes and max_headers (the request is refused)",
            ),
        ],
        key=lambda e: e.sid,
    )
)
