#!/usr/bin/env bash
# Installs what building and testing this repository needs on a fresh Debian machine, skipping
# whatever is already present. Safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail

# Debian packages: etcd for the kvstore tests (openssl makes their TLS certificates), protoc for
# etcd-client's build script, and the eBPF toolchain (clang, llvm, libbpf headers, bpftool) and
# iproute2 for the datapath; podman (CNI backend) with runc and a static busybox for the test in
# which a real container runtime calls cilium-cni (crun is not used: it fails on hybrid cgroups);
# python3-venv for the Python gRPC client env of the Hubble wire-format test (see the end).
packages=(etcd-server etcd-client protobuf-compiler openssl clang llvm libbpf-dev bpftool iproute2
    podman runc busybox-static python3-venv)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "==> installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "==> Debian packages present: ${packages[*]}"
fi

# Debian's etcd-server package starts a system etcd on the default ports; the tests start their
# own on free ports and do not need it, so leave it alone (stopping it is the admin's choice).

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install the Rust toolchain (rustup, stable >= 1.89) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "==> installing rustup component $component"
        rustup component add "$component"
    fi
done

"$(dirname "$0")/python-grpc-env.sh"
