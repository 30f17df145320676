//! Where a migration is ([`Phase`]), and the clock every record is stamped with:
//! shared by the node's engine and the controller, which reports the node's
//! phases and keeps their history.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a migration is. The declaration order is the order of a successful run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Recorded; nothing done yet.
    Accepted,
    /// Checking the request against the host.
    Validating,
    /// Creating the destination volume.
    PreparingDestination,
    /// The block copy runs.
    Copying,
    /// Source and destination are in sync.
    Synchronized,
    /// Switching the guest to the destination.
    Pivoting,
    /// Checking live and persistent definitions.
    Verifying,
    /// Deleting the source if asked.
    CleaningUp,
    /// Done: the guest runs on the destination.
    Completed,
    /// Ended with an error.
    Failed,
    /// Ended by a cancel or timeout.
    Cancelled,
}

impl Phase {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }

    /// Whether the guest may already be on the destination, so that a failure can
    /// no longer be rolled back.
    pub fn past_pivot(self) -> bool {
        matches!(
            self,
            Phase::Pivoting | Phase::Verifying | Phase::CleaningUp | Phase::Completed
        )
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Validating => "validating",
            Phase::PreparingDestination => "preparing destination",
            Phase::Copying => "copying",
            Phase::Synchronized => "synchronized",
            Phase::Pivoting => "pivoting",
            Phase::Verifying => "verifying",
            Phase::CleaningUp => "cleaning up",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
