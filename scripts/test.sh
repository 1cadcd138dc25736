#!/usr/bin/env bash
# The test command (README.md): installs prerequisites, then runs every test of the workspace,
# privileged ones included (run as root: they start etcd, and later create network namespaces
# and load BPF programs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-prereqs.sh

# Tests keep their scratch data (etcd data dirs above all) on tmpfs when the machine has one:
# the tests need no durability, and etcd's fsync on a busy disk can stall for seconds.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

echo "==> cargo test --workspace (unit, integration and doc tests; privileged tests included)"
cargo test --workspace --locked
