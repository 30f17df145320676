//! The drain's plan, a pure function of what enumeration found: each guest
//! is placed with the existing placement (all its disks together,
//! [`group_placement::plan_together`]) after the guests before it, seeing
//! what they add to each destination (allocated and provisioned bytes), so
//! two guests never both take a pool's last room. The earlier guests are
//! not counted as in flight: they do not all run at once, and the executor
//! keeps each pool's `max_in_flight` (and the drain's own limits) when it
//! starts them; counting them would refuse every guest past a pool's limit.

use std::collections::BTreeMap;

use super::model::{
    DrainPlan, LeftBehind, OrderPolicy, PlannedDisk, PlannedItem, Projection, Unmovable,
};
use crate::group_placement::{self, less, DiskChoices, Taken};
use crate::model::DiskInfo;
use crate::placement::{PoolCandidate, PoolPolicy, PoolVerdict};
use crate::start::first_refusal;

/// One disk of a guest on the drained pool, and the pools it may go to.
#[derive(Debug, Clone)]
pub(crate) struct DiskToMove {
    /// The disk as its node reports it.
    pub(crate) info: DiskInfo,
    /// The disk as placement sees it, and its candidate pools.
    pub(crate) choices: DiskChoices,
}

/// A guest running on a node with disks on the drained pool.
#[derive(Debug, Clone)]
pub(crate) struct Guest {
    /// The node running it.
    pub(crate) node_id: String,
    /// The guest.
    pub(crate) domain: String,
    /// Its disks on the pool.
    pub(crate) disks: Vec<DiskToMove>,
    /// It is stopped: moved offline.
    pub(crate) offline: bool,
}

impl Guest {
    fn bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.info.allocation).sum()
    }
}

/// What enumeration found on the pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct Found {
    /// The drained pool's storage id.
    pub(crate) storage_id: String,
    /// Guests that may move.
    pub(crate) guests: Vec<Guest>,
    /// What cannot move, whatever the destinations.
    pub(crate) left: Vec<LeftBehind>,
}

/// What the earlier guests take from pool `storage_id`, bytes only (see
/// the module docs for why not their migrations).
fn earlier(taken: &BTreeMap<String, Taken>, storage_id: &str) -> Taken {
    let t = taken.get(storage_id).copied().unwrap_or_default();
    Taken { migrations: 0, ..t }
}

/// Plans `found`: guests in the order `order` asks (ties by domain name),
/// each placed after the ones before it.
pub(crate) fn plan(
    mut found: Found,
    policy: impl Fn(&PoolCandidate) -> PoolPolicy,
    order: OrderPolicy,
) -> DrainPlan {
    found.guests.sort_by(|a, b| {
        let by_size = match order {
            OrderPolicy::LargestFirst => b.bytes().cmp(&a.bytes()),
            OrderPolicy::SmallestFirst => a.bytes().cmp(&b.bytes()),
        };
        by_size.then_with(|| a.domain.cmp(&b.domain))
    });
    let mut taken: BTreeMap<String, Taken> = BTreeMap::new();
    // Each destination as first seen (before this drain), for projections.
    let mut seen: BTreeMap<String, (PoolCandidate, u32)> = BTreeMap::new();
    let mut items = Vec::new();
    let mut left = found.left;
    for guest in found.guests {
        let choices: Vec<DiskChoices> = guest
            .disks
            .iter()
            .map(|d| DiskChoices {
                disk: d.choices.disk.clone(),
                pools: d
                    .choices
                    .pools
                    .iter()
                    .map(|p| less(p, earlier(&taken, &p.storage_id)))
                    .collect(),
            })
            .collect();
        let plans = group_placement::plan_together(&choices, &policy, false);
        let refused = guest
            .disks
            .iter()
            .zip(&plans)
            .find(|(_, p)| p.chosen().is_none());
        if let Some((disk, p)) = refused {
            left.push(LeftBehind {
                node_id: guest.node_id.clone(),
                domain: guest.domain.clone(),
                volumes: guest.disks.iter().map(|d| d.info.volume.clone()).collect(),
                reason: Unmovable::NoPoolFits {
                    disk: disk.info.target.clone(),
                    refusal: first_refusal(p),
                },
            });
            continue;
        }
        let mut disks = Vec::new();
        let mut destinations = Vec::new();
        for (disk, p) in guest.disks.iter().zip(&plans) {
            let Some(chosen) = p.chosen() else { continue };
            let Some(pool) = disk
                .choices
                .pools
                .iter()
                .find(|c| c.storage_id == chosen.storage_id)
            else {
                continue;
            };
            taken
                .entry(pool.storage_id.clone())
                .or_default()
                .add(pool, &disk.choices.disk);
            let entry = seen
                .entry(pool.storage_id.clone())
                .or_insert_with(|| (pool.clone(), 0));
            if !destinations.contains(&pool.storage_id) {
                destinations.push(pool.storage_id.clone());
                entry.1 += 1;
            }
            let free_after = match chosen.verdict {
                PoolVerdict::Accepted(fit) => fit.free_after,
                PoolVerdict::Rejected(_) => 0,
            };
            disks.push(PlannedDisk {
                target: disk.info.target.clone(),
                source_pool: disk.info.pool.clone(),
                volume: disk.info.volume.clone(),
                source: disk.info.source.clone(),
                capacity: disk.info.capacity,
                allocation: disk.info.allocation,
                format: disk.info.format,
                dest_storage_id: pool.storage_id.clone(),
                dest_pool: pool.name.clone(),
                free_after,
            });
        }
        items.push(PlannedItem {
            node_id: guest.node_id,
            domain: guest.domain,
            disks,
            offline: guest.offline,
        });
    }
    let projections = seen
        .into_values()
        .map(|(pool, n)| {
            let t = taken.get(&pool.storage_id).copied().unwrap_or_default();
            let used = |bytes: u64| {
                if pool.capacity == 0 {
                    0.0
                } else {
                    bytes as f64 / pool.capacity as f64
                }
            };
            Projection {
                storage_id: pool.storage_id.clone(),
                name: pool.name.clone(),
                items: n,
                bytes: t.bytes,
                used_before: used(pool.allocation),
                used_after: used(pool.allocation.saturating_add(t.bytes)),
            }
        })
        .collect();
    DrainPlan {
        storage_id: found.storage_id,
        items,
        left,
        projections,
    }
}
