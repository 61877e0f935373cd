"""Tests for the legacy-estate rules (issue 10 point 6): every rule of these files has its
metadata (CVE, references, affected products for the recommendation scan), an attack and a
benign look-alike; each sample through the `vpatch replay` code path fires its own rule (attack)
or none of these rules (benign); the binary samples are exactly what tests/rules/legacy_builders.py
builds, so the YAML hex and its documented construction cannot drift apart.
Generic checks over the whole pack (corpora, evasion) live in test_samples.py, test_corpus.py
and test_evasion.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.commands.replay import replay_file
from gateway.engine import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import Rule, Sample, default_rule_dir, load_rules
from gateway.testing.samples import sample_pcap
from tests.rules import legacy_builders as lb

RULE_FILES = (
    "ms09-020-iis-webdav-unicode-auth-bypass.yaml",
    "cve-2009-4444-iis-semicolon-extension.yaml",
    "ms10-065-iis-index-allocation-auth-bypass.yaml",
    "ms01-033-iis-ida-code-red.yaml",
    "ms03-007-iis-webdav-ntdll.yaml",
    "cve-2021-31166-2022-21907-httpsys-accept-encoding.yaml",
    "cve-2011-3192-apache-killer-range.yaml",
    "cve-2021-40438-apache-mod-proxy-ssrf.yaml",
    "cve-2012-1823-php-cgi-query-arguments.yaml",
    "cve-2017-12615-tomcat-put-jsp.yaml",
    "cve-2018-11776-struts2-s2-057.yaml",
    "cve-2017-9805-struts2-s2-052-xstream.yaml",
    "cve-2017-5638-struts2-ognl.yaml",
    "cve-2020-1938-tomcat-ajp-ghostcat.yaml",
    "ms09-050-smb2-negotiate-pid-high.yaml",
    "ms05-039-pnp-query-res-conf-list.yaml",
    "ms07-029-dns-rpc-zone-name.yaml",
    "ms10-061-spooler-output-file.yaml",
    "cve-2021-34527-printnightmare.yaml",
    "ms14-068-kerberos-pac.yaml",
    "ms14-066-schannel-ecdsa-signature.yaml",
    "ms09-053-iis-ftp-nlst-glob.yaml",
    "ms11-004-iis-ftp-telnet-iac.yaml",
    "cve-2016-2776-bind-tsig-name.yaml",
    "ms02-039-sqlr-keepalive-loop.yaml",
)
RULESET = load_rules([default_rule_dir() / name for name in RULE_FILES])
MATCHER = Matcher(RULESET)
OUR_IDS = frozenset(r.id for r in RULESET.rules)
CASES = [
    pytest.param(rule, sample, id=f"{rule.id}-{sample.kind}-{n}")
    for rule in RULESET.rules
    for n, sample in enumerate(rule.samples)
]


def test_every_rule_has_metadata_and_both_kinds_of_sample() -> None:
    assert len(RULESET.rules) >= 29
    for rule in RULESET.rules:
        assert {s.kind for s in rule.samples} == {"attack", "benign"}, rule.id
        assert rule.cves and rule.references and rule.affected, rule.id


def test_the_pack_names_at_least_fifty_cves() -> None:
    pack = load_rules([default_rule_dir()])
    cves = {c for rule in pack.rules for c in rule.cves if c != "CVE-0000-0001"}
    assert len(cves) >= 50, sorted(cves)


@pytest.mark.parametrize(("rule", "sample"), CASES)
def test_sample(rule: Rule, sample: Sample, tmp_path: Path) -> None:
    out = io.StringIO()
    _engine, error = replay_file(
        sample_pcap(rule, sample, tmp_path), MATCHER, EngineConfig(), out, None
    )
    assert error is None
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    fired = {e["alert"]["signature_id"] for e in events}
    if sample.kind == "attack":
        assert rule.id in fired, (sample.description, events)
    else:
        assert not fired & OUR_IDS, (sample.description, events)


def test_binary_samples_are_the_builders_output() -> None:
    """Every sample that is not a typed HTTP request (or MC-SQLR's one-byte datagrams) is the
    builders' output, byte for byte."""
    built = set(lb.samples().values())
    for rule in RULESET.rules:
        for sample in rule.samples:
            raw = sample.to_server
            typed_http = b" HTTP/1." in raw.split(b"\r\n", 1)[0]
            if sample.pcap is not None or typed_http or rule.app == "mssql":
                continue
            assert raw in built, (rule.id, sample.description)
