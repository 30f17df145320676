//! State-machine tests of the engine against the in-memory hypervisor.

use std::sync::Arc;
use std::time::Duration;

use super::fake::{FakeHypervisor, CAPACITY};
use super::journal::Journal;
use super::model::{MigrationRequest, Options, Phase};
use super::{Engine, EngineConfig, Error};
use crate::hypervisor::DiskSource;

async fn engine(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(
        hv,
        Journal::open(dir).expect("journal"),
        EngineConfig {
            node_id: "n1".into(),
            max_concurrent: 2,
            poll_interval: Duration::from_millis(5),
            progress_interval: Duration::from_millis(1),
            libvirt_grace: Duration::from_millis(100),
            synchronized_hold: Duration::ZERO,
            retention: Default::default(),
        },
    )
    .await
    .expect("engine")
}

fn request(id: &str) -> MigrationRequest {
    MigrationRequest {
        request_id: id.into(),
        domain: "g".into(),
        disk: "vda".into(),
        destination_pool: "b".into(),
        destination_volume: None,
        destination_format: None,
        options: Options::default(),
    }
}

async fn collect(mut sub: super::Subscription) -> Vec<super::model::Event> {
    let mut events = Vec::new();
    while let Some(e) = sub.next().await {
        events.push(e);
    }
    events
}

#[tokio::test]
async fn happy_path_goes_through_every_phase_and_ends_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate(request("r1")).await.expect("start")).await;
    let phases: Vec<Phase> = events.iter().map(|e| e.phase).collect();
    let mut distinct = phases.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        vec![
            Phase::Accepted,
            Phase::Validating,
            Phase::PreparingDestination,
            Phase::Copying,
            Phase::Synchronized,
            Phase::Pivoting,
            Phase::Verifying,
            Phase::CleaningUp,
            Phase::Completed
        ]
    );
    assert_eq!(phases.iter().filter(|p| p.is_terminal()).count(), 1);
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("result");
    let dest = DiskSource::File {
        path: "/p/b/root.qcow2".into(),
    };
    assert_eq!(result.destination, dest);
    assert!(!result.persistent_repaired);
    let st = hv.lock();
    assert_eq!(st.live.get("vda"), Some(&dest));
    assert_eq!(st.persistent.get("vda"), Some(&dest));
    assert!(st.job.is_none());
}

#[tokio::test]
async fn repairs_a_persistent_definition_libvirt_left_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().skip_persistent_update = true;
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate(request("")).await.expect("start")).await;
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("completed");
    assert!(result.persistent_repaired);
    assert_eq!(hv.lock().persistent.get("vda"), Some(&result.destination));
}

#[tokio::test]
async fn cancel_during_copy_leaves_guest_on_source_and_deletes_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    let id = sub.migration_id().to_string();
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying {
            engine.cancel(&id).await.expect("cancel");
            break;
        }
    }
    let events = collect(sub).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Cancelled);
    let failure = last.failure.as_ref().expect("failure");
    assert!(
        failure.disk_state.contains("stays on its source"),
        "{}",
        failure.disk_state
    );
    let st = hv.lock();
    assert_eq!(
        st.live.get("vda"),
        Some(&DiskSource::File {
            path: "/p/a/root.qcow2".into()
        })
    );
    assert!(st.job.is_none());
    assert!(!st
        .volumes
        .contains_key(&("b".to_string(), "root.qcow2".to_string())));
    drop(st);
    assert!(matches!(
        engine.cancel(&id).await,
        Err(Error::WrongPhase { .. })
    ));
}

#[tokio::test]
async fn guest_stopping_mid_copy_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying {
            hv.lock().running = false;
            break;
        }
    }
    let events = collect(sub).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed);
    assert_eq!(
        last.failure.as_ref().map(|f| f.code),
        Some(super::model::ErrorCode::FailedPrecondition)
    );
    assert!(!hv
        .lock()
        .volumes
        .contains_key(&("b".to_string(), "root.qcow2".to_string())));
}

#[tokio::test]
async fn same_request_id_attaches_and_a_second_disk_migration_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let engine = engine(hv.clone(), dir.path()).await;
    let first = engine.migrate(request("same")).await.expect("start");
    let again = engine.migrate(request("same")).await.expect("attach");
    assert_eq!(first.migration_id(), again.migration_id());
    let mut changed = request("same");
    changed.destination_pool = "a".into();
    assert!(matches!(
        engine.migrate(changed).await,
        Err(Error::RequestIdReused(_))
    ));
    assert!(matches!(
        engine.migrate(request("other")).await,
        Err(Error::AlreadyMigrating { .. })
    ));
    engine.cancel(first.migration_id()).await.expect("cancel");
    assert_eq!(
        collect(first).await.last().map(|e| e.phase),
        Some(Phase::Cancelled)
    );
}

#[tokio::test]
async fn validation_errors_carry_the_contract_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = request("");
    req.domain = "nope".into();
    assert!(matches!(
        engine.migrate(req).await,
        Err(Error::DomainNotFound(_))
    ));
    let mut req = request("");
    req.disk = "vdz".into();
    assert!(matches!(
        engine.migrate(req).await,
        Err(Error::DiskNotFound { .. })
    ));
    let mut req = request("");
    req.destination_pool = "a".into();
    assert!(matches!(
        engine.migrate(req).await,
        Err(Error::Precondition(_))
    ));
    let mut req = request("");
    req.destination_pool = "zz".into();
    assert!(matches!(
        engine.migrate(req).await,
        Err(Error::PoolNotFound(_))
    ));
    let mut req = request("");
    req.destination_volume = Some("../../etc/passwd".into());
    assert!(matches!(
        engine.migrate(req).await,
        Err(Error::InvalidArgument { .. })
    ));
    hv.lock().running = false;
    assert!(matches!(
        engine.migrate(request("")).await,
        Err(Error::Precondition(_))
    ));
}

#[test]
fn a_restarted_engine_resumes_a_running_copy_from_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    // The first runtime is the node process: dropping it kills its tasks mid-copy.
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let id = first.block_on(async {
        let engine = engine(hv.clone(), dir.path()).await;
        let mut sub = engine.migrate(request("")).await.expect("start");
        while let Some(e) = sub.next().await {
            if e.phase == Phase::Copying {
                break;
            }
        }
        // COPYING is journaled before the block job starts; kill only once it runs,
        // or recovery rightly rolls back instead of resuming.
        while hv.lock().job.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sub.migration_id().to_string()
    });
    first.shutdown_background();
    hv.lock().step = CAPACITY;
    let second = tokio::runtime::Runtime::new().expect("runtime");
    let events = second.block_on(async {
        let restarted = engine(hv.clone(), dir.path()).await;
        collect(restarted.watch(&id).expect("watch")).await
    });
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Completed));
    assert_eq!(hv.lock().pivots, 1);
}
