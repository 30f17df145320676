//! Which requests start a migration, attach to one, or are refused.

use std::future::Future;
use std::sync::Arc;

use super::{collect, config, engine, group_of, request};
use crate::fake::FakeHypervisor;
use crate::journal::Journal;
use crate::model::{ErrorCode, GroupRequest, Phase};
use crate::{Engine, EngineConfig, Error, Subscription};

/// `vda` and `vdb` of `g` to pool `b`, in one request.
fn group_request(id: &str) -> GroupRequest {
    group_of(id, &["vda", "vdb"])
}

async fn engine_with_room(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(
        hv,
        Journal::open(dir).expect("journal"),
        EngineConfig {
            max_concurrent: 4,
            ..config()
        },
    )
    .await
    .expect("engine")
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

/// Starts a request twice: the first parks in planning (at its first libvirt
/// call) and the second is let run up to wherever it waits before the first
/// goes on. Their outcomes, first's first.
async fn started_twice<F, Fut>(hv: &FakeHypervisor, start: F) -> [Result<Subscription, Error>; 2]
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Subscription, Error>> + Send + 'static,
{
    let held = hv.hold("domain");
    let first = tokio::spawn(start());
    held.reached().await;
    let retry = tokio::spawn(start());
    tokio::task::yield_now().await;
    drop(held);
    [
        first.await.expect("first task"),
        retry.await.expect("retry task"),
    ]
}

/// Both subscriptions follow one migration to its end.
async fn one_migration_completes(first: Subscription, retry: Subscription) {
    assert_eq!(first.migration_id(), retry.migration_id());
    for sub in [retry, first] {
        assert_eq!(
            collect(sub).await.last().map(|e| e.phase),
            Some(Phase::Completed)
        );
    }
}

#[tokio::test]
async fn a_group_request_id_retried_while_the_first_plans_attaches_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::with_disks(&["vdb"]));
    let engine = engine_with_room(hv.clone(), dir.path()).await;
    let [first, retry] = started_twice(&hv, || {
        let engine = engine.clone();
        async move { engine.migrate_group(group_request("twice")).await }
    })
    .await;
    let first = first.expect("first admitted");
    let retry = retry.expect("retry attached");
    assert_eq!(engine.list_groups(&Default::default()).len(), 1);
    one_migration_completes(first, retry).await;
    assert_eq!(hv.lock().pivots, 2);
}

#[tokio::test]
async fn a_request_id_retried_while_the_first_plans_attaches_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let [first, retry] = started_twice(&hv, || {
        let engine = engine.clone();
        async move { engine.migrate(request("twice")).await }
    })
    .await;
    let first = first.expect("first admitted");
    let retry = retry.expect("retry attached");
    assert_eq!(engine.list(&Default::default()).len(), 1);
    one_migration_completes(first, retry).await;
    assert_eq!(hv.lock().pivots, 1);
}

#[tokio::test]
async fn a_planning_failure_releases_the_disk_for_the_next_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let mut doomed = request("doomed");
    doomed.destination_pool = "nowhere".into();
    let refused = engine.migrate(doomed).await.err().expect("no such pool");
    assert_eq!(refused.code(), ErrorCode::NotFound, "{refused}");
    let sub = engine.migrate(request("next")).await.expect("admitted");
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
}

#[tokio::test]
async fn a_group_planning_failure_releases_its_disks_for_the_next_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::with_disks(&["vdb"]));
    let engine = engine_with_room(hv.clone(), dir.path()).await;
    let mut doomed = group_request("doomed");
    doomed.destination_pool = "nowhere".into();
    let refused = engine
        .migrate_group(doomed)
        .await
        .err()
        .expect("no such pool");
    assert_eq!(refused.code(), ErrorCode::NotFound, "{refused}");
    let sub = engine
        .migrate_group(group_request("next"))
        .await
        .expect("admitted");
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
}

#[tokio::test]
async fn while_a_request_plans_its_disk_and_request_id_are_held_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::with_disks(&["vdb"]));
    let engine = engine_with_room(hv.clone(), dir.path()).await;
    let held = hv.hold("domain");
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.migrate(request("held")).await }
    });
    held.reached().await;
    let planning_id = match engine.migrate(request("other")).await {
        Err(Error::AlreadyMigrating {
            domain,
            disk,
            migration_id,
        }) => {
            assert_eq!((domain.as_str(), disk.as_str()), ("g", "vda"));
            migration_id
        }
        other => panic!("expected ALREADY_EXISTS, got {:?}", other.err()),
    };
    let mut changed = request("held");
    changed.destination_pool = "a".into();
    assert!(matches!(
        engine.migrate(changed).await,
        Err(Error::RequestIdReused(_))
    ));
    assert!(matches!(
        engine.migrate_group(group_request("held")).await,
        Err(Error::RequestIdReused(_))
    ));
    let refused = engine.migrate_group(group_request("g2")).await.err();
    assert!(
        matches!(refused, Some(Error::AlreadyMigrating { ref disk, .. }) if disk == "vda"),
        "{refused:?}"
    );
    drop(held);
    let first = first.await.expect("first task").expect("first admitted");
    assert_eq!(first.migration_id(), planning_id);
    assert_eq!(
        collect(first).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
}

#[tokio::test]
async fn a_request_abandoned_while_planning_gives_its_disk_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let held = hv.hold("domain");
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.migrate(request("gone")).await }
    });
    held.reached().await;
    first.abort();
    assert!(first.await.err().is_some_and(|e| e.is_cancelled()));
    let sub = engine.migrate(request("gone")).await.expect("admitted");
    drop(held);
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
    assert_eq!(engine.list(&Default::default()).len(), 1);
}

#[tokio::test]
async fn a_retry_waiting_on_a_request_that_fails_is_decided_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    let engine = engine(hv.clone(), dir.path()).await;
    let mut doomed = request("doomed");
    doomed.destination_pool = "nowhere".into();
    let outcomes = started_twice(&hv, || {
        let (engine, doomed) = (engine.clone(), doomed.clone());
        async move { engine.migrate(doomed).await }
    })
    .await;
    for outcome in outcomes {
        let refused = outcome.err().expect("no such pool");
        assert_eq!(refused.code(), ErrorCode::NotFound, "{refused}");
    }
    let sub = engine.migrate(request("next")).await.expect("admitted");
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
}

#[tokio::test]
async fn a_request_planning_counts_against_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::with_disks(&["vdb", "vdc"]));
    let engine = engine(hv.clone(), dir.path()).await;
    let held = hv.hold("domain");
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.migrate(request("first")).await }
    });
    held.reached().await;
    let refused = engine
        .migrate_group(group_of("both", &["vdb", "vdc"]))
        .await
        .err()
        .expect("over the limit of 2");
    assert_eq!(refused.code(), ErrorCode::ResourceExhausted, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("runs at most 2 disk migrations and 1 are running; this request needs 2"),
        "{refused}"
    );
    drop(held);
    let first = first.await.expect("first task").expect("first admitted");
    assert_eq!(
        collect(first).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
}
