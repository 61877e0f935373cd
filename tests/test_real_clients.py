"""Real clients through the inline gateway, with veth offloads on (the kernel default) and off.

The TCP/IP normaliser (gateway/flow/normalize.py) drops what a receiver would drop and resets
flows whose bytes conflict. Here the real clients an admin uses (curl over IPv4 and IPv6, an
upload, smbclient over SMB1 and SMB3, dig over UDP and TCP, wrk with keep-alive, iperf3 both
ways) talk to the lab's real servers through `vpatch run` with the bundled rule pack: every one
must succeed, nothing benign may raise an event, and the normaliser must not have dropped a
segment for a checksum (offload leaves partial checksums on veths) or reset a flow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.lab import services as lab_services
from gateway.testing.inline import REPO, in_ns, running_gateway

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

IPERF_PORT = 5201


def _config(lab: Any, tmp_path: Path) -> dict[str, Any]:
    return {
        "protected_hosts": [lab.server_addr, lab.server_addr6],
        "rules": [str(REPO / "rules")],
        "queues": {"first": 0, "count": 2},
        "fail_policy": "closed",  # a client that works did so through the workers
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": str(tmp_path / "eve.json")},
        "control": {"socket": str(tmp_path / "control.sock")},
    }


def _ok(result: Any, what: str) -> str:
    assert result.returncode == 0, f"{what}: rc {result.returncode}\n{result.stdout}{result.stderr}"
    return str(result.stdout)


@pytest.mark.parametrize("offloads_off", [False, True], ids=["offloads-on", "offloads-off"])
def test_real_clients_pass_the_normaliser(
    make_lab: Any, tmp_path: Path, offloads_off: bool
) -> None:
    lab = make_lab("r" + ("f" if offloads_off else "n"), offloads_off=offloads_off)
    client, server = lab.client_ns, lab.server_addr
    lab_services.start_background(
        lab, lab.server_ns, "clients-iperf3", ["iperf3", "-s", "-B", server, "-p", str(IPERF_PORT)]
    )
    upload = tmp_path / "upload.bin"
    upload.write_bytes(bytes(range(256)) * 2048)  # 512 KiB, inspected to the server
    with running_gateway(lab, tmp_path, _config(lab, tmp_path)) as gw:
        page = _ok(in_ns(client, ["curl", "-sS", "-m", "10", f"http://{server}/"]), "curl")
        assert "vpatch lab server" in page
        page6 = in_ns(client, ["curl", "-sS", "-m", "10", "-g", f"http://[{lab.server_addr6}]/"])
        assert "vpatch lab server" in _ok(page6, "curl IPv6")
        post = in_ns(
            client,
            ["curl", "-sS", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}",
             "--data-binary", f"@{upload}", f"http://{server}/"],
        )  # fmt: skip
        assert _ok(post, "curl upload") in ("200", "405"), post.stdout  # nginx: static page
        smb1 = in_ns(
            client,
            ["smbclient", "-N", "-L", f"//{server}", "--option=client min protocol=NT1",
             "-m", "NT1"],
        )  # fmt: skip
        assert "public" in _ok(smb1, "smbclient NT1")
        smb3 = in_ns(client, ["smbclient", "-N", f"//{server}/public", "-c", "get readme.txt -"])
        assert _ok(smb3, "smbclient SMB3").strip(), smb3.stderr
        for extra in ([], ["+tcp"]):
            dig = in_ns(client, ["dig", f"@{server}", "server.lab.test", "A", "+short", *extra])
            assert _ok(dig, f"dig {extra}").strip(), dig.stderr
        wrk = in_ns(client, ["wrk", "-t1", "-c4", "-d2s", f"http://{server}/"], timeout=30)
        out = _ok(wrk, "wrk")
        assert "requests in" in out and "Socket errors" not in out, out
        for reverse in ([], ["-R"]):
            argv = ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", "2", "-J", *reverse]
            report = json.loads(_ok(in_ns(client, argv, timeout=30), f"iperf3 {reverse}"))
            assert report["end"]["sum_received"]["bytes"] > 0
        status = gw.status()
        assert gw.events() == []
    assert status["packets"] > 0
    # Counters the workers export (every second): no segment of these clients was refused by
    # the normaliser, and no limit was reached.
    refused = ("norm_ip_checksum", "norm_tcp_checksum", "norm_conflict", "norm_syn_data")
    for queue in status["queues"].values():
        for name in refused:
            assert queue[name] == 0, f"{name} on queue: {queue}"
    assert status["uninspected_packets"] == 0
