//! End-to-end: CancelMigration against a real writing guest whose migrating disk
//! (`vda`) holds 64 MiB of data, so the cancel lands while real bytes are moving.
//! A cancelled migration leaves the guest on its source (live and persistent
//! XML), no block job and no destination volume, and after a cold restart the
//! guest's records and its pre-written data are intact. A cancel that races the
//! pivot is either honoured or refused, never accepted and then ignored.

mod harness;

use harness::checks::{assert_on_destination, assert_rolled_back};
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_copying_keeps_the_guest_and_its_data_on_the_source() {
    let src = DirPool::new("c-copy-src");
    let dst = DirPool::new("c-copy-dst");
    let guest = writing_guest_with_data("c-copy", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    let node = NodeProcess::start("c-copy", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 8 * MIB))
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_until(&mut stream, node::mid_copy).await;
    let id = seen[0].migration_id.clone();
    client
        .cancel_migration(proto::CancelMigrationRequest {
            migration_id: id.clone(),
        })
        .await
        .expect("cancel");
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Cancelled);
    let error = node::error_of(&rest);
    assert_eq!(error.code, tonic::Code::Cancelled as i32, "{error:?}");
    assert_eq!(error.phase, proto::Phase::Copying as i32, "{error:?}");
    assert!(
        error.disk_state.contains("stays on its source"),
        "{error:?}"
    );
    assert_rolled_back(&guest, "vda", &dst, &src_path);
    // A second cancel is refused with the reason.
    let again = client
        .cancel_migration(proto::CancelMigrationRequest { migration_id: id })
        .await
        .expect_err("already ended");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    guest.verify_data_after_cold_restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_synchronized_keeps_the_guest_and_its_data_on_the_source() {
    let src = DirPool::new("c-sync-src");
    let dst = DirPool::new("c-sync-dst");
    let guest = writing_guest_with_data("c-sync", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    // Hold SYNCHRONIZED long enough to cancel there, with the guest writing.
    let node = NodeProcess::start("c-sync", &["--synchronized-hold-ms", "20000"]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 16 * MIB))
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_to_phase(&mut stream, proto::Phase::Synchronized).await;
    let id = seen[0].migration_id.clone();
    // Writes made while synchronized go to both disks; after the cancel they must be
    // on the source.
    let synced_at = guest.last_ack();
    guest.wait_for_ack(synced_at + 20, node::STREAM_TIMEOUT);
    client
        .cancel_migration(proto::CancelMigrationRequest { migration_id: id })
        .await
        .expect("cancel");
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Cancelled);
    let error = node::error_of(&rest);
    assert_eq!(error.phase, proto::Phase::Synchronized as i32, "{error:?}");
    assert_rolled_back(&guest, "vda", &dst, &src_path);
    guest.verify_data_after_cold_restart();
}

/// One round of the race: migrate `vda` to `to`, cancel the moment SYNCHRONIZED is seen,
/// and check that the outcome matches what CancelMigration answered.
async fn cancel_at_synchronized(
    client: &mut volmig::proto::node_client::NodeClient<tonic::transport::Channel>,
    guest: &harness::Guest,
    to: &DirPool,
    round: u32,
) -> &'static str {
    let src_path = guest.live_disk_source("vda").path;
    let mut stream = client
        .migrate_volume(node::request(guest.name(), "vda", to.name()))
        .await
        .expect("start")
        .into_inner();
    let mut events = node::read_until(&mut stream, |e| {
        node::phase(e) == proto::Phase::Synchronized || node::is_terminal(e)
    })
    .await;
    let id = events[0].migration_id.clone();
    let cancel = client
        .cancel_migration(proto::CancelMigrationRequest {
            migration_id: id.clone(),
        })
        .await;
    events.extend(node::collect(stream).await.expect("stream"));
    let terminal = events.last().map(node::phase);
    match cancel {
        Ok(_) => {
            assert_eq!(
                terminal,
                Some(proto::Phase::Cancelled),
                "round {round}: CancelMigration returned OK, so the migration must end CANCELLED \
                 with the guest on its source, but it ended {terminal:?}: {events:#?}"
            );
            assert_rolled_back(guest, "vda", to, &src_path);
            "cancelled"
        }
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::FailedPrecondition,
                "round {round}: {status:?}"
            );
            let message = status.message().to_lowercase();
            // Refused because the pivot has begun, or (if the migration was faster than
            // the cancel) because it had already ended.
            assert!(
                message.contains("pivot") || message.contains("ended"),
                "round {round}: the refusal must say the pivot has begun: {}",
                status.message()
            );
            assert_eq!(
                terminal,
                Some(proto::Phase::Completed),
                "round {round}: CancelMigration was refused ({}), so the migration must \
                 complete: {events:#?}",
                status.message()
            );
            assert_on_destination(guest, "vda", &node::result_of(&events));
            "refused, completed"
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_raced_against_the_pivot_is_never_ignored() {
    // One fresh destination pool per round, so that after a rollback the destination
    // pool must be empty again (a completed round keeps its source volume behind).
    let pools: Vec<DirPool> = (0..4)
        .map(|i| DirPool::new(&format!("c-race-{i}")))
        .collect();
    let guest = writing_guest_with_data("c-race", &pools[0], "qcow2");
    // No hold: the pivot follows SYNCHRONIZED at once, which is the race.
    let node = NodeProcess::start("c-race", &[]);
    let mut client = node.client().await;
    let mut outcomes = Vec::new();
    for round in 1..=3u32 {
        let to = &pools[round as usize];
        let outcome = cancel_at_synchronized(&mut client, &guest, to, round).await;
        eprintln!("round {round}: {outcome}");
        outcomes.push(outcome);
        guest.verify_records("vda");
        guest.verify_prewritten("vda");
    }
    eprintln!("outcomes: {outcomes:?}");
    guest.verify_data_after_cold_restart();
}
