#!/usr/bin/env bash
# Builds the volmig test guest into OUTDIR:
#   OUTDIR/vmlinuz     copy of the host's Debian cloud kernel (linux-image-cloud-amd64)
#   OUTDIR/initrd.img  gzipped newc cpio: static busybox, the six virtio block
#                      modules, and tests/guest/init.sh as /init
# Usage: build-guest.sh OUTDIR   (env KVER=<version> picks a kernel other than the newest)
#
# Idempotent: a stamp file records a hash of everything that goes in, and a rebuild
# happens only when it changes. Quiet on success; errors go to stderr, exit 1.
#
# Using the result with libvirt (qemu:///system, QEMU running as libvirt-qemu):
# - QEMU opens the kernel, initrd and disk images itself, so OUTDIR and the disk's
#   directory, and every directory above them, must be searchable by libvirt-qemu:
#   inside a `mktemp -d` directory (mode 0700) start fails with "could not open
#   kernel file ... Permission denied". chmod such a directory 0755. (libvirt chowns
#   the disk file to libvirt-qemu while the domain runs, but not its directories.)
# - The <serial type='file'> console log is different: libvirtd (root) opens it and
#   hands QEMU the descriptor, so it may live in a 0700 root directory; it comes out
#   root-owned, mode 0600.
# - Starting a domain truncates its console file unless the source has
#   append='on' (<source path='...' append='on'/>); keep it on when a test
#   restarts a guest and still needs the acks of the previous boot.
# - Domain shape that works: <domain type='qemu'> (TCG; libvirt-qemu cannot open
#   /dev/kvm here), direct kernel boot with cmdline 'console=ttyS0 panic=-1',
#   <features><acpi/><apic/></features>, disk target vda on bus virtio.
set -euo pipefail

die() { echo "build-guest: $*" >&2; exit 1; }
trap 'die "command failed at line $LINENO"' ERR

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
init=$here/init.sh
busybox=/bin/busybox
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)

[ -r "$init" ] || die "missing $init"
[ -x "$busybox" ] || die "no $busybox (install busybox-static)"
# Only a static busybox works: the initramfs has no libc.
# (grep without -q: an early exit would SIGPIPE busybox and trip pipefail.)
"$busybox" --list | grep -x crc32 >/dev/null || die "$busybox has no crc32 applet (need busybox-static)"
for tool in cpio gzip sha256sum flock; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

if [ -z "${KVER:-}" ]; then
    # sort -V so that e.g. 6.1.0-10 beats 6.1.0-9.
    kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1) || true
    [ -n "$kernel" ] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)"
    KVER=${kernel#/boot/vmlinuz-}
fi
kernel=/boot/vmlinuz-$KVER
[ -r "$kernel" ] || die "no readable kernel $kernel"
moddir=/lib/modules/$KVER/kernel/drivers

# Debian may ship modules compressed; busybox insmod cannot decompress, so the
# initramfs always gets plain .ko files.
find_module() {
    local m=$1 d ext
    for d in virtio block; do
        for ext in ko ko.xz ko.zst ko.gz; do
            if [ -r "$moddir/$d/$m.$ext" ]; then
                echo "$moddir/$d/$m.$ext"
                return 0
            fi
        done
    done
    return 1
}
module_paths=()
for m in "${modules[@]}"; do
    p=$(find_module "$m") || die "module $m not found under $moddir/{virtio,block}"
    module_paths+=("$p")
done

# Inputs that change the output: this script, the init, the busybox binary, the
# kernel and the modules (by path, size and mtime: hashing a kernel on every
# test run would cost more than it saves).
stamp_value=$(
    {
        sha256sum "${BASH_SOURCE[0]}" "$init" "$busybox"
        stat -L -c '%n %s %Y' "$kernel" "${module_paths[@]}"
    } | sha256sum | cut -d' ' -f1
)
mkdir -p "$out" || die "cannot create $out"
# Test processes may call this concurrently for the same OUTDIR: serialise them so
# nobody boots a kernel from one build with the initrd of another.
exec 9>"$out/.build-guest.lock"
flock 9 || die "cannot lock $out/.build-guest.lock"
stamp=$out/.build-guest.stamp
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$stamp" ] \
    && [ "$(cat "$stamp")" = "$stamp_value" ]; then
    exit 0
fi

stage=$(mktemp -d "$out/.stage.XXXXXX") || die "cannot create a staging directory in $out"
trap 'rm -rf "$stage"' EXIT

# The tree lives in a subdirectory so the archive being written is not part of it.
root=$stage/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
# Symlinks made here rather than by `busybox --install` in the guest: one less
# thing that can fail before the console is even set up.
for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$init" "$root/init"
for p in "${module_paths[@]}"; do
    name=$(basename "$p")
    dst=$root/lib/modules/${name%%.ko*}.ko
    case "$p" in
        *.ko) cp "$p" "$dst" ;;
        *.ko.xz) xz -dc "$p" >"$dst" || die "cannot decompress $p (xz-utils)" ;;
        *.ko.zst) zstd -qdc "$p" >"$dst" || die "cannot decompress $p (zstd)" ;;
        *.ko.gz) gzip -dc "$p" >"$dst" || die "cannot decompress $p" ;;
    esac
done

# Fixed mtimes so the same inputs give a byte-identical initrd.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    | gzip -9n >"$stage/initrd.img" || die "cpio/gzip failed"
cp "$kernel" "$stage/vmlinuz" || die "cannot copy $kernel"
chmod 0644 "$stage/initrd.img" "$stage/vmlinuz"
# rename(2) so a concurrent reader never sees a half-written file.
mv -f "$stage/vmlinuz" "$out/vmlinuz"
mv -f "$stage/initrd.img" "$out/initrd.img"
echo "$stamp_value" >"$stamp"
