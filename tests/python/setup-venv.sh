#!/usr/bin/env bash
# Creates (once) a Python virtualenv with grpcio and grpcio-reflection for the
# interop test, and prints its python interpreter's path. Reuses it while it
# imports; installs Debian's python3-venv when the venv module is missing.
set -euo pipefail

venv=${VOLMIG_PY_VENV:-/var/tmp/volmig-python-venv}
py="$venv/bin/python"
if [ -x "$py" ] && "$py" -c 'import grpc, grpc_reflection' 2>/dev/null; then
    echo "$py"
    exit 0
fi
python=$(command -v python3)
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >/dev/null 2>&1 || true
    apt-get install -y --no-install-recommends python3-venv >&2
    python=/usr/bin/python3
fi
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$py" -m pip install --quiet --disable-pip-version-check grpcio grpcio-reflection protobuf >&2
"$py" -c 'import grpc, grpc_reflection' >&2
echo "$py"
