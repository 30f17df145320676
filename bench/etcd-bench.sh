#!/usr/bin/env bash
# Benchmarks of several controllers on etcd (issue 12), on loopback:
#  1. PlanMigration latency at 1,000 fake nodes x 10 pools with the etcd store
#     (benches/controller_scale.rs with VOLMIG_BENCH_ETCD: every registration,
#     history write and in-flight count goes through etcd).
#  2. Failover: three `volmig controller` processes on one etcd (lease TTL 5 s);
#     ten times, kill -9 the leader and time until another logs that it leads
#     (the "leading the controllers" line carries its Unix ms).
# Needs etcd (deploy/setup-tests.sh installs etcd-server). Prints a report; the
# last run is committed as bench/etcd-last-run.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /var/tmp/volmig-etcd-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=$(port); peer=$(port)
etcd --name b0 --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "b0=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$client/health" >/dev/null 2>&1 && break
    sleep 0.1
done
endpoint="http://127.0.0.1:$client"

echo "# volmig etcd benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, etcd $(etcd --version | head -1 | awk '{print $3}')"
echo
echo "## PlanMigration with the etcd store (1 etcd member on loopback)"
echo
if [ -z "${SKIP_PLAN:-}" ]; then # SKIP_PLAN=1: the failover part only
    VOLMIG_BENCH_ETCD="$endpoint" VOLMIG_BENCH_STREAMS="${VOLMIG_BENCH_STREAMS:-20}" \
        cargo bench --locked --bench controller_scale 2>/dev/null
fi

[ -n "${SKIP_FAILOVER:-}" ] && exit 0 # SKIP_FAILOVER=1: the PlanMigration part only
echo
echo "## Failover: leader kill -9 to the next controller leading (3 controllers, lease TTL 5 s)"
echo
cargo build --locked --quiet --bin volmig
bin=target/debug/volmig
start_controller() { # index
    local i=$1 dir="$work/c$1"
    mkdir -p "$dir"
    cat >"$dir/controller.toml" <<TOML
store = "etcd"
[etcd]
endpoints = ["$endpoint"]
prefix = "/volmig-failover/"
lease_ttl_seconds = 5
TOML
    RUST_LOG=volmig=info "$bin" controller --config "$dir/controller.toml" \
        --listen "unix://$dir/c.sock" --state-dir "$dir/state" >>"$dir/log" 2>&1 &
    cpid[$i]=$!
    pids+=($!)
}
declare -a cpid
for i in 0 1 2; do start_controller "$i"; done
# The leading line of a controller: its Unix ms, or nothing.
leading_at() { { grep -a 'leading the controllers' "$work/c$1/log" || true; } | tail -1 | sed -E 's/.*at=([0-9]+).*/\1/'; }
leader() {
    local best="" who=""
    for i in 0 1 2; do
        kill -0 "${cpid[$i]}" 2>/dev/null || continue
        local at; at=$(leading_at "$i")
        [ -n "$at" ] && { [ -z "$best" ] || [ "$at" -gt "$best" ]; } && { best=$at; who=$i; }
    done
    echo "$who"
}
for _ in $(seq 1 100); do [ -n "$(leader)" ] && break; sleep 0.1; done
times=()
for k in $(seq 1 10); do
    old=$(leader)
    killed_at=$(date +%s%3N)
    kill -9 "${cpid[$old]}"; wait "${cpid[$old]}" 2>/dev/null || true
    new=""
    for _ in $(seq 1 300); do
        for i in 0 1 2; do
            [ "$i" = "$old" ] && continue
            at=$(leading_at "$i")
            [ -n "$at" ] && [ "$at" -gt "$killed_at" ] && new=$i
        done
        [ -n "$new" ] && break
        sleep 0.05
    done
    [ -n "$new" ] || { echo "kill $k: no new leader within 15 s" >&2; exit 1; }
    took=$(( $(leading_at "$new") - killed_at ))
    times+=("$took")
    echo "kill $k: controller $old killed, controller $new leads after ${took} ms"
    start_controller "$old"
    sleep 1
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo
echo "failover over 10 kills: min $(echo "$sorted" | head -1) ms, median $(echo "$sorted" | sed -n 5p) ms, max $(echo "$sorted" | tail -1) ms (lease TTL 5000 ms)"
