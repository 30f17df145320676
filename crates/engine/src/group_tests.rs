//! Multi-disk migrations against the in-memory hypervisor: the commit point,
//! rollback of every disk before it, the pivot order and the policy when a
//! pivot fails midway, cancel, and a restart before the commit.

use std::sync::Arc;
use std::time::Duration;

use super::fake::{FakeHypervisor, CAPACITY};
use super::journal::Journal;
use super::model::{DiskSelection, ErrorCode, Event, GroupRequest, Phase};
use super::{Engine, EngineConfig};

use crate::hypervisor::DiskSource;

const DISKS: [&str; 3] = ["vda", "vdb", "vdc"];

async fn engine(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(
        hv,
        Journal::open(dir).expect("journal"),
        EngineConfig {
            max_concurrent: 8,
            ..super::tests::config()
        },
    )
    .await
    .expect("engine")
}

fn three_disks() -> Arc<FakeHypervisor> {
    Arc::new(FakeHypervisor::with_disks(&["vdb", "vdc"]))
}

fn request() -> GroupRequest {
    crate::tests::group_of("", &DISKS)
}

async fn collect(mut sub: super::Subscription) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(e) = sub.next().await {
        events.push(e);
    }
    events
}

fn synchronized(e: &Event) -> usize {
    e.disks
        .iter()
        .filter(|d| d.phase == Phase::Synchronized)
        .count()
}

/// Nothing pivoted, no copy left, every disk on its source and every
/// destination deleted.
fn assert_rolled_back(hv: &FakeHypervisor) {
    assert_eq!(hv.lock().pivots, 0);
    assert!(hv.lock().jobs.is_empty());
    assert!(on_sources(hv));
    assert!(destinations_gone(hv));
}

fn on_sources(hv: &FakeHypervisor) -> bool {
    let st = hv.lock();
    DISKS.iter().all(|d| {
        let src = st.live.get(*d).map(DiskSource::display_name);
        let persistent = st.persistent.get(*d).map(DiskSource::display_name);
        let expect = if *d == "vda" {
            "/p/a/root.qcow2".to_string()
        } else {
            format!("/p/a/{d}.qcow2")
        };
        src.as_deref() == Some(expect.as_str()) && persistent.as_deref() == Some(expect.as_str())
    })
}

/// Every destination volume created was deleted again.
fn destinations_gone(hv: &FakeHypervisor) -> bool {
    let st = hv.lock();
    st.volumes
        .values()
        .all(|v| !v.file_id.is_some_and(|f| st.created.contains(&f.ino)))
}

#[tokio::test]
async fn all_disks_pivot_in_request_order_only_after_all_are_synchronized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate_group(request()).await.expect("start")).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Completed, "{}", last.message);
    assert_eq!(events.iter().filter(|e| e.phase.is_terminal()).count(), 1);
    // No disk pivoted while another was still copying.
    for e in &events {
        let pivoting = e.disks.iter().any(|d| d.phase >= Phase::Pivoting);
        let copying = e.disks.iter().any(|d| d.phase < Phase::Synchronized);
        assert!(
            !(pivoting && copying),
            "a pivot began before all were synchronized: {e:?}"
        );
    }
    let st = hv.lock();
    let order: Vec<String> = st.pivoted_to.iter().map(DiskSource::display_name).collect();
    assert_eq!(
        order,
        vec!["/p/b/root.qcow2", "/p/b/vdb.qcow2", "/p/b/vdc.qcow2"]
    );
    for d in DISKS {
        assert_eq!(st.live.get(d), st.persistent.get(d));
        assert!(st.live[d].display_name().starts_with("/p/b/"));
    }
    assert_eq!(last.disks.len(), 3);
    assert!(last
        .disks
        .iter()
        .all(|d| d.result.is_some() && d.pivot.is_some()));
    // Pivots ran back to back: each starts after the previous one ended.
    let pivots: Vec<(u64, u64)> = last.disks.iter().filter_map(|d| d.pivot).collect();
    assert!(pivots.windows(2).all(|w| w[1].0 >= w[0].1));
    assert_eq!(
        last.pivot_window_ms,
        pivots[2].1 - pivots[0].0,
        "the window runs from the first pivot issued to the last one ended"
    );
    assert_eq!(last.progress.bytes_total, 3 * CAPACITY);
}

