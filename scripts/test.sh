#!/usr/bin/env bash
# Fresh Debian 12, as root: install what is needed, then run the test suite.
# Arguments go to pytest (e.g. tests/lab, -k smb, -x). JUnit XML lands in artifacts/junit.xml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install.sh
# Suricata 7 (bookworm-backports): the export test checks our rules with `suricata -T`.
scripts/install-bench.sh
mkdir -p artifacts
exec .venv/bin/python -m pytest -ra --durations=15 --junitxml=artifacts/junit.xml "$@"
