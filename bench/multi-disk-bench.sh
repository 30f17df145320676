#!/usr/bin/env bash
# Benchmarks a multi-disk migration against the same disks moved one after
# another, and prints a table. Not a test: numbers vary with the machine.
#
# A guest with 4 qcow2 disks (vda..vdd, 512 MiB virtual, 256 MiB of data each;
# the test guest writes its records to vda) moves between two dir pools:
#   - one request (`volmig migrate --disk vda --disk vdb --disk vdc --disk vdd`),
#   - four requests one after another (`volmig migrate --disk vdX`, each waited for),
# alternating, RUNS times each (default 3), the direction flipping every run.
# Reported: median wall time of each, their ratio, and from the one-request runs
# the pivot window (first pivot issued to last pivot ended) and the longest
# single pivot, read from the terminal event's per-disk pivot times.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# shellcheck source=bench/lib.sh
. bench/lib.sh
runs=${RUNS:-3}
work=/var/tmp/volmig-mdbench
dom=volmig-mdbench
pa=volmig-mdbench-a
pb=volmig-mdbench-b
disks=(vda vdb vdc vdd)
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
cargo build --release --quiet
volmig=$top/target/release/volmig

mkdir -p "$work/a" "$work/b" "$work/guest" "$work/state"
chmod 0755 "$work" "$work/a" "$work/b" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$pa:$work/a" "$pb:$work/b"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done

devices=
for d in "${disks[@]}"; do
    virsh -q vol-create-as "$pa" "$d.qcow2" 512M --format qcow2 >/dev/null
    # vda's records grow from its start: its data sits in the upper half.
    qemu-io -f qcow2 -c "write -P 0x5a 256M 256M" "$work/a/$d.qcow2" >/dev/null
    devices="$devices<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$work/a/$d.qcow2'/><target dev='$d' bus='virtio'/></disk>"
done
virsh -q pool-refresh "$pa" >/dev/null
cat >"$work/dom.xml" <<XML
<domain type='qemu'><name>$dom</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest/vmlinuz</kernel>
<initrd>$work/guest/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 volmig.pause_ms=200</cmdline></os>
<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
<devices>$devices
<serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial></devices></domain>
XML
virsh -q define "$work/dom.xml" >/dev/null
virsh -q start "$dom" >/dev/null
for _ in $(seq 1 300); do grep -aq 'VOLMIG-ACK' "$work/console.log" 2>/dev/null && break; sleep 0.1; done

"$volmig" node --listen "unix://$work/node.sock" --state-dir "$work/state" --node-id mdbench \
    --max-concurrent 8 2>"$work/node.log" &
node_pid=$!
for _ in $(seq 1 100); do [ -S "$work/node.sock" ] && break; sleep 0.1; done
node="unix://$work/node.sock"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

: >"$work/group.times"; : >"$work/seq.times"; : >"$work/window.ms"; : >"$work/longest.ms"
here=$pa; there=$pb
for i in $(seq 1 $((2 * runs))); do
    if [ $((i % 2)) -eq 1 ]; then
        args=()
        for d in "${disks[@]}"; do args+=(--disk "$d"); done
        t0=$(now)
        "$volmig" migrate --node "$node" --domain "$dom" "${args[@]}" --to-pool "$there" \
            --json >"$work/group.json"
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$work/group.times"
        python3 - "$work/group.json" "$work/window.ms" "$work/longest.ms" <<'PY'
import json, sys
last = [json.loads(l) for l in open(sys.argv[1])][-1]
assert last["phase"] == "PHASE_COMPLETED", last["message"]
pivots = [(d["pivot_started_unix_ms"], d["pivot_ended_unix_ms"]) for d in last["disks"]]
open(sys.argv[2], "a").write(f'{last["pivot_window_ms"]}\n')
open(sys.argv[3], "a").write(f'{max(e - s for s, e in pivots)}\n')
PY
    else
        t0=$(now)
        for d in "${disks[@]}"; do
            "$volmig" migrate --node "$node" --domain "$dom" --disk "$d" --to-pool "$there" \
                --json >/dev/null
        done
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$work/seq.times"
    fi
    # Untimed: the old sources go, so the next run can move the disks back.
    for d in "${disks[@]}"; do virsh -q vol-delete "$d.qcow2" --pool "$here" >/dev/null; done
    tmp=$here; here=$there; there=$tmp
done

g=$(median <"$work/group.times"); s=$(median <"$work/seq.times")
printf '\n| measurement | value |\n|---|---|\n'
printf '| 4 disks × 256 MiB in one request, median of %d | %.2f s |\n' "$runs" "$g"
printf '| the same 4 disks one after another, median of %d | %.2f s |\n' "$runs" "$s"
printf '| ratio one request / one after another | %.3f |\n' "$(echo "$g / $s" | bc -l)"
printf '| pivot window (first pivot issued to last ended), median | %s ms |\n' "$(median <"$work/window.ms")"
printf '| longest single pivot, median | %s ms |\n' "$(median <"$work/longest.ms")"
printf '| all one-request runs (s) | %s |\n' "$(tr '\n' ' ' <"$work/group.times")"
printf '| all one-after-another runs (s) | %s |\n' "$(tr '\n' ' ' <"$work/seq.times")"
printf '| all pivot windows (ms) | %s |\n' "$(tr '\n' ' ' <"$work/window.ms")"
