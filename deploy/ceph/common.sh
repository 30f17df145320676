# Shared helpers for ceph-up.sh / ceph-down.sh. Sourced, not executed.
# Expects: $DIR (absolute path of the cluster directory), $me (script name for messages).

CEPH_TIMEOUT=${CEPH_TIMEOUT:-15}   # seconds, per ceph/rados/rbd call

die() {
    echo "$me: $*" >&2
    exit 1
}

# Normalise and validate the directory argument; sets DIR.
set_dir() {
    [ $# -eq 1 ] && [ -n "$1" ] || die "usage: $me DIR"
    case "$1" in /*) DIR=$1 ;; *) DIR=$PWD/$1 ;; esac
    DIR=${DIR%/}
    # Values go unquoted into DIR/env and ceph.conf: keep the path simple.
    [[ "$DIR" =~ ^/[A-Za-z0-9_./+-]+$ ]] || die "DIR must be a path of [A-Za-z0-9_./+-] characters: '$1'"
    [ "$DIR" != / ] || die "refusing DIR=/"
}

# True if PID is a live process (not a zombie: the daemons are re-parented to PID 1,
# which may reap them late, so kill -0 is not enough).
pid_alive() {
    local line st
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    st=${line##*) }
    st=${st%% *}
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# PIDs of live ceph daemons of type $1 (ceph-mon / ceph-osd) started with DIR's conf.
daemon_pids() {
    local p cmd comm
    for p in /proc/[0-9]*; do
        read -r comm 2>/dev/null <"$p/comm" || continue
        [ "$comm" = "$1" ] || continue
        cmd=$(tr "\\0" " " 2>/dev/null <"$p/cmdline") || continue
        case " $cmd " in *" $DIR/ceph.conf "*) ;; *) continue ;; esac
        pid_alive "${p#/proc/}" && echo "${p#/proc/}"
    done
}

# Stop the live daemons of type $1: SIGTERM, wait up to $2 s, then SIGKILL, wait 5 s.
stop_daemons() {
    local kind=$1 grace=$2 pids p i
    pids=$(daemon_pids "$kind")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < grace * 20; i++)); do
        pids=$(for p in $pids; do pid_alive "$p" && echo "$p"; done)
        [ -z "$pids" ] && return 0
        sleep 0.05
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pids=$(for p in $pids; do pid_alive "$p" && echo "$p"; done)
        [ -z "$pids" ] && return 0
        sleep 0.05
    done
    echo "$me: $kind (pid $pids) did not die" >&2
    return 1
}

stop_cluster() {
    # OSD first: stopping both together takes twice as long (the OSD retries the dead mon).
    stop_daemons ceph-osd 10 && stop_daemons ceph-mon 10
}
