"""tls_proxy.services at config load: values, the key matching the certificate, expiry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.lab.tlscert import write_server_cert
from gateway.tls.service import BlockAnswer, TlsVersion, check_keypair


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    write_server_cert(d, "198.18.0.20")
    write_server_cert(d, "198.18.0.20", name="other")
    write_server_cert(d, "198.18.0.20", days=-3, name="old")
    return d


def _config(d: Path, extra: str = "", key: str = "server.key", cert: str = "server.pem") -> str:
    return (
        "tls_proxy:\n  services:\n"
        f"    - {{host: 198.18.0.20, cert: {d / cert}, key: {d / key}{extra}}}\n"
    )


def test_a_service_with_its_defaults(certs: Path) -> None:
    (svc,) = parse_config(_config(certs)).tls_proxy.services
    assert (svc.port, svc.client_min, svc.server_min) == (443, TlsVersion.TLS1_2, TlsVersion.TLS1)
    assert svc.blocked is BlockAnswer.PAGE and not svc.forwarded and svc.processes == 1


def test_settings_are_read(certs: Path) -> None:
    extra = ", port: 8443, client_min: TLS1_3, server_min: SSL3, blocked: reset, forwarded: true"
    (svc,) = parse_config(_config(certs, extra)).tls_proxy.services
    assert svc.port == 8443 and svc.client_min is TlsVersion.TLS1_3
    assert svc.server_min is TlsVersion.SSL3 and svc.blocked is BlockAnswer.RESET and svc.forwarded


def test_a_key_of_another_certificate_is_an_error_naming_the_files(certs: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(certs, key="other.key"), "gw.yaml")
    text = str(err.value)
    assert text.startswith("gw.yaml:3: tls_proxy.services.0:")
    assert "other.key: this key does not belong to the certificate" in text
    assert "server.pem" in text


def test_an_expired_certificate_is_a_warning_naming_its_dates(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vpatch.tls"):
        parse_config(_config(certs, key="old.key", cert="old.pem"))
    info = check_keypair(certs / "old.pem", certs / "old.key")
    assert info.not_before.isoformat() in caplog.text
    assert info.not_after.isoformat() in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (", client_min: TLS2", "tls_proxy.services.0.client_min: 'TLS2' is not one of"),
        (", port: 0", "tls_proxy.services.0.port: expected an integer in 1..65535"),
        (", colour: red", "tls_proxy.services.0.colour: unknown key"),
        (", host: nginx", "tls_proxy.services.0.host: 'nginx' is not an IPv4 or IPv6"),
    ],
)
def test_wrong_values_name_the_key(certs: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(certs, extra))


def test_a_missing_file_names_it(certs: Path) -> None:
    with pytest.raises(ConfigError, match="nope.pem: cannot read certificate"):
        parse_config(_config(certs, cert="nope.pem"))


def test_the_same_service_twice_is_refused(certs: Path) -> None:
    one = _config(certs).split("\n")[2] + "\n"
    with pytest.raises(ConfigError, match="198.18.0.20:443 is proxied twice"):
        parse_config("tls_proxy:\n  services:\n" + one + one)
