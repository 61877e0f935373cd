"""Login throttling for the admin UI (table `login_attempts` of gateway/policy/store.py,
migrations 1 and 5): slows password guessing without letting an attacker lock out the admin.

A `LoginAttempt` names the user name tried, the real client (the UI resolves it through its
trusted proxies, webui/auth.py) and, when the browser shows a valid device cookie of that very
account (issued at an earlier successful login), that device. Each counter holds the failures
since the last success of the same key, within THROTTLE_WINDOW_S; past `free` failures each
attempt must wait 2**k seconds (k = failures beyond the free ones) after the last one, capped:
- per client: every failure from that client (unknown names too), CLIENT_FREE_FAILURES free,
  capped at CLIENT_MAX_DELAY_S: one client guessing or polling names slows only itself;
- per account: failures against an existing account from clients without its device cookie
  (ACCOUNT_FREE_FAILURES free, capped at ACCOUNT_MAX_DELAY_S): guessing from many addresses
  is slowed, and a fresh browser of the real user waits at most that long;
- per device: an attempt with the account's device cookie counts only that device's own
  failures (DEVICE_FREE_FAILURES, CLIENT_MAX_DELAY_S) and no client or account counter, so
  the admin's own browser logs in during any attack on the account or from the same network.
Failures for user names that do not exist never count against any account. A refused attempt
(still waiting) is not recorded and does not prolong anything. At most MAX_LOGIN_ATTEMPT_ROWS
rows are kept (the oldest are pruned).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.store import MAX_NAME_LEN, Store

THROTTLE_WINDOW_S = 3600.0
CLIENT_FREE_FAILURES = 3
CLIENT_MAX_DELAY_S = 900.0
ACCOUNT_FREE_FAILURES = 5
ACCOUNT_MAX_DELAY_S = 60.0
DEVICE_FREE_FAILURES = 3
MAX_LOGIN_ATTEMPT_ROWS = 100_000  # older rows are pruned beyond this
MAX_SOURCE_LEN = 64
MAX_DEVICE_LEN = 64


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    username: str
    client: str  # the real client's address
    device: str = ""  # the account's device id from a valid device cookie, "" without one


@dataclass(frozen=True, slots=True)
class _Counter:
    where: str  # SQL condition on login_attempts selecting this key's rows
    args: tuple[str, ...]
    free: int
    cap: float


class LoginThrottle:
    """Login attempts over one `Store`; `now` is passed in (seconds since the epoch)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def _counters(self, attempt: LoginAttempt) -> tuple[_Counter, ...]:
        if attempt.device:
            return (
                _Counter("device = ?", (attempt.device[:MAX_DEVICE_LEN],), DEVICE_FREE_FAILURES,
                         CLIENT_MAX_DELAY_S),
            )  # fmt: skip
        return (
            _Counter("source = ? AND device = ''", (attempt.client[:MAX_SOURCE_LEN],),
                     CLIENT_FREE_FAILURES, CLIENT_MAX_DELAY_S),
            _Counter("username = ? AND account = 1 AND device = ''",
                     (attempt.username[:MAX_NAME_LEN],), ACCOUNT_FREE_FAILURES,
                     ACCOUNT_MAX_DELAY_S),
        )  # fmt: skip

    def _wait(self, counter: _Counter, now: float) -> float:
        (last_ok,) = self.db.execute(
            f"SELECT MAX(ts) FROM login_attempts WHERE {counter.where} AND success = 1",
            counter.args,
        ).fetchone()
        since = max(last_ok or 0.0, now - THROTTLE_WINDOW_S)
        count, last = self.db.execute(
            f"SELECT COUNT(*), MAX(ts) FROM login_attempts "
            f"WHERE {counter.where} AND success = 0 AND ts > ?",
            (*counter.args, since),
        ).fetchone()
        extra = int(count) - counter.free
        if extra < 0:
            return 0.0
        return float(last) + min(2.0**extra, counter.cap) - now

    def wait(self, attempt: LoginAttempt, now: float) -> float:
        """Seconds this attempt must still wait (0: it may be checked now)."""
        return max([0.0, *(self._wait(c, now) for c in self._counters(attempt))])

    def record(self, attempt: LoginAttempt, success: bool, account: bool, now: float) -> None:
        """Record a checked attempt; `account`: the user name exists. A failure is audited."""
        username = attempt.username[:MAX_NAME_LEN]
        client = attempt.client[:MAX_SOURCE_LEN]
        with self.store.transaction():
            self.db.execute(
                "INSERT INTO login_attempts(ts, username, source, success, account, device) "
                "VALUES (?,?,?,?,?,?)",
                (now, username, client, int(success), int(account),
                 attempt.device[:MAX_DEVICE_LEN]),
            )  # fmt: skip
            self.db.execute(
                "DELETE FROM login_attempts WHERE id <= (SELECT MAX(id) FROM login_attempts) - ?",
                (MAX_LOGIN_ATTEMPT_ROWS,),
            )
            if not success:
                self.store.audit(username, "login.failed", client, None, None)