#[tokio::test]
async fn a_disk_that_fails_before_the_pivots_rolls_every_disk_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    // vda and vdb copy slowly; vdc's pool has no room.
    hv.lock().step = CAPACITY / 64;
    hv.lock().no_space_for = vec!["vdc.qcow2".into()];
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate_group(request()).await.expect("start")).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed);
    let failure = last.failure.as_ref().expect("failure");
    assert_eq!(
        failure.code,
        ErrorCode::ResourceExhausted,
        "{}",
        failure.message
    );
    assert!(
        failure.message.starts_with("disk vdc:"),
        "{}",
        failure.message
    );
    for d in &last.disks {
        let f = d.failure.as_ref().expect("every disk failed");
        if d.disk != "vdc" {
            assert_eq!(f.code, ErrorCode::Aborted, "{}: {}", d.disk, f.message);
        }
    }
    assert_rolled_back(&hv);
}

#[tokio::test]
async fn cancel_while_two_of_three_are_synchronized_rolls_all_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    hv.lock().stuck = vec!["vdc".into()];
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate_group(request()).await.expect("start");
    let id = sub.migration_id().to_string();
    let mut cancelled = false;
    while let Some(e) = sub.next().await {
        let synced = synchronized(&e);
        if synced == 2 && !cancelled {
            engine.cancel(&id).await.expect("cancel");
            cancelled = true;
        }
        if e.phase.is_terminal() {
            assert_eq!(e.phase, Phase::Cancelled, "{}", e.message);
            assert!(e.disks.iter().all(|d| d.phase == Phase::Cancelled));
        }
    }
    assert!(cancelled);
    assert_rolled_back(&hv);
}

#[tokio::test]
async fn cancelling_one_disk_cancels_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    hv.lock().stuck = vec!["vdc".into()];
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate_group(request()).await.expect("start");
    while let Some(e) = sub.next().await {
        if let Some(vdb) = e
            .disks
            .iter()
            .find(|d| d.disk == "vdb" && d.phase == Phase::Copying)
        {
            let member = vdb.migration_id.clone();
            engine.cancel(&member).await.expect("cancel one disk");
            break;
        }
    }
    let events = collect(sub).await;
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Cancelled));
    assert_rolled_back(&hv);
}

#[tokio::test]
async fn a_pivot_failing_midway_leaves_that_disk_on_its_source_and_the_others_carry_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    hv.lock().failing_pivots = vec!["vdb".into()];
    let engine = engine(hv.clone(), dir.path()).await;
    let events = collect(engine.migrate_group(request()).await.expect("start")).await;
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed);
    let by_disk = |t: &str| last.disks.iter().find(|d| d.disk == t).expect("disk");
    assert_eq!(by_disk("vda").phase, Phase::Completed);
    assert_eq!(by_disk("vdc").phase, Phase::Completed);
    let vdb = by_disk("vdb");
    assert_eq!(vdb.phase, Phase::Failed);
    let state = &vdb.failure.as_ref().expect("failure").disk_state;
    assert!(state.contains("/p/a/vdb.qcow2"), "{state}");
    let st = hv.lock();
    assert_eq!(st.pivots, 2);
    assert!(st.live["vda"].display_name().starts_with("/p/b/"));
    assert_eq!(st.live["vdb"].display_name(), "/p/a/vdb.qcow2");
    assert!(st.live["vdc"].display_name().starts_with("/p/b/"));
    assert!(
        st.jobs.is_empty(),
        "the failed disk's mirror was left running"
    );
    // The group's error names the disk and says where every disk is.
    let f = last.failure.as_ref().expect("group failure");
    assert!(f.message.starts_with("disk vdb:"), "{}", f.message);
    assert!(
        f.disk_state.contains("vda: on its destination"),
        "{}",
        f.disk_state
    );
}

#[tokio::test]
async fn copies_beyond_the_limit_wait_for_a_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    hv.lock().step = CAPACITY / 16;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = request();
    req.max_parallel_copies = 1;
    let mut sub = engine.migrate_group(req).await.expect("start");
    let mut most = 0;
    while let Some(e) = sub.next().await {
        most = most.max(
            hv.lock()
                .jobs
                .values()
                .filter(|j| j.1.cur < j.1.end)
                .count(),
        );
        if e.phase.is_terminal() {
            assert_eq!(e.phase, Phase::Completed, "{}", e.message);
        }
    }
    assert_eq!(most, 1, "more than one copy ran at once");
}

