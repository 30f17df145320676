//! What the job has decided about being stopped and about the copy's bandwidth.

/// Why a job stops before its pivot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StopReason {
    Cancelled,
    TimedOut(u64),
    /// Another disk of the group failed.
    MemberFailed {
        disk: String,
        reason: String,
    },
}

/// What a SetBandwidth acts on, from the COPYING event on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CopyControl {
    /// COPYING has not been announced (or the copy is over): refused.
    NotAnnounced,
    /// COPYING is announced but no block job can be changed (it is not
    /// issued yet, is being issued again, or a recovered one is not yet
    /// confirmed): the new bandwidth is recorded, and the copy is issued with
    /// it or given it once it runs (see [`Ctx::copy_runs`]).
    Pending,
    /// The block job runs: its speed is changed in place.
    Running,
}
