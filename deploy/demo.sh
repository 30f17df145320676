#!/usr/bin/env bash
# The main job, end to end on this host: set up libvirt + QEMU, build volmig,
# start a node on a unix socket, boot a small guest that keeps writing to its
# disk on one dir pool, and live-migrate that disk to a second pool while
# showing progress. Everything it creates is named volmig-demo-* and removed at
# the end (and at the start, if an earlier run was interrupted).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
work=/var/tmp/volmig-demo
dom=volmig-demo
src_pool=volmig-demo-src
dst_pool=volmig-demo-dst
sock=unix://$work/node.sock
node_pid=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
    virsh -q destroy "$dom" >/dev/null 2>&1 || true
    virsh -q undefine "$dom" >/dev/null 2>&1 || true
    for p in "$src_pool" "$dst_pool"; do
        virsh -q pool-destroy "$p" >/dev/null 2>&1 || true
        virsh -q pool-undefine "$p" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}

acks() { grep -ao 'VOLMIG-ACK [0-9]*' "$work/console.log" 2>/dev/null | tail -n 1 | awk '{print $2+0}'; }

say "setting up libvirt + QEMU (deploy/setup-host.sh)"
bash deploy/setup-host.sh
# setup-host.sh may have just installed Rust with rustup: its cargo comes first.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cleanup
trap cleanup EXIT

say "building volmig (node and CLI only: no etcd client, no OTLP exporter)"
# Only what the demo runs: the etcd store and the OTLP exporter (default features)
# would add their builds, and protoc for etcd's protos.
built=$(date +%s)
cargo build --release --locked --quiet --no-default-features --features node
echo "built in $(( $(date +%s) - built )) s"
volmig=$top/target/release/volmig

say "building the test guest and two dir pools"
mkdir -p "$work/src" "$work/dst" "$work/guest" "$work/state"
chmod 0755 "$work" "$work/src" "$work/dst" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$src_pool:$work/src" "$dst_pool:$work/dst"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done
virsh -q vol-create-as "$src_pool" demo-root.qcow2 256M --format qcow2 >/dev/null
# Give the copy something to move: 192 MiB of data above the guest's record area
# (the guest writes its records from the start of the disk).
qemu-io -f qcow2 -c 'write -P 0xa5 64M 192M' "$work/src/demo-root.qcow2" >/dev/null
cat >"$work/domain.xml" <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$work/guest/vmlinuz</kernel><initrd>$work/guest/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 volmig.pause_ms=20</cmdline></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$work/src/demo-root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial>
  </devices>
</domain>
XML
virsh -q define "$work/domain.xml" >/dev/null
virsh -q start "$dom" >/dev/null

say "starting a volmig node on $sock"
"$volmig" node --listen "$sock" --state-dir "$work/state" --node-id demo-node 2>"$work/node.log" &
node_pid=$!
for _ in $(seq 1 100); do [ -S "$work/node.sock" ] && break; sleep 0.1; done
"$volmig" info --node "$sock"
"$volmig" pools --node "$sock"

say "waiting for the guest to write to its disk"
for _ in $(seq 1 300); do [ "$(acks)" ] && [ "$(acks)" -ge 50 ] && break; sleep 0.1; done
echo "guest has acknowledged $(acks) records"
virsh domblklist "$dom"
"$volmig" disks --node "$sock" --domain "$dom"

say "live-migrating vda from $src_pool to $dst_pool (limited to 48 MiB/s so the progress is visible)"
"$volmig" migrate --node "$sock" --domain "$dom" --disk vda --to-pool "$dst_pool" --bandwidth 48MiB

say "after the migration"
echo "live definition:";       virsh domblklist "$dom"
echo "persistent definition:"; virsh domblklist "$dom" --inactive
before=$(acks); sleep 3; after=$(acks)
echo "guest still writing: $before -> $after acknowledged records"
[ "$after" -gt "$before" ] || { echo "the guest stopped writing" >&2; exit 1; }
