#!/usr/bin/env bash
# Builds the volmig Python package's wheel (clients/python) and installs it into a
# fresh virtualenv, for tests/python_package.rs. Usage: package-venv.sh OUT_DIR
# (`package-venv.sh --tools` only makes the tools venv: deploy/setup-tests.sh).
#
# - A tools venv (pinned grpcio-tools, build, setuptools, mypy with the grpcio and
#   protobuf type stubs, pytest: the same pins constrain the fresh venv) is made once under /var/tmp and reused while its
#   pins match; the wheel is built with it (`python -m build --wheel
#   --no-isolation`, so no per-run download of the build requirements).
# - OUT_DIR/venv is then made from nothing and gets the wheel with its `typing`
#   extra (grpcio, protobuf and their type stubs from PyPI, pinned by constraints),
#   mypy and pytest, as a user checking their code would install them.
# Prints the fresh venv's python.
# Installs Debian's python3-venv when the venv module is missing.
set -euo pipefail

out=${1:?usage: package-venv.sh OUT_DIR | --tools}
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=${VOLMIG_PY_TOOLS:-/var/tmp/volmig-pypkg-tools}
pins=(
    grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2
    setuptools==84.2.1 wheel==0.48.0 build==1.6.1
    mypy==2.4.1 types-grpcio==1.85.0.20261028 types-protobuf==7.35.1.20260906
    pytest==9.2.0
)
pip_quiet=(--quiet --disable-pip-version-check)

python=$(command -v python3)
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >/dev/null 2>&1 || true
    apt-get install -y --no-install-recommends python3-venv >&2
    python=/usr/bin/python3
fi

stamp="$tools/.volmig-pins"
if [ ! -x "$tools/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
    rm -rf "$tools"
    "$python" -m venv "$tools" >&2
    "$tools/bin/pip" install "${pip_quiet[@]}" "${pins[@]}" >&2
    echo "${pins[*]}" >"$stamp"
fi
[ "$out" = --tools ] && exit 0

mkdir -p "$out"
# Build from a copy so the checkout gets no build/ or egg-info; the protos come
# from the checkout's proto/.
src="$out/src"
rm -rf "$src" "$out/dist" "$out/venv"
cp -r "$top/clients/python" "$src"
VOLMIG_PROTO_DIR="$top/proto" "$tools/bin/python" -m build --wheel --no-isolation \
    --outdir "$out/dist" "$src" >"$out/build.log" 2>&1 \
    || { tail -n 30 "$out/build.log" >&2; exit 1; }
wheel=$(ls "$out"/dist/volmig-*.whl)

printf '%s\n' "${pins[@]}" >"$out/constraints.txt"
"$python" -m venv "$out/venv" >&2
"$out/venv/bin/pip" install "${pip_quiet[@]}" -c "$out/constraints.txt" "$wheel[typing]" mypy pytest >&2
"$out/venv/bin/python" -c 'import volmig, volmig.aio' >&2
echo "$out/venv/bin/python"
