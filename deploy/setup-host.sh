#!/usr/bin/env bash
# Installs and starts everything volmig's node and its tests need on a Debian 12 host:
# libvirt + QEMU, the guest kernel and busybox for the test guest, parted for disk pools,
# e2fsprogs for the small filesystem pools of the destination-full test, prometheus
# (prometheus + promtool) for the metrics test and the alert-rules check;
# for the packaging tests: systemd (systemd-analyze), binutils (strip),
# cargo-deb (pinned, built once and kept in ~/.cargo/bin), kubectl (the
# image's, else Debian's kubernetes-client) and kubernetes-validate (pinned,
# in a venv under /var/tmp).
# etcd-server for the tests of several controllers on one etcd, and
# protobuf-compiler (protoc), which the etcd-client crate's build needs to
# compile etcd's protos (libprotobuf-dev: the well-known types they import).
# Idempotent and quiet on success; on failure it says what failed and shows the log.
set -euo pipefail

log=$(mktemp /tmp/volmig-setup.XXXXXX.log)
fail() {
    echo "setup-host: $*" >&2
    echo "setup-host: last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: must run as root (libvirtd and the test pools need it)" >&2
    exit 1
fi

packages=(
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-daemon-driver-storage-rbd
    libvirt-clients libvirt-dev
    qemu-system-x86 qemu-block-extra qemu-utils
    linux-image-cloud-amd64 busybox-static cpio gzip parted pkg-config bc e2fsprogs
    prometheus etcd-server protobuf-compiler libprotobuf-dev
    systemd binutils util-linux python3-seccomp
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The image may ship a backports qemu-utils that qemu-system-x86 would remove: install
# Debian's qemu-utils in the same transaction so qemu-img stays.
if ! command -v qemu-system-x86_64 >/dev/null || [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >>"$log" 2>&1 || fail "apt-get update failed"
    qemu_utils=qemu-utils
    stable=$(apt-cache madison qemu-utils 2>>"$log" | awk -F'|' '$3 !~ /backports/ {gsub(/ /,"",$2); print $2; exit}')
    [ -n "$stable" ] && qemu_utils="qemu-utils=$stable"
    apt-get install -y --no-install-recommends --allow-downgrades \
        "${packages[@]/qemu-utils/$qemu_utils}" >>"$log" 2>&1 \
        || fail "apt-get install failed"
fi
command -v qemu-img >/dev/null || fail "qemu-img is missing after install"
command -v promtool >/dev/null || fail "promtool is missing after install (package prometheus)"
command -v etcd >/dev/null || fail "etcd is missing after install (package etcd-server)"
command -v protoc >/dev/null || fail "protoc is missing after install (package protobuf-compiler)"
ls /boot/vmlinuz-* >/dev/null 2>&1 || fail "no kernel in /boot (linux-image-cloud-amd64)"

# Packaging tests (tests/install.rs).
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version"; then
    # Measured: ~25 min at load 9 on the shared 2-core machine; paid once per machine.
    cargo install --locked --quiet cargo-deb --version "$cargo_deb_version" >>"$log" 2>&1 \
        || fail "cargo install cargo-deb $cargo_deb_version failed"
fi
if ! kubectl kustomize --help >/dev/null 2>&1; then
    # The machine image ships kubectl; Debian 12's kubernetes-client (kubectl
    # 1.20, kustomize v2) renders the same kustomization where it does not.
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends kubernetes-client >>"$log" 2>&1 \
        || fail "apt-get install kubernetes-client failed"
fi
k8s_venv=/var/tmp/volmig-k8s-venv
k8s_validate_version=1.37.0
if ! "$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$k8s_validate_version"; then
    python=$(command -v python3)
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        apt-get install -y --no-install-recommends python3-venv >>"$log" 2>&1 \
            || fail "apt-get install python3-venv failed"
        python=/usr/bin/python3
    fi
    rm -rf "$k8s_venv"
    { "$python" -m venv "$k8s_venv" \
        && "$k8s_venv/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$k8s_validate_version"; } >>"$log" 2>&1 \
        || fail "pip install kubernetes-validate failed"
fi

mkdir -p /run/libvirt
# A daemon may be on its way out (killed a moment ago): check liveness from
# /proc (a zombie is dead) and start it again whenever it is gone.
running() {
    local pid
    for pid in $(pgrep -x "$1" 2>/dev/null); do
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && return 0
    done
    return 1
}
ensure() {
    running "$1" || "$1" -d >>"$log" 2>&1 || fail "$1 did not start"
}
answers=no
for _ in $(seq 1 150); do
    ensure virtlogd
    ensure libvirtd
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        answers=yes
        break
    fi
    sleep 0.2
done
[ "$answers" = yes ] || {
    virsh -c qemu:///system version >>"$log" 2>&1
    fail "libvirtd does not answer on qemu:///system"
}
rm -f "$log"
