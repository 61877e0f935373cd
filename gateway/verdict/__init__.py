"""Verdicts: the decision record the engine returns for a packet (its action is a
gateway.vocabulary.Action)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.vocabulary import Action

if TYPE_CHECKING:
    from gateway.events.eve import Event


@dataclass(frozen=True, slots=True)
class Decision:
    """What the engine decided for one packet.

    action: ACCEPT / ALERT pass the packet; DROP / RESET stop it.
    final: the flow needs no more inspection; the intake may bypass it in the kernel (connmark).
    events: alerts and drops raised by this packet (may be empty).
    done_to_server / done_to_client: that direction of the flow needs no more inspection while
        the other still does; the intake may stop the kernel queueing that direction only.
    reopening: a SYN opening a new connection on the ports of a blocked flow; the intake has
        the kernel queue this connection's handshake, so the server's SYN+ACK that replaces
        the blocked flow reaches the engine (gateway/flow/table.py).
    """

    action: Action
    final: bool = False
    events: tuple[Event, ...] = field(default=())
    done_to_server: bool = False
    done_to_client: bool = False
    reopening: bool = False


ACCEPT = Decision(Action.ACCEPT)
ACCEPT_FINAL = Decision(Action.ACCEPT, final=True)
