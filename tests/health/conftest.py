"""The health tests use the alert channels' real receivers (tests/alerts/conftest.py)."""

from tests.alerts.conftest import webhook  # noqa: F401 - a fixture, used by name
