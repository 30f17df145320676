#!/usr/bin/env bash
# ceph-up.sh DIR — a one-mon, one-OSD Ceph cluster on 127.0.0.1 with everything under DIR.
# Creates RADOS pool "volmig" (rbd) and cephx user client.libvirt, writes DIR/env.
# Idempotent: a healthy cluster in DIR is left alone; stale state (dead daemons) is wiped.
# Quiet on success; on failure prints the reason and the tail of the relevant log.
set -euo pipefail
me=ceph-up
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

POOL=volmig
CLIENT=libvirt
MON_ID=a
MON_PORT=6789
MON2_PORT=3300
OSD_SIZE=${CEPH_OSD_SIZE:-10G}   # sparse bluestore file
PG_NUM=16

[ "$(id -u)" -eq 0 ] || die "must run as root"
set_dir "$@"
CONF=$DIR/ceph.conf
ADMIN_KEYRING=$DIR/ceph.client.admin.keyring
CLIENT_KEYRING=$DIR/ceph.client.$CLIENT.keyring
SETUP_LOG=$DIR/log/setup.log

fail() {  # fail MESSAGE [LOG...]: message plus the tail of the given logs and the setup log
    local msg=$1 f
    shift
    echo "$me: $msg" >&2
    for f in "$@" "$SETUP_LOG"; do
        [ -s "$f" ] || continue
        echo "$me: --- last lines of $f ---" >&2
        # A crashing daemon appends a long event dump and stack traces: leave those out.
        awk '/begin dump of recent events/ {exit}
             /^ *[0-9]+: / || /^ *$/ || /NOTE: a copy of the executable/ {next}
             {print}' "$f" | tail -n 15 >&2
    done
    # Don't leave half a cluster holding the ports; DIR stays for the logs.
    stop_cluster >/dev/null 2>&1 || true
    exit 1
}

# Bounded ceph/rados/rbd calls (a dead mon or OSD otherwise hangs them forever).
T=$CEPH_TIMEOUT
cephc() { timeout $((T + 5)) ceph -c "$CONF" --connect-timeout "$T" "$@"; }
radosc() {
    timeout $((T + 5)) rados -c "$CONF" --client-mount-timeout "$T" \
        --rados-osd-op-timeout "$T" --rados-mon-op-timeout "$T" "$@"
}
rbdc() {
    timeout $((T + 5)) rbd -c "$CONF" --client-mount-timeout "$T" \
        --rados-osd-op-timeout "$T" --rados-mon-op-timeout "$T" "$@"
}

# Readiness: a real write and read-back in the pool (ceph -s says little without a mgr).
probe() {
    local want got
    want="probe $$ $RANDOM"
    printf '%s' "$want" >"$DIR/run/probe.in"
    radosc -p "$POOL" put volmig-probe "$DIR/run/probe.in" &&
        radosc -p "$POOL" get volmig-probe "$DIR/run/probe.out" &&
        got=$(cat "$DIR/run/probe.out") && [ "$got" = "$want" ]
}

