//! The drain's plan and grouping, as pure functions.

use std::collections::BTreeMap;

use super::enumerate::{group, resolve_pool};
use super::model::{OrderPolicy, Unmovable};
use super::plan::{plan, DiskToMove, Found, Guest};
use crate::error::ControllerError;
use crate::group_placement::DiskChoices;
use crate::inventory::ClusterPool;
use crate::model::{DiskInfo, PoolInfo, PoolVolumeInfo, VolumeUseInfo};
use crate::placement::{DiskToPlace, PoolCandidate, PoolPolicy};

const GIB: u64 = 1 << 30;

fn pool(id: &str, pool_type: &str, available: u64) -> PoolCandidate {
    PoolCandidate {
        storage_id: id.to_string(),
        name: id.to_string(),
        pool_type: pool_type.to_string(),
        active: true,
        capacity: 100 * GIB,
        allocation: 100 * GIB - available,
        available,
        provisioned: 0,
        reachable_from: vec!["n1".to_string()],
        tags: Vec::new(),
        in_flight: 0,
        maintenance: None,
    }
}

fn disk(target: &str, allocation: u64, pools: &[PoolCandidate]) -> DiskToMove {
    DiskToMove {
        info: DiskInfo {
            target: target.to_string(),
            device: "disk".to_string(),
            source: format!("/old/{target}"),
            pool: "old".to_string(),
            volume: format!("{target}.qcow2"),
            capacity: allocation,
            allocation,
            ..DiskInfo::default()
        },
        choices: DiskChoices {
            disk: DiskToPlace {
                node_id: "n1".to_string(),
                source_storage_id: "old".to_string(),
                virtual_size: allocation,
                allocation,
                requested_format: None,
                required_tags: Vec::new(),
                shallow_layers: Vec::new(),
                flattened_layers: Vec::new(),
                checkpoints: Vec::new(),
            },
            pools: pools.to_vec(),
        },
    }
}

fn guest(domain: &str, disks: Vec<DiskToMove>) -> Guest {
    Guest {
        node_id: "n1".to_string(),
        domain: domain.to_string(),
        disks,
        offline: false,
    }
}

fn found(guests: Vec<Guest>) -> Found {
    Found {
        storage_id: "old".to_string(),
        guests,
        left: Vec::new(),
    }
}

fn policy(_: &PoolCandidate) -> PoolPolicy {
    PoolPolicy::default()
}

fn placed(found: Found, order: OrderPolicy) -> Vec<(String, Vec<String>)> {
    plan(found, policy, order)
        .items
        .into_iter()
        .map(|i| {
            let pools = i.disks.iter().map(|d| d.dest_storage_id.clone()).collect();
            (i.domain, pools)
        })
        .collect()
}

#[test]
fn each_guest_sees_what_the_ones_before_it_took() {
    // Each pool has room for one 30 GiB guest under 85 %, not two.
    let pools = [pool("big", "dir", 50 * GIB), pool("small", "dir", 48 * GIB)];
    let guests = vec![
        guest("a", vec![disk("vda", 30 * GIB, &pools)]),
        guest("b", vec![disk("vda", 30 * GIB, &pools)]),
    ];
    assert_eq!(
        placed(found(guests), OrderPolicy::LargestFirst),
        [
            ("a".to_string(), vec!["big".to_string()]),
            ("b".to_string(), vec!["small".to_string()])
        ]
    );
}

