"""The dashboard's health figures as cards: a label, a value with its unit and a status colour
(`CardStatus`), built once here from `webui.services.gateway_status()` for the page and for
/dashboard/data, so the page and its refresh script never judge a figure differently.

Statuses: `bad` for what stops protection (gateway unreachable, a dead worker, the event store
failing), `warn` for what lost something while protection went on (queue drops, packets passed
uninspected, events dropped, alert deliveries failed or given up), `ok` otherwise; `none` for
figures that are neither good nor bad (counts, versions) and for every figure while the gateway
cannot be reached. Each card keeps its element id (`h-*`) so scripts and tests find it.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


class CardStatus(enum.Enum):
    OK = "ok"
    WARN = "warn"
    BAD = "bad"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Card:
    id: str
    label: str
    value: str
    unit: str
    status: CardStatus
    hint: str = ""

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


def count(value: Any) -> str:
    """An integer with thousands separators; an unknown figure is "–"."""
    return f"{int(value):,}" if isinstance(value, int | float) else "–"


def size(value: Any) -> tuple[str, str]:
    """Bytes as (number, binary unit), e.g. (\"1.5\", \"MiB\")."""
    if not isinstance(value, int | float):
        return "–", "bytes"
    n, unit = float(value), 0
    while n >= 1024 and unit < len(BYTE_UNITS) - 1:
        n, unit = n / 1024, unit + 1
    return (f"{n:.0f}" if unit == 0 else f"{n:.1f}"), BYTE_UNITS[unit]


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    s = int(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"up {days} d {hours} h"
    return f"up {hours} h {minutes} min" if hours else f"up {minutes} min {s % 60} s"


def _loss(value: Any) -> CardStatus:
    return CardStatus.WARN if isinstance(value, int | float) and value > 0 else CardStatus.OK


def _alerts(alerts: Any) -> Card:
    if not alerts:
        return Card("h-alerts", "Alerts sent / failed / waiting / given up",
                    "no alert dispatcher", "", CardStatus.NONE,
                    "the gateway has no SQLite event store")  # fmt: skip
    figures = [alerts.get(k) for k in ("sent", "failures", "queued", "dropped")]
    value = " / ".join(str(int(f or 0)) for f in figures)
    lost = int(figures[1] or 0) + int(figures[3] or 0)
    return Card("h-alerts", "Alerts sent / failed / waiting / given up", value, "",
                CardStatus.WARN if lost else CardStatus.OK)  # fmt: skip


def _store(store: Any) -> Card:
    if not store:  # an older gateway, or no event store configured
        return Card("h-store", "Event store", "–", "", CardStatus.NONE, "not reported")
    failing = bool(store.get("failing"))
    return Card("h-store", "Event store", "failing" if failing else "writing", "",
                CardStatus.BAD if failing else CardStatus.OK,
                f"{count(store.get('write_errors'))} failed writes")  # fmt: skip


def health_cards(health: dict[str, Any]) -> list[Card]:
    """The cards of one `gateway_status()` answer, in the order the dashboard shows them."""
    if not health.get("reachable"):
        return [Card("h-reachable", "Gateway", "unreachable", "", CardStatus.BAD,
                     str(health.get("error", "")))]  # fmt: skip
    alive, workers = health.get("workers_alive"), health.get("workers")
    size_value, size_unit = size(health.get("bytes"))
    rules = health.get("rules_loaded")
    return [
        Card("h-reachable", "Gateway", "running", "", CardStatus.OK,
             duration(health.get("uptime"))),
        Card("h-workers", "Workers alive", f"{alive} / {workers}", "",
             CardStatus.OK if workers and alive == workers else CardStatus.BAD),
        Card("h-fail", "Failure policy", str(health.get("fail_policy") or "–"), "",
             CardStatus.NONE, "what the kernel does with packets no worker can take"),
        Card("h-packets", "Packets inspected", count(health.get("packets")), "packets",
             CardStatus.NONE),
        Card("h-bytes", "Bytes inspected", size_value, size_unit, CardStatus.NONE),
        Card("h-drops", "Queue drops (kernel)", count(health.get("queue_drops")), "packets",
             _loss(health.get("queue_drops"))),
        Card("h-unseen", "Queued, not seen by workers", count(health.get("kernel_unseen")),
             "packets", _loss(health.get("kernel_unseen"))),
        Card("h-uninspected", "Passed uninspected", count(health.get("uninspected_packets")),
             "packets", _loss(health.get("uninspected_packets")), "queue full or no worker"),
        Card("h-events-dropped", "Events dropped", count(health.get("events_dropped")),
             "events", _loss(health.get("events_dropped")), "event queue full"),
        _store(health.get("event_store")),
        Card("h-rules", "Rules loaded", count(rules), "rules",
             CardStatus.WARN if rules == 0 else CardStatus.OK),
        Card("h-policy", "Policy version", str(health.get("policy_version") or "–"), "",
             CardStatus.NONE),
        _alerts(health.get("alerts")),
    ]  # fmt: skip
