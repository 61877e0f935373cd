"""`vpatch bench` command line: the --only subject and --tests lists (gateway/commands/bench.py)."""

from __future__ import annotations

import argparse

import pytest

from gateway.commands.bench import parse_only, parse_tests


def test_parse_only() -> None:
    assert parse_only("vpatch,kernel") == ("kernel", "vpatch")
    assert parse_only("suricata") == (
        "suricata-default", "suricata-tuned", "suricata-inspect-all"
    )  # fmt: skip
    assert parse_only("vpatch,suricata-inspect-all") == ("suricata-inspect-all", "vpatch")
    with pytest.raises(argparse.ArgumentTypeError, match="'snort'"):
        parse_only("kernel,snort")


def test_parse_tests() -> None:
    assert parse_tests("http_close, bulk_up") == ("bulk_up", "http_close")
    with pytest.raises(argparse.ArgumentTypeError, match="'keepalive'"):
        parse_tests("keepalive")
    with pytest.raises(argparse.ArgumentTypeError, match="names no test"):
        parse_tests(" , ")
