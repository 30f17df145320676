//! Offline moves of a stopped guest's disk: a running guest moved live all the
//! same, the happy path, a guest started during the copy, cancel, a
//! multi-disk request, and a node restart.

use std::sync::Arc;
use std::time::Duration;

use super::{collect, engine, group_of, request, source};
use crate::error::Error;
use crate::fake::FakeHypervisor;
use crate::model::{ErrorCode, MigrationRequest, Phase};

fn stopped() -> Arc<FakeHypervisor> {
    let hv = Arc::new(FakeHypervisor::new());
    {
        let mut st = hv.lock();
        st.stop_guest();
        st.convert_pause = Duration::from_millis(20);
    }
    hv
}

fn offline(id: &str) -> MigrationRequest {
    let mut req = request(id);
    req.options.offline_if_stopped = true;
    req
}

fn dest_exists(hv: &FakeHypervisor) -> bool {
    hv.lock()
        .volumes
        .contains_key(&("b".to_string(), "root.qcow2".to_string()))
}

#[tokio::test]
async fn a_stopped_guest_is_refused_without_the_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(stopped(), dir.path()).await;
    let err = engine.migrate(request("")).await.err().expect("refused");
    assert!(
        matches!(err, Error::Precondition(ref m) if m.contains("offline_if_stopped")),
        "{err}"
    );
}

#[tokio::test]
async fn a_running_guest_asked_offline_if_stopped_is_moved_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate(offline("")).await.expect("start")).await;
    let last = events.last().expect("events");
    assert_eq!(last.phase, Phase::Completed, "{last:?}");
    let st = hv.lock();
    assert_eq!(st.copies.len(), 1, "a block copy: {:?}", st.copies);
    assert_eq!(st.converted, 0, "no offline convert");
    assert!(st.running);
}

#[tokio::test]
async fn a_stopped_guests_disk_moves_offline_and_its_definition_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = stopped();
    // Long enough for the job to report progress between quarters.
    hv.lock().convert_pause = Duration::from_millis(300);
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = offline("");
    req.options.delete_source = true;
    let events = collect(engine.migrate(req).await.expect("start")).await;
    let phases: Vec<Phase> = events.iter().map(|e| e.phase).collect();
    for p in [
        Phase::Validating,
        Phase::PreparingDestination,
        Phase::Copying,
        Phase::Pivoting,
        Phase::Verifying,
        Phase::CleaningUp,
        Phase::Completed,
    ] {
        assert!(phases.contains(&p), "{p:?} missing from {phases:?}");
    }
    assert!(events
        .iter()
        .any(|e| e.phase == Phase::Copying && e.progress.bytes_done > 0));
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("result");
    assert_eq!(result.destination_pool, "b");
    assert_eq!(result.source_pool, "a");
    assert!(result.source_deleted, "{result:?}");
    let st = hv.lock();
    assert_eq!(st.persistent.get("vda"), Some(&result.destination));
    assert!(!st.running);
    assert_eq!(st.converted, 4);
    assert_eq!(st.pivots, 0, "no block job is involved");
}

/// Runs an offline move of `g`, which is started at the moment `arrange`
/// sets up, and checks that it ended ABORTED in `phase`, left on its source.
async fn started_meanwhile(arrange: impl FnOnce(&mut crate::fake::FakeState), phase: Phase) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = stopped();
    arrange(&mut hv.lock());
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate(offline("")).await.expect("start")).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed, "{last:?}");
    let failure = last.failure.as_ref().expect("failure");
    assert_eq!(failure.code, ErrorCode::Aborted);
    assert_eq!(failure.phase, phase, "{failure:?}");
    assert!(
        failure
            .message
            .contains("was started during its offline move; it stays on its source; move it live"),
        "{failure:?}"
    );
    assert!(!dest_exists(&hv), "the destination is deleted");
    let st = hv.lock();
    assert!(st.running);
    assert_eq!(st.persistent.get("vda"), Some(&source()));
    assert_eq!(st.live.get("vda"), Some(&source()));
}

#[tokio::test]
async fn a_guest_started_during_its_offline_copy_stays_on_its_source() {
    started_meanwhile(|st| st.start_during_convert = true, Phase::Copying).await;
}

#[tokio::test]
async fn a_guest_started_while_its_definition_is_switched_is_switched_back() {
    started_meanwhile(|st| st.start_at_switch = true, Phase::Pivoting).await;
}

#[tokio::test]
async fn cancel_during_an_offline_copy_deletes_the_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = stopped();
    hv.lock().convert_pause = Duration::from_millis(300);
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(offline("")).await.expect("start");
    let id = sub.migration_id().to_string();
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying {
            engine.cancel(&id).await.expect("cancel");
            break;
        }
    }
    let events = collect(sub).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Cancelled, "{last:?}");
    assert!(!dest_exists(&hv));
    assert_eq!(hv.lock().persistent.get("vda"), Some(&source()));
}

#[tokio::test]
async fn a_multi_disk_offline_request_is_refused_for_now() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::with_disks(&["vdb"]));
    hv.lock().stop_guest();
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = group_of("", &["vda", "vdb"]);
    req.options.offline_if_stopped = true;
    let err = engine.migrate_group(req).await.err().expect("refused");
    assert!(
        matches!(err, Error::Precondition(ref m) if m.contains("multi-disk")),
        "{err}"
    );
}

/// Runs an offline move until `until` holds, then drops the "node"; a second
/// engine on the same journal reconciles it.
fn restart_when(
    hv: &Arc<FakeHypervisor>,
    until: impl Fn(&FakeHypervisor) -> bool,
) -> Vec<crate::model::Event> {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let id = first.block_on(async {
        let engine = engine(hv.clone(), dir.path()).await;
        let sub = engine.migrate(offline("")).await.expect("start");
        while !until(hv) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sub.migration_id().to_string()
    });
    first.shutdown_background();
    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let restarted = engine(hv.clone(), dir.path()).await;
        collect(restarted.watch(&id).expect("watch")).await
    })
}

#[test]
fn a_node_restarted_mid_offline_copy_deletes_the_copy() {
    let hv = stopped();
    hv.lock().convert_pause = Duration::from_millis(100);
    let events = restart_when(&hv, |hv| hv.lock().converted >= 1);
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed, "{last:?}");
    assert_eq!(
        last.failure.as_ref().map(|f| f.code),
        Some(ErrorCode::Aborted)
    );
    assert!(!dest_exists(&hv));
    assert_eq!(hv.lock().persistent.get("vda"), Some(&source()));
}

#[test]
fn a_node_restarted_after_the_switch_finishes_the_move() {
    let hv = stopped();
    // The node dies while the switch call has not returned yet.
    hv.lock().switch_pause = Duration::from_secs(2);
    let events = restart_when(&hv, |hv| hv.lock().persistent.get("vda") != Some(&source()));
    hv.lock().switch_pause = Duration::ZERO;
    let phases: Vec<Phase> = events.iter().map(|e| e.phase).collect();
    assert!(
        phases.contains(&Phase::Verifying),
        "the restarted node verifies: {phases:?}"
    );
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Completed, "{last:?}");
    assert!(dest_exists(&hv));
    let result = last.result.clone().expect("result");
    assert_eq!(hv.lock().persistent.get("vda"), Some(&result.destination));
}
