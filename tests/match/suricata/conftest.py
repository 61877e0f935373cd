"""Fixtures of the Suricata import/export tests: the rule corpora and a `suricata -T` check."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

CORPUS_RULES = Path(__file__).resolve().parents[4] / "shared" / "corpora" / "rules"
SURICATA = shutil.which("suricata")
SURICATA_YAML = """%YAML 1.1
---
vars:
  address-groups: {HOME_NET: "[198.18.0.0/15]", EXTERNAL_NET: "!$HOME_NET"}
  port-groups: {HTTP_PORTS: "80"}
default-rule-path: DIR
rule-files: []
default-log-dir: DIR
classification-file: /etc/suricata/classification.config
reference-config-file: /etc/suricata/reference.config
app-layer:
  protocols:
    http: {enabled: yes}
    dns: {tcp: {enabled: yes}, udp: {enabled: yes}}
logging: {outputs: [{console: {enabled: yes}}]}
"""


@pytest.fixture
def corpus_rules() -> Callable[[str], Path]:
    """A .rules file of <repo>/../shared/corpora/rules by name (skips if it is not there)."""

    def get(name: str) -> Path:
        path = CORPUS_RULES / name
        if not path.is_file():
            pytest.skip(f"corpus file {path} is not here")
        return path

    return get


@pytest.fixture
def suricata_accepts(tmp_path: Path) -> Callable[[Path], None]:
    """Checks a .rules file with `suricata -T` (skips without suricata, fails in CI)."""

    def check(rules_file: Path) -> None:
        if SURICATA is None:
            if os.environ.get("CI"):  # scripts/test.sh installs it: CI must not skip this check
                pytest.fail(
                    "suricata is not installed although CI is set (scripts/install-bench.sh)"
                )
            pytest.skip("suricata is not installed (scripts/install-bench.sh installs it)")
        conf = tmp_path / "suricata.yaml"
        conf.write_text(SURICATA_YAML.replace("DIR", str(tmp_path)))
        done = subprocess.run(
            [SURICATA, "-T", "-c", str(conf), "-S", str(rules_file), "-l", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    return check
