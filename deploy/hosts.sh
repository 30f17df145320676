#!/usr/bin/env bash
# Simulated KVM hosts on one machine (issue #21): each host is a network namespace on a
# bridge plus a mount namespace with its own libvirtd + virtlogd, domains, pools and state.
#
#   bash deploy/hosts.sh up N [--ctl]   # hosts PREFIX-h1..hN (+ PREFIX-ctl, network only);
#                                       #   the bed is then exactly N hosts: hosts above N
#                                       #   left by an earlier `up` are stopped (guests
#                                       #   destroyed) and removed with their directories
#                                       #   (a running controller lists their node down
#                                       #   once its heartbeats stop)
#   bash deploy/hosts.sh up N --ctls K [--etcd]
#                                       # K controller namespaces PREFIX-ctl, PREFIX-ctl2 …
#                                       #   PREFIX-ctlK (1 ≤ K ≤ 7; --ctl is --ctls 1; extra
#                                       #   ones above K are removed); --etcd: namespace
#                                       #   PREFIX-etcd for an etcd the caller starts there
#                                       #   (tests/multi_host_ha.rs does). Network only.
#   bash deploy/hosts.sh down           # removes every host of PREFIX, half-built ones too
#   bash deploy/hosts.sh status
#   bash deploy/hosts.sh exec NAME CMD… # runs CMD inside host NAME (its mount + net ns)
#   bash deploy/hosts.sh pid NAME       # the PID whose namespaces are NAME's
#   bash deploy/hosts.sh up N --volmig [--bin PATH]
#                                       # + a throw-away PKI, `volmig controller` in PREFIX-ctl
#                                       #   (one controller, file store, whatever --ctls says)
#                                       #   and `volmig node` in every host, all mutual TLS
#   bash deploy/hosts.sh cli CMD…       # CMD in PREFIX-ctl as the operator (VOLMIG_CA, _CERT,
#                                       #   _KEY, VOLMIG_CONTROLLER set): `cli volmig nodes`
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
# PREFIX-ctl = SUBNET.2, PREFIX-ctlK = SUBNET.(1+K), PREFIX-etcd = SUBNET.9. Host i's
# keeper process (`unshare -m -u` inside the netns, PID in BASE/NAME/pid) holds a UTS
# namespace whose host name is NAME and a mount namespace where BASE/NAME/{lib,etc,log,cache} are bind-mounted
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
# Controller namespace k (1-based): the first is ctl_ns, the others PREFIX-ctl2 …
ctl_ns_k() { if [ "$1" = 1 ]; then ctl_ns; else echo "${PREFIX}-ctl$1"; fi; }
ctl_addr_k() { echo "${SUBNET}.$((1 + $1))"; }
MAX_CTLS=7
etcd_ns() { echo "${PREFIX}-etcd"; }
etcd_addr() { echo "${SUBNET}.9"; }
# Names of network-only namespaces (controllers, etcd): no keeper, no mount namespace.
is_net_only() { [[ $1 =~ -(ctl[0-9]*|etcd)$ ]]; }

ns_exists() { [ -e "/run/netns/$1" ]; }

# Every namespace of this prefix that exists now, hosts and controller.
our_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' \
        | grep -E "^${PREFIX//./\\.}-(h[0-9]+|ctl[0-9]*|etcd)\$" || true
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
    nsenter -t "$pid" -m -n -u -- "$@"
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
    setsid ip netns exec "$name" unshare -m -u --propagation private -- sh -c '
        set -e
        dir=$1
        hostname "$2"
        mount -t tmpfs -o mode=0755 tmpfs /run/libvirt
        mount --bind "$dir/lib" /var/lib/libvirt
        mount --bind "$dir/etc" /etc/libvirt
        mount --bind "$dir/log" /var/log/libvirt
        mount --bind "$dir/cache" /var/cache/libvirt
        virtlogd -d -p /run/libvirt/virtlogd.pid
        libvirtd -d -p /run/libvirt/libvirtd.pid
        echo $$ > "$dir/pid"
        exec sleep infinity
    ' keeper "$dir" "$name" </dev/null >"$dir/keeper.log" 2>&1 9>&- &
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

