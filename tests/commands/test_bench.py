"""`vpatch bench` command line: the --only subject list (gateway/commands/bench.py)."""

from __future__ import annotations

import argparse

import pytest

from gateway.commands.bench import parse_only


def test_parse_only() -> None:
    assert parse_only("vpatch,kernel") == ("kernel", "vpatch")
    assert parse_only("suricata") == (
        "suricata-default", "suricata-tuned", "suricata-inspect-all"
    )  # fmt: skip
    assert parse_only("vpatch,suricata-inspect-all") == ("suricata-inspect-all", "vpatch")
    with pytest.raises(argparse.ArgumentTypeError, match="'snort'"):
        parse_only("kernel,snort")
