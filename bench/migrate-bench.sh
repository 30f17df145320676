#!/usr/bin/env bash
# Benchmarks volmig's node against plain `virsh blockcopy --pivot` on this host and
# prints a table. Not a test: numbers vary with the machine; targets are in README.
#
#   1. copy time: a 2 GiB-virtual qcow2 holding 1 GiB of data, dir pool -> dir pool,
#      `volmig migrate` and `virsh blockcopy --pivot` alternating, RUNS each (default 5);
#      median of each and their ratio. Both are timed from the command's start to its
#      end (volmig: CLI start, validation, volume creation, copy, pivot, verification);
#      deleting the old source is done untimed for both.
#   2. sparseness: a 20 GiB-virtual raw volume holding 256 MiB of data migrated
#      dir -> dir and dir -> rbd; destination vs source allocation.
#   3. node cost: CPU time of the node process per second of copy, and its peak RSS.
#
# The guest is the test guest writing lightly (one record every 200 ms).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
runs=${RUNS:-5}
work=/var/tmp/volmig-bench
dom=volmig-bench
pa=volmig-bench-a
pb=volmig-bench-b
prbd=volmig-bench-rbd
ceph_dir=/var/tmp/volmig-ceph
node_pid=
secret_uuid=

cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
    virsh -q destroy "$dom" >/dev/null 2>&1 || true
    virsh -q undefine "$dom" >/dev/null 2>&1 || true
    for p in "$pa" "$pb"; do
        virsh -q pool-destroy "$p" >/dev/null 2>&1 || true
        virsh -q pool-undefine "$p" >/dev/null 2>&1 || true
    done
    if virsh -q pool-info "$prbd" >/dev/null 2>&1; then
        for v in $(virsh -q vol-list "$prbd" 2>/dev/null | awk '/volmig-bench/ {print $1}'); do
            virsh -q vol-delete "$v" --pool "$prbd" >/dev/null 2>&1 || true
        done
        virsh -q pool-destroy "$prbd" >/dev/null 2>&1 || true
        virsh -q pool-undefine "$prbd" >/dev/null 2>&1 || true
    fi
    [ -n "$secret_uuid" ] && virsh -q secret-undefine "$secret_uuid" >/dev/null 2>&1 || true
    rm -rf "$work"
}

bash deploy/setup-host.sh
cleanup
trap cleanup EXIT
cargo build --release --quiet
volmig=$top/target/release/volmig

mkdir -p "$work/a" "$work/b" "$work/guest" "$work/state"
chmod 0755 "$work" "$work/a" "$work/b" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$pa:$work/a" "$pb:$work/b"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done

define_guest() { # name disk-path format
    cat >"$work/$1.xml" <<XML
<domain type='qemu'><name>$1</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest/vmlinuz</kernel>
<initrd>$work/guest/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 volmig.pause_ms=200</cmdline></os>
<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
<devices><disk type='file' device='disk'><driver name='qemu' type='$3'/><source file='$2'/>
<target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial></devices></domain>
XML
    virsh -q define "$work/$1.xml" >/dev/null
    virsh -q start "$1" >/dev/null
    for _ in $(seq 1 300); do grep -aq 'VOLMIG-ACK' "$work/console.log" 2>/dev/null && return; sleep 0.1; done
    echo "guest did not start writing" >&2; exit 1
}

"$volmig" node --listen "unix://$work/node.sock" --state-dir "$work/state" --node-id bench \
    2>"$work/node.log" &