# Removes the directory of a stopped host or namespace (its bind mounts lived only in its
# keeper's mount namespace, gone with its processes).
remove_ns_dir() {
    local d="$BASE/$1"
    [ -e "$d" ] || return 0
    if grep -qs " $d/" /proc/self/mounts; then
        die "$d still has mounts in this namespace; not removing"
    fi
    rm -rf -- "$d"
}

# `up N` makes the bed exactly N hosts: hosts numbered above N (from an earlier, larger
# `up`) are stopped like `down` stops them and removed, directories included.
trim_hosts() {
    local n=$1 ns i
    for ns in $(our_namespaces); do
        [[ $ns =~ -h([0-9]+)$ ]] || continue
        i=${BASH_REMATCH[1]}
        [ "$i" -gt "$n" ] || continue
        stop_ns "$ns"
        remove_ns_dir "$ns"
        log "$ns removed (the bed is $n hosts now)"
    done
}

# Controller namespaces above K (from an earlier `up … --ctls` with more) are removed.
trim_ctls() {
    local k=$1 ns j
    for ns in $(our_namespaces); do
        [[ $ns =~ -ctl([0-9]+)$ ]] || continue
        j=${BASH_REMATCH[1]}
        [ "$j" -gt "$k" ] || continue
        stop_ns "$ns"
        remove_ns_dir "$ns"
        log "$ns removed ($k controller namespaces now)"
    done
}

# cmd_up N CTLS ETCD: N hosts, CTLS controller namespaces (0: leave them as they are),
# ETCD=1: the etcd namespace too.
cmd_up() {
    local n=${1:-} ctls=${2:-0} etcd=${3:-}
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] \
        || die "usage: up N [--ctl | --ctls K] [--etcd]"
    [[ $ctls =~ ^[0-9]+$ ]] && [ "$ctls" -le $MAX_CTLS ] || die "--ctls K: 1 ≤ K ≤ $MAX_CTLS"
    mkdir -p "$BASE"
    exec 9>"$BASE/.${PREFIX}.lock"
    flock -w 60 9 || die "another up/down of $PREFIX holds $BASE/.${PREFIX}.lock"
    ensure_bridge
    trim_hosts "$n"
    local i
    for i in $(seq 1 "$n"); do
        start_host "$i"
    done
    if [ "$ctls" -ge 1 ]; then
        trim_ctls "$ctls"
        for i in $(seq 1 "$ctls"); do
            ensure_netns "$(ctl_ns_k "$i")" "$(ctl_addr_k "$i")" "${IFP}-$(ctl_ns_k "$i" | sed 's/.*-//')"
            log "$(ctl_ns_k "$i") up: $(ctl_addr_k "$i")"
        done
    fi
    if [ -n "$etcd" ]; then
        ensure_netns "$(etcd_ns)" "$(etcd_addr)" "${IFP}-etcd"
        log "$(etcd_ns) up: $(etcd_addr)"
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
        for dom in $(nsenter -t "$pid" -m -n -u -- timeout 20 virsh -c qemu:///system list --name 2>/dev/null); do
            nsenter -t "$pid" -m -n -u -- timeout 20 virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
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
        | grep -E "^${IFP}-(h[0-9]+|ctl[0-9]*|etcd)\$" || true); do
        ip link del "$ifc" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    # Host directories: the bind mounts lived only in the keepers' mount namespaces, which
    # are gone with their processes, so removing them does not reach the machine's libvirt.
    local d
    for d in "$BASE/${PREFIX}"-h* "$BASE/${PREFIX}"-ctl* "$BASE/${PREFIX}-etcd"; do
        [ -e "$d" ] || continue
        remove_ns_dir "$(basename "$d")"
    done
    volmig_down
    rm -f "$BASE/.${PREFIX}.lock"
    rmdir "$BASE" 2>/dev/null || true
}

