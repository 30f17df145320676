//! Placing several disks of one domain in one request.
//!
//! Each disk is judged by the same rules as a single disk ([`placement::plan`]),
//! one after another, and a pool chosen for one disk counts that disk when the
//! next is judged: its bytes are no longer available and one more migration
//! writes to it. So two disks that each fit a pool alone are not both sent to
//! a pool that holds only one of them, and a pool's in-flight limit counts
//! every disk. With `same_pool`, the first pool (in the first disk's order of
//! preference) that takes every disk is chosen for all of them.

use std::collections::HashMap;

use crate::placement::{self, DiskToPlace, PlacementPlan, PoolCandidate, PoolPolicy};
use volmig_types::host::{pool_disk_kind, space_needed, DiskKind};

/// One disk to place and the pools it may go to (all that its node reaches,
/// or the one the caller named for it).
#[derive(Debug, Clone)]
pub struct DiskChoices {
    /// The disk.
    pub disk: DiskToPlace,
    /// Its candidate pools.
    pub pools: Vec<PoolCandidate>,
}

/// A plan per disk, in the disks' order. With `same_pool`, every disk's
/// chosen pool is the same one, or the plans show why no pool takes them all
/// (each disk judged on the first disk's best pool).
pub fn plan_together(
    disks: &[DiskChoices],
    policy: impl Fn(&PoolCandidate) -> PoolPolicy,
    same_pool: bool,
) -> Vec<PlacementPlan> {
    let Some(first) = disks.first() else {
        return Vec::new();
    };
    if !same_pool {
        return in_turn(disks, &policy, None);
    }
    let preference = placement::plan(&first.disk, &first.pools, &policy);
    let accepted = preference
        .decisions
        .iter()
        .filter(|d| matches!(d.verdict, placement::PoolVerdict::Accepted(_)));
    for pool in accepted {
        let plans = in_turn(disks, &policy, Some(&pool.storage_id));
        let all_there = plans
            .iter()
            .all(|p| p.chosen().is_some_and(|c| c.storage_id == pool.storage_id));
        if all_there {
            return plans;
        }
    }
    let best = preference.chosen().map(|d| d.storage_id.clone());
    match best {
        Some(best) => in_turn(disks, &policy, Some(&best)),
        None => in_turn(disks, &policy, None),
    }
}

/// What the disks placed so far take from a pool (also across the items of
/// a drain, each placed after the ones before it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Bytes the copies will allocate.
    pub(crate) bytes: u64,
    /// Virtual bytes they provision.
    pub(crate) virtual_bytes: u64,
    /// Migrations writing to it.
    pub(crate) migrations: u32,
}

impl Taken {
    /// Counts `disk` placed on `pool`.
    pub(crate) fn add(&mut self, pool: &PoolCandidate, disk: &DiskToPlace) {
        let kind = pool_disk_kind(&pool.pool_type).unwrap_or(DiskKind::Block);
        self.bytes += space_needed(kind, disk.virtual_size, disk.copy_allocation());
        self.virtual_bytes += disk.virtual_size;
        self.migrations += 1;
    }
}

/// Plans each disk after the ones before it, only on pool `only` if given.
fn in_turn(
    disks: &[DiskChoices],
    policy: &impl Fn(&PoolCandidate) -> PoolPolicy,
    only: Option<&str>,
) -> Vec<PlacementPlan> {
    let mut taken: HashMap<String, Taken> = HashMap::new();
    disks
        .iter()
        .map(|choices| {
            let pools: Vec<PoolCandidate> = choices
                .pools
                .iter()
                .filter(|p| only.is_none_or(|o| p.storage_id == o))
                .map(|p| less(p, taken.get(&p.storage_id).copied().unwrap_or_default()))
                .collect();
            let plan = placement::plan(&choices.disk, &pools, policy);
            let chosen = plan
                .chosen()
                .and_then(|c| pools.iter().find(|p| p.storage_id == c.storage_id));
            if let Some(pool) = chosen {
                taken
                    .entry(pool.storage_id.clone())
                    .or_default()
                    .add(pool, &choices.disk);
            }
            plan
        })
        .collect()
}

