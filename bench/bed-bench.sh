#!/usr/bin/env bash
# The controller scale bench's row with real nodes (issue 21): three simulated hosts
# (deploy/hosts.sh), each with its own libvirtd and `volmig node`, a `volmig controller`
# in its own namespace, all over mutual TLS on a bridge. Each host gets two paused guests
# (a paused QEMU costs no CPU, and libvirt reports it running) with a qcow2 disk on a dir
# pool, and a second pool to plan onto. benches/controller_scale.rs, run in the
# controller's namespace, then times ListPools and PlanMigration through the controller.
# Prints a markdown table; the last run is committed as bench/bed-last-run.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-tests.sh >/dev/null

HOSTS=${HOSTS:-3}
GUESTS=${GUESTS:-2} # per host
PLANS=${PLANS:-500}
export VOLMIG_HOSTS_PREFIX=volmig-bedbench VOLMIG_HOSTS_IF=vmbbench
export VOLMIG_HOSTS_SUBNET=${VOLMIG_HOSTS_SUBNET:-10.213.77}
export VOLMIG_HOSTS_BASE=/var/tmp/volmig-bedbench
trap 'bash deploy/hosts.sh down >/dev/null 2>&1 || true' EXIT

cargo build --release --bin volmig 2>&1 | tail -1
bench=$(cargo bench --bench controller_scale --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "controller_scale" and m.get("executable"):
        print(m["executable"])')
[ -x "$bench" ] || { echo "bed-bench: no controller_scale bench binary" >&2; exit 1; }

bash deploy/hosts.sh down >/dev/null 2>&1 || true
bash deploy/hosts.sh up "$HOSTS" --volmig --bin target/release/volmig >/dev/null

domains=()
for i in $(seq 1 "$HOSTS"); do
    host="$VOLMIG_HOSTS_PREFIX-h$i"
    dir="$VOLMIG_HOSTS_BASE/$host/bench"
    mkdir -p "$dir/src" "$dir/dst"
    on() { bash deploy/hosts.sh exec "$host" "$@"; }
    for p in src dst; do
        on virsh -q pool-define-as "bench-$p" dir --target "$dir/$p" >/dev/null
        on virsh -q pool-start "bench-$p" >/dev/null
    done
    for g in $(seq 1 "$GUESTS"); do
        dom="bench-h$i-g$g"
        on virsh -q vol-create-as bench-src "$dom.qcow2" 64M --format qcow2 >/dev/null
        cat >"$dir/$dom.xml" <<EOF
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$dir/src/$dom.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
        on virsh -q define "$dir/$dom.xml" >/dev/null
        on virsh -q start --paused "$dom" >/dev/null
        domains+=("$dom")
    done
done

# The controller counts a node's pools from its next heartbeat on.
want=$((HOSTS * 2))
for _ in $(seq 1 60); do
    have=$(bash deploy/hosts.sh cli volmig pools 2>/dev/null | grep -c 'bench-' || true)
    [ "$have" -ge "$want" ] && break
    sleep 0.5
done

echo "# volmig controller on the multi-host bed, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo
IFS=,
bash deploy/hosts.sh cli env VOLMIG_BENCH_BED_DOMAINS="${domains[*]}" VOLMIG_BENCH_PLANS="$PLANS" \
    "$bench" --bench
