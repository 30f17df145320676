//! A migration from start to end: phases, cancel, a guest that stops, restarts, validation.

use std::sync::Arc;
use std::time::Duration;

use super::{collect, engine, request, source};
use crate::fake::{FakeHypervisor, CAPACITY};
use crate::hypervisor::DiskSource;
use crate::model::{ErrorCode, Phase};
use crate::Error;

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
        Some(crate::model::ErrorCode::FailedPrecondition)
    );
    assert!(!hv
        .lock()
        .volumes
        .contains_key(&("b".to_string(), "root.qcow2".to_string())));
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

#[test]
fn a_host_that_lost_power_mid_copy_is_reported_interrupted_and_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let id = first.block_on(async {
        let engine = engine(hv.clone(), dir.path()).await;
        let sub = engine.migrate(request("")).await.expect("start");
        while hv.lock().jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sub.migration_id().to_string()
    });
    first.shutdown_timeout(Duration::from_secs(30));
    // The power cut takes QEMU with it: the guest is shut off and its block
    // job is gone when the node starts again.
    {
        let mut st = hv.lock();
        st.running = false;
        st.jobs.clear();
    }
    let second = tokio::runtime::Runtime::new().expect("runtime");
    let events = second.block_on(async {
        let restarted = engine(hv.clone(), dir.path()).await;
        collect(restarted.watch(&id).expect("watch")).await
    });
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed, "{last:?}");
    let failure = last.failure.as_ref().expect("failure");
    assert_eq!(failure.code, ErrorCode::Aborted, "{failure:?}");
    assert!(
        failure
            .message
            .contains("the block copy was no longer running"),
        "{failure:?}"
    );
    assert_eq!(hv.lock().persistent.get("vda"), Some(&source()));
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
