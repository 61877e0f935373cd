"""A fresh policy store per test, on SQLite (a file in tmp_path) and on PostgreSQL (a fresh
database on the session's throw-away server: tests/conftest.py `postgres_server`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.database import Target
from gateway.policy.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return tmp_path / "vpatch.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_target: Target) -> Iterator[Store]:
    with Store(store_target) as s:
        yield s
