//! Exhaustive fault injection over the in-memory hypervisor: for every step of
//! a migration (each hypervisor call and each journal write) and each fault
//! (the call fails; the node dies just before or just after it; libvirtd is
//! gone), run the migration to its end, restarting the node where the fault was
//! a death, and check the invariants that make volmig safe to run:
//!
//! - no volume that volmig did not create is deleted (the source only on a
//!   completed migration that was asked to delete it);
//! - the live and persistent definitions name volumes that exist;
//! - after a pivot the destination is never deleted;
//! - no block job is left behind;
//! - a completed migration redefined (and had libvirt validate) the disk's
//!   checkpoint on the destination;
//! - a migration that was accepted ends with exactly one terminal event, and a
//!   destination volume it leaves behind is named in that event.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fake::{FakeHypervisor, Fault, Injector, CAPACITY};
use super::journal::Journal;
use super::model::{Event, MigrationRequest, Options, Phase};
use super::{Engine, EngineConfig};

fn config() -> EngineConfig {
    EngineConfig {
        node_id: "n1".into(),
        max_concurrent: 2,
        poll_interval: Duration::from_millis(2),
        progress_interval: Duration::from_millis(1),
        libvirt_grace: Duration::from_millis(200),
        synchronized_hold: Duration::ZERO,
        max_watchers: 64,
        retention: Default::default(),
    }
}

fn request() -> MigrationRequest {
    MigrationRequest {
        request_id: String::new(),
        domain: "g".into(),
        disk: "vda".into(),
        destination_pool: "b".into(),
        destination_volume: None,
        destination_format: None,
        options: Options {
            delete_source: true,
            ..Options::default()
        },
    }
}

const LIMIT: Duration = Duration::from_secs(20);

/// What one case observed.
struct Case {
    what: String,
    hv: Arc<FakeHypervisor>,
    injector: Arc<Injector>,
    events: Vec<Event>,
    accepted: bool,
}

