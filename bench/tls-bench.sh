#!/usr/bin/env bash
# Benchmarks the cost of mutual TLS: the same migration through a controller
# and a node that talk mTLS (CLI → controller → node, every hop), and through
# a plaintext pair (CLI → controller on loopback TCP with a bearer token,
# controller → node on the node's unix socket), in one run, alternating, RUNS times each (default 5). Prints a table with both
# medians and their ratio (target ≤ 1.02). Not a test: numbers vary.
#
# Certificates are made with openssl here, the way the README describes.
# The guest is the test guest writing lightly (one record every 200 ms); the
# disk is a 2 GiB-virtual qcow2 holding 1 GiB of data, dir pool ↔ dir pool.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# shellcheck source=bench/lib.sh
. bench/lib.sh
runs=${RUNS:-5}
work=/var/tmp/volmig-tlsbench
dom=volmig-tlsbench
pa=volmig-tlsbench-a
pb=volmig-tlsbench-b
pids=()

cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        for log in "$work"/*.log; do
            [ -e "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
        done
    fi
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

mkdir -p "$work/a" "$work/b" "$work/guest" "$work/pki"
chmod 0755 "$work" "$work/a" "$work/b" "$work/guest"
bash tests/guest/build-guest.sh "$work/guest"
for p in "$pa:$work/a" "$pb:$work/b"; do
    virsh -q pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
    virsh -q pool-start "${p%%:*}" >/dev/null
done

# --- PKI and tokens ---------------------------------------------------------------
# Keys and tokens readable by their owner only: volmig refuses ones others can read.
old_umask=$(umask)
umask 077
pki=$work/pki
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" -subj "/CN=volmig bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
leaf() { # name subjectAltName
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$pki/$1-key.pem" -out "$pki/$1.csr" -subj "/CN=$1" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
        -CAcreateserial -days 2 -out "$pki/$1.pem" -extfile <(printf 'subjectAltName=%s\n' "$2") \
        2>/dev/null
}
leaf controller "DNS:localhost,IP:127.0.0.1,DNS:controller.bench"
leaf node "DNS:localhost,IP:127.0.0.1,DNS:node.bench"
leaf operator "DNS:operator.bench"
token() { # file: writes a new random token there, prints its SHA-256
    local t
    t=$(openssl rand -hex 32)
    printf %s "$t" >"$1"
    printf %s "$t" | sha256sum | cut -d' ' -f1
}
hash=$(token "$work/token")
umask "$old_umask"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

tls_files() { printf 'tls_ca = "%s"\ntls_cert = "%s/%s.pem"\ntls_key = "%s/%s-key.pem"\n' "$pki/ca.pem" "$pki" "$1" "$pki" "$1"; }
start() { # component name listen config
    printf '%s' "$4" >"$work/$2.toml"
    mkdir -p "$work/$2-state"
    "$volmig" "$1" --listen "$3" --config "$work/$2.toml" --state-dir "$work/$2-state" \
        2>"$work/$2.log" &
    pids+=($!)
    wait_port "${3##*:}"
}

# mTLS pair.
ct=$(free_port); nt=$(free_port)
start controller ctl-tls "127.0.0.1:$ct" "heartbeat_interval_seconds = 1
$(tls_files controller)
[[identities]]
dns = \"operator.bench\"
role = \"operator\"
[[identities]]
dns = \"node.bench\"
role = \"node\"
node_id = \"bench-tls\"
"
start node node-tls "127.0.0.1:$nt" "node_id = \"bench-tls\"
controller = \"https://localhost:$ct\"
advertise = \"https://localhost:$nt\"
$(tls_files node)
[[identities]]
dns = \"controller.bench\"
role = \"operator\"
"
# Plaintext pair: the CLI reaches the controller on loopback TCP with a token (TCP
# callers always need credentials); the controller reaches the node on its unix
# socket, since volmig sends a token only over https:// or unix://.
cp=$(free_port)
node_sock=$work/node-plain.sock
start controller ctl-plain "127.0.0.1:$cp" "heartbeat_interval_seconds = 1
[[nodes]]
id = \"bench-plain\"
endpoint = \"unix://$node_sock\"
[[tokens]]
name = \"bench\"
sha256 = \"$hash\"
role = \"operator\"
"
printf 'node_id = "bench-plain"\n' >"$work/node-plain.toml"
mkdir -p "$work/node-plain-state"
"$volmig" node --listen "unix://$node_sock" --config "$work/node-plain.toml" \
    --state-dir "$work/node-plain-state" 2>"$work/node-plain.log" &
pids+=($!)
for _ in $(seq 1 100); do [ -S "$node_sock" ] && break; sleep 0.1; done

tls_cli=(--controller "https://localhost:$ct" --ca "$pki/ca.pem" --cert "$pki/operator.pem" --key "$pki/operator-key.pem")
plain_cli=(--controller "http://127.0.0.1:$cp" --token-file "$work/token")
for _ in $(seq 1 100); do
    "$volmig" nodes "${tls_cli[@]}" 2>/dev/null | grep -q bench-tls \
        && "$volmig" nodes "${plain_cli[@]}" 2>/dev/null | grep -q bench-plain && break
    sleep 0.2
done

# --- guest ----------------------------------------------------------------------------
virsh -q vol-create-as "$pa" bench.qcow2 2G --format qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0xa5 512M 1G' "$work/a/bench.qcow2" >/dev/null
cat >"$work/$dom.xml" <<XML
<domain type='qemu'><name>$dom</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$work/guest/vmlinuz</kernel>
<initrd>$work/guest/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 volmig.pause_ms=200</cmdline></os>
<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$work/a/bench.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial></devices></domain>
XML
virsh -q define "$work/$dom.xml" >/dev/null
virsh -q start "$dom" >/dev/null
for _ in $(seq 1 300); do grep -aq 'VOLMIG-ACK' "$work/console.log" 2>/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# --- runs -------------------------------------------------------------------------------
here=$pa; there=$pb
: >"$work/tls.times"; : >"$work/plain.times"
for i in $(seq 1 $((2 * runs))); do
    if [ $((i % 2)) -eq 1 ]; then mode=tls; cli=("${tls_cli[@]}"); else mode=plain; cli=("${plain_cli[@]}"); fi
    t0=$(now)
    "$volmig" migrate "${cli[@]}" --domain "$dom" --disk vda --to-pool "$there" --json >"$work/last-$mode.json"
    t1=$(now)
    tail -n1 "$work/last-$mode.json" | grep -q PHASE_COMPLETED || { echo "$mode run $i did not complete" >&2; exit 1; }
    echo "$t1 - $t0" | bc -l >>"$work/$mode.times"
    virsh -q vol-delete bench.qcow2 --pool "$here" >/dev/null
    tmp=$here; here=$there; there=$tmp
done
mt=$(median <"$work/tls.times"); mp=$(median <"$work/plain.times")
ratio=$(echo "$mt / $mp" | bc -l)

printf '\n| measurement | value | target |\n|---|---|---|\n'
printf '| migrate through controller + node, plaintext (CLI → controller loopback TCP + token, controller → node unix socket), median of %d | %.3f s | |\n' "$runs" "$mp"
printf '| migrate through controller + node, mutual TLS on every hop, median of %d | %.3f s | |\n' "$runs" "$mt"
printf '| ratio mTLS / plaintext | %.3f | ≤ 1.02 |\n' "$ratio"
printf '| all runs, plaintext (s) | %s | |\n' "$(tr '\n' ' ' <"$work/plain.times" | xargs printf '%.2f ')"
printf '| all runs, mTLS (s) | %s | |\n' "$(tr '\n' ' ' <"$work/tls.times" | xargs printf '%.2f ')"