#[test]
fn two_guests_never_both_take_the_last_room() {
    let pools = [pool("only", "dir", 50 * GIB)];
    let guests = vec![
        guest("a", vec![disk("vda", 30 * GIB, &pools)]),
        guest("b", vec![disk("vda", 30 * GIB, &pools)]),
    ];
    let p = plan(found(guests), policy, OrderPolicy::LargestFirst);
    assert_eq!(p.items.len(), 1);
    assert_eq!(p.left.len(), 1);
    let left = &p.left[0];
    assert_eq!(left.domain, "b");
    let Unmovable::NoPoolFits { disk, refusal } = &left.reason else {
        panic!("no pool fits: {:?}", left.reason);
    };
    assert_eq!(disk, "vda");
    assert!(refusal.starts_with("used_threshold"), "{refusal}");
    // The projection counts only what moves.
    assert_eq!(p.projections.len(), 1);
    let only = &p.projections[0];
    assert_eq!((only.items, only.bytes), (1, 30 * GIB));
    assert!((only.used_before - 0.5).abs() < 1e-9);
    assert!((only.used_after - 0.8).abs() < 1e-9);
}

#[test]
fn a_guests_disks_are_placed_together() {
    let pools = [pool("p", "dir", 50 * GIB), pool("q", "dir", 45 * GIB)];
    let guests = vec![guest(
        "a",
        vec![disk("vda", 20 * GIB, &pools), disk("vdb", 20 * GIB, &pools)],
    )];
    assert_eq!(
        placed(found(guests), OrderPolicy::LargestFirst),
        [("a".to_string(), vec!["p".to_string(), "q".to_string()])]
    );
}

#[test]
fn the_order_policy_orders_the_items() {
    let pools = [pool("p", "dir", 90 * GIB)];
    let guests = || {
        vec![
            guest("mid", vec![disk("vda", 2 * GIB, &pools)]),
            guest("big", vec![disk("vda", 3 * GIB, &pools)]),
            guest("small", vec![disk("vda", GIB, &pools)]),
            guest("also-mid", vec![disk("vda", 2 * GIB, &pools)]),
        ]
    };
    let names = |order| -> Vec<String> {
        placed(found(guests()), order)
            .into_iter()
            .map(|(d, _)| d)
            .collect()
    };
    assert_eq!(
        names(OrderPolicy::LargestFirst),
        ["big", "also-mid", "mid", "small"]
    );
    assert_eq!(
        names(OrderPolicy::SmallestFirst),
        ["small", "also-mid", "mid", "big"]
    );
}

#[test]
fn checkpoints_never_go_onto_a_raw_only_pool() {
    let pools = [pool("lvm", "logical", 90 * GIB)];
    let mut d = disk("vda", GIB, &pools);
    d.choices.disk.checkpoints = vec!["c1".to_string()];
    let p = plan(
        found(vec![guest("a", vec![d])]),
        policy,
        OrderPolicy::LargestFirst,
    );
    let Unmovable::NoPoolFits { refusal, .. } = &p.left[0].reason else {
        panic!("no pool fits");
    };
    assert!(refusal.starts_with("incompatible_format"), "{refusal}");
}

fn used(domain: &str, disk: &str, running: bool, backing: bool) -> VolumeUseInfo {
    VolumeUseInfo {
        domain: domain.to_string(),
        running,
        disk: disk.to_string(),
        backing,
    }
}

fn volume(name: &str, users: Vec<VolumeUseInfo>) -> PoolVolumeInfo {
    PoolVolumeInfo {
        name: name.to_string(),
        users,
        ..PoolVolumeInfo::default()
    }
}

#[test]
fn a_shared_pool_counts_each_guest_once_where_it_runs() {
    // n1 runs "a" (two disks); n2 has it defined (not running) and runs "b".
    let listed = BTreeMap::from([
        (
            "n1".to_string(),
            vec![
                volume("a-1", vec![used("a", "vda", true, false)]),
                volume("a-2", vec![used("a", "vdb", true, false)]),
                volume("b-1", Vec::new()),
            ],
        ),
        (
            "n2".to_string(),
            vec![
                volume("a-1", vec![used("a", "vda", false, false)]),
                volume("a-2", vec![used("a", "vdb", false, false)]),
                volume("b-1", vec![used("b", "vda", true, false)]),
            ],
        ),
    ]);
    let (guests, left) = group(&listed);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(guests.len(), 2);
    let a = &guests["a"];
    assert_eq!(a.running_on.iter().collect::<Vec<_>>(), ["n1"]);
    assert_eq!(a.disks["n1"].len(), 2);
    assert_eq!(a.volumes.len(), 2);
    assert_eq!(guests["b"].running_on.iter().collect::<Vec<_>>(), ["n2"]);
}