#[tokio::test]
async fn a_request_naming_an_ineligible_disk_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    let engine = engine(hv.clone(), dir.path()).await;
    let mut req = request();
    if let DiskSelection::Listed(choices) = &mut req.disks {
        choices[2].disk = "vdz".into();
    }
    let refused = engine.migrate_group(req).await.err().expect("refused");
    assert_eq!(refused.code(), ErrorCode::NotFound, "{refused}");
    assert!(hv.lock().created.is_empty());
    assert!(engine.list(&Default::default()).is_empty());
}

#[test]
fn a_restart_before_every_disk_is_synchronized_rolls_the_group_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    hv.lock().stuck = vec!["vdc".into()];
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let id = first.block_on(async {
        let engine = engine(hv.clone(), dir.path()).await;
        let mut sub = engine.migrate_group(request()).await.expect("start");
        while let Some(e) = sub.next().await {
            let synced = e
                .disks
                .iter()
                .filter(|d| d.phase == Phase::Synchronized)
                .count();
            if synced == 2 && hv.lock().jobs.len() == 3 {
                break;
            }
        }
        sub.migration_id().to_string()
    });
    first.shutdown_background();
    // Left alone, every copy would now converge: recovery must still roll back.
    hv.lock().stuck.clear();
    let second = tokio::runtime::Runtime::new().expect("runtime");
    let events = second.block_on(async {
        let restarted = engine(hv.clone(), dir.path()).await;
        collect(restarted.watch(&id).expect("watch the group")).await
    });
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Failed);
    assert!(last.disks.iter().all(|d| d
        .failure
        .as_ref()
        .is_some_and(|f| f.code == ErrorCode::Aborted)));
    assert!(
        last.message.contains("rolled back"),
        "the group says what happened: {}",
        last.message
    );
    assert_rolled_back(&hv);
}

#[test]
fn a_restart_after_the_first_pivot_finishes_every_pivot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    // vdb's pivot hangs on a vanished libvirtd; the node dies meanwhile.
    hv.lock().unreachable_pivots = vec!["vdb".into()];
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let id = first.block_on(async {
        let engine = engine(hv.clone(), dir.path()).await;
        let sub = engine.migrate_group(request()).await.expect("start");
        while hv.lock().pivots < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sub.migration_id().to_string()
    });
    // The node dies: its tasks are dropped, and the hypervisor calls already
    // running on blocking threads finish before the restarted node starts, so
    // none of the dead node's calls lands in the new one's run (they did with
    // shutdown_background, now and then, under load).
    first.shutdown_timeout(Duration::from_secs(30));
    hv.lock().unreachable_pivots.clear();
    let second = tokio::runtime::Runtime::new().expect("runtime");
    let events = second.block_on(async {
        let restarted = engine(hv.clone(), dir.path()).await;
        collect(restarted.watch(&id).expect("watch the group")).await
    });
    let last = events.last().expect("terminal");
    assert_eq!(last.phase, Phase::Completed, "{}", last.message);
    let st = hv.lock();
    assert_eq!(st.pivots, 3);
    for d in DISKS {
        assert!(st.live[d].display_name().starts_with("/p/b/"), "{d}");
        assert_eq!(st.live.get(d), st.persistent.get(d));
    }
}

#[tokio::test]
async fn disks_that_fit_a_pool_alone_but_not_together_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = three_disks();
    {
        let mut st = hv.lock();
        if let Some(v) = st
            .volumes
            .get_mut(&("a".to_string(), "vdb.qcow2".to_string()))
        {
            v.allocation = CAPACITY / 2;
        }
        if let Some(b) = st.pools.iter_mut().find(|p| p.name == "b") {
            // Room for one disk's 32 MiB plus the 16 MiB margin, not for two.
            b.available = 60 << 20;
        }
    }
    let engine = engine(hv.clone(), dir.path()).await;
    let refused = engine
        .migrate_group(request())
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), ErrorCode::ResourceExhausted, "{refused}");
    assert!(refused.to_string().contains("vda, vdb, vdc"), "{refused}");
    assert!(hv.lock().created.is_empty());
}
