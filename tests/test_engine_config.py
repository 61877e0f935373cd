"""Tests for gateway/engine_config.py: the engine's bounds come from the configuration's
declarations (defaults and bounds), never from a second copy."""

from __future__ import annotations

import pytest

from gateway.config import SETTINGS, parse_config
from gateway.engine_config import EngineConfig
from gateway.errors import ConfigError
from gateway.events.sink import DEFAULT_MAX_QUEUE
from gateway.flow.table import DEFAULT_MAX_PENDING, DEFAULT_TCP_CLOSED_IDLE

KEYS = {
    "max_flows": "engine.max_flows",
    "tcp_idle": "engine.tcp_idle",
    "udp_idle": "engine.udp_idle",
    "depth_to_server": "stream_depth.to_server",
    "depth_to_client": "stream_depth.to_client",
    "max_pending": "engine.max_pending",
    "http_whole_connection": "engine.http_whole_connection",
    "http_memo_entries": "engine.http_memo_entries",
}


def test_defaults_are_the_declared_ones() -> None:
    config = EngineConfig()
    for name, key in KEYS.items():
        assert getattr(config, name) == SETTINGS[key].default, name
    assert config.fail_open and not config.kernel_checked_syn
    assert config.tcp_closed_idle == DEFAULT_TCP_CLOSED_IDLE
    assert EngineConfig.from_gateway(parse_config("")) == config
    assert config.max_pending == DEFAULT_MAX_PENDING
    assert SETTINGS["events.max_queue"].default == DEFAULT_MAX_QUEUE


def test_from_gateway_takes_every_key() -> None:
    gateway = parse_config(
        "fail_policy: closed\n"
        "stream_depth: {to_server: 100, to_client: 0}\n"
        "engine: {max_flows: 7, tcp_idle: 30, udp_idle: 5, max_pending: 9,\n"
        "         http_whole_connection: false, http_memo_entries: 0}\n"
    )
    config = EngineConfig.from_gateway(gateway)
    assert (config.depth_to_server, config.depth_to_client) == (100, 0)
    assert (config.max_flows, config.tcp_idle, config.udp_idle, config.max_pending) == (
        7,
        30.0,
        5.0,
        9,
    )
    assert not config.fail_open and not config.http_whole_connection
    assert config.http_memo_entries == 0


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"max_flows": 0}, "EngineConfig.max_flows: engine.max_flows: 0 is out of range 1.."),
        ({"depth_to_server": -1}, "EngineConfig.depth_to_server: stream_depth.to_server: -1 is"),
        ({"max_pending": 1.5}, "EngineConfig.max_pending: engine.max_pending: expected an int"),
        ({"tcp_idle": 0.0}, "EngineConfig.tcp_idle: engine.tcp_idle: 0.0 is out of range 1.."),
        ({"http_memo_entries": 1 << 21}, "engine.http_memo_entries: 2097152 is out of range"),
        ({"tcp_closed_idle": 0.0}, "EngineConfig.tcp_closed_idle must be > 0: 0.0"),
    ],
)
def test_values_past_the_declared_bounds_are_refused(
    changes: dict[str, object], error: str
) -> None:
    with pytest.raises(ConfigError, match=error.replace(".", r"\.")):
        EngineConfig(**changes)  # type: ignore[arg-type]
