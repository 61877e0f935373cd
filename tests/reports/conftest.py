"""Real local receivers for the report tests: the SMTP server of tests/alerts (aiosmtpd on
127.0.0.1, port chosen by the kernel)."""

from tests.alerts.conftest import smtp  # noqa: F401  (a fixture)
