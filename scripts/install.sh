#!/usr/bin/env bash
# Install everything vpatch, its lab and its tests need on Debian 12, as root, then create the
# virtualenv ./.venv (with --system: install vpatch as a service instead, see below) with vpatch installed editable plus its test and dev (ruff, mypy) extras.
# Idempotent: apt runs only when a package is missing, pip only when pyproject.toml changed
# since the last successful run (or the venv is new). Never starts or stops system services:
# a temporary policy-rc.d forbids package scripts from starting nginx/smbd/named in the root
# namespace (the lab runs its own copies inside its server namespace).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# `--system [--root DIR]`, `--uninstall [--purge]`: the system install instead (/opt/vpatch,
# /etc/vpatch, units; scripts/system-install.sh says what goes where).
case " $* " in
    *" --system "*|*" --uninstall "*) exec scripts/system-install.sh "$@" ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (apt-get, network namespaces)" >&2
    exit 1
fi

APT_PACKAGES=(
    # kernel plumbing: namespaces, veths, bridge, netfilter
    iproute2 iptables ipset conntrack ethtool kmod procps psmisc
    # the lab's legacy-server stand-ins and the clients the tests drive them with
    nginx-light samba smbclient bind9 bind9-dnsutils curl
    # traffic tools for tests and benchmarks
    iperf3 wrk tcpdump tshark
    # the real-browser UI test (tests/webui/test_browser.py): headless Chromium + chromedriver
    chromium chromium-driver
    # the shared policy and event store of several gateways (docs/multi-gateway.md), and the
    # real server the tests start as an unprivileged user (gateway/testing/postgres.py)
    postgresql
    # building and running the Python package (netfilterqueue compiles against libnetfilter_queue)
    python3 python3-venv python3-dev python3-pip build-essential pkg-config libnetfilter-queue-dev
    ca-certificates git
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install.sh: installing ${missing[*]}"
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# vpatch install.sh: no service starts during install\nexit 101\n' \
            > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    trap '[ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "install.sh: apt packages already installed"
fi

if [ ! -x .venv/bin/python ]; then
    echo "install.sh: creating .venv"
    python3 -m venv .venv
fi

stamp=.venv/.vpatch-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x .venv/bin/vpatch ]; then
    echo "install.sh: pip install -e '.[test,dev]'"
    .venv/bin/python -m pip install --quiet -e '.[test,dev]'
    echo "$want" > "$stamp"
else
    echo "install.sh: .venv up to date"
fi
