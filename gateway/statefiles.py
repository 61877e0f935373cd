"""The files and directories of vpatch's state (policy database, event store, the UI's session
secret, the control socket): created with explicit modes whatever the process umask, refused
when an existing one is open to other users.

Guarantees:
- `make_dir(path, gid)` creates `path` and every missing parent with mode 0750 (0770 when
  shared with group `gid`), set with chmod after mkdir, so the umask neither widens nor narrows
  it (`Path.mkdir(parents=True)` gives parents the umask's mode); an existing directory is
  kept as it is but refused when every user may write to it;
- `create_file(path, gid)` creates a file with O_CREAT|O_EXCL|O_NOFOLLOW and sets its mode and
  group on the open descriptor, so it never exists with another mode; an existing file is kept
  (and checked by the caller: `check_file`, `check_secret`);
- sharing: when the group SHARED_GROUP exists (systemd/vpatch.sysusers.conf creates it), the
  policy database, the event store, their directory and the control socket are readable and
  writable by that group (0660/0770) so the admin UI can run as its own user (`vpatch-ui`, a
  member of the group); without the group, or when this process may not give a file to it,
  they are owner-only (0600/0750).
Errors: `InsecureFileError`, naming the file, its mode in octal and what to do about it.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Final

from gateway.errors import VpatchError

SHARED_GROUP = "vpatch"  # the group of the UI's user, `vpatch-ui` (systemd/)
DIR_MODE: Final = 0o750
FILE_MODE: Final = 0o600
GROUP_RW: Final = 0o060  # what sharing adds to a file's mode (0o070 to a directory's)


class InsecureFileError(VpatchError):
    """A state file or directory is open to other users (names it, its mode and the fix)."""


def shared_gid(name: str | None = None) -> int | None:
    """The id of group `name` (default SHARED_GROUP) when it exists on this system, else None
    (nothing is shared)."""
    try:
        return grp.getgrnam(SHARED_GROUP if name is None else name).gr_gid
    except KeyError:
        return None


def _give_group(fd_or_path: int | Path, gid: int | None) -> bool:
    """Give the file to group `gid`; False when there is none or this process may not."""
    if gid is None:
        return False
    try:
        if isinstance(fd_or_path, int):
            os.fchown(fd_or_path, -1, gid)
        else:
            os.chown(fd_or_path, -1, gid)
    except PermissionError:
        return False
    return True


def make_dir(
    path: Path, gid: int | None = None, mode: int = DIR_MODE, group_mode: int = 0o070
) -> None:
    """`path` and its missing parents as directories of `mode` (plus `group_mode` for group
    `gid` when this process may give them to it); refuses an existing world-writable `path`."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue  # another process made it at the same moment: its modes stand
        shared = _give_group(directory, gid)
        os.chmod(directory, mode | (group_mode if shared else 0))
    check_dir(path)


def check_dir(path: Path) -> None:
    mode = os.stat(path).st_mode
    if mode & stat.S_IWOTH:
        raise InsecureFileError(
            f"{path}: directory mode {stat.S_IMODE(mode):04o} lets every user write to it "
            f"(and replace vpatch's files); refusing it: chmod o-w {path}"
        )


def create_file(
    path: Path, gid: int | None = None, data: bytes = b"", mode: int = FILE_MODE
) -> bool:
    """Create `path` holding `data` with `mode` (plus group rw for `gid` when this process may
    give it to that group); True when created, False when it existed (left untouched)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode & ~GROUP_RW & 0o777)
    except FileExistsError:
        return False
    try:
        shared = _give_group(fd, gid)
        os.fchmod(fd, mode | (GROUP_RW if shared else 0))
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)
    return True


def check_file(path: Path, what: str) -> None:
    """Refuse `path` (`what` it is, for the message) when every user may read or write it."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise InsecureFileError(
            f"{path}: {what} has mode {mode:04o}, open to every user; refusing it: "
            f"chmod o-rwx {path}"
        )


def check_secret(path: Path, what: str) -> None:
    """Refuse `path` unless it belongs to this process's user and nobody else may read it."""
    st = os.stat(path, follow_symlinks=False)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise InsecureFileError(f"{path}: {what} is not a regular file; refusing it")
    if st.st_uid != os.geteuid():
        raise InsecureFileError(
            f"{path}: {what} belongs to {_user(st.st_uid)}, not to {_user(os.geteuid())} who "
            f"runs vpatch; refusing it (delete it to have a new one generated)"
        )
    if mode & 0o077:
        raise InsecureFileError(
            f"{path}: {what} has mode {mode:04o}, readable or writable by others; refusing "
            f"it: chmod 600 {path} (or delete it to have a new one generated)"
        )


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
