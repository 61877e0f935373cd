"""The rule pack inline on the live path: `vpatch run` with every rule in rules/ in the namespace
lab (client -> bridged gateway -> real server), one rule per protocol against the real server:
HTTP (MS15-034) against nginx, SMB (MS17-010 EternalBlue) against Samba, DNS (CVE-2015-5477,
UDP) against named. The attack sample, sent from the client namespace, is blocked (TCP: reset by
the gateway; UDP: no answer) with a "blocked" event; the benign look-alike reaches the server,
which answers, and raises no event.

The gateway process is ours: started in the lab's gateway namespace, stopped by PID with
SIGTERM, and its kernel rules removed, also on failure (the `lab` fixture removes the lab).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.match.rules import Rule, Sample, default_rule_dir, load_rules
from gateway.testing.inline import in_ns, running_gateway

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

EVENT_WAIT = 5.0
# (protocol, rule id, server port): one rule per protocol the lab's real servers speak.
CASES = [("http-nginx", 9010020, 80), ("smb-samba", 9001001, 445), ("dns-named", 9001021, 53)]

CLIENT = textwrap.dedent(
    """
    import json, socket, sys
    host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    payload = bytes.fromhex(sys.argv[4])
    prelude = bytes.fromhex(sys.argv[5])
    got, outcome, first = b"", "EOF", 0
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(payload, (host, port))
        try:
            got = s.recv(65535)
            outcome = "DATA"
        except socket.timeout:
            outcome = "TIMEOUT"
    else:
        s = socket.create_connection((host, port), timeout=5)
        s.settimeout(3)
        try:
            if prelude:
                s.sendall(prelude)
                got = s.recv(65536)
                first = len(got)
            s.sendall(payload)
            while True:
                data = s.recv(65536)
                if not data:
                    break
                got += data
                outcome = "DATA"
        except ConnectionResetError:
            outcome = "RESET"
        except socket.timeout:
            outcome = "DATA" if got else "TIMEOUT"
    print(json.dumps({"outcome": outcome, "prelude_reply": first, "received": len(got),
                      "head": got[first:first + 16].hex()}))
    """
)


def _smb1_negotiate() -> bytes:
    """An SMB1 NEGOTIATE offering "NT LM 0.12" (MS-CIFS 2.2.4.52.1), which Samba answers: sent
    before an SMB sample so the session is a real one the server has spoken on."""
    header = (
        b"\xffSMB\x72"
        + bytes(4)
        + b"\x18\x01\x00"
        + bytes(12)
        + b"\x00\x00\xff\xfe\x00\x00\x00\x00"
    )
    dialects = b"\x02NT LM 0.12\x00"
    body = b"\x00" + len(dialects).to_bytes(2, "little") + dialects
    smb = header + body
    return b"\x00" + len(smb).to_bytes(3, "big") + smb


PRELUDES = {"smb-samba": _smb1_negotiate()}


@contextmanager
def gateway_with_rule_pack(lab: Any, tmp_path: Path) -> Iterator[Path]:
    """`vpatch run` with rules/ protecting the lab server; yields the EVE JSON lines file."""
    eve = tmp_path / "eve.json"
    cfg = {
        "protected_hosts": [lab.server_addr, lab.server_addr6],
        "rules": [str(default_rule_dir())],
        "queues": {"first": 0, "count": 2},
        "fail_policy": "open",
        "events": {"sqlite": str(tmp_path / "events.db"), "jsonl": str(eve)},
        "control": {"socket": str(tmp_path / "control.sock")},
    }
    with running_gateway(lab, tmp_path, cfg):
        yield eve


def send(lab: Any, rule: Rule, sample: Sample, port: int, prelude: bytes) -> dict[str, Any]:
    result = in_ns(
        lab.client_ns,
        [sys.executable, "-c", CLIENT, lab.server_addr, str(port), rule.protocol,
         sample.to_server.hex(), prelude.hex()],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def events_for(eve: Path, sid: int, port: int, wait: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait
    while True:
        found = []
        if eve.exists():
            for line in eve.read_text().splitlines():
                event = json.loads(line) if line.strip() else {}
                if event.get("dest_port") == port or event.get("src_port") == port:
                    found.append(event)
        if any(e["alert"]["signature_id"] == sid for e in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _sample(rule: Rule, kind: str) -> Sample:
    return next(s for s in rule.samples if s.kind == kind and s.pcap is None and s.to_server)


def test_one_rule_per_protocol_inline_against_real_servers(lab: Any, tmp_path: Path) -> None:
    ruleset = load_rules([default_rule_dir()])
    report: dict[str, dict[str, Any]] = {}
    with gateway_with_rule_pack(lab, tmp_path) as eve:
        for name, sid, port in CASES:
            rule = ruleset.by_id[sid]
            assert port in rule.ports
            prelude = PRELUDES.get(name, b"")
            benign = send(lab, rule, _sample(rule, "benign"), port, prelude)
            benign_events = events_for(eve, sid, port, 1.0)
            attack = send(lab, rule, _sample(rule, "attack"), port, prelude)
            attack_events = events_for(eve, sid, port, EVENT_WAIT)
            report[name] = {"benign": benign, "attack": attack}
            # The benign look-alike reached the real server: it answered the sample itself
            # (beyond its answer to an SMB negotiate prelude), and nothing fired.
            assert benign["outcome"] in ("DATA", "EOF"), (name, benign)
            assert benign["received"] > benign["prelude_reply"], (name, benign)
            assert benign_events == [], (name, benign_events)
            # The attack was blocked on the live path.
            fired = [e for e in attack_events if e["alert"]["signature_id"] == sid]
            assert fired and fired[0]["alert"]["action"] == "blocked", (name, attack_events)
            if rule.protocol == "tcp":
                assert attack["outcome"] == "RESET", (name, attack)
            else:
                assert attack["outcome"] == "TIMEOUT", (name, attack)
            # Clear the file so the next protocol's benign check starts from nothing.
            eve.write_text("")
    print("\ninline rules:", json.dumps(report))
