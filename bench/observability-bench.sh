#!/usr/bin/env bash
# Benchmarks what observability costs the node, and prints a table. Not a
# test: numbers vary with the machine; targets are in README (issue 11).
#
#   1. node CPU during a copy (COPYING -> SYNCHRONIZED, from the node's
#      utime + stime in /proc/PID/stat), as % of one core: with OTLP trace
#      export to a local receiver (bench/otlp-sink.py, a grpcio TraceService
#      that accepts every batch) and the metrics endpoint on and scraped every
#      second, against both off; alternating, RUNS each (default 3), a fresh
#      node process per run. The disk: a 2 GiB-virtual qcow2 holding 1 GiB,
#      dir pool <-> dir pool, the copy limited to 64 MiB/s so that it lasts
#      ~30 s here; the guest writes one record every 200 ms. Target: <= 1 % of
#      a core with both on.
#   2. `/metrics` scrape time with 1,000 finished migrations in the journal:
#      a finished record of run 1 copied under 1,000 new ids (the journal's
#      own format), a node started on that state dir, SCRAPES (default 20)
#      scrapes timed by curl; median and p99. Target: <= 5 ms.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# shellcheck source=bench/lib.sh
. bench/lib.sh
runs=${RUNS:-3}
scrapes=${SCRAPES:-20}
work=/var/tmp/volmig-obsbench
dom=volmig-obsbench
pa=volmig-obsbench-a
pb=volmig-obsbench-b
metrics_addr=127.0.0.1:${METRICS_PORT:-19464}
otlp_addr=127.0.0.1:${OTLP_PORT:-14317}
pids=()
node_pid=

cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    bench_remove_domain_and_pools "$dom" "$pa" "$pb"
    rm -rf "$work"
}

bash deploy/setup-host.sh
bash deploy/setup-tests.sh
cleanup
trap cleanup EXIT
cargo build --release --quiet
volmig=$top/target/release/volmig
py=$(bash tests/python/setup-venv.sh)

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "host: $(nproc) cores, load average at start $(load); RUNS=$runs SCRAPES=$scrapes"

mkdir -p "$work/a" "$work/b" "$work/guest"
chmod 0755 "$work" "$work/a" "$work/b" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$pa:$work/a" "$pb:$work/b"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done

"$py" bench/otlp-sink.py "$otlp_addr" "$work/sink.count" &
sink_pid=$!
pids+=("$sink_pid")

virsh -q vol-create-as "$pa" bench.qcow2 2G --format qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0xa5 512M 1G' "$work/a/bench.qcow2" >/dev/null
: >"$work/console.log"
cat >"$work/$dom.xml" <<XML
<domain type='qemu'><name>$dom</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest/vmlinuz</kernel>
<initrd>$work/guest/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 volmig.pause_ms=200</cmdline></os>
<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$work/a/bench.qcow2'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial></devices></domain>
XML
virsh -q define "$work/$dom.xml" >/dev/null
virsh -q start "$dom" >/dev/null
for _ in $(seq 1 300); do grep -aq 'VOLMIG-ACK' "$work/console.log" 2>/dev/null && break; sleep 0.1; done
grep -aq 'VOLMIG-ACK' "$work/console.log" || { echo "guest did not start writing" >&2; exit 1; }

