//! What a watcher of a drain sees: the job as recorded, counts by state,
//! bytes done and remaining, and the running items' progress.

use serde::{Deserialize, Serialize};

use super::model::{DrainJob, ItemState};

/// How far a running item's copy is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ItemProgress {
    /// The item's index in the plan.
    pub index: usize,
    /// The guest.
    pub domain: String,
    /// Its migration.
    pub migration_id: String,
    /// Bytes copied.
    pub bytes_done: u64,
    /// Bytes to copy.
    pub bytes_total: u64,
    /// Its share of the budget, bytes/s (0: unlimited).
    pub bandwidth: u64,
}

/// Items per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Not started.
    pub pending: u32,
    /// Migrating.
    pub running: u32,
    /// Moved.
    pub done: u32,
    /// Given up.
    pub failed: u32,
    /// Skipped.
    pub skipped: u32,
}

/// A drain as a watcher sees it: the job and the live progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainView {
    /// The job as recorded.
    pub job: DrainJob,
    /// Items per state.
    pub counts: Counts,
    /// Bytes of the items done.
    pub bytes_done: u64,
    /// Bytes of the items not done yet (running ones count what is left).
    pub bytes_remaining: u64,
    /// The running items' progress (empty where the executor does not run).
    pub running: Vec<ItemProgress>,
}

impl DrainView {
    /// The view of `job`, with the executor's progress of running items.
    pub fn of(job: DrainJob, running: Vec<ItemProgress>) -> DrainView {
        let mut counts = Counts::default();
        let (mut done, mut remaining) = (0u64, 0u64);
        for (state, item) in job.items.iter().zip(&job.plan.items) {
            match state {
                ItemState::Pending { .. } => {
                    counts.pending += 1;
                    remaining += item.bytes();
                }
                ItemState::Running { .. } => {
                    counts.running += 1;
                    remaining += item.bytes();
                }
                ItemState::Done { bytes, .. } => {
                    counts.done += 1;
                    done += bytes;
                }
                ItemState::Failed { .. } => counts.failed += 1,
                ItemState::Skipped { .. } => counts.skipped += 1,
            }
        }
        // A running copy's own figures are finer than its plan's bytes.
        for p in &running {
            done += p.bytes_done;
            remaining = remaining.saturating_sub(p.bytes_done);
        }
        DrainView {
            job,
            counts,
            bytes_done: done,
            bytes_remaining: remaining,
            running,
        }
    }
}
