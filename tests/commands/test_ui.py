"""`vpatch ui`'s account options (gateway/commands/ui.py, issue 15.10): `--set-password` never
creates an admin unless `--create-admin` says so; API tokens are created with an expiry,
listed with the user and expiry, and revoked by id; `vpatch ui users ...` manages accounts (last
admin protected), through the real CLI entry point."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.accounts import Accounts
from gateway.policy.store import Store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"policy:\n  database: {tmp_path / 'state' / 'vpatch.db'}\n")
    return path


def _db(config: Path) -> Path:
    return config.parent / "state" / "vpatch.db"


def _stdin(monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))


def test_set_password_of_an_unknown_user_fails_without_create_admin(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, "a-long-password-1")
    assert main(["ui", "-c", str(config), "--set-password", "mallory"]) == 2
    err = capsys.readouterr().err
    assert "'mallory'" in err and "no such user" in err and "--create-admin" in err
    with Store(_db(config)) as store:
        assert Accounts(store).get_user("mallory") is None
        assert Accounts(store).user_count() == 0


def test_create_admin_creates_and_set_password_changes(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, "a-long-password-1")
    assert main(["ui", "-c", str(config), "--set-password", "alice", "--create-admin"]) == 0
    assert "admin 'alice' created" in capsys.readouterr().out
    _stdin(monkeypatch, "a-long-password-2")
    assert main(["ui", "-c", str(config), "--set-password", "alice"]) == 0
    assert "password of 'alice' set" in capsys.readouterr().out
    with Store(_db(config)) as store:
        user = Accounts(store).authenticate("alice", "a-long-password-2")
        assert user is not None and user.role == "admin"
    assert main(["ui", "-c", str(config), "--create-admin"]) == 2
    assert "--create-admin goes with --set-password" in capsys.readouterr().err


def test_tokens_with_expiry_are_listed_and_revoked(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(_db(config)) as store:
        Accounts(store).create_user("alice", "a-long-password-1", "admin", "test")
        Accounts(store).create_user("bob", "a-long-password-1", "viewer", "test")
        Accounts(store).create_token("bob", "bob's", "test")
    assert main(["ui", "-c", str(config), "--create-token", "alice", "--expires", "2"]) == 0
    token = capsys.readouterr().out.strip()
    with Store(_db(config)) as store:
        accounts = Accounts(store)
        assert accounts.token_user(token) is not None
        alices = accounts.list_tokens("alice")
        assert len(alices) == 1 and alices[0].expires is not None
        assert 1.9 * 86400 < alices[0].expires - alices[0].created <= 2 * 86400
    assert main(["ui", "-c", str(config), "--list-tokens"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"alice\s+cli\s.*UTC\s*$", listing, re.M)  # alice's expires: a date
    assert re.search(r"bob\s+bob's\s.*never\s*$", listing, re.M)
    assert main(["ui", "-c", str(config), "--revoke-token", str(alices[0].id)]) == 0
    assert f"token {alices[0].id} (alice" in capsys.readouterr().out
    with Store(_db(config)) as store:
        assert Accounts(store).token_user(token) is None
    assert main(["ui", "-c", str(config), "--revoke-token", str(alices[0].id)]) == 2
    assert "no such token" in capsys.readouterr().err
    assert main(["ui", "-c", str(config), "--expires", "2"]) == 2
    assert "--expires goes with --create-token" in capsys.readouterr().err


def test_users_add_list_disable_reset_and_remove(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ui = ["ui", "-c", str(config), "users"]
    _stdin(monkeypatch, "first-admin-pw")
    assert main([*ui, "add", "root", "--role", "admin", "--password-stdin"]) == 0
    assert "admin 'root' created" in capsys.readouterr().out
    assert main([*ui, "add", "bob"]) == 0  # a viewer, with a random temporary password
    temporary = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    with Store(_db(config)) as store:
        bob = Accounts(store).authenticate("bob", temporary)
        assert bob is not None and bob.role == "viewer" and bob.must_change_password
    assert main(["ui", "users", "list", "-c", str(config)]) == 0  # -c after the action too
    listing = capsys.readouterr().out
    assert re.search(r"^bob\s+viewer\s+must change password\s+\d{4}-", listing, re.M), listing
    assert re.search(r"^root\s+admin\s+must change password\s+never", listing, re.M), listing
    assert main([*ui, "disable", "bob"]) == 0 and "'bob' disabled" in capsys.readouterr().out
    with Store(_db(config)) as store:
        assert Accounts(store).authenticate("bob", temporary) is None
    assert main([*ui, "enable", "bob"]) == 0
    assert main([*ui, "reset-password", "bob"]) == 0
    new = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    assert new != temporary
    with Store(_db(config)) as store:
        assert Accounts(store).authenticate("bob", temporary) is None
        assert Accounts(store).authenticate("bob", new) is not None
    assert main([*ui, "set-role", "bob", "admin"]) == 0
    assert main([*ui, "remove", "bob"]) == 0 and "'bob' removed" in capsys.readouterr().out
    # root is now the last enabled admin
    for action in (["remove", "root"], ["disable", "root"], ["set-role", "root", "viewer"]):
        assert main([*ui, *action]) == 2, action
        assert "the last enabled admin" in capsys.readouterr().err
    with Store(_db(config)) as store:
        assert [(u.username, u.role, u.disabled) for u in Accounts(store).list_users()] == [
            ("root", "admin", False)]  # fmt: skip
        actions = [e.action for e in store.list_audit(20) if e.actor == "cli"]
    assert actions[:6] == ["user.delete", "user.role", "user.reset", "user.enable",
                           "user.disable", "user.create"]  # fmt: skip
