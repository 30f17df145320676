#!/usr/bin/env bash
# Installs what only volmig's test suite needs, on top of deploy/setup-host.sh (run
# that first: deploy/test.sh and the test harness do):
# - parted for disk pools, e2fsprogs (mkfs.ext4) for the small filesystem pools of
#   the destination-full test, bc for the benchmarks' arithmetic;
# - prometheus (prometheus + promtool) for the metrics test and the alert-rules check;
# - etcd-server for the tests of several controllers on one etcd, and
#   protobuf-compiler (protoc), which the etcd-client crate's build needs to compile
#   etcd's protos (libprotobuf-dev: the well-known types they import); the default
#   build (feature etcd) and the tests need it, the demo's build does not;
# - ceph-mon, ceph-osd, ceph-common, librbd1 for the single-node Ceph of the RBD tests
#   (deploy/ceph/ceph-up.sh installs them on demand too; here the install is not
#   inside a test's timeout);
# - for the packaging tests: systemd (systemd-analyze), binutils (strip),
#   cargo-deb (pinned, built once and kept in ~/.cargo/bin), kubectl (the image's,
#   else Debian's kubernetes-client) and kubernetes-validate (pinned, in a venv
#   under /var/tmp);
# - python3-seccomp for the unit-hardening checks (tests/python/seccomp_exec.py);
# - the Python venv with grpcio of the interop test (tests/python/setup-venv.sh), and
#   the pinned build tools of the Python package test (tests/python/package-venv.sh
#   --tools: grpcio-tools, build, mypy, pytest in /var/tmp/volmig-pypkg-tools); both
#   install python3-venv when the venv module is missing;
# - rustfmt and clippy (rustup components) for test.sh's format and lint checks.
# Idempotent: when everything is installed it prints nothing and touches no network;
# an install says what it installs, in one line. On failure it says what failed and
# shows the log.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log=$(mktemp /tmp/volmig-setup-tests.XXXXXX.log)
fail() {
    echo "setup-tests: $*" >&2
    echo "setup-tests: last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-tests: must run as root (it installs packages; the tests need root too)" >&2
    exit 1
fi

packages=(
    parted e2fsprogs bc
    prometheus etcd-server protobuf-compiler libprotobuf-dev
    ceph-mon ceph-osd ceph-common librbd1
    systemd binutils util-linux python3-seccomp
)

# The packages of "$@" that are not installed, one dpkg-query for all of them
# (it exits 1 when it knows some name not at all: those count as missing).
missing_packages() {
    local installed p
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null \
        | awk '$2 == "install" && $3 == "ok" && $4 == "installed" {print $1}' || true)
    for p in "$@"; do
        grep -qx -- "$p" <<<"$installed" || echo "$p"
    done
}

export DEBIAN_FRONTEND=noninteractive
apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        apt-get update >>"$log" 2>&1 || fail "apt-get update failed"
        apt_updated=yes
    fi
    apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 \
        || fail "apt-get install $* failed"
}

mapfile -t missing < <(missing_packages "${packages[@]}")
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-tests: installing ${missing[*]}" >&2
    # Same lock as deploy/ceph/ceph-up.sh, which a test may be running meanwhile.
    exec 8>/var/lock/volmig-ceph-apt.lock
    flock -w 1200 8 || fail "timed out waiting for another run's package install"
    mapfile -t missing < <(missing_packages "${packages[@]}")
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    exec 8>&-
fi
command -v promtool >/dev/null || fail "promtool is missing after install (package prometheus)"
command -v etcd >/dev/null || fail "etcd is missing after install (package etcd-server)"
command -v protoc >/dev/null || fail "protoc is missing after install (package protobuf-compiler)"
command -v parted >/dev/null || fail "parted is missing after install"
command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing after install (package systemd)"

# Rust: the toolchain setup-host.sh found or installed; rustup's first when present.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
command -v cargo >/dev/null || fail "no cargo: run deploy/setup-host.sh first"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "setup-tests: installing rustfmt and clippy (rustup components)" >&2
    command -v rustup >/dev/null || fail "cargo fmt or cargo clippy is missing and there is no rustup to add them"
    rustup component add rustfmt clippy >>"$log" 2>&1 || fail "rustup component add rustfmt clippy failed"
fi

# Packaging tests (tests/install.rs).
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version"; then
    echo "setup-tests: building cargo-deb $cargo_deb_version (cargo install)" >&2
    # Measured: ~25 min at load 9 on the shared 2-core machine; paid once per machine.
    cargo install --locked --quiet cargo-deb --version "$cargo_deb_version" >>"$log" 2>&1 \
        || fail "cargo install cargo-deb $cargo_deb_version failed"
fi
if ! kubectl kustomize --help >/dev/null 2>&1; then
    echo "setup-tests: installing kubernetes-client (kubectl)" >&2
    # The machine image ships kubectl; Debian 12's kubernetes-client (kubectl
    # 1.20, kustomize v2) renders the same kustomization where it does not.
    apt_install kubernetes-client
fi
k8s_venv=/var/tmp/volmig-k8s-venv
k8s_validate_version=1.37.0
if ! "$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$k8s_validate_version"; then
    echo "setup-tests: installing kubernetes-validate $k8s_validate_version in $k8s_venv" >&2
    python=$(command -v python3)
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
        python=/usr/bin/python3
    fi
    rm -rf "$k8s_venv"
    { "$python" -m venv "$k8s_venv" \
        && "$k8s_venv/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$k8s_validate_version"; } >>"$log" 2>&1 \
        || fail "pip install kubernetes-validate failed"
fi

# The interop test's venv (grpcio, grpcio-reflection): the test runs the same script,
# which returns at once when the venv imports.
bash "$top/tests/python/setup-venv.sh" >>"$log" 2>&1 \
    || fail "tests/python/setup-venv.sh (grpcio venv) failed"
# The Python package test's build tools; returns at once when its pins are installed.
bash "$top/tests/python/package-venv.sh" --tools >>"$log" 2>&1 \
    || fail "tests/python/package-venv.sh --tools (Python package build tools) failed"
rm -f "$log"
