"""A throw-away PostgreSQL server for tests and demos: Debian's postgresql binaries, run as the
unprivileged `postgres` user, on a Unix socket only (no TCP port, no network).

`PostgresServer.create(root)` makes a private directory (mode 0700, owned by `postgres`: the
server refuses to run as root and must be able to reach its data directory) holding the data
directory, the socket directory and the log, and runs initdb (trust authentication: only root
and `postgres` can open the socket's directory). `start()` / `stop()` may be called again (an
outage in a test); `new_database()` returns the URL of a fresh, empty database; `destroy()`
stops the server and removes everything. It never touches a system cluster (no /etc, no
/var/lib/postgresql, no port 5432 on any interface).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg

from gateway.errors import VpatchError

BIN_DIRS: Final = tuple(Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13))
SUPERUSER: Final = "vpatch"
START_TIMEOUT_S: Final = 60


class PostgresServerError(VpatchError):
    """The test server could not be created or started (names the step and its output)."""


def find_bin_dir() -> Path | None:
    for d in BIN_DIRS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


@dataclass(frozen=True, slots=True)
class PostgresServer:
    root: Path
    bin_dir: Path
    uid: int
    gid: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @classmethod
    def create(cls, parent: Path | None = None, user: str = "postgres") -> PostgresServer:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresServerError(f"no initdb/pg_ctl under {', '.join(map(str, BIN_DIRS))}")
        account = pwd.getpwnam(user)
        root = Path(tempfile.mkdtemp(prefix="vpatch-pg-", dir=parent))
        os.chown(root, account.pw_uid, account.pw_gid)
        server = cls(root, bin_dir, account.pw_uid, account.pw_gid)
        (root / "sock").mkdir()
        os.chown(root / "sock", account.pw_uid, account.pw_gid)
        server._run(
            "initdb", "-D", str(server.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        return server

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            user=self.uid, group=self.gid, extra_groups=[], cwd=self.root,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(self.root)},
            capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise PostgresServerError(f"{tool} {' '.join(args)}: {proc.stdout}{proc.stderr}")

    def start(self) -> None:
        options = (
            f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
            "-t", str(START_TIMEOUT_S), "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user={SUPERUSER}"

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(PostgresServerError):  # not running
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
