#!/usr/bin/env bash
# Install what `vpatch bench` compares against: Suricata 7 from Debian's bookworm-backports suite,
# plus the traffic tools (iperf3, wrk, nginx-light) and the iptables/conntrack userland.
#
# Guarantees: the backports source is derived from the Debian mirror the system already uses (the
# URI is copied from /etc/apt/sources.list or /etc/apt/sources.list.d at install time, never
# written into this file); re-running is harmless; Suricata's own systemd service is left stopped
# and disabled so that only `vpatch bench` runs it, inside its namespaces. Exits non-zero when
# suricata 7 with NFQueue support is not there at the end.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-bench.sh: must run as root (apt-get)" >&2
    exit 1
fi

BACKPORTS_FILE=/etc/apt/sources.list.d/vpatch-bench-backports.sources
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

# Find the URI of the base Debian archive (the one that serves "$CODENAME" itself, not -security).
find_mirror() {
    local f
    # deb822 .sources files: a stanza with "Suites:" containing the codename and a "URIs:" line.
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        [[ $f == "$BACKPORTS_FILE" ]] && continue
        awk -v code="$CODENAME" '
            BEGIN { RS=""; FS="\n" }
            {
                uris=""; suites=""; types=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                    if ($i ~ /^Types:/)  { types = $i }
                }
                n = split(suites, s, /[ \t]+/)
                for (j = 1; j <= n; j++)
                    if (s[j] == code && types ~ /deb([ \t]|$)/) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f"
    done
    # one-line format: "deb [opts] URI SUITE COMPONENTS..."
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v code="$CODENAME" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == code) { print $i; exit }
            }' "$f"
    done
}

if ! command -v suricata >/dev/null || [[ $(suricata -V 2>/dev/null) != *'version 7.'* ]]; then
    MIRROR=$(find_mirror | head -n1)
    if [[ -z $MIRROR ]]; then
        echo "install-bench.sh: no Debian source for suite '$CODENAME' found in /etc/apt/sources.list(.d)" >&2
        exit 1
    fi
    echo "install-bench.sh: using mirror $MIRROR for $CODENAME-backports"
    cat >"$BACKPORTS_FILE" <<SRC
Types: deb
URIs: $MIRROR
Suites: $CODENAME-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -q
    # Do not let the package start its own service on the root namespace's interfaces.
    POLICY_RC=/usr/sbin/policy-rc.d
    policy_created=0
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod +x "$POLICY_RC"
        policy_created=1
    fi
    trap '[[ $policy_created -eq 1 ]] && rm -f "$POLICY_RC"' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t "$CODENAME-backports" suricata
fi

missing=()
for tool in iperf3 wrk nginx iptables conntrack; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    pkgs=()
    for tool in "${missing[@]}"; do
        case $tool in
            nginx) pkgs+=(nginx-light) ;;
            *) pkgs+=("$tool") ;;
        esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
fi

if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now suricata.service >/dev/null 2>&1 || true
fi

suricata -V
# Read the whole build info first: `suricata --build-info | grep -q` under pipefail fails at
# random, because grep exits at the first match and suricata then dies of SIGPIPE (status 141).
build_info=$(suricata --build-info)
if ! grep -qi 'NFQueue support:[[:space:]]*yes' <<<"$build_info"; then
    echo "install-bench.sh: installed suricata lacks NFQueue support" >&2
    grep -i nfq <<<"$build_info" >&2 || true
    exit 1
fi
echo "install-bench.sh: suricata with NFQueue support is ready"
