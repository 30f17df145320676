//! Drains end to end over fake nodes and a file store: enumeration, the
//! executor's limits, budget, retries, cancel and a restart. Time is tokio's
//! paused clock; nothing waits on the wall clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use volmig_config::ControllerConfig;
use volmig_types::host::{DiskKind, ImageFormat, PoolRunState};
use volmig_types::phase::Phase;

use super::model::{DrainSpec, ItemState, Unmovable};
use super::view::DrainView;
use crate::advertise::Registrant;
use crate::model::{DiskInfo, DomainInfo, Order, PoolInfo, PoolVolumeInfo, VolumeUseInfo};
use crate::registry::NodeFacts;
use crate::store::file::FileStore;
use crate::store::Store;
use crate::testing::{FakeNode, FakeNodes};
use crate::Controller;

const GIB: u64 = 1 << 30;

/// A pool both nodes reach.
fn shared(name: &str, available: u64) -> PoolInfo {
    PoolInfo {
        name: name.to_string(),
        pool_type: "netfs".to_string(),
        state: Some(PoolRunState::Running),
        capacity: 1000 * GIB,
        allocation: 1000 * GIB - available,
        available,
        disk_kind: Some(DiskKind::File),
        storage_id: format!("s-{name}"),
        shared: true,
        ..PoolInfo::default()
    }
}

fn running(name: &str, allocation: u64) -> DomainInfo {
    DomainInfo {
        name: name.to_string(),
        uuid: format!("u-{name}"),
        running: true,
        disks: vec![DiskInfo {
            target: "vda".to_string(),
            kind: Some(DiskKind::File),
            device: "disk".to_string(),
            format: Some(ImageFormat::Qcow2),
            source: format!("/old/{name}.qcow2"),
            pool: "old".to_string(),
            volume: format!("{name}.qcow2"),
            capacity: allocation,
            allocation,
            ..DiskInfo::default()
        }],
    }
}

/// The volumes of "old" as `node` sees them: `runs` are its running
/// guests, `defined` the stopped ones defined there.
fn old_volumes(runs: &[&str], defined: &[&str]) -> HashMap<String, Vec<PoolVolumeInfo>> {
    let volume = |vm: &str| PoolVolumeInfo {
        name: format!("{vm}.qcow2"),
        source: format!("/old/{vm}.qcow2"),
        users: if runs.contains(&vm) || defined.contains(&vm) {
            vec![VolumeUseInfo {
                domain: vm.to_string(),
                running: runs.contains(&vm),
                disk: "vda".to_string(),
                backing: false,
            }]
        } else {
            Vec::new()
        },
        ..PoolVolumeInfo::default()
    };
    let all = ["vm1", "vm2", "vm3", "vm4", "vm5"];
    HashMap::from([("old".to_string(), all.iter().map(|v| volume(v)).collect())])
}

/// n1 runs vm1 (30 GiB) and vm2 (20 GiB), n2 runs vm3 (10 GiB); vm4 is
/// defined on both, vm5 on n1 only, neither runs. "old" and "new" are shared.
pub(super) fn fleet() -> Arc<FakeNodes> {
    let pools = || vec![shared("old", 500 * GIB), shared("new", 900 * GIB)];
    Arc::new(
        FakeNodes::default()
            .with(
                "n1",
                FakeNode {
                    pools: pools(),
                    domains: vec![
                        running("vm1", 30 * GIB),
                        running("vm2", 20 * GIB),
                        DomainInfo {
                            running: false,
                            ..running("vm5", 5 * GIB)
                        },
                    ],
                    volumes: old_volumes(&["vm1", "vm2"], &["vm4", "vm5"]),
                },
            )
            .with(
                "n2",
                FakeNode {
                    pools: pools(),
                    domains: vec![running("vm3", 10 * GIB)],
                    volumes: old_volumes(&["vm3"], &["vm4"]),
                },
            ),
    )
}