cmd_status() {
    local ns pid any=
    for ns in $(our_namespaces); do
        any=1
        local addr
        addr=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' || true)
        if is_net_only "$ns"; then
            echo "$ns addr=${addr:-none} (network only)"
        elif pid=$(keeper_pid "$ns"); then
            local doms
            doms=$(nsenter -t "$pid" -m -n -u -- timeout 10 virsh -c qemu:///system list --all --name 2>/dev/null \
                | grep -c . || true)
            echo "$ns addr=${addr:-none} keeper=$pid domains=$doms"
        else
            echo "$ns addr=${addr:-none} keeper=DOWN"
        fi
    done
    [ -n "$any" ] || echo "no hosts with prefix $PREFIX"
}

# ---- volmig on the bed (`up N --volmig`, `cli`) -------------------------------------------
# A throw-away PKI, a controller in the controller namespace and a node in every host, set
# up as tests/multi_host.rs does: mutual TLS everywhere, each node's certificate names its
# address (SAN IP) and a SPIFFE URI the controller binds to its node id; the controller's
# names its address and controller.volmig.test; the operator's is operator.volmig.test.

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKI="$BASE/pki"
CTL_PORT=7450
NODE_PORT=7451
CTL_DNS=controller.volmig.test
OP_DNS=operator.volmig.test

node_uri() { echo "spiffe://volmig.test/node/$1"; }
ctl_dir() { echo "$BASE/$(ctl_ns)"; }
ctl_url() { echo "https://$(ctl_addr):${CTL_PORT}"; }

# The volmig binary: --bin, else the repository's debug build, else its release build.
volmig_bin() {
    local bin=${1:-} b
    if [ -z "$bin" ]; then
        for b in "$TOP/target/debug/volmig" "$TOP/target/release/volmig"; do
            if [ -x "$b" ]; then
                bin=$b
                break
            fi
        done
        [ -n "$bin" ] || die "no volmig binary in $TOP/target/{debug,release}: build it with cargo build (or give --bin PATH)"
    fi
    [ -f "$bin" ] && [ -x "$bin" ] || die "--bin $bin: not an executable file"
    # Absolute: the node runs in a host's mount namespace, the path must not depend on a cwd.
    readlink -f -- "$bin"
}

ensure_openssl() {
    command -v openssl >/dev/null && return 0
    log "installing openssl (needed for the bed's certificates)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >/dev/null 2>&1 || die "apt-get update failed"
    apt-get install -y --no-install-recommends openssl >/dev/null 2>&1 || die "apt-get install openssl failed"
    command -v openssl >/dev/null || die "openssl is missing after install"
}

# Leaf $1 (file stem) with subjectAltName $2, signed by the bed's CA. Reused when it exists,
# still verifies and names the same SANs (a second `up` does not re-key running services).
pki_leaf() {
    local stem=$1 san=$2
    if [ -s "$PKI/$stem.pem" ] && [ -s "$PKI/$stem-key.pem" ] && [ "$(cat "$PKI/$stem.san" 2>/dev/null)" = "$san" ] \
        && openssl verify -CAfile "$PKI/ca.pem" "$PKI/$stem.pem" >/dev/null 2>&1; then
        return 0
    fi
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$PKI/$stem-key.pem" -out "$PKI/$stem.csr" -subj "/CN=$stem" 2>/dev/null \
        || die "openssl: cannot make the key of $stem"
    openssl x509 -req -in "$PKI/$stem.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca-key.pem" \
        -CAcreateserial -days 30 -out "$PKI/$stem.pem" -extfile <(printf '%s\n' \
            "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$san") 2>/dev/null \
        || die "openssl: cannot sign the certificate of $stem"
    rm -f "$PKI/$stem.csr"
    echo "$san" >"$PKI/$stem.san"
    # volmig refuses keys others can read and certificates others can write.
    chmod 0600 "$PKI/$stem-key.pem"
    chmod 0644 "$PKI/$stem.pem"
}

