"""Shared fixtures.

- `corpora`: the read-only capture corpora at <repo>/../shared/corpora (skips, saying where it
  looked, only if the directory is absent).
- `lab`: one namespace lab per test session (bridge mode, nginx/smbd/named on the server, NO
  gateway process: tests start their own `vpatch run` or NFQUEUE reader in `lab.gw_ns`), named
  "vpt<pid>" so it never collides with a user's lab; always torn down, also on failure.
- `make_lab`: builds extra labs (any LabSpec options) for one test and tears them all down.
- `ns`: a bare network namespace for one test (no lab, no address), deleted afterwards, also on
  failure (a module may define its own `ns` with more in it).
- `netns` marked tests are skipped with a reason when not running as root.
- `slow` marked tests (VM labs, soaks: minutes each) are skipped unless VPATCH_SLOW=1 is set;
  each says in its docstring which documented command runs it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPORA = REPO_ROOT.parent / "shared" / "corpora"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("VPATCH_SLOW") != "1":
        slow = pytest.mark.skip(reason="slow (VM lab or soak): run with VPATCH_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(slow)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (netns marker)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vptns{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def corpora() -> Path:
    """<repo>/../shared/corpora (README.md, attacks/, benign/, malformed/, rules/)."""
    if not CORPORA.is_dir():
        pytest.skip(f"capture corpora not found at {CORPORA} (expected beside the repository)")
    return CORPORA


def lab_name(suffix: str = "") -> str:
    """A lab name unique to this test session: vpt<pid><suffix>."""
    return f"vpt{os.getpid()}{suffix}"


@pytest.fixture(scope="session")
def lab() -> Iterator[Any]:
    """A bridge-mode lab with services and no gateway process, shared by the session.

    Yields its LabSpec (namespaces: lab.client_ns, lab.gw_ns, lab.server_ns; addresses:
    lab.client_addr, lab.server_addr, lab.client_addr6, lab.server_addr6; lab.state_dir).
    Tests that add iptables rules in lab.gw_ns must remove them again.
    """
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    from gateway.lab import LabSpec, lab_down, lab_up

    spec = LabSpec(name=lab_name())
    lab_down(spec.name)  # leftovers of a crashed earlier session with the same pid
    try:
        lab_up(spec, services=True, gateway=False)
        yield spec
    finally:
        lab_down(spec.name)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Any]]:
    """make_lab(suffix, services=True, gateway=False, **LabSpec fields) -> LabSpec, built now
    and torn down after the test (also on failure)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    from gateway.lab import LabSpec, lab_down, lab_up

    made: list[str] = []

    def build(suffix: str, services: bool = True, gateway: bool = False, **fields: Any) -> Any:
        spec = LabSpec(name=lab_name(suffix), **fields)
        made.append(spec.name)
        lab_down(spec.name)
        lab_up(spec, services=services, gateway=gateway)
        return spec

    try:
        yield build
    finally:
        for name in made:
            lab_down(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throw-away PostgreSQL server per session (gateway/testing/postgres.py: Debian's
    binaries as the `postgres` user, Unix socket only); skips when they are not installed."""
    from gateway.testing.postgres import PostgresServer, find_bin_dir

    if find_bin_dir() is None or os.geteuid() != 0:
        pytest.skip("needs root and Debian's postgresql (initdb, pg_ctl)")
    server = PostgresServer.create()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    """The URL of a fresh, empty PostgreSQL database on the session's server."""
    url: str = postgres_server.new_database()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A fresh, empty store location on each database: a SQLite file in tmp_path, then a fresh
    PostgreSQL database on the session's server (for the stores' tests that run on both)."""
    if request.param == "sqlite":
        return tmp_path / "vpatch.db"
    return request.getfixturevalue("postgres_url")
