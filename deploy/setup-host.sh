#!/usr/bin/env bash
# Installs and starts what running volmig's node and the demo need on a Debian 12
# host, and nothing else (what only the tests need is in deploy/setup-tests.sh):
# - libvirt + QEMU: libvirtd and virtlogd, the QEMU driver, qemu-system-x86 and
#   qemu-utils (qemu-img, qemu-io); the rbd storage driver and qemu-block-extra too,
#   because a node serves RBD pools and libvirtd loads its storage backends only when
#   it starts (installing the driver later would need a libvirtd restart);
# - the test guest's ingredients (tests/guest/build-guest.sh): the Debian cloud
#   kernel, a static busybox, cpio, gzip, flock (util-linux);
# - the build's: gcc + libc6-dev (linker, the ring crate's C), pkg-config and
#   libvirt-dev (the virt crate links libvirt), and a Rust toolchain from rustup
#   (minimal profile) when no rustc >= the workspace's rust-version is found
#   (Debian 12's own rustc is too old); curl + ca-certificates to fetch rustup.
# Idempotent: when everything is installed it prints nothing and touches no network
# (no apt-get update); an install says what it installs, in one line. On failure it
# says what failed and shows the log.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
    linux-image-cloud-amd64 busybox-static cpio gzip util-linux
    gcc libc6-dev pkg-config curl ca-certificates
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

mapfile -t missing < <(missing_packages "${packages[@]}")
# The image may ship a backports qemu-utils that qemu-system-x86 would remove: install
# Debian's qemu-utils in the same transaction so qemu-img stays.
if ! command -v qemu-system-x86_64 >/dev/null || [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]:-qemu-system-x86}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >>"$log" 2>&1 || fail "apt-get update failed"
    qemu_utils=qemu-utils
    stable=$(apt-cache madison qemu-utils 2>>"$log" | awk -F'|' '$3 !~ /backports/ {gsub(/ /,"",$2); print $2; exit}')
    [ -n "$stable" ] && qemu_utils="qemu-utils=$stable"
    apt-get install -y --no-install-recommends --allow-downgrades \
        "${packages[@]/qemu-utils/$qemu_utils}" >>"$log" 2>&1 \
        || fail "apt-get install failed"
fi
command -v qemu-img >/dev/null || fail "qemu-img is missing after install (package qemu-utils)"
command -v qemu-io >/dev/null || fail "qemu-io is missing after install (package qemu-utils)"
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || fail "no cloud kernel in /boot (linux-image-cloud-amd64)"

# Rust: rustup's toolchain in ~/.cargo/bin comes first when present (that is where
# the rustup install below puts it; demo.sh and test.sh put it on their PATH too).
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
rust_wanted=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$top/Cargo.toml" | head -n 1)
[ -n "$rust_wanted" ] || fail "no rust-version in $top/Cargo.toml"
rust_ok() {
    local have
    have=$(rustc --version 2>/dev/null | awk '{print $2}') || return 1
    [ -n "$have" ] && command -v cargo >/dev/null \
        && printf '%s\n%s\n' "$rust_wanted" "$have" | sort -V -C
}
if ! rust_ok; then
    echo "setup-host: installing a Rust toolchain >= $rust_wanted with rustup" >&2
    if command -v rustup >/dev/null; then
        rustup toolchain install stable --profile minimal >>"$log" 2>&1 \
            && rustup default stable >>"$log" 2>&1 \
            || fail "rustup could not install the stable toolchain"
    else
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs 2>>"$log" \
            | sh -s -- -y --profile minimal >>"$log" 2>&1 \
            || fail "rustup-init (https://sh.rustup.rs) failed"
    fi
    . "$HOME/.cargo/env"
    rust_ok || fail "still no rustc >= $rust_wanted after the rustup install"
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