start_node() { # on|off state-dir
    rm -f "$work/node.sock"
    if [ "$1" = on ]; then
        OTEL_EXPORTER_OTLP_ENDPOINT="http://$otlp_addr" \
            "$volmig" node --listen "unix://$work/node.sock" --state-dir "$2" \
            --node-id obsbench --metrics-listen "$metrics_addr" 2>>"$work/node.log" &
    else
        "$volmig" node --listen "unix://$work/node.sock" --state-dir "$2" \
            --node-id obsbench 2>>"$work/node.log" &
    fi
    node_pid=$!
    for _ in $(seq 1 100); do [ -S "$work/node.sock" ] && return; sleep 0.1; done
    echo "node did not start" >&2; tail "$work/node.log" >&2; exit 1
}
stop_node() { kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=; }
ticks() { awk '{print $14 + $15}' "/proc/$node_pid/stat"; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
# Nearest rank: the smallest value with at least 99 % of the values at or below it.
p99() { sort -g | awk '{a[NR]=$1} END {r = int(NR * 0.99); if (r < NR * 0.99) r++; print a[r]}'; }
hz=$(getconf CLK_TCK)

# --- 1. node CPU during a copy -------------------------------------------------------
load1=$(load)
here=$pa; there=$pb
: >"$work/on.pct"; : >"$work/off.pct"
for i in $(seq 1 $((2 * runs))); do
    [ $((i % 2)) -eq 1 ] && mode=on || mode=off
    start_node "$mode" "$work/node-state"
    scraper=
    if [ "$mode" = on ]; then
        (while :; do curl -s -o /dev/null "http://$metrics_addr/metrics"; sleep 1; done) &
        scraper=$!
    fi
    rm -f "$work/copy-start" "$work/copy-end"
    "$volmig" migrate --node "unix://$work/node.sock" --domain "$dom" --disk vda \
        --to-pool "$there" --bandwidth 64MiB --json | while IFS= read -r line; do
        printf '%s\n' "$line"
        case $line in
        *PHASE_COPYING*) [ -e "$work/copy-start" ] || echo "$(ticks) $(now)" >"$work/copy-start" ;;
        *PHASE_SYNCHRONIZED*) echo "$(ticks) $(now)" >"$work/copy-end" ;;
        esac
    done >"$work/run.json"
    [ -n "$scraper" ] && { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
    tail -n1 "$work/run.json" | grep -q PHASE_COMPLETED || { echo "run $i not completed" >&2; tail -n3 "$work/run.json" >&2; exit 1; }
    read -r c0 s0 <"$work/copy-start"; read -r c1 s1 <"$work/copy-end"
    echo "($c1 - $c0) / $hz / ($s1 - $s0) * 100" | bc -l >>"$work/$mode.pct"
    stop_node
    virsh -q vol-delete bench.qcow2 --pool "$here" >/dev/null
    tmp=$here; here=$there; there=$tmp
done
on=$(median <"$work/on.pct"); off=$(median <"$work/off.pct")
copy_s=$(echo "$s1 - $s0" | bc -l)
virsh -q destroy "$dom" >/dev/null; virsh -q undefine "$dom" >/dev/null

# --- 2. /metrics with 1,000 finished migrations ----------------------------------------
load2=$(load)
finished=$(grep -l '"Completed"' "$work"/node-state/migrations/*.json | head -n1)
mkdir -p -m 0700 "$work/scrape-state/migrations"
"$py" - "$finished" "$work/scrape-state/migrations" <<'PY'
import json, os, sys, time, uuid
record = json.load(open(sys.argv[1]))
now = int(time.time() * 1000)
for i in range(1000):
    mid = f"mig-{uuid.uuid4()}"
    record["id"] = record["latest"]["migration_id"] = mid
    record["request"]["request_id"] = f"obsbench-{i}"
    record["latest"]["started_ms"] = now - 60_000 - i * 1000
    record["latest"]["timestamp_ms"] = now - i * 1000
    path = os.path.join(sys.argv[2], f"{mid}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
PY
start_node on "$work/scrape-state"
known=$("$volmig" list --node "unix://$work/node.sock" --json | "$py" -c 'import json, sys; v = json.load(sys.stdin); print(len(v if isinstance(v, list) else v.get("migrations", [])))')
curl -s -o /dev/null "http://$metrics_addr/metrics"
bytes=$(curl -s "http://$metrics_addr/metrics" | wc -c)
: >"$work/scrape.ms"
for _ in $(seq 1 "$scrapes"); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://$metrics_addr/metrics" |
        awk '{printf "%.3f\n", $1 * 1000}' >>"$work/scrape.ms"
done
stop_node
scrape_median=$(median <"$work/scrape.ms"); scrape_p99=$(p99 <"$work/scrape.ms")
kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
read -r sink_requests sink_bytes <"$work/sink.count"
[ "$sink_requests" -gt 0 ] || { echo "the OTLP receiver got no spans" >&2; exit 1; }

verdict() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "met" : "MISSED"}'; }
printf '\n## volmig observability bench (%s, %s cores; load %s during 1, %s during 2)\n\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$load1" "$load2"
printf '| measurement | value | target |\n|---|---|---|\n'
printf '| node CPU during a copy, OTLP export + metrics on (median of %d, %% of one core) | %.2f %% | <= 1 %% (%s) |\n' \
    "$runs" "$on" "$(verdict "$on" 1)"
printf '| node CPU during a copy, both off (median of %d) | %.2f %% | |\n' "$runs" "$off"
printf '| difference | %+.2f %% | |\n' "$(echo "$on - $off" | bc -l)"
printf '| copy length (last run) | %.1f s | |\n' "$copy_s"
printf '| OTLP batches / bytes received | %s / %s | |\n' "$sink_requests" "$sink_bytes"
printf '| migrations the node lists (journal) | %s | 1000 |\n' "$known"
printf '| /metrics exposition size | %s bytes | |\n' "$bytes"
printf '| /metrics scrape, median of %d | %.2f ms | <= 5 ms (%s) |\n' \
    "$scrapes" "$scrape_median" "$(verdict "$scrape_median" 5)"
printf '| /metrics scrape, p99 of %d | %.2f ms | |\n' "$scrapes" "$scrape_p99"