#[test]
fn volumes_without_a_top_user_stay_with_their_reason() {
    let listed = BTreeMap::from([(
        "n1".to_string(),
        vec![
            volume("base", vec![used("a", "vda", true, true)]),
            volume("orphan", Vec::new()),
            volume("top", vec![used("a", "vda", true, false)]),
        ],
    )]);
    let (guests, left) = group(&listed);
    assert_eq!(guests.len(), 1);
    let reasons: Vec<(&str, &Unmovable)> = left
        .iter()
        .map(|l| (l.volumes[0].as_str(), &l.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("base", &Unmovable::BackingOnly),
            ("orphan", &Unmovable::NoUser)
        ]
    );
    assert!(Unmovable::NoUser
        .to_string()
        .contains("something outside libvirt may own it"));
}

fn cluster_pool(storage_id: &str, names: &[(&str, &str)]) -> ClusterPool {
    ClusterPool {
        storage_id: storage_id.to_string(),
        pool: PoolInfo::default(),
        names: names
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect(),
    }
}

#[test]
fn a_pool_is_named_by_storage_id_or_an_unambiguous_name() {
    let pools = [
        cluster_pool("local:n1", &[("n1", "default")]),
        cluster_pool("local:n2", &[("n2", "default")]),
        cluster_pool("nfs:x", &[("n1", "shared"), ("n2", "nfs")]),
    ];
    let found = |w: &str| resolve_pool(&pools, w).map(|p| p.storage_id.clone());
    assert_eq!(found("nfs").ok().as_deref(), Some("nfs:x"));
    assert_eq!(found("local:n2").ok().as_deref(), Some("local:n2"));
    assert!(matches!(
        found("default"),
        Err(ControllerError::AmbiguousPool { .. })
    ));
    assert!(matches!(
        found("nope"),
        Err(ControllerError::UnknownPool(_))
    ));
}

#[test]
fn earlier_guests_are_not_counted_in_flight_the_executor_keeps_that_limit() {
    let pools = [pool("p", "dir", 90 * GIB)];
    let guests = vec![
        guest("a", vec![disk("vda", GIB, &pools)]),
        guest("b", vec![disk("vda", GIB, &pools)]),
    ];
    let one_at_a_time = |_: &PoolCandidate| PoolPolicy {
        max_in_flight: Some(1),
        ..PoolPolicy::default()
    };
    let p = plan(found(guests), one_at_a_time, OrderPolicy::LargestFirst);
    assert_eq!(p.items.len(), 2, "{:?}", p.left);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// However many guests and pools: every guest is planned or left,
        /// and no destination ends above its threshold, because each guest
        /// sees what the earlier ones took.
        #[test]
        fn no_destination_is_filled_past_its_threshold(
            free in proptest::collection::vec(1u64..100, 1..4),
            sizes in proptest::collection::vec(1u64..40, 0..12),
        ) {
            let pools: Vec<PoolCandidate> = free
                .iter()
                .enumerate()
                .map(|(i, f)| pool(&format!("p{i}"), "dir", f * GIB))
                .collect();
            let guests: Vec<Guest> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| guest(&format!("g{i:02}"), vec![disk("vda", s * GIB, &pools)]))
                .collect();
            let p = plan(found(guests), policy, OrderPolicy::LargestFirst);
            prop_assert_eq!(p.items.len() + p.left.len(), sizes.len());
            for projection in &p.projections {
                prop_assert!(
                    projection.used_after <= PoolPolicy::DEFAULT_USED_THRESHOLD + 1e-9,
                    "{:?}",
                    projection
                );
            }
        }
    }
}
