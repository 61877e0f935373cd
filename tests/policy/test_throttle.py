"""gateway/policy/throttle.py on a fresh policy store, with the clock passed in: backoff per
client, per account and per known device; failures for unknown names lock no account; an
attacker polling names and passwords from one or many addresses never keeps the admin's own
browser out, and a new browser of the admin waits at most ACCOUNT_MAX_DELAY_S."""

from __future__ import annotations

import pytest

from gateway.policy.accounts import Accounts
from gateway.policy.store import Store
from gateway.policy.throttle import (
    ACCOUNT_FREE_FAILURES,
    ACCOUNT_MAX_DELAY_S,
    CLIENT_FREE_FAILURES,
    LoginAttempt,
    LoginThrottle,
)

NOW = 1_000_000.0


@pytest.fixture
def throttle(store: Store) -> LoginThrottle:
    Accounts(store).create_user("admin", "admin-password", "admin", "root")
    return LoginThrottle(store)


def fail(throttle: LoginThrottle, attempt: LoginAttempt, now: float, account: bool) -> None:
    assert throttle.wait(attempt, now) == 0
    throttle.record(attempt, False, account, now)


def test_backoff_per_client(throttle: LoginThrottle) -> None:
    attacker = LoginAttempt("nobody", "198.18.0.66")
    for i in range(CLIENT_FREE_FAILURES):
        fail(throttle, LoginAttempt(f"nobody{i}", "198.18.0.66"), NOW + i, account=False)
    last = NOW + CLIENT_FREE_FAILURES - 1
    assert throttle.wait(attacker, last) == pytest.approx(1.0)
    throttle.record(attacker, False, False, last + 1)
    throttle.record(attacker, False, False, last + 3)
    assert throttle.wait(attacker, last + 3) == pytest.approx(4.0)  # 2**2
    # the same client with another name, but never the admin from elsewhere
    assert throttle.wait(LoginAttempt("other", "198.18.0.66"), last + 3) > 0
    assert throttle.wait(LoginAttempt("admin", "198.18.0.10"), last + 3) == 0
    throttle.record(LoginAttempt("x", "198.18.0.66"), True, True, last + 20)
    assert throttle.wait(attacker, last + 20) == 0  # a success resets the client's count


def test_unknown_names_from_many_addresses_lock_no_account(throttle: LoginThrottle) -> None:
    for i in range(200):
        fail(throttle, LoginAttempt("admin2", f"198.18.{i // 250}.{i % 250}"), NOW + i, False)
    assert throttle.wait(LoginAttempt("admin2", "198.18.1.1"), NOW + 200) == 0
    assert throttle.wait(LoginAttempt("admin", "198.18.1.1"), NOW + 200) == 0


def test_guessing_from_many_addresses_slows_the_account_but_not_its_device(
    throttle: LoginThrottle,
) -> None:
    for i in range(30):  # one wrong admin password from each of 30 addresses, each in time
        attempt = LoginAttempt("admin", f"198.18.0.{i + 1}")
        now = NOW + i * (ACCOUNT_MAX_DELAY_S + 1)
        fail(throttle, attempt, now, account=True)
    last = NOW + 29 * (ACCOUNT_MAX_DELAY_S + 1)
    fresh_browser = LoginAttempt("admin", "198.18.5.5")
    wait = throttle.wait(fresh_browser, last)
    assert 0 < wait <= ACCOUNT_MAX_DELAY_S  # a short delay, then the right password is checked
    assert throttle.wait(fresh_browser, last + wait) == 0
    # the admin's own browser (device cookie) is not held up at all, even from an address
    # the attacker shares
    assert throttle.wait(LoginAttempt("admin", "198.18.0.1", "dev-1"), last) == 0
    # failures with the device cookie count for that device only
    for i in range(3):
        fail(throttle, LoginAttempt("admin", "198.18.5.5", "dev-1"), last + i, True)
    assert throttle.wait(LoginAttempt("admin", "198.18.5.5", "dev-1"), last + 2) > 0
    assert throttle.wait(LoginAttempt("admin", "198.18.5.5", "dev-2"), last + 2) == 0


def test_few_failures_are_free(throttle: LoginThrottle) -> None:
    for i in range(ACCOUNT_FREE_FAILURES - 1):
        fail(throttle, LoginAttempt("admin", f"198.18.0.{i + 1}"), NOW + i, account=True)
    assert throttle.wait(LoginAttempt("admin", "198.18.0.99"), NOW + 10) == 0
