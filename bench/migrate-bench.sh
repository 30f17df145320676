#!/usr/bin/env bash
# Benchmarks volmig's node against plain `virsh blockcopy --pivot` on this host and
# prints tables. Not a test: numbers vary with the machine; targets are in README.
#
#   1. copy time: a 2 GiB-virtual qcow2 holding 1 GiB of data, dir pool -> dir pool,
#      `volmig migrate` and `virsh blockcopy --pivot` alternating, RUNS each (default 5);
#      median of each and their ratio. Both are timed from the command's start to its
#      end (volmig: CLI start, validation, volume creation, copy, pivot, verification);
#      deleting the old source is done untimed for both. Node CPU and RSS.
#   2. fixed cost on a short copy: a 1 GiB qcow2 holding 512 MiB, the guest writing as
#      fast as it can, dir -> dir; volmig through the node, volmig through a controller
#      and `virsh blockcopy --pivot` alternating, RUNS each; where volmig's time goes,
#      from its events' timestamps.
#   3. thin stays thin: the layouts of tests/thin_copies.rs (256 MiB qcow2; A: 64 MiB at
#      66 MiB; B: 1 MiB at 8 MiB + 1 MiB at 100 MiB; C: 64 KiB at 1 MiB + 1 MiB at
#      100 MiB + 64 KiB at 200 MiB) migrated to a dir pool and to an rbd pool: what
#      volmig reports and what the storage shows.
#   4. granularity cost on RBD: 1 GiB of contiguous data copied onto an rbd image with
#      QEMU's defaults and with the granularity volmig chooses (the object size), by
#      `virsh blockcopy` (copy until synchronized, then abort), and by `volmig migrate`,
#      interleaved, RUNS each.
#   5. sparseness at scale: 20 GiB-virtual raw holding 256 MiB, dir -> dir and dir -> rbd.
#
# The machine may be shared: load averages are printed with every section.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# shellcheck source=bench/lib.sh
. bench/lib.sh
runs=${RUNS:-5}
work=/var/tmp/volmig-bench
dom=volmig-bench
pa=volmig-bench-a
pb=volmig-bench-b
prbd=volmig-bench-rbd
ceph_dir=/var/tmp/volmig-ceph
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    bench_remove_domain_and_pools "$dom" "$pa" "$pb"
    if virsh -q pool-info "$prbd" >/dev/null 2>&1; then
        for v in $(virsh -q vol-list "$prbd" 2>/dev/null | awk '/volmig-bench/ {print $1}'); do
            virsh -q vol-delete "$v" --pool "$prbd" >/dev/null 2>&1 || true
        done
        virsh -q pool-destroy "$prbd" >/dev/null 2>&1 || true
        virsh -q pool-undefine "$prbd" >/dev/null 2>&1 || true
    fi
    # Also the secret of a run that could not clean up (its uuid is gone with it).
    for u in $(virsh -q secret-list | awk '$NF == "volmig-bench" {print $1}'); do
        virsh -q secret-undefine "$u" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}

bash deploy/setup-host.sh
bash deploy/setup-tests.sh
cleanup
trap cleanup EXIT
cargo build --release --quiet
volmig=$top/target/release/volmig

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "host: $(nproc) cores, load average at start $(load); RUNS=$runs"

mkdir -p "$work/a" "$work/b" "$work/guest" "$work/node-state" "$work/ctl-state"
chmod 0755 "$work" "$work/a" "$work/b" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$pa:$work/a" "$pb:$work/b"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done

bash deploy/ceph/ceph-up.sh "$ceph_dir" >/dev/null
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
rbd_() { rbd --conf "$CEPH_CONF" "$@"; }

define_guest() { # pause-ms disk-path:format:target...
    local pause=$1 disks= d path fmt dev
    shift
    for d in "$@"; do
        IFS=: read -r path fmt dev <<<"$d"
        disks+="<disk type='file' device='disk'><driver name='qemu' type='$fmt'/><source file='$path'/><target dev='$dev' bus='virtio'/></disk>"
    done
    : >"$work/console.log"
    cat >"$work/$dom.xml" <<XML
<domain type='qemu'><name>$dom</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest/vmlinuz</kernel>
<initrd>$work/guest/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 volmig.pause_ms=$pause</cmdline></os>
<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
<devices>$disks
<serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial></devices></domain>
XML
    virsh -q define "$work/$dom.xml" >/dev/null
    virsh -q start "$dom" >/dev/null
    for _ in $(seq 1 300); do grep -aq 'VOLMIG-ACK' "$work/console.log" 2>/dev/null && return; sleep 0.1; done
    echo "guest did not start writing" >&2; exit 1
}
drop_guest() {
    virsh -q destroy "$dom" >/dev/null; virsh -q undefine "$dom" >/dev/null
}
empty_pools() {
    local p v
    for p in "$pa" "$pb"; do
        virsh -q pool-refresh "$p" >/dev/null
        for v in $(virsh -q vol-list "$p" | awk '{print $1}'); do
            virsh -q vol-delete "$v" --pool "$p" >/dev/null
        done
    done
}