make_pki() {
    local n=$1 i name
    ensure_openssl
    mkdir -p "$PKI"
    chmod 0755 "$PKI"
    (
        umask 077
        if ! [ -s "$PKI/ca.pem" ] || ! [ -s "$PKI/ca-key.pem" ]; then
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
                -keyout "$PKI/ca-key.pem" -out "$PKI/ca.pem" -subj "/CN=volmig hosts.sh CA ($PREFIX)" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null \
                || die "openssl: cannot make the CA"
            chmod 0644 "$PKI/ca.pem"
        fi
        pki_leaf controller "DNS:$CTL_DNS,IP:$(ctl_addr)"
        pki_leaf operator "DNS:$OP_DNS"
        for i in $(seq 1 "$n"); do
            name=$(host_ns "$i")
            pki_leaf "$name" "IP:$(host_addr "$i"),URI:$(node_uri "$name")"
        done
    )
}

tls_toml() {
    printf 'tls_ca = "%s"\ntls_cert = "%s"\ntls_key = "%s"\n' "$PKI/ca.pem" "$PKI/$1.pem" "$PKI/$1-key.pem"
}

write_configs() {
    local n=$1 i name dir cfg
    mkdir -p "$(ctl_dir)/state"
    cfg="$(ctl_dir)/controller.toml"
    {
        echo "# Written by deploy/hosts.sh up --volmig; rewritten at every up."
        echo "listen = \"$(ctl_addr):${CTL_PORT}\""
        echo "state_dir = \"$(ctl_dir)/state\""
        echo "advertise_allow = [\"${SUBNET}.0/24\"]"
        tls_toml controller
        printf '\n[[identities]]\ndns = "%s"\nrole = "operator"\n' "$OP_DNS"
        for i in $(seq 1 "$n"); do
            name=$(host_ns "$i")
            printf '\n[[identities]]\nuri = "%s"\nrole = "node"\nnode_id = "%s"\n' "$(node_uri "$name")" "$name"
        done
    } >"$cfg"
    for i in $(seq 1 "$n"); do
        name=$(host_ns "$i")
        dir="$BASE/$name/volmig"
        mkdir -p "$dir/state"
        {
            echo "# Written by deploy/hosts.sh up --volmig; rewritten at every up."
            echo "node_id = \"$name\""
            echo "listen = \"$(host_addr "$i"):${NODE_PORT}\""
            echo "advertise = \"https://$(host_addr "$i"):${NODE_PORT}\""
            echo "controller = \"$(ctl_url)\""
            echo "state_dir = \"$dir/state\""
            tls_toml "$name"
            # The controller calls the node; the operator may also call it directly.
            printf '\n[[identities]]\ndns = "%s"\nrole = "operator"\n' "$CTL_DNS"
            printf '\n[[identities]]\ndns = "%s"\nrole = "operator"\n' "$OP_DNS"
        } >"$dir/node.toml"
    done
}

# PID of the volmig service whose pid file is $1, if it still runs in network namespace $2.
volmig_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(stat -Lc %i "/proc/$pid/ns/net" 2>/dev/null)" = "$(stat -Lc %i "/run/netns/$2" 2>/dev/null)" ] \
        || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'volmig' || return 1
    echo "$pid"
}

