"""gateway/lab/topology.py without building a lab: LabSpec's validation, its defaults per mode
(every address inside 198.18.0.0/15 and 2001:2::/48), derived names, the lab.json round trip
and its errors, and check_address. The plumbing itself runs in tests/lab/test_lab.py (root)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.errors import LabError
from gateway.lab.topology import MAX_NAME_LEN, STATE_ROOT, LabSpec, check_address

ADDRESS_FIELDS = ("client_ip", "server_ip", "client_ip6", "server_ip6", "client_gw_ip",
                  "server_gw_ip", "client_gw_ip6", "server_gw_ip6")  # fmt: skip
LAB4 = ipaddress.ip_network("198.18.0.0/15")
LAB6 = ipaddress.ip_network("2001:2::/48")


def test_invalid_name_rejected() -> None:
    with pytest.raises(LabError, match="invalid lab name"):
        LabSpec(name="../etc")


@pytest.mark.parametrize("name", ["", "a b", "x/y", "a" * (MAX_NAME_LEN + 1), "a.b", "a\nb"])
def test_names_that_cannot_be_namespaces_or_paths(name: str) -> None:
    with pytest.raises(LabError, match=f"use 1 to {MAX_NAME_LEN} letters"):
        LabSpec(name=name)


def test_names_and_state_dir() -> None:
    spec = LabSpec(name="vpt-1_a")
    assert spec.namespaces == ("vpt-1_a-client", "vpt-1_a-gw", "vpt-1_a-server")
    assert spec.state_dir == STATE_ROOT / "vpt-1_a" and spec.mode == "bridge"
    assert LabSpec(name="x", state_dir=Path("/tmp/elsewhere")).state_dir == Path("/tmp/elsewhere")
    assert LabSpec(name="a" * MAX_NAME_LEN).name == "a" * MAX_NAME_LEN


@pytest.mark.parametrize("routed", [False, True], ids=["bridge", "routed"])
def test_default_addresses_are_lab_addresses(routed: bool) -> None:
    spec = LabSpec(name="t", routed=routed)
    used = [getattr(spec, f) for f in ADDRESS_FIELDS if getattr(spec, f)]
    assert len(used) == (8 if routed else 4)
    for value in used:
        check_address(value, "default")
        network = LAB4 if ":" not in value else LAB6
        assert ipaddress.ip_interface(value).ip in network, value
    assert spec.client_addr == spec.client_ip.split("/")[0] and "/" not in spec.server_addr6
    client = ipaddress.ip_interface(spec.client_ip).network
    server = ipaddress.ip_interface(spec.server_ip).network
    # bridged: one subnet on both sides; routed: one subnet per side, the gateway in each
    assert (client == server) is not routed
    if routed:
        assert ipaddress.ip_interface(spec.client_gw_ip).network == client
        assert ipaddress.ip_interface(spec.server_gw_ip).network == server


def test_given_addresses_are_kept() -> None:
    spec = LabSpec(name="t", server_ip="198.18.0.99/24")
    assert spec.server_addr == "198.18.0.99" and spec.client_ip == "198.18.0.10/24"


def test_lab_json_round_trip_and_errors() -> None:
    spec = LabSpec(name="t", routed=True, rules=("/r/a.yaml", "/r/b"), offloads_off=True)
    data = spec.to_dict()
    assert data["state_dir"] == str(STATE_ROOT / "t") and data["rules"] == ["/r/a.yaml", "/r/b"]
    assert LabSpec.from_dict(data, "lab.json") == spec
    assert LabSpec.from_dict({"name": "u"}, "lab.json") == LabSpec(name="u")  # missing: defaults
    assert LabSpec.from_dict({"name": "u", "surplus": 1}, "lab.json") == LabSpec(name="u")
    with pytest.raises(LabError, match=r"^/run/x/lab.json: bad lab description"):
        LabSpec.from_dict({"name": 5}, "/run/x/lab.json")
    with pytest.raises(LabError, match="invalid lab name"):
        LabSpec.from_dict({"name": "../u"}, "lab.json")


@pytest.mark.parametrize("value", ["198.18.0.20/24", "2001:2::20/64", "198.18.0.1/32"])
def test_check_address_accepts(value: str) -> None:
    check_address(value, "server_ip")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("198.18.0.20", "needs a prefix length"),
        ("198.18.0.300/24", "invalid interface address"),
        ("198.18.0.20/33", "invalid interface address"),
        ("lab-server/24", "invalid interface address"),
    ],
)
def test_check_address_refuses_naming_where(value: str, reason: str) -> None:
    with pytest.raises(LabError, match=f"^server_ip: .*{reason}"):
        check_address(value, "server_ip")
