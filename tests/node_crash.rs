//! End-to-end: the node or the guest dies while a migration of the guest's
//! written disk (`vda`, 64 MiB of data plus the guest's records) is running.
//! Every path ends in one reported terminal state that matches libvirt's live and
//! persistent XML, and after a cold restart the guest's records and its
//! pre-written data are intact wherever the disk ended up.

mod harness;

use std::time::Duration;

use harness::checks::{assert_on_destination, assert_rolled_back, volumes_in};
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn node_killed_mid_copy_finishes_the_migration_after_restart() {
    let src = DirPool::new("k-copy-src");
    let dst = DirPool::new("k-copy-dst");
    let guest = writing_guest_with_data("k-copy", &src, "qcow2");
    let mut node = NodeProcess::start("k-copy", &[]);
    let id = {
        let mut client = node.client().await;
        let mut stream = client
            .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 8 * MIB))
            .await
            .expect("start")
            .into_inner();
        let seen = node::read_until(&mut stream, node::mid_copy).await;
        seen[0].migration_id.clone()
    };
    node.kill9();
    // The copy goes on inside QEMU while the node is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.restart();
    let mut client = node.client().await;
    let events = node::watch_to_end(&mut client, &id).await;
    node::assert_terminal(&events, proto::Phase::Completed);
    let record = client
        .get_migration(proto::GetMigrationRequest { migration_id: id })
        .await
        .expect("get")
        .into_inner();
    let result = record
        .latest
        .and_then(|e| e.result)
        .expect("completed record");
    assert_on_destination(&guest, "vda", &result);
    guest.verify_data_after_cold_restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn node_killed_at_synchronized_ends_completed_or_rolled_back_as_reported() {
    let src = DirPool::new("k-sync-src");
    let dst = DirPool::new("k-sync-dst");
    let guest = writing_guest_with_data("k-sync", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    // A short hold keeps the node in SYNCHRONIZED (mirroring every guest write) when
    // the kill lands; the restarted node holds again before it pivots.
    let mut node = NodeProcess::start("k-sync", &["--synchronized-hold-ms", "3000"]);
    let id = {
        let mut client = node.client().await;
        let mut stream = client
            .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 16 * MIB))
            .await
            .expect("start")
            .into_inner();
        let seen = node::read_to_phase(&mut stream, proto::Phase::Synchronized).await;
        seen[0].migration_id.clone()
    };
    node.kill9();
    let acked_at_kill = guest.last_ack();
    // The guest goes on writing through the mirror while the node is down.
    guest.wait_for_ack(acked_at_kill + 10, BOOT);
    node.restart();
    let mut client = node.client().await;
    let events = node::watch_to_end(&mut client, &id).await;
    let terminal = events.last().map(node::phase);
    eprintln!("after the restart: {:?}", node::phases(&events));
    match terminal {
        Some(proto::Phase::Completed) => {
            let result = node::result_of(&events);
            assert_on_destination(&guest, "vda", &result);
            let vols = volumes_in(&dst);
            assert!(
                vols.contains(&result.destination_volume),
                "{} is not in {}: {vols:?}",
                result.destination_volume,
                dst.name()
            );
        }
        Some(proto::Phase::Failed) => {
            let error = node::error_of(&events);
            assert!(
                error.disk_state.contains("stays on its source"),
                "a failure must say where the disk is: {error:?}"
            );
            assert_rolled_back(&guest, "vda", &dst, &src_path);
        }
        // Nobody cancelled: CANCELLED would misreport what happened.
        other => panic!("expected COMPLETED or a rolled-back FAILED, got {other:?}: {events:#?}"),
    }
    guest.verify_data_after_cold_restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_destroyed_mid_copy_fails_cleanly_and_boots_from_its_source_with_its_data() {
    let src = DirPool::new("k-gone-src");
    let dst = DirPool::new("k-gone-dst");
    let guest = writing_guest_with_data("k-gone", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    let node = NodeProcess::start("k-gone", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 8 * MIB))
        .await
        .expect("start")
        .into_inner();
    node::read_until(&mut stream, node::mid_copy).await;
    guest.destroy();
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Failed);
    let error = node::error_of(&rest);
    assert_eq!(
        error.code,
        tonic::Code::FailedPrecondition as i32,
        "{error:?}"
    );
    let left = volumes_in(&dst);
    assert!(left.is_empty(), "stray volumes: {left:?}");
    assert_eq!(guest.persistent_disk_source("vda").path, src_path);
    // Started again from its persistent definition: on the source, with everything.
    guest.boot();
    guest.wait_writing(10, BOOT);
    assert_rolled_back(&guest, "vda", &dst, &src_path);
    guest.verify_data();
}
