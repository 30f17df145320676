//! Destination and source volumes: reservations, names taken, users elsewhere, space, retention.

use std::sync::Arc;
use std::time::Duration;

use super::{collect, engine, request};
use crate::fake::FakeHypervisor;
use crate::hypervisor::DiskSource;
use crate::journal::Journal;
use crate::model::{MigrationRequest, Phase};
use crate::{Engine, EngineConfig, Error};

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

async fn completed(engine: &Engine, req: MigrationRequest) -> crate::model::MigrationResult {
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
    let engine = super::engine(hv.clone(), dir.path()).await;
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
    let engine = super::engine(hv.clone(), dir.path()).await;
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
    assert_eq!(failure.code, crate::model::ErrorCode::ResourceExhausted);
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
