//! End-to-end: `volmig node` live-migrates a writing guest's disk between real
//! libvirt pools (dir, disk-on-loop, Ceph RBD), and the guest loses nothing.
//!
//! Each test proves the result three ways: the terminal event, libvirt's live
//! and persistent XML, and the guest's own records after a cold restart from
//! the persistent definition.

mod harness;

use std::time::Duration;

use harness::checks::assert_on_destination;
use harness::node::{self, NodeProcess};
use harness::{DirPool, DiskPool, Guest, Pool, RbdPool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);
const WRITES: Duration = Duration::from_secs(90);

/// Migrates `target` of `guest` to `dst` through `node` and checks everything a
/// completed migration promises. Returns the terminal result.
async fn migrate_and_prove(
    node: &NodeProcess,
    guest: &Guest,
    target: &str,
    dst: &dyn Pool,
    tweak: impl FnOnce(&mut proto::MigrateVolumeRequest),
) -> proto::MigrationResult {
    let before = guest.wait_writing(30, BOOT);
    let mut client = node.client().await;
    let mut req = node::request(guest.name(), target, dst.name());
    tweak(&mut req);
    let events = node::migrate(&mut client, req)
        .await
        .unwrap_or_else(|s| panic!("MigrateVolume refused: {s:?}"));
    node::assert_terminal(&events, proto::Phase::Completed);
    let phases = node::phases(&events);
    for p in [
        proto::Phase::Accepted,
        proto::Phase::PreparingDestination,
        proto::Phase::Copying,
        proto::Phase::Synchronized,
        proto::Phase::Pivoting,
        proto::Phase::Verifying,
        proto::Phase::Completed,
    ] {
        assert!(phases.contains(&p), "phase {p:?} missing from {phases:?}");
    }
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.migration_id.clone()).collect();
    assert_eq!(ids.len(), 1, "one migration id end to end");
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("COMPLETED carries a result");

    let live = guest.live_disk_source(target);
    let persistent = guest.persistent_disk_source(target);
    assert_eq!(live.path, result.destination_source, "live XML: {live:?}");
    assert!(!live.mirror, "no block job may be left: {live:?}");
    assert_eq!(
        persistent.path, result.destination_source,
        "persistent XML: {persistent:?}"
    );
    assert!(
        persistent.backing.is_empty(),
        "the destination is flattened: {persistent:?}"
    );

    if target == "vda" {
        // Still writing, now to the destination.
        guest.wait_writing(before + 40, WRITES);
    }
    guest.cold_restart();
    guest.wait_writing(20, BOOT);
    guest.verify_data();
    result
}

