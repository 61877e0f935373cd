"""Health messages and their delivery through the alert channels of the policy store.

A raised condition becomes one message titled "health: <title>"; a resolved one "resolved:
<title>", with the same severity (so it reaches every channel the alert reached: a channel
takes messages whose severity is <= its `min_severity`). The message's `event` is a
structured record `{"event_type": "health", "health": {...}}` so a webhook receiver or a
SIEM reads the condition, its state and detail without parsing text.

Guarantees: a message a channel refuses (AlertSendError) is kept for that channel and tried
again at the next check, in order, for at most RETRY_FOR seconds (then given up and logged);
a channel removed or disabled meanwhile gets nothing more. Nothing here raises for a failing
receiver or a missing policy store.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gateway.alerts.channels import AlertMessage, AlertSendError, Channel, list_channels, send
from gateway.alerts.dispatcher import RETRY_FOR
from gateway.health.state import Transition
from gateway.policy.store import Store

__all__ = ["Delivery", "deliver", "health_message"]

log = logging.getLogger("vpatch.health")

Sender = Callable[[Channel, AlertMessage], None]
Delivery = tuple[int, str]  # (channel id, message as JSON) not delivered yet
HEALTH_KIND: Final = "health"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def health_message(change: Transition, now: float, host: str | None = None) -> AlertMessage:
    cond = change.condition
    host = host or socket.gethostname()
    if change.failing:
        title = f"health: {cond.title}"
        text = f"{host}: {cond.title}: {change.detail}"
    else:
        title = f"resolved: {cond.title}"
        text = (f"{host}: {cond.title} resolved (failing since {_when(change.since)}, "
                f"{now - change.since:.0f} s): {change.detail}")  # fmt: skip
    record = {
        "event_type": "health", "host": host,
        "health": {"condition": cond.value, "state": "failing" if change.failing else "resolved",
                   "detail": change.detail, "since": _when(change.since)},
    }  # fmt: skip
    return AlertMessage(HEALTH_KIND, title, text, cond.severity, now, record)


def _message(text: str) -> AlertMessage:
    data: Any = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return AlertMessage(**data)


def _channels(policy_db: Path) -> list[Channel]:
    if not policy_db.exists():
        return []
    try:
        with Store(policy_db) as store:
            return [c for c in list_channels(store) if c.enabled]
    except Exception as err:  # noqa: BLE001 - a broken store must not stop the check
        log.error("health: alert channels unreadable from %s: %r", policy_db, err)
        return []


def deliver(
    policy_db: Path, messages: Sequence[AlertMessage], pending: Sequence[Delivery], now: float,
    sender: Sender = send,
) -> tuple[int, list[Delivery]]:  # fmt: skip
    """Send what `pending` holds, then `messages`, through every enabled channel that takes
    them; (messages sent, what is left for the next check)."""
    channels = {c.id: c for c in _channels(policy_db)}
    queue: list[Delivery] = list(pending)
    for msg in messages:
        text = json.dumps(asdict(msg))
        queue.extend((c.id, text) for c in channels.values() if msg.severity <= c.min_severity)
    sent = 0
    left: list[Delivery] = []
    failed: set[int] = set()
    for cid, text in queue:
        ch = channels.get(cid)
        if ch is None:
            continue  # removed or disabled since
        try:
            msg = _message(text)
        except (ValueError, TypeError) as err:
            log.warning("health: a kept message is unreadable (%s), given up", err)
            continue
        if now - msg.timestamp > RETRY_FOR:
            log.warning("health: %r undelivered to %r for %.0f s, given up", msg.title, ch.name,
                        RETRY_FOR)  # fmt: skip
            continue
        if cid in failed:  # keep the order: nothing overtakes a message that failed
            left.append((cid, text))
            continue
        try:
            sender(ch, msg)
            sent += 1
        except AlertSendError as err:
            log.warning("health alert not delivered: %s", err)
            failed.add(cid)
            left.append((cid, text))
    return sent, left
