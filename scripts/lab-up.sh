#!/usr/bin/env bash
# Fresh Debian 12, as root: install what is needed, then bring up the namespace lab with the
# gateway running. Arguments go to `vpatch lab up` (e.g. --routed, --name NAME, --no-gateway).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install.sh
exec .venv/bin/vpatch lab up "$@"
