# Sourced first thing by the scripts that need root (the lab and the tests create network
# namespaces and load BPF programs): as root it does nothing; otherwise it runs the calling
# script again under sudo, keeping the environment the build needs (rustup's cargo is on the
# user's PATH, not root's), or says how to run it when there is no sudo.
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        echo "==> $0 needs root (network namespaces, BPF programs): running it with sudo" >&2
        keep=("PATH=$PATH")
        for var in CARGO_HOME RUSTUP_HOME CARGO_TARGET_DIR CARGO_INCREMENTAL CLUSTERS NODES CILIUM_LAB_DIR TMPDIR; do
            if [ -n "${!var:-}" ]; then keep+=("$var=${!var}"); fi
        done
        exec sudo env "${keep[@]}" "$0" "$@"
    fi
    echo "error: $0 needs root (it creates network namespaces and loads BPF programs)," >&2
    echo "       and sudo is not installed: run it again as root." >&2
    exit 1
fi
