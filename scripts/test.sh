#!/usr/bin/env bash
# The test command (README.md): installs prerequisites, then runs every test of the workspace,
# privileged ones included (run as root: they start etcd, and later create network namespaces
# and load BPF programs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-prereqs.sh

echo "==> cargo test --workspace (unit, integration and doc tests; privileged tests included)"
cargo test --workspace --locked