# Starts `BIN ARGS…` in the background in namespace $1 (a host: its keeper's mount + net
# namespaces; the controller: its netns), logging to $2, its PID in $3; nothing if it runs.
start_volmig() {
    local ns=$1 logf=$2 pidf=$3 pid
    shift 3
    if pid=$(volmig_pid "$pidf" "$ns"); then
        log "$ns: volmig $1 is running (pid $pid)"
        return 0
    fi
    local enter
    if is_net_only "$ns"; then
        enter=(ip netns exec "$ns")
    else
        pid=$(keeper_pid "$ns") || die "$ns is not up"
        enter=(nsenter -t "$pid" -m -n -u --)
    fi
    echo "--- $(date -u +%FT%TZ) hosts.sh starts volmig $*" >>"$logf"
    # setsid: not stopped with this shell's terminal; 9>&-: must not hold up's lock.
    RUST_LOG=${RUST_LOG:-info} setsid "${enter[@]}" "$VOLMIG_BIN" "$@" </dev/null >>"$logf" 2>&1 9>&- &
    echo $! >"$pidf"
    log "$ns: volmig $1 started (pid $!, log $logf)"
}

# Runs CMD… in the controller namespace as the operator: the CLI reads its TLS client
# material and the controller from the environment (VOLMIG_CA/CERT/KEY, VOLMIG_CONTROLLER).
cli_run() {
    ip netns exec "$(ctl_ns)" env RUST_LOG="${RUST_LOG:-warn}" VOLMIG_CONTROLLER="$(ctl_url)" \
        VOLMIG_CA="$PKI/ca.pem" VOLMIG_CERT="$PKI/operator.pem" VOLMIG_KEY="$PKI/operator-key.pem" \
        PATH="$(ctl_dir)/bin:$PATH" "$@"
}

volmig_up() {
    local n=$1 bin=$2 i name dir
    VOLMIG_BIN=$(volmig_bin "$bin")
    make_pki "$n"
    write_configs "$n"
    # `cli` finds this bed's binary as `volmig` on its PATH.
    mkdir -p "$(ctl_dir)/bin"
    ln -sfn "$VOLMIG_BIN" "$(ctl_dir)/bin/volmig"
    start_volmig "$(ctl_ns)" "$(ctl_dir)/volmig.log" "$(ctl_dir)/volmig.pid" \
        controller --config "$(ctl_dir)/controller.toml"
    for i in $(seq 1 "$n"); do
        name=$(host_ns "$i")
        dir="$BASE/$name"
        start_volmig "$name" "$dir/volmig.log" "$dir/volmig.pid" node --config "$dir/volmig/node.toml"
    done
    # Registered = every node listed UP by the controller.
    local t=0 out missing
    while :; do
        out=$(cli_run volmig nodes 2>&1 || true)
        missing=
        for i in $(seq 1 "$n"); do
            name=$(host_ns "$i")
            # The table's columns: NODE STATE ENDPOINT …
            awk -v n="$name" '$1 == n && $2 == "up" {ok = 1} END {exit !ok}' <<<"$out" \
                || missing="$missing $name"
        done
        [ -n "$missing" ] || break
        t=$((t + 1))
        if [ $t -gt 120 ]; then
            log "not registered after 60 s:$missing; the controller says:"
            echo "$out" >&2
            log "last lines of $(ctl_dir)/volmig.log:"
            tail -n 15 "$(ctl_dir)/volmig.log" >&2 || true
            for name in $missing; do
                log "last lines of $BASE/$name/volmig.log:"
                tail -n 15 "$BASE/$name/volmig.log" >&2 || true
            done
            exit 1
        fi
        sleep 0.5
    done
    local me="bash ${BASH_SOURCE[0]}"
    cat <<ZZEOF

volmig is up: controller $(ctl_url) in $(ctl_ns); nodes $(host_ns 1)..$(host_ns "$n") registered
(binary $VOLMIG_BIN).

$out

Next:
  $me cli volmig nodes          # the operator CLI, in $(ctl_ns), with the operator's certificate
  $me cli volmig pools
  $me exec $(host_ns 1) virsh pool-list --all    # a host's own libvirtd
  $me cli volmig plan --domain DOMAIN --disk vda
  $me cli volmig migrate --domain DOMAIN --disk vda --to-pool POOL
  $me cli volmig list
  $me cli volmig disks --node https://$(host_addr 1):${NODE_PORT} --domain DOMAIN   # one node, directly
  $me status
  $me down                      # stops volmig, guests and libvirtd; removes all of it
Logs:         $(ctl_dir)/volmig.log, $BASE/$(host_ns 1)/volmig.log, …
Configs:      $(ctl_dir)/controller.toml, $BASE/$(host_ns 1)/volmig/node.toml, …
Certificates: $PKI (valid 30 days)
ZZEOF
}