fn allocation(pool: &str, volume: &str) -> u64 {
    let info = harness::virsh_ok(&["vol-info", "--bytes", "--pool", pool, volume]);
    info.lines()
        .find(|l| l.starts_with("Allocation:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no allocation in {info}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_to_dir_qcow2_under_writes_loses_no_record() {
    let src = DirPool::new("m-q-src");
    let dst = DirPool::new("m-q-dst");
    let guest = Guest::start("m-qcow2", &src, "qcow2", 64 * MIB);
    let node = NodeProcess::start("m-qcow2", &[]);
    let result = migrate_and_prove(&node, &guest, "vda", &dst, |_| {}).await;
    assert_eq!(result.destination_pool, dst.name());
    assert_eq!(result.destination_format, proto::VolumeFormat::Qcow2 as i32);
    assert_eq!(result.source_pool, src.name());
    assert!(!result.source_deleted);
    // The source is kept by default.
    harness::virsh_ok(&["vol-info", "--pool", src.name(), guest.disk_volume()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_to_dir_raw_stays_sparse_and_can_delete_the_source() {
    let src = DirPool::new("m-r-src");
    let dst = DirPool::new("m-r-dst");
    let guest = Guest::start("m-raw", &src, "raw", 256 * MIB);
    let node = NodeProcess::start("m-raw", &[]);
    let result = migrate_and_prove(&node, &guest, "vda", &dst, |r| {
        r.options = Some(proto::MigrationOptions {
            source_policy: proto::SourcePolicy::Delete as i32,
            verify: proto::VerifyLevel::Strict as i32,
            ..Default::default()
        });
    })
    .await;
    assert_eq!(result.destination_format, proto::VolumeFormat::Raw as i32);
    assert!(result.source_deleted);
    assert!(
        harness::virsh(&["vol-info", "--pool", src.name(), guest.disk_volume()]).is_err(),
        "the source volume must be gone"
    );
    dst.refresh();
    let alloc = allocation(dst.name(), &result.destination_volume);
    // 256 MiB virtual, a few MiB of records: a thick copy would allocate it all.
    assert!(
        alloc < 64 * MIB,
        "destination allocation {alloc} is not sparse"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backing_chain_is_flattened_into_the_destination() {
    let src = DirPool::new("m-chain-src");
    let dst = DirPool::new("m-chain-dst");
    let guest = Guest::builder("m-chain", &src)
        .backing_file(500)
        .disk_bytes(64 * MIB)
        .start();
    assert!(
        !guest.live_disk_source("vda").backing.is_empty(),
        "the source has a backing file"
    );
    let node = NodeProcess::start("m-chain", &[]);
    let result = migrate_and_prove(&node, &guest, "vda", &dst, |_| {}).await;
    let info = harness::run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", &result.destination_source],
    );
    assert!(
        !info.contains("backing-filename"),
        "destination still has a backing file: {info}"
    );
    // Records 1..=500 only ever lived in the template: verify_records saw them on the destination.
    assert!(guest.last_ack() > 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_to_block_and_back_through_a_disk_pool() {
    let src = DirPool::new("m-b-src");
    // A dos label rounds partitions up, so the copy only works through a slice.
    let block = DiskPool::with_label("m-b-blk", 200 * MIB, "dos");
    let back = DirPool::new("m-b-back");
    let guest = Guest::start("m-block", &src, "raw", 64 * MIB);
    let node = NodeProcess::start("m-block", &[]);
    let to_block = migrate_and_prove(&node, &guest, "vda", &block, |_| {}).await;
    assert!(to_block.destination_source.starts_with("/dev/"));
    let live = guest.live_disk_source("vda");
    assert_eq!(live.disk_type, "block");
    // The partition is larger than the disk; QEMU must see exactly the source's size.
    assert!(block.volume_capacity(&to_block.destination_volume) > 64 * MIB);
    assert_eq!(live.slice_size, Some(64 * MIB), "{live:?}");
    let back_result = migrate_and_prove(&node, &guest, "vda", &back, |_| {}).await;
    assert_eq!(guest.live_disk_source("vda").disk_type, "file");
    assert_eq!(back_result.source_pool, block.name());
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_to_rbd_and_back() {
    let src = DirPool::new("m-rbd-src");
    let rbd = RbdPool::new("m-rbd");
    let back = DirPool::new("m-rbd-back");
    let guest = Guest::start("m-rbd", &src, "raw", 64 * MIB);
    let node = NodeProcess::start("m-rbd", &[]);
    let to_rbd = migrate_and_prove(&node, &guest, "vda", &rbd, |r| {
        r.destination_volume = harness::unique_name("m-rbd-img");
    })
    .await;
    let live = guest.live_disk_source("vda");
    assert_eq!(live.disk_type, "network");
    assert_eq!(live.protocol.as_deref(), Some("rbd"));
    let used = rbd
        .env()
        .rbd(&["du", &to_rbd.destination_source])
        .expect("rbd du");
    eprintln!("rbd du after migration: {used}");
    let back_result = migrate_and_prove(&node, &guest, "vda", &back, |r| {
        r.source_policy_delete();
    })
    .await;
    assert_eq!(back_result.source_pool, rbd.name());
    assert!(back_result.source_deleted, "{back_result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn synchronous_writes_converge_under_heavy_guest_writes() {
    let src = DirPool::new("m-sync-src");
    let dst = DirPool::new("m-sync-dst");
    let guest = Guest::builder("m-sync", &src)
        .format("qcow2")
        .pause_ms(0)
        .start();
    let node = NodeProcess::start("m-sync", &[]);
    migrate_and_prove(&node, &guest, "vda", &dst, |r| {
        r.options = Some(proto::MigrationOptions {
            copy_mode: proto::CopyMode::SynchronousWrites as i32,
            ..Default::default()
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_disks_of_one_guest_migrate_concurrently_with_their_data() {
    let src = DirPool::new("m-two-src");
    let dst = DirPool::new("m-two-dst");
    // vda: records plus 64 MiB of its pattern; vdb: 32 MiB of its own pattern.
    let guest = Guest::builder("m-two", &src)
        .format("qcow2")
        .disk_bytes(128 * MIB)
        .prewritten(64 * MIB)
        .data_disk_prewritten(32 * MIB, "qcow2")
        .start();
    guest.wait_writing(20, BOOT);
    let node = NodeProcess::start("m-two", &[]);
    let mut c1 = node.client().await;
    let mut c2 = node.client().await;
    let (a, b) = tokio::join!(
        node::migrate(&mut c1, node::request(guest.name(), "vda", dst.name())),
        node::migrate(&mut c2, node::request(guest.name(), "vdb", dst.name())),
    );
    let (a, b) = (a.expect("vda"), b.expect("vdb"));
    node::assert_terminal(&a, proto::Phase::Completed);
    node::assert_terminal(&b, proto::Phase::Completed);
    for (disk, events) in [("vda", &a), ("vdb", &b)] {
        let result = node::result_of(events);
        assert!(
            result
                .destination_source
                .starts_with(&*dst.path().to_string_lossy()),
            "{disk}: {result:?}"
        );
        assert_on_destination(&guest, disk, &result);
    }
    // vda's records and pattern, and vdb's pattern, read from the destinations.
    guest.verify_data_after_cold_restart();
}

trait RequestExt {
    fn source_policy_delete(&mut self);
}

impl RequestExt for proto::MigrateVolumeRequest {
    fn source_policy_delete(&mut self) {
        self.options
            .get_or_insert_with(Default::default)
            .source_policy = proto::SourcePolicy::Delete as i32;
    }
}
