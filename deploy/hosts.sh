#!/usr/bin/env bash
# Simulated KVM hosts on one machine (issue #21): each host is a network namespace on a
# bridge plus a mount namespace with its own libvirtd + virtlogd, domains, pools and state.
#
#   bash deploy/hosts.sh up N [--ctl]   # hosts PREFIX-h1..hN (+ PREFIX-ctl, network only)
#   bash deploy/hosts.sh down           # removes every host of PREFIX, half-built ones too
#   bash deploy/hosts.sh status
#   bash deploy/hosts.sh exec NAME CMD… # runs CMD inside host NAME (its mount + net ns)
#   bash deploy/hosts.sh pid NAME       # the PID whose namespaces are NAME's
#
# Settings (environment; defaults suit a person trying it by hand, the test harness sets
# all of them to names and a subnet unique to its run):
#   VOLMIG_HOSTS_PREFIX  name prefix of namespaces and directories (default volmig)
#   VOLMIG_HOSTS_IF      prefix of interface names, at most 8 chars (default volmig)
#   VOLMIG_HOSTS_SUBNET  first three octets of the /24 (default 10.213.0)
#   VOLMIG_HOSTS_BASE    where host directories live (default /var/tmp/volmig-hosts)
#
# Layout: bridge ${IF}-br0 = SUBNET.1 in the root namespace; host i = netns PREFIX-hi with
# eth0 = SUBNET.(10+i), its veth peer ${IF}-hi on the bridge; the controller namespace
# PREFIX-ctl = SUBNET.2. Host i's keeper process (`unshare -m` inside the netns, PID in
# BASE/NAME/pid) holds a mount namespace where BASE/NAME/{lib,etc,log,cache} are bind-mounted
# over /var/{lib,log,cache}/libvirt and /etc/libvirt, and /run/libvirt is a tmpfs. The rest
# of the file system is shared with the machine (disk images under /var/tmp work as is).
# No routes, no NAT: traffic stays on the bridge.
set -euo pipefail

PREFIX=${VOLMIG_HOSTS_PREFIX:-volmig}
IFP=${VOLMIG_HOSTS_IF:-volmig}
SUBNET=${VOLMIG_HOSTS_SUBNET:-10.213.0}
BASE=${VOLMIG_HOSTS_BASE:-/var/tmp/volmig-hosts}
BRIDGE="${IFP}-br0"

