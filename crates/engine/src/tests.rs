//! State-machine tests of the engine against the in-memory hypervisor.

use std::sync::Arc;
use std::time::Duration;

use super::fake::{FakeHypervisor, HoldGuard, CAPACITY};
use super::journal::Journal;
use super::model::{MigrationRequest, Options, Phase};
use super::{Engine, EngineConfig, Error};
use crate::hypervisor::DiskSource;

/// Fast polls and a short libvirt grace, for tests.
pub(super) fn config() -> EngineConfig {
    EngineConfig {
        node_id: "n1".into(),
        max_concurrent: 2,
        poll_interval: Duration::from_millis(5),
        progress_interval: Duration::from_millis(1),
        libvirt_grace: Duration::from_millis(100),
        synchronized_hold: Duration::ZERO,
        max_watchers: 64,
        retention: Default::default(),
    }
}

async fn engine(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(hv, Journal::open(dir).expect("journal"), config())
        .await
        .expect("engine")
}

pub(super) fn request(id: &str) -> MigrationRequest {
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

pub(super) async fn collect(mut sub: super::Subscription) -> Vec<super::model::Event> {
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
    assert!(st.jobs.is_empty());
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
    {
        let st = hv.lock();
        assert_eq!(
            st.live.get("vda"),
            Some(&DiskSource::File {
                path: "/p/a/root.qcow2".into()
            })
        );
        assert!(st.jobs.is_empty());
        assert!(!st
            .volumes
            .contains_key(&("b".to_string(), "root.qcow2".to_string())));
    }
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
        while hv.lock().jobs.is_empty() {
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

pub(super) fn source() -> DiskSource {
    DiskSource::File {
        path: "/p/a/root.qcow2".into(),
    }
}

#[tokio::test]
async fn a_cancel_raced_against_the_pivot_is_honoured_or_refused_never_ignored() {
    let mut outcomes = (0, 0);
    for round in 0..20u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Arc::new(FakeHypervisor::new());
        hv.lock().step = CAPACITY / 4;
        let engine = engine(hv.clone(), dir.path()).await;
        let mut sub = engine.migrate(request("")).await.expect("start");
        let id = sub.migration_id().to_string();
        let mut canceller = None;
        let mut events = Vec::new();
        while let Some(e) = sub.next().await {
            if e.phase == Phase::Copying && canceller.is_none() {
                // The copy converges in about four 5 ms polls: spread the
                // cancels from well before the pivot decision to after it.
                let (engine, id) = (engine.clone(), id.clone());
                canceller = Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(round * 2000)).await;
                    engine.cancel(&id).await
                }));
            }
            events.push(e);
        }
        let answer = canceller
            .expect("cancel was sent")
            .await
            .expect("cancel task");
        let last = events.last().expect("terminal").clone();
        let on_source = hv.lock().live.get("vda") == Some(&source());
        match answer {
            Ok(_) => {
                assert_eq!(last.phase, Phase::Cancelled, "round {round}: {last:?}");
                assert!(on_source, "round {round}");
                outcomes.0 += 1;
            }
            Err(Error::WrongPhase { reason, .. }) => {
                assert!(
                    reason.contains("pivot has begun") || reason.contains("already ended"),
                    "{reason}"
                );
                assert_eq!(last.phase, Phase::Completed, "round {round}: {last:?}");
                assert!(!on_source, "round {round}");
                outcomes.1 += 1;
            }
            Err(e) => panic!("round {round}: unexpected answer {e}"),
        }
    }
    println!(
        "cancel against pivot: {} honoured, {} refused",
        outcomes.0, outcomes.1
    );
}

#[tokio::test]
async fn set_bandwidth_keeps_the_request_so_a_retry_attaches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1 << 10;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("retry-me")).await.expect("start");
    let id = sub.migration_id().to_string();
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying && !hv.lock().jobs.is_empty() {
            break;
        }
    }
    // The copy runs: the change is made to it in place.
    engine
        .set_bandwidth(&id, 8 << 20)
        .await
        .expect("set bandwidth");
    assert_eq!(
        hv.lock().jobs.get("vda").map(|j| j.1.bandwidth),
        Some(8 << 20)
    );
    assert_eq!(hv.lock().speeds, vec![("vda".to_string(), 8 << 20)]);
    assert_eq!(engine.get(&id).expect("record").bandwidth, 8 << 20);
    assert!(matches!(
        engine.set_bandwidth(&id, 5).await,
        Err(Error::InvalidArgument { .. })
    ));
    let again = engine.migrate(request("retry-me")).await.expect("attach");
    assert_eq!(again.migration_id(), id);
    engine.cancel(&id).await.expect("cancel");
    assert_eq!(
        collect(again).await.last().map(|e| e.phase),
        Some(Phase::Cancelled)
    );
}

