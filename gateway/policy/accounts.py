"""The UI's and the API's accounts in the policy store: users and API tokens (tables users,
api_tokens of gateway/policy/store.py, migrations 1, 5 and 7). Login throttling is
gateway/policy/throttle.py, UI sessions gateway/policy/sessions.py.

Guarantees:
- passwords are stored only as scrypt hashes (hashlib.scrypt, random salt, SCRYPT_N/R/P), API
  tokens only as SHA-256 digests (they are 256-bit random, so a fast hash is enough);
- an unknown user name costs one scrypt run, exactly as a wrong password does (DUMMY_HASH);
- a password change or reset, a role change, disabling and a deletion end every UI session of
  the user, in the same transaction;
- a disabled account cannot log in and its API tokens stop working until it is enabled again;
- a reset password is a random one shown once, and must be changed at the next login
  (`must_change_password`; webui/security.py lets such a session reach only that page);
- the last enabled admin can be neither removed, disabled nor demoted (LastAdminError), checked
  in the transaction of the change (two admins cannot demote each other at the same time);
- an API token works until it is revoked (by its owner or any admin) or its expiry passes;
- every change writes one audit row in its transaction (a failed login too).
Errors are `StoreError` naming the value and the table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.database import Row
from gateway.policy.sessions import end_all
from gateway.policy.store import MAX_LIST, MAX_NAME_LEN, ROLES, Store, StoreError, check_name

SCRYPT_N = 2**14  # ~50 ms per hash here: slow for guessing, fine for a login
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
TOKEN_BYTES = 32
MAX_TOKEN_DAYS = 3650  # the longest expiry a token can be given


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    created: float
    last_login: float | None
    disabled: bool = False
    must_change_password: bool = False


class LastAdminError(StoreError):
    """The change would leave no enabled admin account."""


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    username: str
    name: str
    created: float
    last_used: float | None
    expires: float | None = None  # None: until revoked


# --------------------------------------------------------------------------------------------
# Passwords and tokens


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


# What an unknown user name is checked against: a well-formed hash with our parameters that no
# password matches (its digest is zeros), so an unknown name costs exactly one scrypt run, like
# a wrong password (computing a fresh hash here would cost a second one)
DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${'00' * SALT_BYTES}${'00' * 32}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), want)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(15)


# --------------------------------------------------------------------------------------------
# The tables


class Accounts:
    """Users, API tokens and login attempts, over one `Store` (its connection and audit)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # -- users --------------------------------------------------------------------------------

    def user_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    @staticmethod
    def _user(row: Row) -> User:
        return User(row["id"], row["username"], row["role"], row["created"], row["last_login"],
                    bool(row["disabled"]), bool(row["must_change_password"]))  # fmt: skip

    def get_user(self, username: str) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return self._user(row) if row else None

    def user_by_id(self, user_id: int) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        return self._user(row) if row else None

    def list_users(self) -> list[User]:
        rows = self.db.execute("SELECT * FROM users ORDER BY username LIMIT ?", (MAX_LIST,))
        return [self._user(r) for r in rows]

    def create_user(
        self, username: str, password: str, role: str, actor: str, must_change: bool = False
    ) -> User:
        """A new enabled account; with `must_change` its password is a temporary one."""
        username = check_name(username, "users.username")
        if role not in ROLES:
            raise StoreError(f"users.role {role!r}: must be one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise StoreError(f"users.password for {username!r}: at least 8 characters")
        with self.store.transaction():
            if self.get_user(username) is not None:
                raise StoreError(f"users.username {username!r}: already exists")
            self.db.execute(
                "INSERT INTO users(username, password_hash, role, created, must_change_password) "
                "VALUES (?,?,?,?,?)",
                (username, hash_password(password), role, time.time(), int(must_change)),
            )
            self.store.audit(actor, "user.create", username, None,
                             {"role": role, "must_change_password": must_change})  # fmt: skip
        user = self.get_user(username)
        assert user is not None
        return user

    def set_password(
        self, username: str, password: str, actor: str, must_change: bool = False
    ) -> None:
        """Set `username`'s password and end their sessions; `must_change`: a temporary one."""
        if len(password) < 8:
            raise StoreError(f"users.password for {username!r}: at least 8 characters")
        with self.store.transaction():
            user = self._existing(username)
            self.db.execute(
                "UPDATE users SET password_hash = ?, must_change_password = ? WHERE id = ?",
                (hash_password(password), int(must_change), user.id),
            )
            end_all(self.db, user.id)
            self.store.audit(actor, "user.reset" if must_change else "user.password", username,
                             None, {"must_change_password": must_change})  # fmt: skip

    def reset_password(self, username: str, actor: str) -> str:
        """A new random password for `username`, to be changed at their next login; returned
        once (shown to the admin), never stored in clear. Their sessions end."""
        password = new_password()
        self.set_password(username, password, actor, must_change=True)
        return password

    def change_own_password(self, username: str, current: str, new: str) -> None:
        """The user's own change: `current` must be right and `new` differ from it; clears
        `must_change_password`."""
        row = self.db.execute(
            "SELECT password_hash FROM users WHERE username = ?", (username,)
        ).fetchone()
        if row is None or not check_password(current, row["password_hash"]):
            raise StoreError(f"users.password for {username!r}: the current password is wrong")
        if new == current:
            raise StoreError(f"users.password for {username!r}: the new password is the old one")
        self.set_password(username, new, username)

    def set_disabled(self, username: str, disabled: bool, actor: str) -> None:
        """Disable (sessions end, tokens stop working) or enable an account."""
        with self.store.transaction():
            user = self._existing(username)
            if disabled:
                self._keep_an_admin(user, "disable")
                end_all(self.db, user.id)
            self.db.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user.id))
            self.store.audit(actor, "user.disable" if disabled else "user.enable", username,
                             {"disabled": user.disabled}, {"disabled": disabled})  # fmt: skip

    def _existing(self, username: str) -> User:
        user = self.get_user(username)
        if user is None:
            raise StoreError(f"users.username {username!r}: no such user")
        return user

    def _keep_an_admin(self, user: User, what: str) -> None:
        """LastAdminError when `user` is the only enabled admin (call inside the transaction)."""
        if user.role != "admin" or user.disabled:
            return
        others = self.db.execute(
            "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?",
            (user.id,),
        ).fetchone()[0]
        if not others:
            raise LastAdminError(
                f"users.username {user.username!r}: the last enabled admin; cannot {what} it "
                "(create or enable another admin first)"
            )

    def set_role(self, username: str, role: str, actor: str) -> None:
        """Change a user's role; their sessions end (they log in again with the new role)."""
        if role not in ROLES:
            raise StoreError(f"users.role {role!r}: must be one of {', '.join(ROLES)}")
        with self.store.transaction():
            user = self._existing(username)
            if role != "admin":
                self._keep_an_admin(user, "demote")
            self.db.execute("UPDATE users SET role = ? WHERE id = ?", (role, user.id))
            end_all(self.db, user.id)
            self.store.audit(actor, "user.role", username, {"role": user.role}, {"role": role})

    def delete_user(self, username: str, actor: str) -> None:
        with self.store.transaction():
            user = self._existing(username)
            self._keep_an_admin(user, "remove")
            self.db.execute("DELETE FROM users WHERE id = ?", (user.id,))
            self.store.audit(actor, "user.delete", username, {"role": user.role}, None)

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account enabled (last_login updated),
        else None (a disabled account is refused like a wrong password)."""
        row = self.db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            check_password(password, DUMMY_HASH)  # one scrypt run, as for a wrong password
            return None
        if not check_password(password, row["password_hash"]) or row["disabled"]:
            return None
        self.db.execute("UPDATE users SET last_login = ? WHERE id = ?", (time.time(), row["id"]))
        return self.get_user(username)

    # -- API tokens ---------------------------------------------------------------------------

    def create_token(self, username: str, name: str, actor: str, days: float | None = None) -> str:
        """A new bearer token for `username`, valid for `days` (None: until revoked); the
        plaintext is returned once, only its hash kept."""
        user = self.get_user(username)
        if user is None:
            raise StoreError(f"api_tokens: user {username!r} does not exist")
        if days is not None and not 0 < days <= MAX_TOKEN_DAYS:
            raise StoreError(f"api_tokens.expires {days!r} days: must be 0..{MAX_TOKEN_DAYS}")
        token = "vpt_" + secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        expires = None if days is None else now + days * 86400
        with self.store.transaction():
            self.db.execute(
                "INSERT INTO api_tokens(token_hash, user_id, name, created, expires) "
                "VALUES (?,?,?,?,?)",
                (token_digest(token), user.id, name[:MAX_NAME_LEN], now, expires),
            )
            self.store.audit(actor, "token.create", username, None,
                             {"name": name[:MAX_NAME_LEN], "expires": expires})  # fmt: skip
        return token

    def token_user(self, token: str, now: float | None = None) -> User | None:
        """The user of a live token (last_used updated), None when unknown, revoked or expired."""
        now = time.time() if now is None else now
        row = self.db.execute(
            "SELECT t.id AS tid, t.expires AS texp, u.* FROM api_tokens t "
            "JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
            (token_digest(token),),
        ).fetchone()
        if row is None or row["disabled"] or (row["texp"] is not None and row["texp"] <= now):
            return None
        self.db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, row["tid"]))
        return self._user(row)

    def list_tokens(self, username: str | None = None) -> list[ApiToken]:
        sql = (
            "SELECT t.id, u.username, t.name, t.created, t.last_used, t.expires FROM api_tokens t "
            "JOIN users u ON u.id = t.user_id"
        )
        args: tuple[Any, ...] = ()
        if username is not None:
            sql += " WHERE u.username = ?"
            args = (username,)
        rows = self.db.execute(sql + " ORDER BY t.id LIMIT ?", (*args, MAX_LIST))
        return [ApiToken(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def get_token(self, token_id: int) -> ApiToken | None:
        row = self.db.execute(
            "SELECT t.id, u.username, t.name, t.created, t.last_used, t.expires FROM api_tokens t "
            "JOIN users u ON u.id = t.user_id WHERE t.id = ?",
            (token_id,),
        ).fetchone()
        return ApiToken(row[0], row[1], row[2], row[3], row[4], row[5]) if row else None

    def revoke_token(self, token_id: int, actor: str) -> None:
        with self.store.transaction():
            row = self.db.execute(
                "SELECT u.username, t.name FROM api_tokens t JOIN users u ON u.id = t.user_id "
                "WHERE t.id = ?",
                (token_id,),
            ).fetchone()
            if row is None:
                raise StoreError(f"api_tokens.id {token_id}: no such token")
            self.db.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,))
            self.store.audit(actor, "token.revoke", str(token_id),
                             {"user": row[0], "name": row[1]}, None)  # fmt: skip
