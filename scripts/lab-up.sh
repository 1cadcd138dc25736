#!/usr/bin/env bash
# The main job (README.md): installs prerequisites, builds the binaries and brings up the local
# lab: CLUSTERS clusters (default 2) of NODES nodes (default 2), each node a network namespace
# running cilium-agent with the eBPF datapath and Hubble, one etcd, operator and
# clustermesh-apiserver per cluster, hubble-relay, an "external" echo server, and the Star Wars
# demo. Run as root: the lab creates network namespaces and loads BPF programs.
# Extra arguments go to `cilium lab up` (e.g. --kvstore memory, --routing-mode tunnel).
# `target/debug/cilium lab down` removes everything again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "error: run as root (sudo $0): the lab creates network namespaces and loads BPF programs" >&2
    exit 1
fi

scripts/install-prereqs.sh

echo "==> building the binaries (cargo build -p cmd --bins)"
cargo build --locked -p cmd --bins
cilium=target/debug/cilium

args=("$@")
memory=false
if [[ " ${args[*]} " == *" --kvstore memory "* ]]; then
    memory=true
else
    args=(--clusters "${CLUSTERS:-2}" --nodes "${NODES:-2}" "${args[@]}")
fi
"$cilium" lab up "${args[@]}"
# The demo's service and policy live in etcd: the one-node memory lab runs without it.
if [ "$memory" = false ]; then
    "$cilium" lab demo
fi
"$cilium" lab status