/// Reads events until COPYING is announced, then until `held` is parked.
async fn until_copying_is_announced(sub: &mut super::Subscription, held: &HoldGuard) {
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying {
            break;
        }
    }
    held.reached().await;
}

#[tokio::test]
async fn set_bandwidth_on_the_copying_event_is_issued_with_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    // The last call before the copy is issued.
    let held = hv.hold("rbd_object_size");
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    let id = sub.migration_id().to_string();
    until_copying_is_announced(&mut sub, &held).await;
    assert!(hv.lock().copies.is_empty(), "the copy is held back");
    engine
        .set_bandwidth(&id, 16 << 20)
        .await
        .expect("accepted from the COPYING event on");
    drop(held);
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
    let st = hv.lock();
    let issued: Vec<u64> = st.copies.iter().map(|c| c.1.bandwidth).collect();
    assert_eq!(
        issued,
        vec![16 << 20],
        "the copy is issued at the new bandwidth"
    );
    assert!(st.speeds.is_empty(), "{:?}", st.speeds);
    assert_eq!(engine.get(&id).expect("record").bandwidth, 16 << 20);
}

#[tokio::test]
async fn set_bandwidth_while_the_copy_is_issued_reaches_the_running_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    // The copy is being issued with the bandwidth read before the change.
    let held = hv.hold("block_copy");
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    let id = sub.migration_id().to_string();
    until_copying_is_announced(&mut sub, &held).await;
    engine
        .set_bandwidth(&id, 16 << 20)
        .await
        .expect("accepted from the COPYING event on");
    drop(held);
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
    let st = hv.lock();
    let issued: Vec<u64> = st.copies.iter().map(|c| c.1.bandwidth).collect();
    assert_eq!(issued, vec![0]);
    assert_eq!(st.speeds, vec![("vda".to_string(), 16 << 20)]);
    assert_eq!(engine.get(&id).expect("record").bandwidth, 16 << 20);
}

#[tokio::test]
async fn a_destination_name_is_reserved_and_an_existing_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    {
        let mut st = hv.lock();
        let vdb = DiskSource::File {
            path: "/p/a/data.raw".into(),
        };
        st.live.insert("vdb".into(), vdb.clone());
        st.persistent.insert("vdb".into(), vdb);
        let mut data = st.volumes[&("a".to_string(), "root.qcow2".to_string())].clone();
        data.name = "data.raw".into();
        data.path = "/p/a/data.raw".into();
        data.key = data.path.clone();
        st.volumes.insert(("a".into(), "data.raw".into()), data);
    }
    let engine = engine(hv.clone(), dir.path()).await;
    let mut first = request("");
    first.destination_volume = Some("shared-name".into());
    let first = engine.migrate(first).await.expect("first");
    let mut second = request("");
    second.disk = "vdb".into();
    second.destination_volume = Some("shared-name".into());
    match engine.migrate(second).await {
        Err(Error::DestinationReserved { migration_id, .. }) => {
            assert_eq!(migration_id, first.migration_id())
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("two migrations got one destination name"),
    }
    let mut existing = request("");
    existing.disk = "vdb".into();
    existing.destination_volume = Some("other.qcow2".into());
    assert!(matches!(
        engine.migrate(existing).await,
        Err(Error::DestinationExists { .. })
    ));
    engine.cancel(first.migration_id()).await.expect("cancel");
    collect(first).await;
    let st = hv.lock();
    assert!(st
        .volumes
        .contains_key(&("b".to_string(), "other.qcow2".to_string())));
    assert!(st.deleted.iter().all(|(_, name, _)| name == "shared-name"));
}