/// Runs one migration with `fault` at `step` (none: `None`), restarting the
/// engine after a death.
fn run_case(fault: Option<(usize, Fault)>) -> Case {
    let what = format!("{fault:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let injector = match fault {
        Some((at, f)) => Injector::at(at, f),
        None => Arc::new(Injector::default()),
    };
    let hv = Arc::new(FakeHypervisor::with_injector(injector.clone()));
    hv.lock().step = CAPACITY / 4;
    // A checkpoint on the disk puts its listing and redefinition among the steps.
    hv.lock().checkpoints = vec![crate::hypervisor::Checkpoint {
        name: "nightly".into(),
        disks: vec![crate::hypervisor::CheckpointDisk {
            target: "vda".into(),
            bitmap: Some("nightly".into()),
            dirty_bytes: Some(0),
        }],
    }];
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let accepted = Arc::new(Mutex::new(None::<String>));

    let first = tokio::runtime::Runtime::new().expect("runtime");
    first.block_on(async {
        let journal = Journal::open(dir.path())
            .expect("journal")
            .with_hook(injector.journal_hook());
        let engine = Engine::start(hv.clone(), journal, config())
            .await
            .expect("engine");
        let (events, accepted) = (events.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            if let Ok(mut sub) = engine.migrate(request()).await {
                *accepted.lock().expect("lock") = Some(sub.migration_id().to_string());
                while let Some(e) = sub.next().await {
                    events.lock().expect("lock").push(e);
                }
            }
        });
        let began = Instant::now();
        while !task.is_finished() && !injector.died() {
            assert!(began.elapsed() < LIMIT, "{what}: hung");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    first.shutdown_background();

    if injector.died() {
        injector.disarm();
        let second = tokio::runtime::Runtime::new().expect("runtime");
        second.block_on(async {
            let engine = Engine::start(
                hv.clone(),
                Journal::open(dir.path()).expect("journal"),
                config(),
            )
            .await
            .expect("restarted engine");
            let records = engine.list(&Default::default());
            assert!(records.len() <= 1, "{what}: {records:?}");
            for record in records {
                *accepted.lock().expect("lock") = Some(record.id.clone());
                let mut sub = engine.watch(&record.id).expect("watch");
                let followed = tokio::time::timeout(LIMIT, async {
                    while let Some(e) = sub.next().await {
                        events.lock().expect("lock").push(e);
                    }
                })
                .await;
                assert!(followed.is_ok(), "{what}: the restarted migration hung");
            }
        });
        second.shutdown_background();
    }
    injector.release();
    let events = events.lock().expect("lock").clone();
    let accepted = accepted.lock().expect("lock").is_some();
    Case {
        what,
        hv,
        injector,
        events,
        accepted,
    }
}

fn check_invariants(case: &Case) {
    let what = &case.what;
    let st = case.hv.lock();
    let terminal: Vec<&Event> = case
        .events
        .iter()
        .filter(|e| e.phase.is_terminal())
        .collect();
    if case.accepted {
        assert_eq!(terminal.len(), 1, "{what}: terminal events {terminal:?}");
    } else {
        assert!(terminal.is_empty(), "{what}: {terminal:?}");
    }
    let completed = terminal
        .first()
        .is_some_and(|e| e.phase == Phase::Completed);
    assert!(
        !completed || st.redefined.iter().any(|c| c == "nightly"),
        "{what}: completed without redefining the disk's checkpoint on the destination"
    );
    for (pool, name, ino) in &st.deleted {
        let source = pool == "a" && name == "root.qcow2";
        assert!(
            st.created.contains(ino) || (source && completed),
            "{what}: deleted {pool}/{name} which volmig did not create"
        );
    }
    assert!(
        st.volumes
            .contains_key(&("b".to_string(), "other.qcow2".to_string())),
        "{what}: a bystander volume was deleted"
    );
    for (which, disks) in [("live", &st.live), ("persistent", &st.persistent)] {
        for (target, source) in disks {
            let path = source.display_name();
            assert!(
                st.volumes.values().any(|v| v.path == path),
                "{what}: the {which} definition's {target} names {path}, which does not exist"
            );
        }
    }
    for dest in &st.pivoted_to {
        let path = dest.display_name();
        assert!(
            st.volumes.values().any(|v| v.path == path),
            "{what}: the destination {path} was deleted after the pivot"
        );
    }
    assert!(
        st.jobs.is_empty(),
        "{what}: a block job was left: {:?}",
        st.jobs
    );
    if let Some(end) = terminal.first().filter(|e| e.phase != Phase::Completed) {
        let message = &end.message;
        for v in st.volumes.values() {
            let ours = v.file_id.is_some_and(|f| st.created.contains(&f.ino));
            assert!(
                !ours || message.contains(&v.path) || message.contains(&v.name),
                "{what}: destination {} was left and not reported: {message}",
                v.path
            );
        }
    }
}

#[test]
fn every_fault_at_every_step_keeps_the_invariants() {
    let clean = run_case(None);
    check_invariants(&clean);
    assert_eq!(
        clean.events.last().map(|e| e.phase),
        Some(Phase::Completed),
        "the fault-free run must complete"
    );
    let steps = clean.injector.steps();
    assert!(steps > 20, "only {steps} steps counted");
    let mut cases = 0;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for step in 0..steps {
        for fault in [
            Fault::Fail,
            Fault::DieBefore,
            Fault::DieAfter,
            Fault::Unreachable,
        ] {
            let case = run_case(Some((step, fault)));
            check_invariants(&case);
            let end = case
                .events
                .iter()
                .find(|e| e.phase.is_terminal())
                .map(|e| format!("{:?}", e.phase))
                .unwrap_or_else(|| "refused".to_string());
            *outcomes.entry(end).or_default() += 1;
            cases += 1;
        }
    }
    println!("fault injection: {cases} cases over {steps} steps; outcomes {outcomes:?}");
}
