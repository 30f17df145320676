//! Where a disk must be once a migration has ended, checked against libvirt itself:
//! the live and the persistent definition, block jobs, and the destination pool.
//! The data on the disk is checked by [`Guest::verify_data`] and friends.

use volmig::proto;

use super::guest::Guest;
use super::pools::{volume_names, Pool};
use super::{virsh, virsh_ok};

/// No block job is left on the running guest's `disk`.
pub fn assert_no_block_job(guest: &Guest, disk: &str) {
    let info = virsh_ok(&["blockjob", guest.name(), disk, "--info"]);
    assert!(
        info.contains("No current block job"),
        "a block job is left on {disk} of {}: {info}",
        guest.name()
    );
    let live = guest.live_disk_source(disk);
    assert!(!live.mirror, "the live XML still shows a mirror: {live:?}");
}

/// The volumes libvirt sees in `pool` after a refresh (so that files created behind its
/// cache's back count too).
pub fn volumes_in(pool: &dyn Pool) -> Vec<String> {
    if let Err(e) = virsh(&["pool-refresh", pool.name()]) {
        panic!("refreshing pool {}: {e}", pool.name());
    }
    volume_names(pool.name()).unwrap_or_else(|e| panic!("{e}"))
}

/// A rolled-back migration: the running guest's `disk` is on `src_path` in both the live
/// and the persistent definition, no block job is left, and `dst` holds no volume (the
/// node deleted what it created; the test's pools hold nothing else).
pub fn assert_rolled_back(guest: &Guest, disk: &str, dst: &dyn Pool, src_path: &str) {
    assert_no_block_job(guest, disk);
    let left = volumes_in(dst);
    assert!(left.is_empty(), "stray volumes in {}: {left:?}", dst.name());
    let live = guest.live_disk_source(disk);
    assert_eq!(live.path, src_path, "live XML: {live:?}");
    let persistent = guest.persistent_disk_source(disk);
    assert_eq!(persistent.path, src_path, "persistent XML: {persistent:?}");
}

/// A completed migration: the running guest's `disk` is on the result's destination in
/// both the live and the persistent definition and no block job is left.
pub fn assert_on_destination(guest: &Guest, disk: &str, result: &proto::MigrationResult) {
    assert_no_block_job(guest, disk);
    let live = guest.live_disk_source(disk);
    assert_eq!(live.path, result.destination_source, "live XML: {live:?}");
    let persistent = guest.persistent_disk_source(disk);
    assert_eq!(
        persistent.path, result.destination_source,
        "persistent XML: {persistent:?}"
    );
}
