//! Checkpoints over the in-memory hypervisor: refused before anything is
//! created when they cannot be kept, redefined and validated after the pivot
//! when they can, and a bitmap lost in the pivot reported, not hidden.

use std::sync::Arc;

use super::fake::FakeHypervisor;
use super::journal::Journal;
use super::model::{ErrorCode, Phase};
use super::tests::{collect, config, request};
use super::{Engine, Error};
use crate::hypervisor::{Checkpoint, CheckpointDisk, ImageFormat};

async fn engine(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(hv, Journal::open(dir).expect("journal"), config())
        .await
        .expect("engine")
}

fn checkpoint(name: &str, target: &str, dirty: Option<u64>) -> Checkpoint {
    Checkpoint {
        name: name.into(),
        disks: vec![CheckpointDisk {
            target: target.into(),
            bitmap: Some(name.into()),
            dirty_bytes: dirty,
        }],
    }
}

fn with_checkpoints(list: Vec<Checkpoint>) -> Arc<FakeHypervisor> {
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().checkpoints = list;
    hv
}

#[tokio::test]
async fn checkpoints_are_redefined_and_validated_on_the_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = with_checkpoints(vec![
        checkpoint("c1", "vda", Some(65536)),
        checkpoint("c2", "vda", Some(0)),
        checkpoint("other-disk", "vdb", Some(0)),
    ]);
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate(request("r1")).await.expect("start")).await;
    let last = events.last().expect("events");
    assert_eq!(last.phase, Phase::Completed, "{:?}", last.failure);
    assert_eq!(hv.lock().redefined, vec!["c1", "c2"]);
    assert!(
        events
            .iter()
            .any(|e| e.phase == Phase::Verifying && e.message.contains("c1, c2")),
        "no event names the kept checkpoints"
    );
}

#[tokio::test]
async fn a_raw_destination_with_checkpoints_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = with_checkpoints(vec![checkpoint("c1", "vda", Some(0))]);
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = request("r1");
    req.destination_format = Some(ImageFormat::Raw);
    let Err(Error::Precondition(msg)) = engine.migrate(req).await else {
        panic!("a raw destination cannot hold the bitmaps");
    };
    assert!(msg.contains("checkpoint(s) c1"), "{msg}");
    assert!(
        msg.contains("only qcow2 can hold persistent bitmaps"),
        "{msg}"
    );
    assert!(hv.lock().created.is_empty());
    assert!(hv.lock().copies.is_empty());
    // Without checkpoints on that disk, raw is fine.
    hv.lock().checkpoints = vec![checkpoint("c1", "vdb", Some(0))];
    let mut req = request("r2");
    req.destination_format = Some(ImageFormat::Raw);
    let events = collect(engine.migrate(req).await.expect("start")).await;
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Completed));
}

#[tokio::test]
async fn a_checkpoint_already_broken_on_the_source_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = with_checkpoints(vec![
        checkpoint("good", "vda", Some(0)),
        checkpoint("stale", "vda", None),
    ]);
    let engine = engine(hv.clone(), dir.path()).await;
    let Err(Error::Precondition(msg)) = engine.migrate(request("r1")).await else {
        panic!("a broken checkpoint cannot be carried");
    };
    assert!(msg.contains("stale") && !msg.contains("good"), "{msg}");
    assert!(hv.lock().created.is_empty());
}

#[tokio::test]
async fn a_bitmap_lost_in_the_pivot_fails_the_migration_naming_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = with_checkpoints(vec![checkpoint("c1", "vda", Some(0))]);
    hv.lock().pivot_loses_bitmaps = true;
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate(request("r1")).await.expect("start")).await;
    let failure = events
        .last()
        .and_then(|e| e.failure.clone())
        .expect("failed");
    assert_eq!(failure.code, ErrorCode::FailedPrecondition);
    assert_eq!(failure.phase, Phase::Verifying);
    assert!(
        failure.message.contains("checkpoint 'c1' is not usable"),
        "{}",
        failure.message
    );
    // After the pivot there is no going back: the guest stays on the destination.
    assert_eq!(hv.lock().pivots, 1);
    assert!(hv.lock().deleted.is_empty());
}
