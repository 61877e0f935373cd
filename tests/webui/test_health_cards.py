"""webui/health_cards.py: each health figure's value, unit and status colour, from
`gateway_status()`-shaped answers (reachable, losing, unreachable, older gateway)."""

from __future__ import annotations

from typing import Any

from webui.health_cards import CardStatus, duration, health_cards, size

HEALTHY: dict[str, Any] = {
    "reachable": True, "fail_policy": "open", "uptime": 3725.0, "workers": 2,
    "workers_alive": 2, "packets": 1234567, "bytes": 3 * 1024**3, "queue_drops": 0,
    "kernel_unseen": 0, "uninspected_packets": 0, "events_dropped": 0,
    "event_store": {"failing": 0, "write_errors": 0}, "rules_loaded": 13, "policy_version": 4,
    "alerts": {"sent": 3, "failures": 0, "queued": 0, "dropped": 0},
}  # fmt: skip


def _by_id(health: dict[str, Any]) -> dict[str, Any]:
    return {c.id: c for c in health_cards(health)}


def test_a_healthy_gateway_is_green_with_units() -> None:
    cards = _by_id(HEALTHY)
    assert cards["h-reachable"].status is CardStatus.OK
    assert cards["h-reachable"].hint == "up 1 h 2 min"
    assert (cards["h-workers"].value, cards["h-workers"].status) == ("2 / 2", CardStatus.OK)
    assert (cards["h-packets"].value, cards["h-packets"].unit) == ("1,234,567", "packets")
    assert (cards["h-bytes"].value, cards["h-bytes"].unit) == ("3.0", "GiB")
    assert cards["h-alerts"].value == "3 / 0 / 0 / 0"
    assert all(c.status in (CardStatus.OK, CardStatus.NONE) for c in cards.values())
    assert cards["h-drops"].as_json()["status"] == "ok"


def test_losses_warn_and_what_stops_protection_is_red() -> None:
    cards = _by_id({**HEALTHY, "workers_alive": 1, "queue_drops": 7, "uninspected_packets": 2,
                    "events_dropped": 1, "event_store": {"failing": 1, "write_errors": 3},
                    "alerts": {"sent": 1, "failures": 2, "queued": 0, "dropped": 0},
                    "rules_loaded": 0})  # fmt: skip
    assert cards["h-workers"].status is CardStatus.BAD
    assert cards["h-store"].status is CardStatus.BAD and cards["h-store"].hint == "3 failed writes"
    for warn in ("h-drops", "h-uninspected", "h-events-dropped", "h-alerts", "h-rules"):
        assert cards[warn].status is CardStatus.WARN, warn


def test_unreachable_and_older_gateways() -> None:
    (card,) = health_cards({"reachable": False, "error": "control socket /x: refused"})
    assert (card.id, card.value, card.status) == ("h-reachable", "unreachable", CardStatus.BAD)
    assert "refused" in card.hint
    older = _by_id({**HEALTHY, "event_store": None, "alerts": None})
    assert older["h-store"].status is CardStatus.NONE
    assert older["h-alerts"].value == "no alert dispatcher"


def test_units() -> None:
    assert size(512) == ("512", "B") and size(1536) == ("1.5", "KiB") and size(None)[0] == "–"
    assert duration(59) == "up 0 min 59 s" and duration(2 * 86400 + 7200) == "up 2 d 2 h"