cmd_cli() {
    [ $# -ge 1 ] || die "usage: cli CMD… (e.g. cli volmig nodes)"
    ns_exists "$(ctl_ns)" || die "$(ctl_ns) is not up: run up N --volmig first"
    [ -s "$PKI/operator.pem" ] || die "no operator certificate in $PKI: run up N --volmig first"
    [ -e "$(ctl_dir)/bin/volmig" ] || die "no volmig binary recorded: run up N --volmig first"
    cli_run "$@"
}

volmig_status() {
    local pidf ns pid
    for pidf in "$BASE/${PREFIX}"-h*/volmig.pid "$(ctl_dir)/volmig.pid"; do
        [ -e "$pidf" ] || continue
        ns=$(basename "$(dirname "$pidf")")
        if pid=$(volmig_pid "$pidf" "$ns"); then
            echo "$ns volmig=$pid log=$(dirname "$pidf")/volmig.log"
        else
            echo "$ns volmig=DOWN log=$(dirname "$pidf")/volmig.log"
        fi
    done
}

# What `down` removes besides the host directories: the bed's PKI. (The volmig processes
# die with the other processes of their namespaces, their files with the host directories.)
volmig_down() {
    rm -rf -- "$PKI"
}

case "${1:-}" in
up)
    shift
    n=${1:-}
    [ $# -eq 0 ] || shift
    ctls=0 etcd= volmig= bin=
    while [ $# -gt 0 ]; do
        case $1 in
        --ctl) ctls=1 ;;
        --ctls)
            [ $# -ge 2 ] || die "--ctls needs a count K"
            ctls=$2
            shift
            ;;
        --etcd) etcd=1 ;;
        --volmig) volmig=1 ;;
        --bin)
            [ $# -ge 2 ] || die "--bin needs a PATH"
            bin=$2
            shift
            ;;
        *) die "usage: up N [--ctl | --ctls K] [--etcd] [--volmig [--bin PATH]] (unknown: $1)" ;;
        esac
        shift
    done
    [ -z "$bin" ] || [ -n "$volmig" ] || die "--bin goes with --volmig"
    # A missing binary fails before anything is built.
    [ -z "$volmig" ] || volmig_bin "$bin" >/dev/null
    # volmig needs the (first) controller namespace.
    [ -z "$volmig" ] || [ "$ctls" != 0 ] || ctls=1
    cmd_up "$n" "$ctls" "$etcd"
    [ -z "$volmig" ] || volmig_up "$n" "$bin"
    ;;
cli) shift; cmd_cli "$@" ;;
down) cmd_down ;;
status) cmd_status; volmig_status ;;
exec)
    shift
    [ $# -ge 2 ] || die "usage: exec NAME CMD…"
    name=$1
    shift
    if is_net_only "$name"; then
        exec ip netns exec "$name" "$@"
    fi
    pid=$(keeper_pid "$name") || die "$name is not up"
    exec nsenter -t "$pid" -m -n -u -- "$@"
    ;;
pid)
    [ $# -eq 2 ] || die "usage: pid NAME"
    keeper_pid "$2" || die "$2 is not up"
    ;;
*) die "usage: hosts.sh up N [--ctl | --ctls K] [--etcd] [--volmig [--bin PATH]] | down | status | exec NAME CMD… | pid NAME | cli CMD…" ;;
esac