/// The pool as it will be once `taken` is placed on it.
pub(crate) fn less(pool: &PoolCandidate, taken: Taken) -> PoolCandidate {
    PoolCandidate {
        available: pool.available.saturating_sub(taken.bytes),
        allocation: pool.allocation.saturating_add(taken.bytes),
        provisioned: pool.provisioned.saturating_add(taken.virtual_bytes),
        in_flight: pool.in_flight.saturating_add(taken.migrations),
        ..pool.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn pool(id: &str, available: u64) -> PoolCandidate {
        PoolCandidate {
            storage_id: id.to_string(),
            name: id.to_string(),
            pool_type: "dir".to_string(),
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

    fn disk(allocation: u64) -> DiskToPlace {
        DiskToPlace {
            node_id: "n1".to_string(),
            source_storage_id: "src".to_string(),
            virtual_size: allocation,
            allocation,
            requested_format: None,
            required_tags: Vec::new(),
            shallow_layers: Vec::new(),
            flattened_layers: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    fn choices(allocation: u64, pools: &[PoolCandidate]) -> DiskChoices {
        DiskChoices {
            disk: disk(allocation),
            pools: pools.to_vec(),
        }
    }

    fn chosen(plans: &[PlacementPlan]) -> Vec<Option<&str>> {
        plans
            .iter()
            .map(|p| p.chosen().map(|d| d.storage_id.as_str()))
            .collect()
    }

    /// The default policy: a pool may be filled to 85 %.
    fn policy(_: &PoolCandidate) -> PoolPolicy {
        PoolPolicy::default()
    }

    #[test]
    fn a_flattened_chain_counts_every_layer_for_the_next_disk() {
        // Each pool has room for one flattened 30 GiB chain (1 GiB top on a
        // 29 GiB layer) under the 85 % threshold, not two; the tops alone
        // would both fit on "big".
        let pools = [pool("big", 50 * GIB), pool("small", 48 * GIB)];
        let chained = || DiskChoices {
            disk: DiskToPlace {
                virtual_size: 30 * GIB,
                flattened_layers: vec![29 * GIB],
                ..disk(GIB)
            },
            pools: pools.to_vec(),
        };
        assert_eq!(
            chosen(&plan_together(&[chained(), chained()], policy, false)),
            [Some("big"), Some("small")]
        );
    }

    #[test]
    fn a_pool_chosen_for_one_disk_counts_it_for_the_next() {
        // Each has room for one 30 GiB disk under the 85 % threshold, not two.
        let pools = [pool("big", 50 * GIB), pool("small", 48 * GIB)];
        let disks = [choices(30 * GIB, &pools), choices(30 * GIB, &pools)];
        assert_eq!(
            chosen(&plan_together(&disks, policy, false)),
            [Some("big"), Some("small")]
        );
    }

    #[test]
    fn same_pool_keeps_disks_together_that_would_otherwise_spread() {
        let pools = [pool("big", 50 * GIB), pool("roomy", 45 * GIB)];
        let disks = [choices(12 * GIB, &pools), choices(12 * GIB, &pools)];
        // After the first disk, "roomy" has the most room left for the second.
        assert_eq!(
            chosen(&plan_together(&disks, policy, false)),
            [Some("big"), Some("roomy")]
        );
        assert_eq!(
            chosen(&plan_together(&disks, policy, true)),
            [Some("big"), Some("big")]
        );
    }

    #[test]
    fn same_pool_says_which_disk_no_pool_can_take_with_the_others() {
        let pools = [pool("big", 50 * GIB), pool("small", 40 * GIB)];
        let disks = [choices(30 * GIB, &pools), choices(30 * GIB, &pools)];
        let plans = plan_together(&disks, policy, true);
        assert_eq!(chosen(&plans), [Some("big"), None]);
        assert!(matches!(
            plans[1].decisions[0].verdict,
            placement::PoolVerdict::Rejected(_)
        ));
    }

    #[test]
    fn in_flight_limits_count_every_disk() {
        let pools = [pool("a", 90 * GIB), pool("b", 80 * GIB)];
        let limited = |_: &PoolCandidate| PoolPolicy {
            max_in_flight: Some(1),
            ..PoolPolicy::default()
        };
        let disks = [choices(GIB, &pools), choices(GIB, &pools)];
        assert_eq!(
            chosen(&plan_together(&disks, limited, false)),
            [Some("a"), Some("b")]
        );
    }
}
