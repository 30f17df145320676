//! The engine's handling of a copy that does not converge, against the
//! in-memory hypervisor whose guest dirties more per poll than is copied.

use std::sync::Arc;
use std::time::Duration;

use super::fake::FakeHypervisor;
use super::journal::Journal;
use super::model::{ErrorCode, Event, MigrationRequest, NoConvergencePolicy, Options, Phase};
use super::tests::{self, collect, config, source};
use super::{Engine, Error};
use crate::hypervisor::DiskSource;

/// The shortest window the API accepts: each of these tests lasts about that
/// long in virtual time (paused, so none waits for it on the wall clock).
const WINDOW: Duration = Duration::from_secs(5);

async fn diverging(dir: &std::path::Path) -> (Arc<FakeHypervisor>, Engine) {
    let hv = Arc::new(FakeHypervisor::new());
    {
        let mut st = hv.lock();
        st.step = 1 << 20;
        st.dirty_step = 2 << 20;
    }
    let journal = Journal::open(dir).expect("journal");
    let engine = Engine::start(hv.clone(), journal, config())
        .await
        .expect("engine");
    (hv, engine)
}

fn request(policy: NoConvergencePolicy) -> MigrationRequest {
    let mut req = tests::request("");
    req.options = Options {
        bandwidth: 1 << 20,
        on_no_convergence: policy,
        convergence_window: Some(WINDOW),
        ..Options::default()
    };
    req
}

fn warnings(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| e.message.contains("not converging"))
        .count()
}

#[tokio::test(start_paused = true)]
async fn warn_reports_both_rates_once_and_keeps_copying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, engine) = diverging(dir.path()).await;
    let mut sub = engine
        .migrate(request(NoConvergencePolicy::Warn))
        .await
        .expect("start");
    let id = sub.migration_id().to_string();
    let started = tokio::time::Instant::now();
    let mut events = Vec::new();
    while let Some(e) = sub.next().await {
        let warned = e.convergence.is_some();
        events.push(e);
        if warned {
            break;
        }
    }
    let warning = events
        .last()
        .and_then(|e| e.convergence.clone())
        .expect("a convergence warning");
    assert!(started.elapsed() >= WINDOW, "warned before a whole window");
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Copying));
    assert!(
        warning.dirty_rate > warning.copy_rate && warning.copy_rate > 0,
        "{warning:?}"
    );
    assert!(
        warning.remedy.contains("set-bandwidth"),
        "{}",
        warning.remedy
    );
    // Copying goes on, and the warning is not repeated.
    tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
    assert_eq!(
        engine.get(&id).expect("record").latest.phase,
        Phase::Copying
    );
    engine.cancel(&id).await.expect("cancel");
    events.extend(collect(sub).await);
    assert_eq!(warnings(&events), 1, "{events:#?}");
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Cancelled));
    assert_eq!(hv.lock().live.get("vda"), Some(&source()));
}

#[tokio::test(start_paused = true)]
async fn fail_rolls_back_with_failed_precondition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, engine) = diverging(dir.path()).await;
    let events = collect(
        engine
            .migrate(request(NoConvergencePolicy::Fail))
            .await
            .expect("start"),
    )
    .await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed);
    let failure = last.failure.clone().expect("failure");
    assert_eq!(failure.code, ErrorCode::FailedPrecondition);
    assert!(
        failure.message.contains("does not converge"),
        "{}",
        failure.message
    );
    assert!(failure.disk_state.contains("stays on its source"));
    assert!(last.convergence.is_some(), "the failure keeps the rates");
    assert_eq!(warnings(&events), 1);
    let st = hv.lock();
    assert_eq!(st.live.get("vda"), Some(&source()));
    assert!(st.jobs.is_empty());
    assert!(!st
        .volumes
        .contains_key(&("b".to_string(), "root.qcow2".to_string())));
}

#[tokio::test(start_paused = true)]
async fn switch_restarts_the_copy_with_synchronous_writes_and_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, engine) = diverging(dir.path()).await;
    let sub = engine
        .migrate(request(NoConvergencePolicy::SwitchToSyncWrites))
        .await
        .expect("start");
    let id = sub.migration_id().to_string();
    let events = collect(sub).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Completed, "{:#?}", last.failure);
    assert!(last.convergence.is_none());
    assert_eq!(warnings(&events), 1);
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("with synchronous writes")
                && e.message.contains("QEMU 7.2.0 cannot switch")),
        "no restart announced"
    );
    let st = hv.lock();
    let modes: Vec<bool> = st
        .copies
        .iter()
        .filter(|(d, _)| d == "vda")
        .map(|(_, o)| o.synchronous_writes)
        .collect();
    assert_eq!(modes, vec![false, true]);
    // Onto the same destination volume, created once.
    assert_eq!(st.created.len(), 1);
    assert_eq!(
        st.live.get("vda"),
        Some(&DiskSource::File {
            path: "/p/b/root.qcow2".into()
        })
    );
    assert!(st.copies.iter().all(|(_, o)| o.bandwidth == 1 << 20));
    drop(st);
    let record = engine.get(&id).expect("record");
    assert!(record.forced_sync_writes);
}

#[tokio::test(start_paused = true)]
async fn a_synchronous_copy_is_not_judged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, engine) = diverging(dir.path()).await;
    let mut req = request(NoConvergencePolicy::Fail);
    req.options.synchronous_writes = true;
    let events = collect(engine.migrate(req).await.expect("start")).await;
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Completed));
    assert_eq!(warnings(&events), 0);
    assert_eq!(hv.lock().copies.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_window_outside_5_s_to_a_day_is_an_invalid_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_hv, engine) = diverging(dir.path()).await;
    for secs in [1, 4, 86_401] {
        let mut req = request(NoConvergencePolicy::Warn);
        req.options.convergence_window = Some(Duration::from_secs(secs));
        match engine.migrate(req).await {
            Err(Error::InvalidArgument { field, .. }) => {
                assert_eq!(field, "convergence_window_seconds")
            }
            Err(e) => panic!("{secs} s: {e}"),
            Ok(_) => panic!("{secs} s accepted"),
        }
    }
}
