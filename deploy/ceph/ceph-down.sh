#!/usr/bin/env bash
# ceph-down.sh DIR — stop the cluster started by ceph-up.sh DIR (OSD, then mon) and remove DIR.
# Safe when nothing runs or DIR does not exist. Destroy domains with open RBD disks first
# (otherwise `virsh destroy` hangs ~12 s on the dead cluster).
set -euo pipefail
me=ceph-down
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

[ "$(id -u)" -eq 0 ] || die "must run as root"
set_dir "$@"
if [ -d "$DIR" ]; then
    exec 9<"$DIR"
    flock -w 120 9 || die "timed out waiting for the lock on $DIR"
fi
# Daemons are found by their command line (-c DIR/ceph.conf), so this also works
# when DIR is already gone or its pid files are missing.
stop_cluster || die "could not stop the daemons of $DIR"
rm -rf "$DIR"
