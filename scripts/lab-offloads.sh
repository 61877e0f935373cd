#!/usr/bin/env bash
# Measure what veth offloads (TSO/GSO/GRO, checksum) do to throughput through the lab bridge,
# with and without an accept-all NFQUEUE reader in the gateway namespace. Prints one line per
# case (iperf3 client -> server through br0, 5 s each). Builds and removes its own lab
# ("vofl<pid>", no services, no gateway); traffic stays inside that lab's namespaces.
# Usage: scripts/lab-offloads.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-5}"
name="vofl$$"
py=.venv/bin/python
vp=.venv/bin/vpatch
reader_pid=""
iperf_pid=""
cleanup() {
    [ -n "$reader_pid" ] && kill "$reader_pid" 2>/dev/null || true
    [ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null || true
    "$vp" lab down --name "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT

measure() {  # $1 = label; prints Gbit/s of the iperf3 receiver
    local out
    out=$(ip netns exec "$name-client" iperf3 -c 198.18.0.20 -t "$secs" -J)
    printf '%-44s %8.3f Gbit/s\n' "$1" "$(echo "$out" | "$py" -c \
        'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')"
}

for offloads in off on; do
    flag=""
    [ "$offloads" = off ] && flag="--offloads-off"
    "$vp" lab up --name "$name" --no-services --no-gateway $flag >/dev/null
    ip netns exec "$name-server" iperf3 -s >/dev/null 2>&1 &
    iperf_pid=$!
    sleep 0.3
    measure "offloads $offloads, bridge only"
    ip netns exec "$name-gw" iptables -A FORWARD -p tcp --dport 5201 \
        -j NFQUEUE --queue-num 7 --queue-bypass
    ip netns exec "$name-gw" "$py" -c '
from netfilterqueue import NetfilterQueue
q = NetfilterQueue()
q.bind(7, lambda pkt: pkt.accept(), max_len=4096)
q.run()' &
    reader_pid=$!
    sleep 0.5
    measure "offloads $offloads, NFQUEUE accept-all (python)"
    kill "$reader_pid"; reader_pid=""
    kill "$iperf_pid"; iperf_pid=""
    wait 2>/dev/null || true
    "$vp" lab down --name "$name" >/dev/null
done