/// A store in a temporary directory and the fleet, its guests' migrations
/// held until the test ends them when `hold`.
pub(super) fn setup(hold: bool) -> (tempfile::TempDir, Arc<FileStore>, Arc<FakeNodes>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FileStore::open(dir.path()).expect("store"));
    let nodes = fleet();
    if hold {
        for vm in ["vm1", "vm2", "vm3"] {
            nodes.hold(vm);
        }
    }
    (dir, store, nodes)
}

pub(super) async fn controller(store: Arc<dyn Store>, nodes: Arc<FakeNodes>) -> Controller {
    let c = Controller::start(ControllerConfig::default(), store, nodes, Arc::new(()))
        .await
        .expect("start");
    for node in ["n1", "n2"] {
        let endpoint = format!("unix:///run/{node}.sock");
        c.register(node, &endpoint, NodeFacts::default(), &Registrant::Local)
            .await
            .expect("register");
    }
    c
}

pub(super) fn spec() -> DrainSpec {
    DrainSpec {
        destination: Some("new".to_string()),
        ..DrainSpec::of("old")
    }
}

/// Waits (on the paused clock) until drain `id`'s view passes `ok`.
pub(super) async fn until(c: &Controller, id: &str, ok: impl Fn(&DrainView) -> bool) -> DrainView {
    let mut rx = c.watch_drain(id).await.expect("watch");
    let seen = tokio::time::timeout(Duration::from_secs(3600), rx.wait_for(|v| ok(v)))
        .await
        .expect("in time")
        .expect("watching")
        .clone();
    seen
}

/// Started orders per domain.
pub(super) fn starts(nodes: &FakeNodes, domain: &str) -> usize {
    nodes
        .started()
        .iter()
        .filter(|(_, o)| o.domain == domain)
        .count()
}

