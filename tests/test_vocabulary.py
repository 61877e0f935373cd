"""Tests for gateway/vocabulary.py: the shared types keep the values the rest relies on."""

from __future__ import annotations

import pytest

from gateway.vocabulary import PROTO_NAMES, PROTO_TCP, PROTO_UDP, Action, Direction, Mode


def test_direction_indexes_and_labels() -> None:
    assert (Direction.TO_SERVER, Direction.TO_CLIENT) == (0, 1)
    assert ["server side", "client side"][Direction.TO_CLIENT] == "client side"
    assert [d.label for d in Direction] == ["to_server", "to_client"]
    assert all(Direction.parse(d.label) is d for d in Direction)


@pytest.mark.parametrize("text", ["both", "TO_SERVER", "0", ""])
def test_direction_parse_refuses_other_spellings(text: str) -> None:
    with pytest.raises(ValueError, match="is not to_server or to_client"):
        Direction.parse(text)


def test_stored_values_do_not_change() -> None:
    # rule YAML, the policy database, EVE JSON and the UI hold these strings
    assert [m.value for m in Mode] == ["off", "detect", "prevent"]
    assert [a.value for a in Action] == ["accept", "alert", "drop", "reset"]
    assert [a for a in Action if a.blocks] == [Action.DROP, Action.RESET]
    assert (PROTO_TCP, PROTO_UDP, PROTO_NAMES[PROTO_TCP]) == (6, 17, "tcp")
