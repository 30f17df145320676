//! Placement: which storage pool a disk should move to, and why every other
//! pool was not chosen.
//!
//! Pure functions over plain values, so that a placement can be explained,
//! replayed and tested without a cluster: the controller hands in the disk, its
//! pool inventory and a policy per pool, and gets back a [`PlacementPlan`] with a
//! [`Decision`] for every pool. `PlanMigration` shows that plan as it is.
//!
//! # Pipeline
//!
//! Each pool is run through the rules of [`Rule::ALL`], in this order; the first
//! rule that fails rejects the pool with an operator-readable reason carrying
//! the numbers behind it:
//!
//! 1. `inactive`: the pool is not running.
//! 2. `source_pool`: it is the storage the disk is on now (same `storage_id`).
//! 3. `maintenance`: an operator put the pool in maintenance
//!    (`SetPoolMaintenance`); the reason says since when, who and why.
//! 4. `unreachable`: the node running the domain cannot reach it.
//! 5. `incompatible_type`: volmig cannot write to this pool type. It writes to
//!    `dir`, `fs`, `netfs` (file), `logical`, `disk`, `iscsi` (block) and `rbd`.
//! 6. `incompatible_format`: qcow2 was asked for on a block or rbd pool, which
//!    hold raw volumes only; or the disk is tracked by checkpoints and would
//!    become raw there (only qcow2 holds their dirty bitmaps).
//! 7. `capacity_unknown`: the pool reports a capacity of 0 (an rbd pool without
//!    ceph-mgr statistics), so its free space cannot be checked.
//! 8. `used_threshold`: the bytes the disk needs exceed what the pool has
//!    available, or would take the pool above its used threshold (default
//!    85 %): `(allocation + needed) / capacity > used_threshold`.
//! 9. `overprovisioned`: only when the pool's policy sets a factor:
//!    `(provisioned + virtual_size) / capacity > factor`.
//! 10. `missing_tag`: the pool lacks a tag the request requires.
//! 11. `in_flight_limit`: the pool already has its maximum of migrations
//!     writing to it.
//!
//! # Space accounting
//!
//! The bytes a disk needs depend on the destination, because that is what the
//! copy will allocate there: file and rbd pools keep the copy as sparse as the
//! source, so they need the disk's **allocation**; block pools (`logical`,
//! `disk`, `iscsi`) allocate a volume of the full **virtual size**.
//!
//! # Score
//!
//! An accepted pool's score is the number of bytes it has free after the
//! placement, `available - needed`: higher is better, so the pool left with
//! the most room is chosen. Ties go to the pool with fewer migrations in
//! flight, then to the lexicographically smaller `storage_id`.
//!
//! # Invariants
//!
//! - Every input pool appears exactly once in [`PlacementPlan::decisions`]: accepted
//!   pools first, best first, then rejected pools ordered by `storage_id`.
//! - The plan depends only on the set of pools, not their order, as long as
//!   `storage_id` is unique (the inventory lists a shared pool once).
//! - [`check_named`] gives a pool the caller named exactly the verdict [`plan`]
//!   gives it, so naming a pool never bypasses a rule silently.

mod inputs;
mod plan;
mod rules;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use inputs::{DiskToPlace, LayerToPlace, PoolCandidate, PoolMaintenance, PoolPolicy};
pub use plan::{check_named, plan, Decision, Fit, PlacementPlan, PoolVerdict, Rejection};
pub use rules::Rule;
