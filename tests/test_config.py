"""Tests for gateway/config.py: the declarations, the checks built from them, and the docs.

Every declared value is checked the same way from one table (`SETTINGS`): its default reads back
as itself, values past its bounds and values of the wrong type are refused naming the file, the
line and the key. The cases after that are the checks no single declaration says: keys that
must fit together, lists, paths, the file itself.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from pathlib import Path

import pytest
import yaml

from gateway.config import (
    BUNDLED_RULES,
    MAX_CONFIG_BYTES,
    SETTINGS,
    Backend,
    Declared,
    FailPolicy,
    GatewayConfig,
    example_yaml,
    keys_table,
    load_config,
    parse_config,
    value_at,
)
from gateway.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
KEYS = sorted(SETTINGS)
NUMBERS = [k for k in KEYS if SETTINGS[k].kind in (int, float)]
BOUNDED = [k for k in KEYS if SETTINGS[k].setting.lo is not None or SETTINGS[k].setting.hi]


def _text(key: str, value: object) -> str:
    """YAML that sets the dotted `key` to `value` and nothing else."""
    data: object = value
    for name in reversed(key.split(".")):
        data = {name: data}
    return yaml.safe_dump(data, default_flow_style=False)


def _line(text: str, key: str) -> int:
    leaf = key.split(".")[-1]
    return next(i for i, s in enumerate(text.splitlines(), 1) if s.strip().startswith(f"{leaf}:"))


def _refused(tmp_path: Path, key: str, value: object) -> str:
    """The error loading a file that sets `key` to `value`; asserts it names file, line, key."""
    path = tmp_path / "gw.yaml"
    text = _text(key, value)
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{_line(text, key)}: {key}: "), message
    return message


def _as_yaml(d: Declared, value: object) -> object:
    """A parsed value as the YAML data that reads back as it."""
    if isinstance(value, tuple):
        return [_as_yaml(d, v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def _past_bounds(d: Declared) -> list[object]:
    s = d.setting
    if d.kind is str:
        assert s.lo is not None and s.hi is not None and s.chars is not None
        too_short = ["x" * (int(s.lo) - 1)] if s.lo else []  # lo 0: only chars and length
        return ["x" * (int(s.hi) + 1), *too_short, "no dash!"]
    if d.kind in (int, float):
        assert s.lo is not None and s.hi is not None
        return [s.lo - 1, s.hi + 1]
    assert s.hi is not None  # a list: at most hi entries
    return [[f"198.18.{i // 256}.{i % 256}" for i in range(int(s.hi) + 1)]]


# --------------------------------------------------------------------------------------------
# Every declaration


def test_no_file_means_every_default() -> None:
    config = load_config(None)
    assert config == GatewayConfig() == dataclasses.replace(parse_config(""), source="<defaults>")
    assert config.rules == (BUNDLED_RULES,) and config.fail_policy is FailPolicy.OPEN
    assert [value_at(config, k) for k in SETTINGS] == [d.default for d in SETTINGS.values()]


def test_every_key_is_declared_with_help() -> None:
    for key, d in SETTINGS.items():
        assert d.name == key and d.setting.help.endswith("."), key


@pytest.mark.parametrize("key", NUMBERS)
def test_every_number_has_both_bounds(key: str) -> None:
    s = SETTINGS[key].setting
    assert s.lo is not None and s.hi is not None and s.lo < s.hi


@pytest.mark.parametrize("key", KEYS)
def test_every_default_is_within_its_bounds(key: str) -> None:
    """Written to a file, each default reads back as itself: the checks accept it."""
    d = SETTINGS[key]
    assert value_at(parse_config(_text(key, _as_yaml(d, d.default))), key) == d.default


@pytest.mark.parametrize("key", BOUNDED)
def test_every_value_past_its_bounds_is_refused(tmp_path: Path, key: str) -> None:
    for value in _past_bounds(SETTINGS[key]):
        message = _refused(tmp_path, key, value)
        assert "out of range" in message or "must be" in message or "at most" in message


@pytest.mark.parametrize("key", NUMBERS)
def test_every_bound_itself_is_accepted(key: str) -> None:
    d = SETTINGS[key]
    if d.key[0] in ("queues", "marks"):  # these keys must also fit together: see below
        return
    for bound in (d.setting.lo, d.setting.hi):
        assert value_at(parse_config(_text(key, bound)), key) == bound


@pytest.mark.parametrize("key", KEYS)
def test_every_value_of_the_wrong_type_is_refused(tmp_path: Path, key: str) -> None:
    _refused(tmp_path, key, {"nested": 1})


# --------------------------------------------------------------------------------------------
# What the messages say


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("queues:\n  first: 0\n  cuont: 2\n",
         "<string>:3: queues.cuont: unknown key (allowed: balance, count, first, max_len, "
         "verdict_batch)"),
        ("colour: blue\n",
         "<string>:1: colour: unknown key (allowed: control, database, engine, events, "
         + "fail_policy, firewall, gateway, health, limits, marks, metrics, network, policy, "
         + "protected_hosts, queues, resolver, rule_pack, rules, stream_depth, tls_proxy, ui, "
         + "workers)"),
        ("source: x\n", "source: unknown key"),
        ("- 1\n", "<string>:1: <top level>: expected a mapping, got list [1]"),
        ("engine: 5\n", "<string>:1: engine: expected a mapping, got int 5"),
        ("engine: {1: 2}\n", "engine: keys must be strings, got 1"),
        ("queues: {first: 1.5}\n", "queues.first: expected an integer, got 1.5"),
        ("queues: {count: true}\n", "queues.count: expected an integer, got True"),
        ("engine: {tcp_idle: 0}\n", "<string>:1: engine.tcp_idle: 0 is out of range 1..86400"),
        ("engine: {tcp_idle: fast}\n", "engine.tcp_idle: expected a number, got 'fast'"),
        ("workers: {stop_timeout: 0.05}\n", "0.05 is out of range 0.1..600"),
        ("engine: {http_whole_connection: 1}\n", "expected true or false, got 1"),
        ("fail_policy: ajar\n", "<string>:1: fail_policy: 'ajar' is not one of open, closed"),
        ("firewall: {backend: pf}\n", "'pf' is not one of auto, legacy, nft"),
        ("firewall: {chain_prefix: VP-1}\n", "'VP-1' must be 1..12 letters or digits"),
        ("firewall: {chain_prefix: 7}\n", "7 must be 1..12 letters or digits"),
        ("control: {socket: ''}\n", "control.socket: expected a path, got ''"),
        ("events: {jsonl: 5}\n", "events.jsonl: expected a path, got 5"),
        ("rules: {a: 1}\n", "rules: expected a list, got {'a': 1}"),
        ("rules: [/r, '']\n", "<string>:1: rules.1: expected a path, got ''"),
        ("protected_hosts:\n  - 198.18.0.1\n  - 198.18.0.300\n",
         "<string>:3: protected_hosts.1: '198.18.0.300' is not an address or CIDR"),
        ("queues: {first: 65530, count: 8}\n", "queues.count: queues 65530..65537 exceed 65535"),
        ("marks: {bypass: 0x100, mask: 0x100}\n",
         "marks.bypass_to_server: 0x20000000 has bits outside mask 0x100"),
        ("marks: {bypass: 0x100, bypass_to_server: 0x100, bypass_to_client: 0x400, blocked: 0x800,"
         " queued: 0x1000, mask: 0x1F00}\n",
         "<string>:1: marks: bypass, bypass_to_server, bypass_to_client, blocked, queued must not "
         "share bits"),
        ("queues: [\n", "<string>:2: not valid YAML"),
    ],
)  # fmt: skip
def test_refusals_name_the_key_and_the_reason(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert error in str(err.value)


def test_keys_that_fit_together() -> None:
    config = parse_config(
        "queues: {first: 65534, count: 2}\n"
        "marks: {bypass: 0x100, bypass_to_server: 0x200, bypass_to_client: 0x400, blocked: 0x800,"
        " queued: 0x1000, mask: 0x1F00}\n"
    )
    assert config.queues.numbers == range(65534, 65536)
    assert (config.marks.bypass, config.marks.mask) == (0x100, 0x1F00)


# --------------------------------------------------------------------------------------------
# Values


def test_lists_paths_and_null() -> None:
    base = Path("/etc/vpatch")
    config = parse_config(
        "protected_hosts: 198.18.5.7/24\n"  # one scalar stands for a list of one; host bits ok
        "rules: rules.d\n"
        "events: {sqlite: null, jsonl: log/eve.json}\n"
        "control: {socket: /run/x.sock}\n",
        base=base,
    )
    assert config.protected_hosts == (ipaddress.ip_network("198.18.5.0/24"),)
    assert config.rules == (base / "rules.d",)
    assert config.events.sqlite is None and config.events.jsonl == base / "log/eve.json"
    assert config.control.socket == Path("/run/x.sock")
    assert parse_config("rules: [a]\n").rules == (Path("a"),)  # no base: left relative


def test_sections_left_out_or_empty_take_their_defaults() -> None:
    config = parse_config("engine:\nworkers: {max_restarts: 0}\n")
    assert config.engine == GatewayConfig().engine
    assert config.workers == dataclasses.replace(GatewayConfig().workers, max_restarts=0)
    assert config.fail_policy is FailPolicy.OPEN and config.firewall.backend is Backend.AUTO
    assert parse_config("protected_hosts: ['2001:2::20', 198.18.0.20]\n").protected_hosts == (
        ipaddress.ip_network("2001:2::20/128"),
        ipaddress.ip_network("198.18.0.20/32"),
    )


def test_the_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("fail_policy: closed\nrules: [mine]\n")
    config = load_config(path)
    assert config.source == str(path) and config.fail_policy is FailPolicy.CLOSED
    assert config.rules == (tmp_path / "mine",)  # relative to the file's directory
    with pytest.raises(ConfigError, match=f"{tmp_path / 'absent.yaml'}: cannot read"):
        load_config(tmp_path / "absent.yaml")
    path.write_bytes(b"fail_policy: \xff\n")
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 at byte 13"):
        load_config(path)
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than the 1048576 allowed"):
        load_config(path)


# --------------------------------------------------------------------------------------------
# The documentation is built from the declarations


def test_docs_hold_the_key_table() -> None:
    assert keys_table() in DOCS.read_text(encoding="utf-8"), (
        "docs/configuration.md's key table differs from the declarations; paste the output of "
        "`python -c 'from gateway.config import keys_table; print(keys_table(), end=\"\")'`"
    )
    for key in SETTINGS:
        assert f"| `{key}` |" in keys_table()


def test_docs_hold_the_example_and_it_reads() -> None:
    assert f"```yaml\n{example_yaml()}```" in DOCS.read_text(encoding="utf-8"), (
        "docs/configuration.md's example differs from the declarations; paste the output of "
        "`python -c 'from gateway.config import example_yaml; print(example_yaml(), end=\"\")'`"
    )
    example = parse_config(example_yaml())
    assert len(example.protected_hosts) == 3 and example.rules == (Path("/etc/vpatch/rules"),)
    # every other key is set to its default
    assert (
        dataclasses.replace(
            example, protected_hosts=(), rules=(BUNDLED_RULES,), source="<defaults>"
        )
        == GatewayConfig()
    )
    sections = yaml.safe_load(example_yaml())
    assert sorted(sections) == sorted({k.split(".")[0] for k in SETTINGS})