"$volmig" node --listen "unix://$work/node.sock" --state-dir "$work/node-state" --node-id bench \
    --ceph-keyring-dir "$ceph_dir" 2>"$work/node.log" &
pids+=($!)
node_pid=$!
for _ in $(seq 1 100); do [ -S "$work/node.sock" ] && break; sleep 0.1; done
node="unix://$work/node.sock"
cat >"$work/controller.toml" <<TOML
listen = "unix://$work/ctl.sock"
state_dir = "$work/ctl-state"
heartbeat_interval_seconds = 1
[[nodes]]
id = "bench"
endpoint = "$node"
TOML
"$volmig" controller --config "$work/controller.toml" 2>"$work/controller.log" &
pids+=($!)
ctl="unix://$work/ctl.sock"
for _ in $(seq 1 100); do
    "$volmig" nodes --controller "$ctl" 2>/dev/null | grep -qw up && break
    sleep 0.2
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$node_pid/stat"; }
task_ns() { cat /proc/"$node_pid"/task/*/schedstat | awk '{s += $1} END {print s}'; }
now() { date +%s.%N; }
now_ms() { date +%s%3N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
completed() { tail -n1 "$1" | grep -q PHASE_COMPLETED || { echo "$1: not completed" >&2; tail -n3 "$1" >&2; exit 1; }; }
# The destination XML of a plain virsh blockcopy into dir pool $1 (volume $2, format $3).
file_dest_xml() {
    echo "<disk type='file'><source file='$work/${1#volmig-bench-}/$2'/><driver type='$3'/></disk>" >"$work/dest.xml"
}

# --- 1. copy time -----------------------------------------------------------------
load1=$(load)
virsh -q vol-create-as "$pa" bench.qcow2 2G --format qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0xa5 512M 1G' "$work/a/bench.qcow2" >/dev/null
define_guest 200 "$work/a/bench.qcow2:qcow2:vda"
here=$pa; there=$pb
: >"$work/volmig.times"; : >"$work/virsh.times"; : >"$work/cpu.pct"; : >"$work/cpu-copy.pct"
hz=$(getconf CLK_TCK)
for i in $(seq 1 $((2 * runs))); do
    if [ $((i % 2)) -eq 1 ]; then
        c0=$(cpu_ticks); t0=$(now)
        rm -f "$work/copy-start" "$work/copy-end"
        # CPU while copying, from the node's threads' run time (ns) at the COPYING
        # and SYNCHRONIZED events as the CLI prints them.
        "$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$there" \
            --json | while IFS= read -r line; do
            printf '%s\n' "$line"
            case $line in
            *PHASE_COPYING*) [ -e "$work/copy-start" ] || echo "$(task_ns) $(now)" >"$work/copy-start" ;;
            *PHASE_SYNCHRONIZED*) echo "$(task_ns) $(now)" >"$work/copy-end" ;;
            esac
        done >"$work/last-run.json"
        t1=$(now); c1=$(cpu_ticks)
        completed "$work/last-run.json"
        echo "$t1 - $t0" | bc -l >>"$work/volmig.times"
        echo "($c1 - $c0) / $hz / ($t1 - $t0) * 100" | bc -l >>"$work/cpu.pct"
        read -r n0 s0 <"$work/copy-start"; read -r n1 s1 <"$work/copy-end"
        echo "($n1 - $n0) / 10000000 / ($s1 - $s0)" | bc -l >>"$work/cpu-copy.pct"
    else
        virsh -q vol-create-as "$there" bench.qcow2 2G --format qcow2 >/dev/null
        file_dest_xml "$there" bench.qcow2 qcow2
        t0=$(now)
        virsh -q blockcopy "$dom" vda --xml "$work/dest.xml" --reuse-external --wait --pivot \
            --transient-job >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$work/virsh.times"
    fi
    # Deleting the old source is not part of the copy (untimed for both).
    virsh -q vol-delete bench.qcow2 --pool "$here" >/dev/null
    tmp=$here; here=$there; there=$tmp
done
vm=$(median <"$work/volmig.times"); vs=$(median <"$work/virsh.times")
cpu=$(median <"$work/cpu.pct"); cpu_copy=$(median <"$work/cpu-copy.pct")
rss=$(awk '/VmHWM/ {print $2}' "/proc/$node_pid/status")
drop_guest
empty_pools

# --- 2. fixed cost on a short copy ---------------------------------------------------
load2=$(load)
virsh -q vol-create-as "$pa" short.qcow2 1G --format qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0x3c 512M 512M' "$work/a/short.qcow2" >/dev/null
define_guest 0 "$work/a/short.qcow2:qcow2:vda"
here=$pa; there=$pb
: >"$work/short-virsh.times"; : >"$work/short-virsh-create.times"; : >"$work/short-node.tsv"; : >"$work/short-controller.tsv"
: >"$work/connect-node.times"; : >"$work/connect-controller.times"
for i in $(seq 1 $((3 * runs))); do
    case $((i % 3)) in
    1 | 2)
        [ $((i % 3)) -eq 1 ] && { mode=node; flag=(--node "$node"); } || { mode=controller; flag=(--controller "$ctl"); }
        # CLI start, connect and one call answered without work: the floor of any command.
        t0=$(now)
        "$volmig" status "${flag[@]}" mig-00000000-0000-4000-8000-000000000000 >/dev/null 2>&1 || true
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$work/connect-$mode.times"
        s=$(now_ms)
        "$volmig" migrate "${flag[@]}" --domain "$dom" --disk vda --to-pool "$there" \
            --json >"$work/short-$mode.json"
        e=$(now_ms)
        completed "$work/short-$mode.json"
        python3 - "$work/short-$mode.json" "$s" "$e" >>"$work/short-$mode.tsv" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
start, end = int(sys.argv[2]), int(sys.argv[3])
first = {}
for e in events:
    first.setdefault(e["phase"].removeprefix("PHASE_").lower(), e["timestamp_unix_ms"])
order = ["accepted", "validating", "preparing_destination", "copying", "synchronized",
         "pivoting", "verifying", "cleaning_up", "completed"]
marks = [start] + [first[p] for p in order] + [end]
print("\t".join(str(b - a) for a, b in zip(marks, marks[1:])) + f"\t{end - start}")
PY
        ;;
    0)
        # volmig creates its destination volume; with virsh that is a command of its own,
        # timed separately so both comparisons can be read.
        tc=$(now)
        virsh -q vol-create-as "$there" short.qcow2 1G --format qcow2 >/dev/null
        file_dest_xml "$there" short.qcow2 qcow2
        t0=$(now)
        virsh -q blockcopy "$dom" vda --xml "$work/dest.xml" --reuse-external --wait --pivot \
            --transient-job >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$work/short-virsh.times"
        echo "$t1 - $tc" | bc -l >>"$work/short-virsh-create.times"
        ;;
    esac
    virsh -q vol-delete short.qcow2 --pool "$here" >/dev/null
    tmp=$here; here=$there; there=$tmp
done
acks=$(grep -ac 'VOLMIG-ACK' "$work/console.log")
drop_guest
empty_pools
col() { cut -f"$1" "$2" | median; }

# --- 3. thin stays thin ---------------------------------------------------------------
load3=$(load)
declare -A layout=(
    [A]='write -P 0x41 66M 64M'
    [B]='write -P 0x42 8M 1M;write -P 0x42 100M 1M'
    [C]='write -P 0x43 1M 64K;write -P 0x43 100M 1M;write -P 0x43 200M 64K'
)
virsh -q vol-create-as "$pa" scratch.raw 16M --format raw >/dev/null
disks=("$work/a/scratch.raw:raw:vda")
dev=(b c d e f g)
n=0
for l in A B C; do
    for to in dir rbd; do
        v=thin-$l-$to.qcow2
        virsh -q vol-create-as "$pa" "$v" 256M --format qcow2 >/dev/null
        IFS=';' read -ra cmds <<<"${layout[$l]}"
        for c in "${cmds[@]}"; do qemu-io -f qcow2 -c "$c" "$work/a/$v" >/dev/null; done
        disks+=("$work/a/$v:qcow2:vd${dev[$n]}")
        n=$((n + 1))
    done
done
virsh -q vol-create-as "$pa" big.raw 1G --format raw >/dev/null
qemu-io -f raw -c 'write -P 0x6b 0 1G' "$work/a/big.raw" >/dev/null
disks+=("$work/a/big.raw:raw:vdh")
define_guest 200 "${disks[@]}"
# Data extents of a source image, as "offset length" lines.
extents() { qemu-img map -U --output=json "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["data"]: print(e["start"], e["length"])'; }
result() { # json-file key
    tail -n1 "$1" | python3 -c "import json, sys; print(json.load(sys.stdin)['result']['$2'])"
}
: >"$work/thin.tsv"
n=0
for l in A B C; do
    for to in dir rbd; do
        src=$work/a/thin-$l-$to.qcow2
        src_du=$(du -B1 "$src" | cut -f1)
        data=$(extents "$src" | awk '{s += $2} END {print s}')
        if [ "$to" = dir ]; then
            "$volmig" migrate --node "$node" --domain "$dom" --disk "vd${dev[$n]}" --to-pool "$pb" \
                --json >"$work/thin.json"
            completed "$work/thin.json"
            seen=$(du -B1 "$work/b/thin-$l-$to.qcow2" | cut -f1)
            floor=-
        else
            img=volmig-bench-thin-$l
            "$volmig" migrate --node "$node" --domain "$dom" --disk "vd${dev[$n]}" --to-pool "$prbd" \
                --to-volume "$img" --json >"$work/thin.json"
            completed "$work/thin.json"
            seen=$(rbd_ du --format json "$CEPH_POOL/$img" | python3 -c 'import json, sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
            obj=$(rbd_ info --format json "$CEPH_POOL/$img" | python3 -c 'import json, sys; print(json.load(sys.stdin)["object_size"])')
            floor=$(extents "$src" | awk -v o="$obj" '{for (i = int($1 / o); i <= int(($1 + $2 - 1) / o); i++) t[i] = 1} END {print length(t) * o}')
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$l" "$to" "$data" "$src_du" \
            "$(result "$work/thin.json" source_allocated_bytes)" \
            "$(result "$work/thin.json" destination_allocated_bytes)" "$seen" "$floor" >>"$work/thin.tsv"
        n=$((n + 1))
    done
done

# --- 4. granularity cost on RBD --------------------------------------------------------
load4=$(load)
big_obj=
: >"$work/g-default.times"; : >"$work/g-object.times"; : >"$work/g-volmig.times"; : >"$work/g-volmig-copy.times"
for i in $(seq 1 "$runs"); do
    for arm in default object volmig; do
        img=volmig-bench-g$i-$arm
        if [ "$arm" = volmig ]; then
            t0=$(now)
            "$volmig" migrate --node "$node" --domain "$dom" --disk vdh --to-pool "$prbd" \
                --to-volume "$img" --delete-source --json >"$work/g.json"
            t1=$(now)
            completed "$work/g.json"
            python3 - "$work/g.json" >>"$work/g-volmig-copy.times" <<'PY'
import json, sys
first = {}
for l in open(sys.argv[1]):
    e = json.loads(l)
    first.setdefault(e["phase"], e["timestamp_unix_ms"])
print((first["PHASE_SYNCHRONIZED"] - first["PHASE_COPYING"]) / 1000)
PY
            # Back onto a file, untimed, so every arm copies from the same kind of source.
            "$volmig" migrate --node "$node" --domain "$dom" --disk vdh --to-pool "$pa" \
                --to-volume "big-$i.raw" --delete-source --json >"$work/g-back.json"
            completed "$work/g-back.json"
            virsh -q vol-delete "$img" --pool "$prbd" >/dev/null 2>&1 || true
        else
            virsh -q vol-create-as "$prbd" "$img" 1G >/dev/null
            [ -n "$big_obj" ] || big_obj=$(rbd_ info --format json "$CEPH_POOL/$img" | python3 -c 'import json, sys; print(json.load(sys.stdin)["object_size"])')
            cat >"$work/rbd-dest.xml" <<XML
<disk type='network'><driver name='qemu' type='raw'/>
<source protocol='rbd' name='$CEPH_POOL/$img'><host name='$CEPH_MON_HOST' port='$CEPH_MON_PORT'/></source>
<auth username='$CEPH_CLIENT'><secret type='ceph' uuid='$secret_uuid'/></auth></disk>
XML
            g=(); [ "$arm" = object ] && g=(--granularity "$big_obj")
            t0=$(now)
            virsh -q blockcopy "$dom" vdh --xml "$work/rbd-dest.xml" --reuse-external \
                --transient-job --wait "${g[@]}" >/dev/null
            t1=$(now)
            virsh -q blockjob "$dom" vdh --abort >/dev/null
            for _ in $(seq 1 100); do virsh -q blockjob "$dom" vdh 2>&1 | grep -q 'No current block job' && break; sleep 0.1; done
            virsh -q vol-delete "$img" --pool "$prbd" >/dev/null
        fi
        echo "$t1 - $t0" | bc -l >>"$work/g-$arm.times"
    done
done
gd=$(median <"$work/g-default.times"); go=$(median <"$work/g-object.times"); gv=$(median <"$work/g-volmig.times")
drop_guest
empty_pools

# --- 5. sparseness at scale --------------------------------------------------------------
load5=$(load)
virsh -q vol-create-as "$pa" sparse.raw 20G --allocation 0 --format raw >/dev/null
qemu-io -f raw -c 'write -P 0x5c 1G 256M' "$work/a/sparse.raw" >/dev/null
define_guest 200 "$work/a/sparse.raw:raw:vda"
alloc() { du -B1 "$1" | cut -f1; }
src_alloc=$(alloc "$work/a/sparse.raw")
"$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$pb" --json >"$work/sparse.json"
completed "$work/sparse.json"
dir_alloc=$(alloc "$work/b/sparse.raw")
"$volmig" migrate --node "$node" --domain "$dom" --disk vda --to-pool "$prbd" \
    --to-volume volmig-bench-sparse --json >"$work/sparse.json"
completed "$work/sparse.json"
used=$(rbd_ du --format json "$CEPH_POOL/volmig-bench-sparse" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
load_end=$(load)

# --- tables ------------------------------------------------------------------------------
mib() { echo "$1 / 1048576" | bc -l | xargs printf '%.2f'; }
printf '\n## 1. copy time (load average before: %s)\n\n' "$load1"
printf '| measurement | value | target |\n|---|---|---|\n'
printf '| volmig migrate, median of %d (2 GiB virtual, 1 GiB data, dir→dir) | %.2f s | |\n' "$runs" "$vm"
printf '| virsh blockcopy --pivot, median of %d | %.2f s | |\n' "$runs" "$vs"
printf '| ratio volmig / virsh | %.3f | ≤ 1.05 |\n' "$(echo "$vm / $vs" | bc -l)"
printf '| node CPU while copying, COPYING → SYNCHRONIZED (median) | %.2f %% of a core | ≤ 1 %% |\n' "$cpu_copy"
printf '| node CPU over the whole command (median) | %.2f %% of a core | |\n' "$cpu"
printf '| node peak RSS | %d MiB | |\n' "$((rss / 1024))"

printf '\n## 2. short copy: 1 GiB qcow2 holding 512 MiB, guest writing unthrottled, dir→dir (load average before: %s)\n\n' "$load2"
sn=$(col 11 "$work/short-node.tsv"); sc=$(col 11 "$work/short-controller.tsv")
sv=$(median <"$work/short-virsh.times")
printf '| measurement | value | target |\n|---|---|---|\n'
printf '| volmig migrate through the node, median of %d | %.3f s | ≤ virsh |\n' "$runs" "$(echo "$sn / 1000" | bc -l)"
printf '| volmig migrate through the controller, median of %d | %.3f s | ≤ virsh |\n' "$runs" "$(echo "$sc / 1000" | bc -l)"
svc=$(median <"$work/short-virsh-create.times")
printf '| virsh blockcopy --pivot, median of %d | %.3f s | |\n' "$runs" "$sv"
printf '| virsh vol-create-as + blockcopy --pivot (the work volmig does), median of %d | %.3f s | |\n' "$runs" "$svc"
printf '| ratio node / virsh, controller / virsh (blockcopy alone) | %.3f, %.3f | ≤ 1.00 |\n' \
    "$(echo "$sn / 1000 / $sv" | bc -l)" "$(echo "$sc / 1000 / $sv" | bc -l)"
printf '| ratio node / virsh, controller / virsh (with the volume creation) | %.3f, %.3f | ≤ 1.00 |\n' \
    "$(echo "$sn / 1000 / $svc" | bc -l)" "$(echo "$sc / 1000 / $svc" | bc -l)"
printf '| records the guest acknowledged during section 2 | %d | |\n' "$acks"
printf '\nWhere volmig'"'"'s time goes (ms, median per step over %d runs; event timestamps are the node'"'"'s):\n\n' "$runs"
printf '| step | through node | through controller |\n|---|---|---|\n'
printf '| CLI start, connect, one call (`volmig status`, separate run) | %.0f | %.0f |\n' \
    "$(echo "$(median <"$work/connect-node.times") * 1000" | bc -l)" \
    "$(echo "$(median <"$work/connect-controller.times") * 1000" | bc -l)"
i=1
for step in "CLI start → ACCEPTED (connect, request, validation, journal)" "ACCEPTED → VALIDATING" \
    "VALIDATING → PREPARING_DESTINATION (validation again)" "PREPARING_DESTINATION → COPYING (volume creation)" \
    "COPYING → SYNCHRONIZED (block copy, polls)" "SYNCHRONIZED → PIVOTING" "PIVOTING → VERIFYING (pivot, wait for the job to end)" \
    "VERIFYING → CLEANING_UP (definitions, allocations)" "CLEANING_UP → COMPLETED" "COMPLETED → CLI exit" "total"; do
    printf '| %s | %s | %s |\n' "$step" "$(col $i "$work/short-node.tsv")" "$(col $i "$work/short-controller.tsv")"
    i=$((i + 1))
done

printf '\n## 3. thin stays thin: 256 MiB qcow2 sources (load average before: %s)\n\n' "$load3"
printf '| layout | pool | source data (qemu-img map) | source allocation: du / volmig | destination: volmig / storage (du, rbd du) | ratio to source du | rbd floor (objects touched × size) | ratio to floor |\n'
printf '|---|---|---|---|---|---|---|---|\n'
while IFS=$'\t' read -r l to data sdu srep drep seen floor; do
    if [ "$floor" = - ]; then fl=-; rf=-; else fl="$(mib "$floor") MiB"; rf=$(echo "$seen / $floor" | bc -l | xargs printf '%.2f×'); fi
    printf '| %s | %s | %s MiB | %s / %s MiB | %s / %s MiB | %.3f× | %s | %s |\n' "$l" "$to" "$(mib "$data")" \
        "$(mib "$sdu")" "$(mib "$srep")" "$(mib "$drep")" "$(mib "$seen")" "$(echo "$seen / $sdu" | bc -l)" "$fl" "$rf"
done <"$work/thin.tsv"

printf '\n## 4. 1 GiB contiguous data onto RBD (%s-byte objects), interleaved, median of %d (load average before: %s)\n\n' "$big_obj" "$runs" "$load4"
printf '| copy | median | runs |\n|---|---|---|\n'
printf '| virsh blockcopy, QEMU defaults (64 KiB granularity, 16 MiB buffer), until synchronized | %.2f s | %s |\n' "$gd" "$(sort -g "$work/g-default.times" | xargs printf '%.2f ')"
printf '| virsh blockcopy --granularity %s (volmig'"'"'s choice), until synchronized | %.2f s | %s |\n' "$big_obj" "$go" "$(sort -g "$work/g-object.times" | xargs printf '%.2f ')"
printf '| volmig migrate (whole command, pivot and verification included) | %.2f s | %s |\n' "$gv" "$(sort -g "$work/g-volmig.times" | xargs printf '%.2f ')"
printf '| … of which COPYING → SYNCHRONIZED (event timestamps) | %.2f s | %s |\n' "$(median <"$work/g-volmig-copy.times")" "$(sort -g "$work/g-volmig-copy.times" | xargs printf '%.2f ')"
printf '| granularity = object size vs default | %+.1f %% | ≤ +10 %% |\n' "$(echo "($go / $gd - 1) * 100" | bc -l)"

printf '\n## 5. 20 GiB raw holding 256 MiB (load average before: %s)\n\n' "$load5"
printf '| measurement | value | target |\n|---|---|---|\n'
printf '| source allocation | %d MiB | |\n' "$((src_alloc / 1048576))"
printf '| destination allocation, dir pool | %d MiB (%.3f×) | ≤ 1.05× |\n' "$((dir_alloc / 1048576))" "$(echo "$dir_alloc / $src_alloc" | bc -l)"
printf '| destination allocation, rbd pool (rbd du) | %d MiB (%.3f×) | ≤ 1.05× |\n' "$((used / 1048576))" "$(echo "$used / $src_alloc" | bc -l)"
printf '\nload average at the end: %s\n' "$load_end"
