"""HTTPS services in the policy store (gateway/tls/stored.py), on SQLite and on PostgreSQL:
checked by the configuration's own code (errors name the field, nothing stored), audited,
combined with the configuration file's services as the gateway reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, PolicyConfig, TlsProxyConfig
from gateway.database import Target
from gateway.lab.tlscert import write_server_cert
from gateway.policy.store import Store
from gateway.tls.service import ServiceFieldError, TlsService, TlsVersion, service_settings
from gateway.tls.stored import (
    ServiceSource,
    delete_service,
    list_stored,
    save_service,
    wanted_services,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    write_server_cert(d, "198.18.0.20")
    write_server_cert(d, "198.18.0.21", name="other")
    write_server_cert(d, "198.18.0.20", days=-3, name="old")
    return d


@pytest.fixture
def store(db_target: Target) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


def values(certs: Path, **kw: Any) -> dict[str, Any]:
    return {"host": "198.18.0.20", "cert": str(certs / "server.pem"),
            "key": str(certs / "server.key"), **kw}  # fmt: skip


def test_a_service_is_stored_audited_and_bumps_the_policy_version(
    store: Store, certs: Path
) -> None:
    version = store.policy_version()
    row, info = save_service(store, values(certs, client_min="TLS1_3", depth=4096), "alice")
    assert (row.host, row.port, row.name) == ("198.18.0.20", 443, "198.18.0.20:443")
    assert row.settings["client_min"] == "TLS1_3" and row.settings["depth"] == 4096
    assert row.settings["server_min"] == "TLS1"  # the configuration's default
    assert "198.18.0.20" in info.subject
    assert list_stored(store) == [row]
    assert store.policy_version() == version + 1
    entry = store.list_audit(1)[0]
    assert (entry.actor, entry.action, entry.target) == ("alice", "tls_service.save", row.name)
    assert entry.detail["before"] is None and entry.detail["after"]["client_min"] == "TLS1_3"


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"key": "other.key"}, "key", "other.key: this key does not belong to the certificate"),
        ({"cert": "absent.pem"}, "cert", "absent.pem: cannot read certificate"),
        ({"client_min": "TLS2"}, "client_min", "'TLS2' is not one of"),
        ({"port": 0}, "port", "expected an integer in 1..65535"),
        ({"processes": 17}, "processes", "expected an integer in 1..16"),
        ({"host": "iis6.lab"}, "host", "is not an IPv4 or IPv6 address"),
        ({"colour": "red"}, "colour", "unknown key"),
    ],
)
def test_a_wrong_value_names_its_field_and_nothing_is_stored(
    store: Store, certs: Path, change: dict[str, Any], field: str, text: str
) -> None:
    version = store.policy_version()
    given = values(certs)
    for k, v in change.items():
        given[k] = str(certs / v) if k in ("cert", "key") else v
    with pytest.raises(ServiceFieldError) as err:
        save_service(store, given, "alice")
    assert err.value.field == field and text in str(err.value)
    assert list_stored(store) == [] and store.policy_version() == version


def test_a_relative_path_is_refused(store: Store, certs: Path) -> None:
    with pytest.raises(ServiceFieldError, match="an absolute path on the gateway") as err:
        save_service(store, values(certs, cert="server.pem"), "alice")
    assert err.value.field == "cert"


def test_an_expired_certificate_is_stored_with_its_dates(store: Store, certs: Path) -> None:
    row, info = save_service(
        store, values(certs, cert=str(certs / "old.pem"), key=str(certs / "old.key")), "alice"
    )
    assert info.not_after < info.not_before.replace(year=info.not_before.year + 1)
    assert row.settings["cert"].endswith("old.pem")


def test_one_host_and_port_once_and_not_when_the_configuration_has_it(
    store: Store, certs: Path
) -> None:
    row, _ = save_service(store, values(certs), "alice")
    with pytest.raises(ServiceFieldError, match="198.18.0.20:443 is already proxied"):
        save_service(store, values(certs), "alice")
    with pytest.raises(ServiceFieldError, match="proxied by the configuration file") as err:
        save_service(store, values(certs, port=8443), "alice", reserved={("198.18.0.20", 8443)})
    assert err.value.field == "port"
    updated, _ = save_service(store, values(certs, port=8443), "bob", row.id)
    assert (updated.id, updated.port, updated.updated_by) == (row.id, 8443, "bob")
    gone = delete_service(store, row.id, "bob")
    assert gone.port == 8443 and list_stored(store) == []
    assert [e.action for e in store.list_audit(3)] == [
        "tls_service.delete",
        "tls_service.save",
        "tls_service.save",
    ]
    with pytest.raises(ServiceFieldError) as missing:
        delete_service(store, row.id, "bob")
    assert missing.value.field == "id"


def test_the_gateway_reads_the_configuration_first_then_the_store(
    tmp_path: Path, certs: Path
) -> None:
    db = tmp_path / "vpatch.db"
    mine = TlsService("198.18.0.30", cert=certs / "server.pem", key=certs / "server.key")
    config = GatewayConfig(
        policy=PolicyConfig(database=db), tls_proxy=TlsProxyConfig(services=(mine,))
    )
    wanted, problems = wanted_services(config)  # no store yet: none is made
    assert [w.source for w in wanted] == [ServiceSource.CONFIG] and problems == []
    assert not db.exists()
    other = tmp_path / "other"
    other.mkdir()
    write_server_cert(other, "198.18.0.21")
    with Store(db) as store:
        stored, _ = save_service(store, values(certs, client_min="TLS1_3"), "alice")
        gone, _ = save_service(store, values(other, host="198.18.0.21"), "alice")
        # the configuration file later claims a stored service: the configuration wins
        save_service(store, service_settings(mine) | {"port": 443}, "alice")
    (other / "server.key").unlink()  # its key is gone on the gateway
    wanted, problems = wanted_services(config)
    assert [(w.service.host, w.source, w.id) for w in wanted] == [
        ("198.18.0.30", ServiceSource.CONFIG, None),
        ("198.18.0.20", ServiceSource.POLICY, stored.id),
    ]
    assert wanted[1].service.client_min is TlsVersion.TLS1_3
    assert problems[0]["service"] == "198.18.0.21:443" and "cannot read key" in problems[0]["error"]
    assert problems[1]["service"] == "198.18.0.30:443" and "configuration" in problems[1]["error"]
