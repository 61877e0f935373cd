"""The state's files and directories (gateway/statefiles.py) and their users (issue 15.10): the
policy store, the event sink, the UI's session secret and the control socket create theirs with
explicit modes whatever the umask, share them with the group `vpatch` only when it exists, and
refuse existing ones that are open to other users, naming the file and its mode."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import statefiles
from gateway.control.server import ControlServer
from gateway.events.sink import EventSink
from gateway.policy.store import Store
from gateway.statefiles import InsecureFileError, check_secret, create_file, make_dir
from webui import SECRET_FILE, load_secret


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without the group `vpatch`: everything owner-only."""
    monkeypatch.setattr(statefiles, "SHARED_GROUP", "vpatch-test-no-such-group")


@pytest.fixture
def other_group(monkeypatch: pytest.MonkeyPatch) -> int:
    """A group other than this process's own stands in for `vpatch` (root may give files to
    any group; another user to the groups it is in)."""
    if os.geteuid() == 0:
        candidates = [g for g in grp.getgrall() if g.gr_gid != os.getegid()]
    else:
        candidates = [grp.getgrgid(g) for g in os.getgroups() if g != os.getegid()]
    if not candidates:
        pytest.skip("no group to share with")
    monkeypatch.setattr(statefiles, "SHARED_GROUP", candidates[0].gr_name)
    return candidates[0].gr_gid


def test_store_under_umask_0_creates_private_dirs_and_database(
    tmp_path: Path, umask_0: None, no_group: None
) -> None:
    db = tmp_path / "state" / "deeper" / "vpatch.db"
    Store(db).close()
    assert mode_of(tmp_path / "state") == 0o750  # a parent too, not only the last directory
    assert mode_of(tmp_path / "state" / "deeper") == 0o750
    assert mode_of(db) == 0o600
    for extra in db.parent.glob("vpatch.db-*"):  # SQLite's -wal and -shm follow the database
        assert mode_of(extra) == 0o600, extra


def test_event_store_is_private_whatever_the_umask(tmp_path: Path, no_group: None) -> None:
    for umask in (0o022, 0):
        old = os.umask(umask)
        try:
            db = tmp_path / f"u{umask:o}" / "events.db"
            with EventSink(db, tmp_path / f"u{umask:o}" / "eve.json"):
                pass
        finally:
            os.umask(old)
        assert mode_of(db) == 0o600, umask
        assert mode_of(db.parent) == 0o750
        assert mode_of(db.parent / "eve.json") == 0o640


def test_shared_group_gets_the_database_its_directory_and_the_socket(
    tmp_path: Path, other_group: int
) -> None:
    db = tmp_path / "shared" / "vpatch.db"
    Store(db).close()
    assert mode_of(db) == 0o660 and os.stat(db).st_gid == other_group
    assert mode_of(db.parent) == 0o770 and os.stat(db.parent).st_gid == other_group
    events = tmp_path / "shared" / "events.db"
    EventSink(events, None).close()
    assert mode_of(events) == 0o660 and os.stat(events).st_gid == other_group
    server = ControlServer(tmp_path / "run" / "control.sock", {}, gid=statefiles.shared_gid())
    server.start()
    try:
        sock = tmp_path / "run" / "control.sock"
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert mode_of(sock) == 0o660 and os.stat(sock).st_gid == other_group
        assert mode_of(sock.parent) == 0o750 and os.stat(sock.parent).st_gid == other_group
    finally:
        server.stop()


def test_control_socket_without_the_group_is_owner_only(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "control.sock", {})
    server.start()
    try:
        assert mode_of(tmp_path / "control.sock") == 0o600
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["vpatch.db", "events.db"])
def test_a_world_readable_database_is_refused(tmp_path: Path, name: str) -> None:
    db = tmp_path / name
    Store(db).close() if name == "vpatch.db" else EventSink(db, None).close()
    os.chmod(db, 0o644)
    with pytest.raises(InsecureFileError, match=rf"{db}: .* mode 0644"):
        Store(db) if name == "vpatch.db" else EventSink(db, None)


def test_a_world_writable_state_directory_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    with pytest.raises(InsecureFileError, match=rf"{state}: directory mode 0777"):
        Store(state / "vpatch.db")
    with pytest.raises(InsecureFileError, match=rf"{state}: directory mode 0777"):
        load_secret(state)


def test_ui_secret_is_created_private_and_refused_when_open(
    tmp_path: Path, umask_0: None, no_group: None
) -> None:
    secret = load_secret(tmp_path / "state")
    path = tmp_path / "state" / SECRET_FILE
    assert mode_of(path) == 0o600 and len(secret) == 32
    assert load_secret(tmp_path / "state") == secret
    os.chmod(path, 0o640)
    with pytest.raises(InsecureFileError, match=rf"{path}: .* mode 0640"):
        load_secret(tmp_path / "state")
    os.chmod(path, 0o600)
    link = tmp_path / "state" / "link.key"
    link.symlink_to(path)
    with pytest.raises(InsecureFileError, match="not a regular file"):
        check_secret(link, "the UI session secret")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_ui_secret_of_another_user_is_refused(tmp_path: Path) -> None:
    load_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    os.chown(path, 65534, -1)
    with pytest.raises(InsecureFileError, match=rf"{path}: .* belongs to .*65534"):
        load_secret(tmp_path)


def test_create_file_keeps_an_existing_file_and_never_follows_links(tmp_path: Path) -> None:
    target = tmp_path / "target"
    assert create_file(target, data=b"one")
    assert not create_file(target, data=b"two")
    assert target.read_bytes() == b"one"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    assert not create_file(tmp_path / "link")  # O_EXCL: a dangling link is not followed
    assert not (tmp_path / "elsewhere").exists()


def test_make_dir_keeps_an_existing_directory(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    make_dir(tmp_path)
    assert mode_of(tmp_path) == 0o755
