#!/usr/bin/env bash
# Benchmarks chain policy SHALLOW against FLATTEN and prints a table. Not a
# test: numbers vary with the machine.
#
# A writing guest's vda is a qcow2 top (64 MiB of data) over a 1 GiB qcow2
# template holding 1 GiB of data, in dir pool A. The template is already in
# dir pool B (copied there beforehand, as a previous SHALLOW migration of
# another guest over it would have left it). Each run boots the guest on a
# fresh copy of the top and moves vda to B, alternating SHALLOW and FLATTEN,
# RUNS times each (default 3). Reported per policy (medians): wall time of
# `volmig migrate`, bytes the block copy moved (the completed event's total)
# and bytes the destination pool grew by (its file system's allocation).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# shellcheck source=bench/lib.sh
. bench/lib.sh
runs=${RUNS:-3}
work=/var/tmp/volmig-chainbench
dom=volmig-chainbench
pa=volmig-chainbench-a
pb=volmig-chainbench-b
node_pid=

cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
    bench_remove_domain_and_pools "$dom" "$pa" "$pb"
    rm -rf "$work"
}

bash deploy/setup-host.sh
bash deploy/setup-tests.sh
cleanup
trap cleanup EXIT
# The debug build the tests use: the copy's time is QEMU's and qemu-img's.
cargo build --quiet
volmig=$top/target/debug/volmig

mkdir -p "$work/a" "$work/b" "$work/guest" "$work/state"
chmod 0755 "$work" "$work/a" "$work/b" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$pa:$work/a" "$pb:$work/b"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done

qemu-img create -q -f qcow2 "$work/a/tmpl.qcow2" 1G
qemu-io -f qcow2 -c "write -P 0x11 0 1G" "$work/a/tmpl.qcow2" >/dev/null
cp --sparse=always "$work/a/tmpl.qcow2" "$work/b/tmpl.qcow2"
qemu-img create -q -f qcow2 -b "$work/a/tmpl.qcow2" -F qcow2 "$work/pristine-top.qcow2"
# The guest's records grow from the start of vda; the top's data sits above them.
qemu-io -f qcow2 -c "write -P 0x22 512M 64M" "$work/pristine-top.qcow2" >/dev/null

"$volmig" node --listen "unix://$work/node.sock" --state-dir "$work/state" --node-id chainbench \
    2>"$work/node.log" &
node_pid=$!
for _ in $(seq 1 100); do [ -S "$work/node.sock" ] && break; sleep 0.1; done
node="unix://$work/node.sock"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
allocated() { du -B1 -s "$1" | cut -f1; }

boot() { # top file
    cat >"$work/dom.xml" <<XML
<domain type='qemu'><name>$dom</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest/vmlinuz</kernel>
<initrd>$work/guest/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 volmig.pause_ms=200</cmdline></os>
<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$1'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$work/console.log'/><target port='0'/></serial></devices></domain>
XML
    : >"$work/console.log"
    virsh -q define "$work/dom.xml" >/dev/null
    virsh -q start "$dom" >/dev/null
    for _ in $(seq 1 300); do grep -aq 'VOLMIG-ACK' "$work/console.log" 2>/dev/null && break; sleep 0.1; done
}

for policy in shallow flatten; do : >"$work/$policy.times"; : >"$work/$policy.copied"; : >"$work/$policy.grown"; done
for run in $(seq 1 "$runs"); do
    for policy in shallow flatten; do
        cp --sparse=always "$work/pristine-top.qcow2" "$work/a/top-$run-$policy.qcow2"
        virsh -q pool-refresh "$pa" >/dev/null
        boot "$work/a/top-$run-$policy.qcow2"
        flag=
        [ "$policy" = shallow ] && flag=--shallow
        before=$(allocated "$work/b")
        t0=$(now)
        "$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$pb" $flag --json \
            >"$work/events.json"
        t1=$(now)
        sync
        after=$(allocated "$work/b")
        grep -q '"phase":"PHASE_COMPLETED"' "$work/events.json" || { tail -3 "$work/events.json"; exit 1; }
        echo "$t1 - $t0" | bc -l >>"$work/$policy.times"
        # bytes_total of the last COPYING/SYNCHRONIZED progress: what the mirror moved.
        grep -o '"bytes_total":[0-9]*' "$work/events.json" | tail -1 | cut -d: -f2 >>"$work/$policy.copied"
        echo $((after - before)) >>"$work/$policy.grown"
        virsh -q destroy "$dom" >/dev/null
        virsh -q undefine "$dom" >/dev/null
        # The flattened copy and the top are this run's; the template copy stays.
        virsh -q pool-refresh "$pb" >/dev/null
        virsh -q vol-delete --pool "$pb" "top-$run-$policy.qcow2" >/dev/null
    done
done

mib() { awk '{printf "%.1f MiB", $1 / 1048576}'; }
echo "chain-bench: $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg), RUNS=$runs"
echo "1 GiB template with 1 GiB of data (already in the destination pool), 64 MiB top"
printf '%-8s %10s %16s %22s\n' policy wall mirror-copied destination-grew
for policy in shallow flatten; do
    printf '%-8s %9.2fs %16s %22s\n' "$policy" \
        "$(median <"$work/$policy.times")" \
        "$(median <"$work/$policy.copied" | mib)" \
        "$(median <"$work/$policy.grown" | mib)"
done
for policy in shallow flatten; do
    echo "$policy runs (s): $(paste -sd' ' "$work/$policy.times")"
done
