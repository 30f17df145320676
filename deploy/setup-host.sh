#!/usr/bin/env bash
# Installs and starts everything volmig's node and its tests need on a Debian 12 host:
# libvirt + QEMU, the guest kernel and busybox for the test guest, parted for disk pools.
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
    linux-image-cloud-amd64 busybox-static cpio gzip parted pkg-config bc
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
ls /boot/vmlinuz-* >/dev/null 2>&1 || fail "no kernel in /boot (linux-image-cloud-amd64)"

mkdir -p /run/libvirt
running() { pgrep -x "$1" >/dev/null 2>&1; }
if ! running virtlogd; then
    virtlogd -d >>"$log" 2>&1 || fail "virtlogd did not start"
fi
if ! running libvirtd; then
    libvirtd -d >>"$log" 2>&1 || fail "libvirtd did not start"
fi
for _ in $(seq 1 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.1
done
virsh -c qemu:///system version >>"$log" 2>&1 || fail "libvirtd does not answer on qemu:///system"
rm -f "$log"
