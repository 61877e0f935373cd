"""gateway/policy/exceptions.py on a fresh policy store: exceptions are validated, expire,
and are audited when added and deleted; a URI scope is made from literal text, normalised as
the engine normalises a request's URI, and what is stored compiles to what covers that request
(never to a prefix unless asked for)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.session import request_uri
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.exceptions import PolicyExceptions, UriScope, stored_uri_scope, uri_scope
from gateway.policy.store import Store, StoreError
from tests.policy.test_compiled_exceptions import Exc

SERVER = "198.18.0.20"


def test_add_list_delete_are_audited(store: Store) -> None:
    exceptions = PolicyExceptions(store)
    e = exceptions.add_exception("198.18.0.20/32", "fp", "alice", 9000100, port=80)
    assert (e.host, e.port, e.rule_id, e.created_by) == ("198.18.0.20", 80, 9000100, "alice")
    assert exceptions.list_exceptions() == [e]
    exceptions.delete_exception(e.id, "bob")
    assert exceptions.list_exceptions() == []
    with pytest.raises(StoreError, match="no such exception"):
        exceptions.delete_exception(e.id, "bob")
    audit = list(reversed(store.list_audit()))
    assert [(a.actor, a.action, a.target) for a in audit] == [
        ("alice", "exception.add", "198.18.0.20"),
        ("bob", "exception.delete", "198.18.0.20"),
    ]
    assert audit[0].detail["after"]["reason"] == "fp"


def test_expired_exceptions_are_listed_only_on_request(store: Store) -> None:
    exceptions = PolicyExceptions(store)
    e = exceptions.add_exception("198.18.0.20", "r", "a", expires_at=time.time() + 3600)
    assert e.active(time.time()) and not e.active(time.time() + 7200)
    store.db.execute("UPDATE exceptions SET expires_at = ? WHERE id = ?", (time.time() - 1, e.id))
    assert exceptions.list_exceptions(include_expired=False) == []
    assert [x.id for x in exceptions.list_exceptions()] == [e.id]


def test_validation_names_the_value(store: Store) -> None:
    exceptions = PolicyExceptions(store)
    with pytest.raises(StoreError, match="'not-an-ip'"):
        exceptions.add_exception("not-an-ip", "r", "a")
    with pytest.raises(StoreError, match="reason"):
        exceptions.add_exception("198.18.0.20", "  ", "a")
    with pytest.raises(StoreError, match="past"):
        exceptions.add_exception("198.18.0.20", "r", "a", expires_at=time.time() - 1)
    with pytest.raises(StoreError, match="65536"):
        exceptions.add_exception("198.18.0.20", "r", "a", port=65536)
    with pytest.raises(StoreError, match="uri"):
        exceptions.add_exception("198.18.0.20", "r", "a", uri="")


# -- URI scopes: creation agrees with matching (issue 15, finding 5) ---------------------------


def _covers(stored: str, uri: str) -> bool:
    """Whether the engine's compiled form of `stored` covers a request whose http.uri is `uri`."""
    p = CompiledPolicy(exceptions=[Exc(1, 10, SERVER, uri=stored)])
    return p.exception(SERVER, 10, 80, uri, 0.0) is not None


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/*", "/*"),
        ("/app/*", "/app/*"),
        ("/A/./b/../C.ASP?x=1", "/a/c.asp"),
        ("/scripts/..%255c../winnt/system32/cmd.exe?/c+dir", "/winnt/system32/cmd.exe"),
        ("/a%3fb", "/a"),  # a %-encoded "?" is a query once decoded, as the engine sees it
        ("/x%20", "/x "),
        ("/%u0041dmin", "/admin"),
    ],
)
def test_a_request_target_is_literal_normalised_and_exact(target: str, path: str) -> None:
    scope = uri_scope(target, drop_query=True)
    assert scope == UriScope(path, prefix=False)
    assert _covers(scope.stored, request_uri(target.encode("latin-1"), None))
    assert _covers(scope.stored, path + "?other=1")
    assert not _covers(scope.stored, "/")
    assert not _covers(scope.stored, path + "x")
    assert not _covers(scope.stored, "/index.html")


def test_only_an_explicit_prefix_is_a_prefix() -> None:
    exact = uri_scope("/app/*")
    assert exact.stored == "/app/%2a" and not _covers(exact.stored, "/app/x")
    prefix = uri_scope("/app/", prefix=True)
    assert prefix.stored == "/app/*" and _covers(prefix.stored, "/app/x/y")
    assert not _covers(prefix.stored, "/application")
    with pytest.raises(StoreError, match="covers every URI"):
        uri_scope("/./x/..", prefix=True)
    with pytest.raises(StoreError, match="empty once normalised"):
        uri_scope("")


def test_stored_exceptions_keep_a_star_literal(store: Store) -> None:
    exc = PolicyExceptions(store).add_exception("198.18.0.20", "fp", "a", 10, uri="/*")
    assert exc.uri == "/%2a" and exc.uri_scope() == UriScope("/*", prefix=False)
    assert not _covers(exc.uri, "/anything")
    shown = UriScope("/A", prefix=False)  # not what uri_scope makes of it: refused
    with pytest.raises(StoreError, match="not a normalised URI"):
        PolicyExceptions(store).add_exception("198.18.0.20", "fp", "a", 10, uri=shown)


TARGET_CHARS = st.sampled_from(list("/.*?%\\ab AZ09+;#\x00\xe9") + ["%2e", "%2f", "%25", "%u002f"])


@settings(max_examples=400, deadline=None)
@given(st.lists(TARGET_CHARS, max_size=24).map("".join))
def test_an_exception_from_any_target_covers_that_request_and_is_never_a_prefix(
    target: str,
) -> None:
    try:
        scope = uri_scope("/" + target, drop_query=True)
    except StoreError:
        return  # refused, with a message: nothing stored
    assert not scope.prefix and "?" not in scope.path
    assert stored_uri_scope(scope.stored) == scope
    assert _covers(scope.stored, request_uri(("/" + target).encode("latin-1"), None))
    assert not _covers(scope.stored, scope.path + "/vpatch-other")
