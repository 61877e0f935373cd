#!/usr/bin/env bash
# Fresh Debian 12, as root: install what is needed, run the checks (ruff, mypy), then the test
# suite.
# Arguments go to pytest (e.g. tests/lab, -k smb, -x). JUnit XML lands in artifacts/junit.xml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install.sh
# Suricata 7 (bookworm-backports): the export test checks our rules with `suricata -T`.
scripts/install-bench.sh
mkdir -p artifacts
# The checks gate the tests: any finding fails the run (pyproject.toml holds ruff's rule selection
# and mypy's strict settings over gateway and webui).
echo "test.sh: ruff check, ruff format --check, mypy --strict"
.venv/bin/ruff check gateway webui tests bench
.venv/bin/ruff format --check gateway webui tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -ra --durations=15 --junitxml=artifacts/junit.xml "$@"
