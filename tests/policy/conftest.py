"""A fresh policy store per test, on SQLite (a file in tmp_path) and on PostgreSQL (a fresh
database on the session's throw-away server: tests/conftest.py `postgres_server`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.database import Target
from gateway.policy.store import Store


@pytest.fixture
def store(db_target: Target) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s
