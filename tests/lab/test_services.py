"""gateway/lab/services.py without a namespace: the configuration each lab service gets is
accepted by that server's own checker (nginx -t, testparm, named-checkconf -z with the zone),
the zone names the lab's addresses, the lab gateway's configuration, pid files, and is_ours
telling our processes from a recycled PID. Starting the services: tests/lab/test_lab.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import BUNDLED_RULES
from gateway.errors import LabError
from gateway.lab.services import (
    WRITERS,
    binary,
    control_socket_path,
    gateway_config,
    is_ours,
    log_file,
    pid_file,
    read_pid,
    write_gateway_config,
    zone_text,
)
from gateway.lab.topology import LabSpec


def spec_in(tmp_path: Path, **fields: object) -> LabSpec:
    return LabSpec(name="vpt-svc", state_dir=tmp_path / "lab", **fields)  # type: ignore[arg-type]


CHECKS = {
    # the server's own configuration check, run on the file the lab writes
    "nginx": lambda argv: [argv[0], "-t", *argv[1:]],
    "smbd": lambda argv: ["testparm", "-s", argv[-1]],
    "named": lambda argv: ["named-checkconf", "-z", argv[-1]],
}


@pytest.mark.parametrize("service", sorted(WRITERS))
def test_each_service_config_passes_its_servers_check(tmp_path: Path, service: str) -> None:
    tool = {"nginx": "nginx", "smbd": "testparm", "named": "named-checkconf"}[service]
    if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.skip(f"{tool} is not installed (scripts/install.sh installs the lab's packages)")
    spec = spec_in(tmp_path)
    sdef = WRITERS[service](spec)
    assert sdef.name == service and (sdef.tcp_ports or sdef.udp_ports)
    assert any(str(spec.state_dir) in arg for arg in sdef.argv)  # is_ours can recognise it
    proc = subprocess.run(CHECKS[service](list(sdef.argv)), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zone_names_the_lab_hosts(tmp_path: Path) -> None:
    for routed in (False, True):
        spec = spec_in(tmp_path, routed=routed)
        lines = [line.split() for line in zone_text(spec).splitlines()]
        records = {(f[0], f[2]): f[3] for f in lines if len(f) == 4 and f[1] == "IN"}
        assert records[("server", "A")] == spec.server_addr
        assert records[("server", "AAAA")] == spec.server_addr6
        assert records[("client", "A")] == spec.client_addr
        assert records[("ns", "A")] == spec.server_addr
        assert f'"vpatch lab {spec.name}"' in zone_text(spec)


def test_gateway_config_protects_the_server_and_keeps_files_in_the_state_dir(
    tmp_path: Path,
) -> None:
    spec = spec_in(tmp_path, rules=("/r/x.yaml",))
    config = gateway_config(spec)
    assert config["protected_hosts"] == [spec.server_addr, spec.server_addr6]
    local = str(spec.state_dir / "rules.d")  # where an admin drops rules, then `rules reload`
    assert config["rules"] == ["/r/x.yaml", local]
    assert gateway_config(spec_in(tmp_path))["rules"] == [str(BUNDLED_RULES), local]
    assert config["control"] == {"socket": str(control_socket_path(spec))}
    events, policy = config["events"], config["policy"]
    assert isinstance(events, dict) and isinstance(policy, dict)
    paths = [events["sqlite"], events["jsonl"], policy["database"]]
    assert all(Path(p).parent == spec.state_dir for p in paths)
    path = write_gateway_config(spec)
    text = path.read_text()
    assert text.startswith(f"# vpatch gateway config for lab {spec.name} (bridge mode)")
    assert yaml.safe_load(text) == config


@pytest.mark.parametrize("routed", [False, True])
def test_gateway_config_proxies_nginx_https_on_each_address_the_proxy_can_reach(
    tmp_path: Path, routed: bool
) -> None:
    spec = spec_in(tmp_path, routed=routed)
    proxied = gateway_config(spec)["tls_proxy"]
    assert isinstance(proxied, dict)
    assert [s["host"] for s in proxied["services"]] == [spec.server_addr, spec.server_addr6]
    only4 = gateway_config(spec_in(tmp_path, bridge_ip6="-"))["tls_proxy"]
    assert isinstance(only4, dict) and [s["host"] for s in only4["services"]] == [
        spec_in(tmp_path).server_addr
    ]
    assert "tls_proxy" not in gateway_config(spec_in(tmp_path, bridge_ip="-", bridge_ip6="-"))


def test_pid_files(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    path = pid_file(spec, "nginx")
    assert path == spec.state_dir / "pids" / "nginx.pid"
    assert log_file(spec, "nginx") == spec.state_dir / "logs" / "nginx.log"
    assert read_pid(path) is None  # missing
    path.parent.mkdir(parents=True)
    for text, pid in (("1234\n", 1234), ("  77 ", 77), ("", None), ("12a", None), ("-5", None)):
        path.write_text(text)
        assert read_pid(path) == pid, text


def test_is_ours_needs_the_state_dir_in_the_command_line(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    code = "print('ready', flush=True); import time; time.sleep(30)"
    ours = subprocess.Popen([sys.executable, "-c", code, str(spec.state_dir / "x.conf")],
                            stdout=subprocess.PIPE)  # fmt: skip
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        for p in (ours, other):
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        assert is_ours(ours.pid, spec) and not is_ours(other.pid, spec)
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
    assert not is_ours(ours.pid, spec)  # gone


def test_binary() -> None:
    assert Path(binary("sh")).is_absolute()
    with pytest.raises(LabError, match="program 'vpatch-no-such-tool' not found"):
        binary("vpatch-no-such-tool")
