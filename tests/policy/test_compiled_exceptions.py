"""CompiledPolicy exception scopes: rule, host/CIDR, port, URI (exact, query-insensitive,
prefix, normalised), expiry on the clock passed in, validation; and the store's unfolded
snapshot that the workers load."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy.compiled import MAX_EXCEPTIONS, CompiledPolicy, normalize_exception_uri
from gateway.policy.exceptions import PolicyExceptions
from gateway.policy.snapshot import policy_snapshot
from gateway.policy.store import Store


@dataclass(frozen=True)
class Exc:
    id: int
    rule_id: int | None
    host: str
    port: int | None = None
    uri: str | None = None
    expires_at: float | None = None


def test_scopes_by_rule_host_port_and_every_rule() -> None:
    p = CompiledPolicy(
        exceptions=[Exc(1, 10, "198.18.0.20", port=80), Exc(2, None, "198.18.1.0/24")]
    )
    assert p.has_exceptions
    assert p.exception("198.18.0.20", 10, 80, None, 0.0) is not None
    assert p.exception("198.18.0.20", 10, 8080, None, 0.0) is None
    assert p.exception("198.18.0.20", 11, 80, None, 0.0) is None
    assert p.exception("198.18.0.21", 10, 80, None, 0.0) is None
    every = p.exception("198.18.1.77", 999, 445, "/x", 0.0)
    assert every is not None and every.id == 2
    assert p.exception("not-an-address", 10, 80, None, 0.0) is None
    assert not CompiledPolicy().has_exceptions


@pytest.mark.parametrize(
    ("scope", "uri", "covered"),
    [
        ("/a.asp", "/a.asp", True),
        ("/a.asp", "/a.asp?x=1", True),  # no "?" in the exception: query ignored
        ("/a.asp?x=1", "/a.asp?x=2", False),
        ("/A.ASP", "/a.asp", True),  # normalised like http.uri (lower case)
        ("/dir/%2e%2e/a.asp", "/a.asp", True),
        ("/app/*", "/app/deep/x", True),
        ("/app/*", "/application", False),
        ("/a.asp", None, False),  # URI unknown: a URI exception never applies
        ("/a.asp", "/b.asp", False),
    ],
)
def test_uri_matching(scope: str, uri: str | None, covered: bool) -> None:
    p = CompiledPolicy(exceptions=[Exc(1, 10, "198.18.0.20", uri=scope)])
    assert (p.exception("198.18.0.20", 10, 80, uri, 0.0) is not None) is covered
    assert p.wants_uri("198.18.0.20", 10, 0.0) and not p.wants_uri("198.18.0.21", 10, 0.0)


def test_expiry_uses_the_clock_passed_in() -> None:
    p = CompiledPolicy(exceptions=[Exc(1, 10, "198.18.0.20", uri="/x", expires_at=100.0)])
    assert p.exception("198.18.0.20", 10, 80, "/x", 99.9) is not None
    assert p.exception("198.18.0.20", 10, 80, "/x", 100.0) is None
    assert not p.wants_uri("198.18.0.20", 10, 100.0)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (Exc(7, 10, "nonsense"), "exception 7: host 'nonsense'"),
        (Exc(8, 10, "198.18.0.20", port=0), "exception 8: port 0"),
    ],
)
def test_bad_exceptions_are_refused_with_their_id(exc: Exc, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CompiledPolicy(exceptions=[exc])


def test_exception_count_is_bounded() -> None:
    many = (Exc(i, 10, "198.18.0.20") for i in range(MAX_EXCEPTIONS + 1))
    with pytest.raises(ConfigError, match=f"more than {MAX_EXCEPTIONS}"):
        CompiledPolicy(exceptions=many)


def test_normalize_exception_uri() -> None:
    assert normalize_exception_uri(" /Foo/../Bar* ") == ("/bar", True)
    assert normalize_exception_uri("/%41") == ("/a", False)


def test_unfolded_snapshot_and_active_exceptions_from_the_store(tmp_path: Path) -> None:
    with Store(tmp_path / "p.db") as store:
        stored = PolicyExceptions(store)
        stored.add_exception("198.18.0.20", "fp", "a", rule_id=10)
        stored.add_exception("198.18.0.20", "fp", "a", rule_id=11, expires_at=time.time() + 3600)
        stored.add_exception("198.18.0.30", "uri", "a", rule_id=10, uri="/x")
        hosts, groups, assignments = policy_snapshot(store, fold_exceptions=False)
        assert not hosts and not assignments  # nothing folded in
        exceptions = stored.list_exceptions(include_expired=False)
    p = CompiledPolicy(hosts, groups, assignments, exceptions)
    assert p.exception("198.18.0.20", 10, 80, None, time.time()) is not None
    assert p.exception("198.18.0.20", 11, 80, None, time.time() + 7200) is None  # expired
    assert p.exception("198.18.0.30", 10, 80, "/x", time.time()) is not None