# ---- packages -------------------------------------------------------------------------
pkgs=(ceph-mon ceph-osd ceph-common librbd1)
missing_pkgs() {
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
}
missing_pkgs
if [ ${#missing[@]} -gt 0 ]; then
    # Parallel tests each start this script on a fresh machine: one installs while
    # the others wait, then find nothing missing (apt's own lock fails at once).
    exec 8>/var/lock/volmig-ceph-apt.lock
    flock -w 1200 8 || die "timed out waiting for another run's package install"
    missing_pkgs
fi
if [ ${#missing[@]} -gt 0 ]; then
    aptlog=$(mktemp /tmp/ceph-up-apt.XXXXXX.log)
    export DEBIAN_FRONTEND=noninteractive
    { timeout 300 apt-get update && timeout 900 apt-get install -y --no-install-recommends "${missing[@]}"; } \
        >"$aptlog" 2>&1 || { echo "$me: installing ${missing[*]} failed:" >&2; tail -n 25 "$aptlog" >&2; exit 1; }
    rm -f "$aptlog"
fi
exec 8>&-

# ---- lock DIR (parallel callers, e.g. tests, share one cluster) -------------------------
for _ in 1 2 3 4 5; do
    mkdir -p "$DIR"
    exec 9<"$DIR"
    flock -w 300 9 || die "timed out waiting for the lock on $DIR"
    # ceph-down may have removed DIR while we waited: lock the new one then.
    [ -d "$DIR" ] && [ "$(stat -L -c %d:%i "$DIR")" = "$(stat -L -c %d:%i /proc/self/fd/9)" ] && break
    exec 9<&-
done

# ---- already up and healthy? ------------------------------------------------------------
mon_pids=$(daemon_pids ceph-mon)
osd_pids=$(daemon_pids ceph-osd)
if [ -s "$DIR/env" ] && [ -n "$mon_pids" ] && [ -n "$osd_pids" ]; then
    # Both daemons live: retry before concluding it is broken (others may be using it).
    T=10
    for _ in 1 2 3; do
        probe >/dev/null 2>&1 && exit 0
        sleep 1
    done
    T=$CEPH_TIMEOUT
fi

# ---- stale or partial state: wipe -------------------------------------------------------
stop_cluster || die "could not stop the old daemons in $DIR"
find "$DIR" -mindepth 1 -delete 2>/dev/null || rm -rf "${DIR:?}"/* "${DIR:?}"/.[!.]* 2>/dev/null || true
[ -z "$(ls -A "$DIR")" ] || die "could not empty $DIR"

# ---- another cluster on our ports? --------------------------------------------------------
listeners=$(ss -Hltnp "( sport = :$MON_PORT or sport = :$MON2_PORT )" 2>/dev/null || true)
if [ -n "$listeners" ]; then
    echo "$me: ports $MON2_PORT/$MON_PORT are already in use by a process that is not the cluster in $DIR" >&2
    echo "$me: (another Ceph cluster? stop it first, e.g. with ceph-down.sh on its directory)" >&2
    echo "$listeners" >&2
    for pid in $(grep -o 'pid=[0-9]*' <<<"$listeners" | cut -d= -f2 | sort -u); do
        echo "$me: pid $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null)" >&2
    done
    rmdir "$DIR" 2>/dev/null || true
    exit 1
fi

# ---- config and keys ----------------------------------------------------------------------
mkdir -p "$DIR"/{log,run,mon,osd,crash}
: >"$SETUP_LOG"
exec 3>>"$SETUP_LOG"
fsid=$(cat /proc/sys/kernel/random/uuid)
cat >"$CONF" <<CONF
[global]
fsid = $fsid
mon initial members = $MON_ID
mon host = [v2:127.0.0.1:$MON2_PORT,v1:127.0.0.1:$MON_PORT]
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $ADMIN_KEYRING
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
osd crush chooseleaf type = 0
mon data avail crit = 1
mon data avail warn = 2
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$cluster-\$name.asok
log file = $DIR/log/\$cluster-\$name.log
mon cluster log file = $DIR/log/\$cluster.log
crash dir = $DIR/crash
log to stderr = false
err to stderr = false

[mon]
mon data = $DIR/mon/\$cluster-\$id
keyring = $DIR/mon/\$cluster-\$id/keyring
paxos propose interval = 0.1

[osd]
osd data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $OSD_SIZE
bluestore fsck on mount = false
bluestore fsck on mkfs = false
bluestore fsck on umount = false
osd memory target = 1073741824
osd op num shards = 1
bdev aio poll ms = 20

[client]
admin socket =
log file =
CONF

ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >&3 2>&1 ||
    fail "ceph-authtool (mon key) failed"
ceph-authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >&3 2>&1 ||
    fail "ceph-authtool (admin key) failed"
ceph-authtool "$DIR/mon.keyring" --import-keyring "$ADMIN_KEYRING" >&3 2>&1 ||
    fail "ceph-authtool (import) failed"
monmaptool --create --fsid "$fsid" \
    --addv "$MON_ID" "[v2:127.0.0.1:$MON2_PORT,v1:127.0.0.1:$MON_PORT]" "$DIR/monmap" >&3 2>&1 ||
    fail "monmaptool failed"

# ---- mon ----------------------------------------------------------------------------------
MON_LOG=$DIR/log/ceph-mon.$MON_ID.log
timeout 60 ceph-mon -c "$CONF" --mkfs -i "$MON_ID" --monmap "$DIR/monmap" \
    --keyring "$DIR/mon.keyring" >&3 2>&1 || fail "ceph-mon --mkfs failed" "$MON_LOG"
timeout 60 ceph-mon -c "$CONF" -i "$MON_ID" 9<&- 3>&- >>"$SETUP_LOG" 2>&1 || fail "ceph-mon did not start" "$MON_LOG"
ok=
for ((i = 0; i < 60; i++)); do
    [ -n "$(daemon_pids ceph-mon)" ] || fail "ceph-mon died" "$MON_LOG"
    if cephc mon stat >&3 2>&1; then ok=1; break; fi
    sleep 0.5
done
[ -n "$ok" ] || fail "ceph-mon does not answer" "$MON_LOG"

# ---- osd ----------------------------------------------------------------------------------
OSD_LOG=$DIR/log/ceph-osd.0.log
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
osd_id=$(cephc osd new "$osd_uuid" 2>&3) || fail "ceph osd new failed" "$MON_LOG"
[ "$osd_id" = 0 ] || fail "expected osd id 0, got '$osd_id'"
mkdir -p "$DIR/osd/ceph-0"
timeout 120 ceph-osd -c "$CONF" -i 0 --mkfs --mkkey --no-mon-config --osd-uuid "$osd_uuid" >&3 2>&1 ||
    fail "ceph-osd --mkfs failed" "$OSD_LOG"
cephc auth add osd.0 osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
    -i "$DIR/osd/ceph-0/keyring" >&3 2>&1 || fail "ceph auth add osd.0 failed" "$MON_LOG"
timeout 60 ceph-osd -c "$CONF" -i 0 9<&- 3>&- >>"$SETUP_LOG" 2>&1 || fail "ceph-osd did not start" "$OSD_LOG"
ok=
for ((i = 0; i < 120; i++)); do
    [ -n "$(daemon_pids ceph-osd)" ] || fail "ceph-osd died" "$OSD_LOG"
    if [ "$(cephc osd stat -f json 2>&3 | sed -n 's/.*"num_up_osds":\([0-9]*\).*/\1/p')" = 1 ]; then
        ok=1
        break
    fi
    sleep 0.25
done
[ -n "$ok" ] || fail "osd.0 did not come up" "$OSD_LOG" "$MON_LOG"

# ---- pool, client, readiness --------------------------------------------------------------
cephc osd pool create "$POOL" "$PG_NUM" "$PG_NUM" replicated >&3 2>&1 || fail "pool create failed" "$MON_LOG"
cephc osd pool application enable "$POOL" rbd >&3 2>&1 || fail "pool application enable failed" "$MON_LOG"
ok=
for ((i = 0; i < 120; i++)); do
    [ -n "$(daemon_pids ceph-osd)" ] || fail "ceph-osd died" "$OSD_LOG"
    [ -n "$(daemon_pids ceph-mon)" ] || fail "ceph-mon died" "$MON_LOG"
    T=5
    if probe >&3 2>&1; then ok=1; break; fi
    sleep 0.25
done
T=$CEPH_TIMEOUT
[ -n "$ok" ] || fail "pool $POOL does not accept writes (rados put/get)" "$OSD_LOG" "$MON_LOG"
rbdc pool init "$POOL" >&3 2>&1 || fail "rbd pool init failed" "$OSD_LOG"

cephc auth get-or-create "client.$CLIENT" mon 'profile rbd' osd "profile rbd pool=$POOL" \
    -o "$CLIENT_KEYRING" >&3 2>&1 || fail "creating client.$CLIENT failed" "$MON_LOG"
key=$(cephc auth get-key "client.$CLIENT" 2>&3) || fail "ceph auth get-key failed" "$MON_LOG"
[ -n "$key" ] || fail "empty key for client.$CLIENT"
printf '%s' "$key" >"$DIR/client.$CLIENT.key"
chmod 600 "$DIR/client.$CLIENT.key" "$CLIENT_KEYRING" "$ADMIN_KEYRING"
# The client's caps work for RBD: list images as client.libvirt.
rbdc --id "$CLIENT" --keyring "$CLIENT_KEYRING" ls "$POOL" >&3 2>&1 ||
    fail "client.$CLIENT cannot use pool $POOL"

cat >"$DIR/env.tmp" <<ENV
CEPH_CONF=$CONF
CEPH_MON_HOST=127.0.0.1
CEPH_MON_PORT=$MON_PORT
CEPH_POOL=$POOL
CEPH_CLIENT=$CLIENT
CEPH_CLIENT_KEY=$key
CEPH_CLIENT_KEYRING=$CLIENT_KEYRING
CEPH_ADMIN_KEYRING=$ADMIN_KEYRING
ENV
mv "$DIR/env.tmp" "$DIR/env"