die() { echo "hosts.sh: $*" >&2; exit 1; }
log() { echo "hosts.sh: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (namespaces, bridge, libvirtd)"
[ ${#IFP} -le 8 ] || die "VOLMIG_HOSTS_IF must be at most 8 characters (interface names ≤ 15)"
[[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VOLMIG_HOSTS_SUBNET must be three octets"

host_ns() { echo "${PREFIX}-h$1"; }
ctl_ns() { echo "${PREFIX}-ctl"; }
host_addr() { echo "${SUBNET}.$((10 + $1))"; }
ctl_addr() { echo "${SUBNET}.2"; }

ns_exists() { [ -e "/run/netns/$1" ]; }

# Every namespace of this prefix that exists now, hosts and controller.
our_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' \
        | grep -E "^${PREFIX//./\\.}-(h[0-9]+|ctl)\$" || true
}

keeper_pid() {
    local name=$1 pid
    pid=$(cat "$BASE/$name/pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # Must still be our keeper: same network namespace as the named one.
    [ "$(stat -Lc %i "/proc/$pid/ns/net" 2>/dev/null)" = "$(stat -Lc %i "/run/netns/$name" 2>/dev/null)" ] \
        || return 1
    echo "$pid"
}

in_host() {
    local name=$1 pid
    shift
    pid=$(keeper_pid "$name") || die "$name is not up"
    nsenter -t "$pid" -m -n -- "$@"
}

ensure_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    if ! ip -4 addr show dev "$BRIDGE" | grep -q "inet ${SUBNET}.1/"; then
        ip addr add "${SUBNET}.1/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
}

# A named network namespace on the bridge with address $2.
ensure_netns() {
    local ns=$1 addr=$2 veth=$3
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        ip link del "$veth" 2>/dev/null || true
        ip link add "$veth" type veth peer name eth0 netns "$ns"
    fi
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    if ! ip -n "$ns" -4 addr show dev eth0 | grep -q "inet ${addr}/"; then
        ip -n "$ns" addr add "${addr}/24" dev eth0
    fi
    ip -n "$ns" link set eth0 up
}

# The libvirt config files of the package, none of the host's definitions: only the
# top-level *.conf files of /etc/libvirt (the package ships them; definitions live in
# subdirectories: qemu/, storage/, secrets/, nwfilter/, qemu/networks/).
populate_etc() {
    local etc=$1
    [ -e "$etc/.populated" ] && return 0
    local f
    for f in /etc/libvirt/*.conf; do
        cp -p "$f" "$etc/"
    done
    touch "$etc/.populated"
}

start_host() {
    local i=$1 name addr dir
    name=$(host_ns "$i")
    addr=$(host_addr "$i")
    dir="$BASE/$name"
    ensure_netns "$name" "$addr" "${IFP}-h$i"
    if keeper_pid "$name" >/dev/null; then
        log "$name is up ($addr)"
        return 0
    fi
    # A keeper that died leaves its daemons (and guests) running in an orphaned mount
    # namespace; a second libvirtd on the same state would corrupt it: stop them first.
    kill_netns_pids "$name"
    mkdir -p "$dir"/{lib,etc,log,cache}
    chmod 0755 "$BASE" "$dir"
    populate_etc "$dir/etc"
    rm -f "$dir/pid" "$dir/ready"
    # The keeper: a mount namespace inside the netns. Its shell mounts, starts virtlogd and
    # libvirtd (they daemonize and stay in these namespaces), writes its PID, then becomes
    # `sleep infinity`, which holds the namespaces while nothing else runs there.
    setsid ip netns exec "$name" unshare -m --propagation private -- sh -c '
        set -e
        dir=$1
        mount -t tmpfs -o mode=0755 tmpfs /run/libvirt
        mount --bind "$dir/lib" /var/lib/libvirt
        mount --bind "$dir/etc" /etc/libvirt
        mount --bind "$dir/log" /var/log/libvirt
        mount --bind "$dir/cache" /var/cache/libvirt
        virtlogd -d -p /run/libvirt/virtlogd.pid
        libvirtd -d -p /run/libvirt/libvirtd.pid
        echo $$ > "$dir/pid"
        exec sleep infinity
    ' keeper "$dir" </dev/null >"$dir/keeper.log" 2>&1 9>&- &
    local t=0
    until keeper_pid "$name" >/dev/null; do
        t=$((t + 1))
        [ $t -le 100 ] || die "$name: keeper did not start: $(cat "$dir/keeper.log")"
        sleep 0.1
    done
    t=0
    until in_host "$name" virsh -c qemu:///system uri >/dev/null 2>&1; do
        t=$((t + 1))
        [ $t -le 300 ] || die "$name: libvirtd does not answer: $(tail -5 "$dir/keeper.log")"
        sleep 0.1
    done
    touch "$dir/ready"
    log "$name up: $addr, keeper $(keeper_pid "$name")"
}

cmd_up() {
    local n=${1:-}
    local ctl=${2:-}
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "usage: up N [--ctl]"
    mkdir -p "$BASE"
    exec 9>"$BASE/.${PREFIX}.lock"
    flock -w 60 9 || die "another up/down of $PREFIX holds $BASE/.${PREFIX}.lock"
    ensure_bridge
    local i
    for i in $(seq 1 "$n"); do
        start_host "$i"
    done
    if [ "$ctl" = "--ctl" ]; then
        ensure_netns "$(ctl_ns)" "$(ctl_addr)" "${IFP}-ctl"
        log "$(ctl_ns) up: $(ctl_addr)"
    fi
}

# Kills every process in network namespace $1 (libvirtd, virtlogd, QEMU, the keeper, nodes):
# TERM, up to 5 s, then KILL.
kill_netns_pids() {
    local ns=$1 pids t
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for t in $(seq 1 50); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
}

stop_ns() {
    local ns=$1 pid
    if pid=$(keeper_pid "$ns"); then
        # Guests first, through their libvirtd, so QEMU is not just killed under it.
        local dom
        for dom in $(nsenter -t "$pid" -m -n -- timeout 20 virsh -c qemu:///system list --name 2>/dev/null); do
            nsenter -t "$pid" -m -n -- timeout 20 virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
        done
    fi
    kill_netns_pids "$ns"
    ip netns del "$ns" 2>/dev/null || true
}

cmd_down() {
    mkdir -p "$BASE"
    exec 9>"$BASE/.${PREFIX}.lock"
    # A stale bed must not block its removal: wait a while for a running `up`, then go on.
    flock -w 30 9 || log "lock $BASE/.${PREFIX}.lock is busy; removing anyway"
    exec 9>&-
    local ns
    for ns in $(our_namespaces); do
        stop_ns "$ns"
        log "$ns removed"
    done
    # Interfaces left by a half-built run (deleting the namespace deletes its veth end,
    # which deletes the pair; a pair whose netns was never set up may remain).
    local ifc
    for ifc in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 \
        | grep -E "^${IFP}-(h[0-9]+|ctl)\$" || true); do
        ip link del "$ifc" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    # Host directories: the bind mounts lived only in the keepers' mount namespaces, which
    # are gone with their processes, so removing them does not reach the machine's libvirt.
    local d
    for d in "$BASE/${PREFIX}"-h* "$BASE/${PREFIX}-ctl"; do
        [ -e "$d" ] || continue
        if grep -qs " $d/" /proc/self/mounts; then
            die "$d still has mounts in this namespace; not removing"
        fi
        rm -rf -- "$d"
    done
    rm -f "$BASE/.${PREFIX}.lock"
    rmdir "$BASE" 2>/dev/null || true
}

cmd_status() {
    local ns pid any=
    for ns in $(our_namespaces); do
        any=1
        local addr
        addr=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' || true)
        if [[ $ns == *-ctl ]]; then
            echo "$ns addr=${addr:-none} (network only)"
        elif pid=$(keeper_pid "$ns"); then
            local doms
            doms=$(nsenter -t "$pid" -m -n -- timeout 10 virsh -c qemu:///system list --all --name 2>/dev/null \
                | grep -c . || true)
            echo "$ns addr=${addr:-none} keeper=$pid domains=$doms"
        else
            echo "$ns addr=${addr:-none} keeper=DOWN"
        fi
    done
    [ -n "$any" ] || echo "no hosts with prefix $PREFIX"
}

case "${1:-}" in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
exec)
    shift
    [ $# -ge 2 ] || die "usage: exec NAME CMD…"
    name=$1
    shift
    if [[ $name == *-ctl ]]; then
        exec ip netns exec "$name" "$@"
    fi
    pid=$(keeper_pid "$name") || die "$name is not up"
    exec nsenter -t "$pid" -m -n -- "$@"
    ;;
pid)
    [ $# -eq 2 ] || die "usage: pid NAME"
    keeper_pid "$2" || die "$2 is not up"
    ;;
*) die "usage: hosts.sh up N [--ctl] | down | status | exec NAME CMD… | pid NAME" ;;
esac
