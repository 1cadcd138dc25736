#!/usr/bin/env bash
# The test command (README.md): installs prerequisites, then runs every test of the workspace,
# privileged ones included (run as root: they start etcd, and later create network namespaces
# and load BPF programs).
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."

scripts/install-prereqs.sh

# Tests keep their scratch data (etcd data dirs above all) on tmpfs when the machine has one:
# the tests need no durability, and etcd's fsync on a busy disk can stall for seconds.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

# A cold build needs ~2.2 GB (plus incremental state unless CARGO_INCREMENTAL=0); a full disk
# shows up as a linker crash halfway through, so say it up front.
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
free_kb=$(df -Pk "$target" | awk 'NR == 2 { print $4 }')
if [ "${free_kb:-0}" -lt 3000000 ]; then
    echo "warning: only $((free_kb / 1024)) MiB free under $target; the build needs ~3 GB." >&2
    echo "         Free some space (cargo clean), or point CARGO_TARGET_DIR at a larger disk." >&2
fi

echo "==> cargo test --workspace (unit, integration and doc tests; privileged tests included)"
cargo test --workspace --locked
