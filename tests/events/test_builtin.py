"""gateway/events/builtin.py: the list of events the gateway raises itself is complete (every
limit, both HTTPS-plane refusals), ordered, unique and disjoint from the bundled rule pack's
sids, so the UI's rules page can show each beside the rules without a clash."""

from __future__ import annotations

from gateway.config import BUNDLED_RULES
from gateway.events.builtin import BUILTIN_EVENTS
from gateway.flow.limits import LIMIT_RULES
from gateway.match.rules import load_rules
from gateway.tls.addon import SID_HEADER_LIMIT, SID_TLS_REFUSED
from gateway.vocabulary import Limit


def test_every_limit_and_https_refusal_is_listed_once_in_sid_order() -> None:
    sids = [e.sid for e in BUILTIN_EVENTS]
    assert sids == sorted(set(sids))
    assert {LIMIT_RULES[limit].sid for limit in Limit} | {SID_TLS_REFUSED, SID_HEADER_LIMIT} == set(
        sids
    )
    for limit in Limit:
        event = next(e for e in BUILTIN_EVENTS if e.sid == LIMIT_RULES[limit].sid)
        assert event.decided_by.startswith(f"limits.{limit.value} ")
        assert event.title == LIMIT_RULES[limit].title


def test_no_builtin_sid_is_a_rule_of_the_bundled_pack() -> None:
    pack = {rule.id for rule in load_rules([BUNDLED_RULES]).rules}
    assert len(pack) > 50 and not pack & {e.sid for e in BUILTIN_EVENTS}
