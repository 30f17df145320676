#!/bin/sh
# /init of the volmig test guest (busybox ash). It appends numbered, checksummed
# 512-byte records to /dev/vda forever and acknowledges each one on the console
# only once it is durable, so a test can compare "acked" against "on the disk".
# Record format and console protocol: tests/guest/README.md; the Rust side that
# must agree with it: tests/harness/records.rs.
#
# This script must never exit: PID 1 exiting panics the kernel, and with
# panic=-1 the guest would reboot and restart numbering behind the test's back.

PATH=/bin
export PATH

mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel opens the console for PID 1 before devtmpfs is mounted, and our
# initramfs has no /dev/console node, so fds 0-2 may be closed: reopen them.
exec </dev/console >/dev/console 2>&1
# Keep kernel errors on the console but stop info/notice chatter from splicing
# into the middle of our protocol lines.
echo 4 >/proc/sys/kernel/printk

err() { echo "VOLMIG-ERROR $*"; }

# Dependency order (modinfo -F depends); any other order fails with
# "unknown symbol".
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
    out=$(insmod "/lib/modules/$m.ko" 2>&1) || err "insmod $m: $out"
done

# Without virtio_blk bound, /dev/vda would be created as a regular file on
# devtmpfs and every write would "succeed" into RAM: insist on a block device.
waited=0
until [ -b /dev/vda ]; do
    sleep 0.1
    waited=$((waited + 1))
    [ $((waited % 100)) -eq 0 ] && err "no block device /dev/vda after $((waited / 10))s"
done

# Sector 0 is reserved, so record n lives in sector n and the last usable
# sequence number is the sector count minus one.
max=$(($(cat /sys/block/vda/size) - 1))

# Optional kernel parameter volmig.pause_ms=N: sleep N ms after each ack. An
# unthrottled guest keeps a host core busy under TCG, which several guests on
# a small test machine cannot afford.
pause_us=0
# Optional kernel parameter volmig.flood_mib=N: see flood below.
flood_mib=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        volmig.flood_mib=*)
            v=${arg#volmig.flood_mib=}
            case "$v" in
                '' | *[!0-9]*) err "ignoring $arg: not a number" ;;
                *) flood_mib=$v ;;
            esac
            ;;
        volmig.pause_ms=*)
            v=${arg#volmig.pause_ms=}
            # Arithmetic on a non-number would kill this shell, i.e. PID 1.
            case "$v" in
                '' | *[!0-9]*) err "ignoring $arg: not a number" ;;
                *) pause_us=$((v * 1000)) ;;
            esac
            ;;
    esac
done

rec=/tmp/rec
rd=/tmp/rd

# valid N: sector N holds an intact record for sequence number N.
valid() {
    # Buffered read: at boot nothing of /dev/vda is cached yet.
    dd if=/dev/vda of=$rd bs=512 skip="$1" count=1 2>/dev/null || return 1
    [ "$(head -c 31 $rd)" = "$(printf 'VOLMIG-REC %020d' "$1")" ] || return 1
    [ "$(dd if=$rd bs=1 skip=503 count=8 2>/dev/null)" = "$(head -c 503 $rd | crc32)" ]
}

# Records are only ever appended in order, so the valid ones form a prefix
# 1..N: binary search for N instead of reading the whole disk. lo is known
# valid (sector 0 counts as such), hi known invalid (one past the end).
lo=0
hi=$((max + 1))
while [ $((hi - lo)) -gt 1 ]; do
    mid=$(((lo + hi) / 2))
    if valid $mid; then lo=$mid; else hi=$mid; fi
done
n=$((lo + 1))
boot=$n
echo "VOLMIG-START $boot"

# Flood mode: besides the records, rewrite the N MiB that start at the middle
# of vda over and over, as fast as the guest can (1 MiB O_DIRECT writes, then a
# cache flush), so a block copy has to race a guest that dirties far more than
# a low bandwidth limit copies. The records grow from sector 1 and never get
# near the middle during a test; the flood writes zeros, which never parse as
# a record, so the resume search above is unaffected. Runs in a subshell that
# never ends, like PID 1 itself.
if [ "$flood_mib" -gt 0 ]; then
    half_mib=$(($(cat /sys/block/vda/size) / 4096))
    if [ "$flood_mib" -gt "$half_mib" ]; then
        err "ignoring volmig.flood_mib=$flood_mib: larger than half of vda ($half_mib MiB)"
    else
        echo "VOLMIG-FLOOD $flood_mib MiB at MiB $half_mib"
        (
            while :; do
                out=$(dd if=/dev/zero of=/dev/vda bs=1048576 count="$flood_mib" seek="$half_mib" oflag=direct conv=fsync,notrunc 2>&1) || {
                    err "flood: $(echo $out)"
                    sleep 1
                }
            done
        ) &
    fi
fi

while :; do
    if [ $n -gt $max ]; then
        echo "VOLMIG-FULL"
        while :; do sleep 3600; done
    fi
    # 503 bytes of body (header line + space padding), then the CRC-32 of the
    # body as 8 lowercase hex digits and a newline: 512 bytes.
    printf 'VOLMIG-REC %020d %020d\n%450s' $n $boot '' >$rec
    crc32 <$rec >>$rec
    # O_DIRECT writes exactly this sector; through the page cache the kernel
    # would rewrite the whole 4 KiB page, i.e. already-acked neighbours too.
    # busybox dd only page-aligns its buffer when bs >= 4096 and otherwise
    # silently drops O_DIRECT after the EINVAL, hence bs=4096 with a 512-byte
    # input file (one short block) and the offset given in bytes. conv=fsync
    # then flushes the device's write cache before dd exits.
    if out=$(dd if=$rec of=/dev/vda bs=4096 seek=$((n * 512)) oflag=seek_bytes,direct conv=fsync,notrunc 2>&1); then
        echo "VOLMIG-ACK $n"
        n=$((n + 1))
        [ $pause_us -gt 0 ] && usleep $pause_us
    else
        # Never skip a number: a gap would read as a lost record.
        err "write seq $n: $(echo $out)"
        sleep 1
    fi
done