#[tokio::test]
async fn a_volume_that_took_the_destination_name_is_never_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    let id = sub.migration_id().to_string();
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying && !hv.lock().jobs.is_empty() {
            break;
        }
    }
    // Someone replaces the destination file under the same name.
    let replacement_ino = {
        let mut st = hv.lock();
        let key = ("b".to_string(), "root.qcow2".to_string());
        let mut vol = st.volumes[&key].clone();
        // Same inode number (file systems reuse it), another birth time.
        vol.file_id = vol.file_id.map(|f| crate::hypervisor::FileId {
            born_ns: Some(u64::MAX),
            ..f
        });
        st.volumes.insert(key, vol.clone());
        vol.file_id
    };
    engine.cancel(&id).await.expect("cancel");
    let last = collect(sub).await.pop().expect("terminal");
    assert_eq!(last.phase, Phase::Cancelled);
    let state = last.failure.expect("failure").disk_state;
    assert!(state.contains("not the one volmig created"), "{state}");
    let st = hv.lock();
    let kept = &st.volumes[&("b".to_string(), "root.qcow2".to_string())];
    assert_eq!(kept.file_id, replacement_ino);
    assert!(st.deleted.is_empty());
}

async fn completed(engine: &Engine, req: MigrationRequest) -> super::model::MigrationResult {
    collect(engine.migrate(req).await.expect("start"))
        .await
        .pop()
        .and_then(|e| e.result)
        .expect("completed")
}

#[tokio::test]
async fn a_source_in_use_elsewhere_is_kept_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().other_users.push((
        "/p/a/root.qcow2".into(),
        crate::hypervisor::VolumeUser::Backing {
            pool: "a".into(),
            volume: "overlay.qcow2".into(),
        },
    ));
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = request("");
    req.options.delete_source = true;
    let result = completed(&engine, req).await;
    assert!(!result.source_deleted);
    let reason = result.source_kept_reason.expect("reason");
    assert!(reason.contains("a/overlay.qcow2"), "{reason}");
    assert!(hv
        .lock()
        .volumes
        .contains_key(&("a".to_string(), "root.qcow2".to_string())));

    // With a user only another host knows of (the controller's finding).
    let hv = Arc::new(FakeHypervisor::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = super::tests::engine(hv.clone(), dir.path()).await;
    let mut req = request("");
    req.options.delete_source = true;
    req.options.source_users_elsewhere =
        vec!["node n2: domain 'x' uses it as source of vda".into()];
    let result = completed(&engine, req).await;
    assert!(!result.source_deleted);
    assert!(result
        .source_kept_reason
        .is_some_and(|r| r.contains("node n2")));

    // Nothing else uses it: deleted.
    let hv = Arc::new(FakeHypervisor::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = super::tests::engine(hv.clone(), dir.path()).await;
    let mut req = request("");
    req.options.delete_source = true;
    let result = completed(&engine, req).await;
    assert!(result.source_deleted && result.source_kept_reason.is_none());
    assert!(!hv
        .lock()
        .volumes
        .contains_key(&("a".to_string(), "root.qcow2".to_string())));
}

#[tokio::test]
async fn finished_records_are_pruned_beyond_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let mut config = EngineConfig {
        poll_interval: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    config.retention.max_records = 2;
    let engine = Engine::start(
        hv.clone(),
        Journal::open(dir.path()).expect("journal"),
        config,
    )
    .await
    .expect("engine");
    for (i, pool) in ["b", "a", "b"].iter().enumerate() {
        let mut req = request(&format!("r{i}"));
        req.destination_pool = pool.to_string();
        req.destination_volume = Some(format!("v{i}.qcow2"));
        let last = collect(engine.migrate(req).await.expect("start")).await;
        assert_eq!(last.last().map(|e| e.phase), Some(Phase::Completed));
    }
    assert_eq!(engine.list(&Default::default()).len(), 2);
    let files = std::fs::read_dir(dir.path().join("migrations"))
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert_eq!(files, 2);
}

#[tokio::test]
async fn a_copy_stopped_by_a_full_destination_is_resource_exhausted_and_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying && !hv.lock().jobs.is_empty() {
            break;
        }
    }
    {
        // QEMU fails the mirror on ENOSPC: the job is gone, the pool is full.
        let mut st = hv.lock();
        st.jobs.clear();
        if let Some(b) = st.pools.iter_mut().find(|p| p.name == "b") {
            b.available = 4096;
        }
    }
    let last = collect(sub).await.pop().expect("terminal");
    assert_eq!(last.phase, Phase::Failed);
    let failure = last.failure.expect("failure");
    assert_eq!(failure.code, super::model::ErrorCode::ResourceExhausted);
    assert!(
        failure.message.contains("ran out of space"),
        "{}",
        failure.message
    );
    assert!(failure.disk_state.contains("stays on its source"));
    assert!(!hv
        .lock()
        .volumes
        .contains_key(&("b".to_string(), "root.qcow2".to_string())));
}