#[tokio::test(start_paused = true)]
async fn the_plan_groups_by_guest_and_says_why_the_rest_stays() {
    let (_dir, store, nodes) = setup(false);
    let c = controller(store, nodes).await;
    let plan = c.plan_drain(&spec()).await.expect("plan");
    let items: Vec<(&str, &str)> = plan
        .items
        .iter()
        .map(|i| (i.domain.as_str(), i.node_id.as_str()))
        .collect();
    assert_eq!(items, [("vm1", "n1"), ("vm2", "n1"), ("vm3", "n2")]);
    assert!(plan.items.iter().all(|i| i.disks[0].dest_pool == "new"));
    let left: Vec<(&str, &Unmovable)> = plan
        .left
        .iter()
        .map(|l| (l.domain.as_str(), &l.reason))
        .collect();
    assert_eq!(
        left,
        [
            (
                "vm4",
                &Unmovable::DefinedOnSeveralNodes {
                    nodes: "n1, n2".to_string()
                }
            ),
            ("vm5", &Unmovable::Stopped),
        ]
    );
    let with_stopped = DrainSpec {
        include_stopped: true,
        ..spec()
    };
    // Asked for, vm5 (defined on n1 only, one disk on the pool) moves offline;
    // vm4 (defined on two nodes) still stays.
    let plan = c.plan_drain(&with_stopped).await.expect("plan");
    let vm5 = plan
        .items
        .iter()
        .find(|i| i.domain == "vm5")
        .expect("vm5 planned");
    assert!(vm5.offline && vm5.node_id == "n1", "{vm5:?}");
    assert_eq!(plan.left.len(), 1, "{:?}", plan.left);
    assert_eq!(plan.left[0].domain, "vm4");
    let unknown = c.plan_drain(&DrainSpec::of("nowhere")).await;
    assert!(matches!(
        unknown,
        Err(crate::error::ControllerError::UnknownPool(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_drain_keeps_its_limits_and_reports_every_volume() {
    let (_dir, store, nodes) = setup(true);
    let c = controller(store, nodes.clone()).await;
    let view = c.start_drain(Some("op"), spec()).await.expect("start");
    let id = view.job.id.clone();
    // Two at once, one per node: vm1 on n1 and vm3 on n2; vm2 waits for n1.
    until(&c, &id, |v| v.counts.running == 2).await;
    assert_eq!(nodes.running(), 2);
    assert_eq!((starts(&nodes, "vm1"), starts(&nodes, "vm3")), (1, 1));
    assert_eq!(starts(&nodes, "vm2"), 0);
    assert_eq!(nodes.finish("vm1", Phase::Completed), 1);
    until(&c, &id, |v| v.counts.done == 1 && v.counts.running == 2).await;
    assert_eq!(starts(&nodes, "vm2"), 1);
    nodes.finish("vm2", Phase::Completed);
    nodes.finish("vm3", Phase::Completed);
    let done = until(&c, &id, |v| v.job.is_finished()).await;
    assert_eq!(done.counts.done, 3);
    let ItemState::Done { rows, .. } = &done.job.items[0] else {
        panic!("vm1 done: {:?}", done.job.items[0]);
    };
    assert_eq!(rows[0].old_volume, "vm1.qcow2");
    assert_eq!(rows[0].old_pool, "old");
    assert_eq!(rows[0].new_pool, "new");
    assert_eq!(rows[0].new_volume, "vm1-vda");
    let orders = nodes.started();
    assert!(orders
        .iter()
        .all(|(_, o)| o.drain_id.as_deref() == Some(id.as_str())));
    assert!(c
        .list(&Default::default())
        .await
        .expect("history")
        .iter()
        .all(|e| e.order.drain_id.as_deref() == Some(id.as_str())));
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_and_divided_again_as_copies_start_and_end() {
    let (_dir, store, nodes) = setup(true);
    let c = controller(store, nodes.clone()).await;
    let budgeted = DrainSpec {
        bandwidth: 100,
        ..spec()
    };
    let id = c.start_drain(None, budgeted).await.expect("start").job.id;
    until(&c, &id, |v| v.counts.running == 2).await;
    let orders = nodes.started();
    let shares: Vec<Option<u64>> = orders.iter().map(|(_, o)| o.bandwidth).collect();
    // vm1 started alone with all of it; vm1 was lowered before vm3 started.
    assert_eq!(shares, [Some(100), Some(50)]);
    assert_eq!(nodes.bandwidths(), [("n1-m1".to_string(), 50)]);
    nodes.finish("vm3", Phase::Completed);
    until(&c, &id, |v| {
        v.counts.done == 1 && v.running.iter().all(|r| r.bandwidth == 100)
    })
    .await;
    // vm3 ended: vm1 has it all again (vm2 waits for n1).
    assert_eq!(
        nodes.bandwidths(),
        [("n1-m1".to_string(), 50), ("n1-m1".to_string(), 100)]
    );
    nodes.finish("vm1", Phase::Completed);
    until(&c, &id, |v| v.counts.done == 2 && v.counts.running == 1).await;
    assert_eq!(nodes.started()[2].1.bandwidth, Some(100), "vm2 alone");
    nodes.finish("vm2", Phase::Completed);
    until(&c, &id, |v| v.job.is_finished()).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_item_is_tried_again_and_fails_for_good_after_max_tries() {
    let (_dir, store, nodes) = setup(false);
    nodes.fail_times("vm1", 1);
    nodes.fail_times("vm2", 5);
    let c = controller(store, nodes.clone()).await;
    let tries = DrainSpec {
        max_tries: 2,
        ..spec()
    };
    let id = c.start_drain(None, tries).await.expect("start").job.id;
    let done = until(&c, &id, |v| v.job.is_finished()).await;
    assert_eq!((done.counts.done, done.counts.failed), (2, 1));
    assert!(matches!(done.job.items[0], ItemState::Done { .. }));
    let ItemState::Failed { tries, last_error } = &done.job.items[1] else {
        panic!("vm2 failed: {:?}", done.job.items[1]);
    };
    assert_eq!((*tries, last_error.as_str()), (2, "fake failure"));
    assert_eq!((starts(&nodes, "vm1"), starts(&nodes, "vm2")), (2, 2));
    let rids: Vec<String> = nodes
        .started()
        .iter()
        .filter(|(_, o)| o.domain == "vm1")
        .filter_map(|(_, o)| o.request_id.clone())
        .collect();
    assert_eq!(
        rids,
        [super::request_id(&id, 0, 1), super::request_id(&id, 0, 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_drain_cancels_what_runs_and_skips_the_rest() {
    let (_dir, store, nodes) = setup(true);
    let c = controller(store, nodes.clone()).await;
    let id = c.start_drain(None, spec()).await.expect("start").job.id;
    until(&c, &id, |v| {
        v.counts.running == 2 && v.running.iter().all(|r| !r.migration_id.is_empty())
    })
    .await;
    c.cancel_drain(Some("op"), &id).await.expect("cancel");
    let done = until(&c, &id, |v| v.job.is_finished()).await;
    assert_eq!(done.counts.skipped, 3);
    assert_eq!(nodes.cancels().len(), 2);
    assert_eq!(starts(&nodes, "vm2"), 0);
    assert!(matches!(
        c.cancel_drain(None, &id).await,
        Err(crate::error::ControllerError::DrainFinished(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_destination_takes_no_more_items_at_once_than_per_destination() {
    let (_dir, store, nodes) = setup(true);
    let c = controller(store, nodes.clone()).await;
    let one_at_a_time = DrainSpec {
        per_destination: 1,
        ..spec()
    };
    let id = c
        .start_drain(None, one_at_a_time)
        .await
        .expect("start")
        .job
        .id;
    for (i, vm) in ["vm1", "vm2", "vm3"].into_iter().enumerate() {
        let running = until(&c, &id, |v| {
            v.counts.done == i as u32 && v.running.iter().any(|r| !r.migration_id.is_empty())
        })
        .await;
        assert_eq!(running.running.len(), 1);
        assert_eq!(running.running[0].domain, vm, "largest first");
        assert_eq!(nodes.running(), 1);
        nodes.finish(vm, Phase::Completed);
    }
    let done = until(&c, &id, |v| v.job.is_finished()).await;
    assert_eq!(done.counts.done, 3);
    assert_eq!(done.bytes_done, 60 * GIB);
    assert_eq!(done.bytes_remaining, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_records_nothing_and_an_empty_pool_is_nothing_to_drain() {
    let (_dir, store, nodes) = setup(false);
    let c = controller(store, nodes.clone()).await;
    let dry = DrainSpec {
        dry_run: true,
        ..spec()
    };
    let view = c.start_drain(None, dry).await.expect("dry run");
    assert!(view.job.id.is_empty());
    assert_eq!(view.counts.pending, 3);
    assert!(c.list_drains().await.expect("list").is_empty());
    assert!(nodes.started().is_empty());
    let empty = c.start_drain(None, DrainSpec::of("new")).await;
    assert!(
        matches!(
            &empty,
            Err(crate::error::ControllerError::NothingToDrain { .. })
        ),
        "{empty:?}"
    );
    assert!(matches!(
        c.get_drain("d-none").await,
        Err(crate::error::ControllerError::UnknownDrain(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stopped_guest_is_sent_as_one_disk_moved_offline_if_still_stopped() {
    let (_dir, store, nodes) = setup(false);
    let c = controller(store, nodes.clone()).await;
    let spec = DrainSpec {
        include_stopped: true,
        ..spec()
    };
    let view = c.start_drain(Some("op"), spec).await.expect("start");
    let done = until(&c, &view.job.id, |v| v.job.is_finished()).await;
    assert_eq!(done.counts.done, 4, "{:?}", done.job.items);
    let sent: Vec<Order> = nodes
        .started()
        .into_iter()
        .filter(|(_, o)| o.domain == "vm5")
        .map(|(_, o)| o)
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].offline_if_stopped, "{:?}", sent[0]);
    assert_eq!(sent[0].disk, "vda");
    assert!(sent[0].disks.is_empty(), "{:?}", sent[0]);
    // The running guests' orders stay live-only.
    assert!(nodes
        .started()
        .iter()
        .filter(|(_, o)| o.domain != "vm5")
        .all(|(_, o)| !o.offline_if_stopped));
}
