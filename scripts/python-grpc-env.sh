#!/usr/bin/env bash
# Creates or updates the Python virtualenv with grpcio and grpcio-tools that
# hubble/tests/python_grpc.rs uses as an independent gRPC client of hubble-relay.
#
# Location: $CILIUM_PYENV, or target/pyenv in the repository (the test looks in the same place).
# Idempotent: when the venv already holds exactly hubble/tests/python/requirements.txt for the
# same interpreter, it returns at once without touching the network.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CILIUM_PYENV:-$repo/target/pyenv}"
requirements="$repo/hubble/tests/python/requirements.txt"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install python3 and python3-venv (scripts/install-prereqs.sh does)" >&2
    exit 1
fi

# The stamp ties the venv to the requirements and the interpreter that built it: a change of
# either (a new pin, a Python upgrade) rebuilds it.
stamp_value="$("$python" -c 'import sys; print(sys.version)') $(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements-stamp"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_value" ]; then
    echo "==> Python gRPC env up to date: $venv"
    exit 0
fi

# Debian splits venv's ensurepip into python3-venv; without it `python3 -m venv` leaves a venv
# without pip, so check first and say what is missing.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "error: $python lacks the venv/ensurepip modules; install python3-venv (scripts/install-prereqs.sh does)" >&2
    exit 1
fi

echo "==> creating Python gRPC env in $venv"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: --requirement "$requirements"
# Written last: an interrupted install leaves no stamp and is redone next time.
printf '%s\n' "$stamp_value" >"$stamp"
echo "==> Python gRPC env ready: $venv"
