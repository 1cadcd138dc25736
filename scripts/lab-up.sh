#!/usr/bin/env bash
# The main job (README.md): installs prerequisites, builds the binaries and brings up the local
# lab: CLUSTERS clusters (default 2) of NODES nodes (default 2), each node a network namespace
# running cilium-agent with the eBPF datapath and Hubble, one etcd, operator and
# clustermesh-apiserver per cluster, hubble-relay, an "external" echo server, and the Star Wars
# demo. Run as root: the lab creates network namespaces and loads BPF programs.
# Extra arguments go to `cilium lab up` (e.g. --kvstore memory, --routing-mode tunnel, --name);
# CILIUM_LAB_DIR chooses the lab directory (default /var/run/cilium-lab).
# `target/debug/cilium lab down` removes everything again.
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."

scripts/install-prereqs.sh

echo "==> building the binaries (cargo build -p cmd --bins)"
cargo build --locked -p cmd --bins
# Cargo puts the binaries under $CARGO_TARGET_DIR when it is set.
cilium="${CARGO_TARGET_DIR:-target}/debug/cilium"

args=("$@")
# The memory kvstore runs one node of one cluster; etcd labs get CLUSTERS x NODES.
if [[ " ${args[*]} " != *" --kvstore memory "* ]]; then
    args=(--clusters "${CLUSTERS:-2}" --nodes "${NODES:-2}" "${args[@]}")
fi
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

echo "==> cilium lab up ${args[*]}"
started=$(now)
"$cilium" lab up "${args[@]}"
echo "==> lab up took $(took "$started")"
# With etcd the demo's service and policy go through the cluster's etcd; with the memory
# kvstore through the agent's REST API.
echo "==> cilium lab demo"
started=$(now)
"$cilium" lab demo
echo "==> demo took $(took "$started")"
"$cilium" lab status