node_pid=$!
for _ in $(seq 1 100); do [ -S "$work/node.sock" ] && break; sleep 0.1; done
node="unix://$work/node.sock"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$node_pid/stat"; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# --- 1. copy time -----------------------------------------------------------------
virsh -q vol-create-as "$pa" bench.qcow2 2G --format qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0xa5 512M 1G' "$work/a/bench.qcow2" >/dev/null
define_guest "$dom" "$work/a/bench.qcow2" qcow2
here=$pa; there=$pb
: >"$work/volmig.times"; : >"$work/virsh.times"; : >"$work/cpu.pct"
hz=$(getconf CLK_TCK)
for i in $(seq 1 $((2 * runs))); do
    if [ $((i % 2)) -eq 1 ]; then
        c0=$(cpu_ticks); t0=$(now)
        "$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$there" \
            --json >"$work/last-run.json"
        t1=$(now); c1=$(cpu_ticks)
        # Deleting the old source is not part of the copy (and not timed for virsh either).
        virsh -q vol-delete bench.qcow2 --pool "$here" >/dev/null
        echo "$t1 - $t0" | bc -l >>"$work/volmig.times"
        echo "($c1 - $c0) / $hz / ($t1 - $t0) * 100" | bc -l >>"$work/cpu.pct"
    else
        there_dir=$work/${there#volmig-bench-}
        virsh -q vol-create-as "$there" bench.qcow2 2G --format qcow2 >/dev/null
        echo "<disk type='file'><source file='$there_dir/bench.qcow2'/><driver type='qcow2'/></disk>" >"$work/dest.xml"
        t0=$(now)
        virsh -q blockcopy "$dom" vda --xml "$work/dest.xml" --reuse-external --wait --pivot \
            --transient-job >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$work/virsh.times"
        virsh -q vol-delete bench.qcow2 --pool "$here" >/dev/null
    fi
    tmp=$here; here=$there; there=$tmp
done
vm=$(median <"$work/volmig.times"); vs=$(median <"$work/virsh.times")
ratio=$(echo "$vm / $vs" | bc -l)
cpu=$(median <"$work/cpu.pct")
rss=$(awk '/VmHWM/ {print $2}' "/proc/$node_pid/status")
virsh -q destroy "$dom" >/dev/null; virsh -q undefine "$dom" >/dev/null

# --- 2. sparseness ------------------------------------------------------------------
for v in $(virsh -q vol-list "$pa" | awk '{print $1}') $(virsh -q vol-list "$pb" | awk '{print $1}'); do
    virsh -q vol-delete "$v" --pool "$pa" >/dev/null 2>&1 || virsh -q vol-delete "$v" --pool "$pb" >/dev/null 2>&1 || true
done
virsh -q vol-create-as "$pa" sparse.raw 20G --allocation 0 --format raw >/dev/null
qemu-io -f raw -c 'write -P 0x5c 1G 256M' "$work/a/sparse.raw" >/dev/null
define_guest "$dom" "$work/a/sparse.raw" raw
alloc() { du -B1 "$1" | cut -f1; }
src_alloc=$(alloc "$work/a/sparse.raw")
"$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$pb" --json >/dev/null
dir_alloc=$(alloc "$work/b/sparse.raw")

rbd_alloc=n/a
if bash deploy/ceph/ceph-up.sh "$ceph_dir" >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$ceph_dir/env"
    secret_uuid=$(cat /proc/sys/kernel/random/uuid)
    printf "<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='ceph'><name>volmig-bench</name></usage></secret>" \
        "$secret_uuid" >"$work/secret.xml"
    virsh -q secret-define "$work/secret.xml" >/dev/null
    virsh -q secret-set-value "$secret_uuid" --file "$ceph_dir/client.libvirt.key" >/dev/null 2>&1
    cat >"$work/rbd-pool.xml" <<XML
<pool type='rbd'><name>$prbd</name><source><name>$CEPH_POOL</name>
<host name='$CEPH_MON_HOST' port='$CEPH_MON_PORT'/>
<auth type='ceph' username='$CEPH_CLIENT'><secret uuid='$secret_uuid'/></auth></source></pool>
XML
    virsh -q pool-define "$work/rbd-pool.xml" >/dev/null
    virsh -q pool-start "$prbd" >/dev/null
    "$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$prbd" \
        --to-volume volmig-bench-sparse --json >/dev/null
    used=$(rbd --conf "$CEPH_CONF" du --format json "$CEPH_POOL/volmig-bench-sparse" 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
    rbd_alloc=$(printf '%d MiB (%.3f×)' "$((used / 1048576))" "$(echo "$used / $src_alloc" | bc -l)")
fi

# Where the time of the last volmig run went, phase by phase (ms after ACCEPTED).
phases=$(python3 - "$work/last-run.json" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
t0 = events[0]["timestamp_unix_ms"]
seen = []
for e in events:
    name = e["phase"].removeprefix("PHASE_").lower()
    if not seen or seen[-1][0] != name:
        seen.append((name, e["timestamp_unix_ms"] - t0))
print(", ".join(f"{n} +{ms}" for n, ms in seen))
PY
)

# --- table --------------------------------------------------------------------------
printf '\n| measurement | value | target |\n|---|---|---|\n'
printf '| volmig migrate, median of %d (2 GiB virtual, 1 GiB data, dir→dir) | %.2f s | |\n' "$runs" "$vm"
printf '| virsh blockcopy --pivot, median of %d | %.2f s | |\n' "$runs" "$vs"
printf '| ratio volmig / virsh | %.3f | ≤ 1.05 |\n' "$ratio"
printf '| node CPU during copy (median) | %.2f %% of a core | ≤ 1 %% |\n' "$cpu"
printf '| node peak RSS | %d MiB | |\n' "$((rss / 1024))"
printf '| last volmig run, phases (ms after ACCEPTED) | %s | |\n' "$phases"
printf '| 20 GiB raw with 256 MiB data: source allocation | %d MiB | |\n' "$((src_alloc / 1048576))"
printf '| … destination allocation, dir pool | %d MiB (%.3f×) | ≤ 1.05× |\n' "$((dir_alloc / 1048576))" "$(echo "$dir_alloc / $src_alloc" | bc -l)"
printf '| … destination allocation, rbd pool (rbd du) | %s | ≤ 1.05× |\n' "$rbd_alloc"
