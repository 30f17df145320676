//! Where the job stands as far as commands, the timeout and a group abort
//! are concerned: one state, moved only by the methods of [`Control`], each
//! of which refuses the moves its rule forbids.

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

/// Whether a block job can take a new speed while COPYING is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Copy {
    /// No block job can be changed (it is not issued yet, is being issued
    /// again, or a recovered one is not yet confirmed): a new bandwidth is
    /// recorded, and the copy is issued with it or given it once it runs
    /// (see `Ctx::copy_runs`).
    Pending,
    /// The block job runs: its speed is changed in place.
    Running,
}

/// The job's control state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Control {
    /// Validating and preparing the destination: cancel and the timeout
    /// apply; a bandwidth change waits for the COPYING event.
    Preparing,
    /// COPYING is announced: a bandwidth change is accepted.
    Copying(Copy),
    /// Stopping before the pivot, for the first reason that came.
    Stopping(StopReason),
    /// The pivot has begun: cancel and the timeout no longer apply.
    Pivoting,
    /// Recording a failure (rolling back), with what was true when it began.
    Ending {
        stop: Option<StopReason>,
        after_pivot: bool,
    },
}

/// Why a command is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    PivotBegun,
    AlreadyFailing,
    NotCopying,
    Stopping,
    CopyNotAnnounced,
}

impl Refusal {
    /// What the caller is told (after "migration ID is PHASE: ").
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refusal::PivotBegun => "the pivot has begun: the guest is being switched to the destination and the migration can no longer be cancelled",
            Refusal::AlreadyFailing => "it is already failing and being rolled back",
            Refusal::NotCopying => "bandwidth can only be changed while copying",
            Refusal::Stopping => "it is stopping",
            Refusal::CopyNotAnnounced => "the copy has not begun: wait for the COPYING event",
        }
    }
}

impl Control {
    /// Where a job starts, from the stage its record was journaled in: a
    /// recovered copy is announced already (and confirmed running, or not, by
    /// recovery), a recovered pivot has begun.
    pub(super) fn resumed(mirroring: bool, pivoted: bool) -> Control {
        if pivoted {
            Control::Pivoting
        } else if mirroring {
            Control::Copying(Copy::Pending)
        } else {
            Control::Preparing
        }
    }

    /// Whether cancel, the timeout and a group abort still stop the job.
    pub(super) fn interruptible(&self) -> bool {
        matches!(self, Control::Preparing | Control::Copying(_))
    }

    /// Why the job must stop, if it must.
    pub(super) fn stop_reason(&self) -> Option<&StopReason> {
        match self {
            Control::Stopping(why)
            | Control::Ending {
                stop: Some(why), ..
            } => Some(why),
            _ => None,
        }
    }

    pub(super) fn pivot_begun(&self) -> bool {
        matches!(
            self,
            Control::Pivoting
                | Control::Ending {
                    after_pivot: true,
                    ..
                }
        )
    }

    /// The timeout fired or the group was aborted: the job stops, unless it
    /// is past stopping. Says whether this reason is the one it stops for.
    pub(super) fn stop(&mut self, why: StopReason) -> bool {
        if !self.interruptible() {
            return false;
        }
        *self = Control::Stopping(why);
        true
    }

    /// CancelMigration. `group_refused`: the job's group has committed to
    /// its pivots. Cancelling a job that stops already is accepted, and it
    /// stops for its first reason.
    pub(super) fn cancel(&mut self, group_refused: bool) -> Result<(), Refusal> {
        if group_refused {
            return Err(Refusal::PivotBegun);
        }
        match self {
            Control::Pivoting
            | Control::Ending {
                after_pivot: true, ..
            } => Err(Refusal::PivotBegun),
            Control::Preparing | Control::Copying(_) => {
                *self = Control::Stopping(StopReason::Cancelled);
                Ok(())
            }
            Control::Stopping(_)
            | Control::Ending {
                stop: Some(StopReason::Cancelled),
                ..
            } => Ok(()),
            Control::Ending { .. } => Err(Refusal::AlreadyFailing),
        }
    }

    /// SetBandwidth: what the new speed acts on, or why it is refused.
    pub(super) fn bandwidth(&self) -> Result<Copy, Refusal> {
        match self {
            Control::Pivoting
            | Control::Ending {
                after_pivot: true, ..
            } => Err(Refusal::NotCopying),
            Control::Stopping(_) | Control::Ending { .. } => Err(Refusal::Stopping),
            Control::Preparing => Err(Refusal::CopyNotAnnounced),
            Control::Copying(copy) => Ok(*copy),
        }
    }

    /// COPYING is about to be announced, or the copy is being issued again:
    /// from now on a bandwidth change is recorded for it. Refused once the
    /// job stops.
    pub(super) fn copy_announced(&mut self) -> bool {
        if !self.interruptible() {
            return false;
        }
        *self = Control::Copying(Copy::Pending);
        true
    }

    /// The block job runs: a bandwidth change is now made in place.
    pub(super) fn copy_runs(&mut self) {
        if *self == Control::Copying(Copy::Pending) {
            *self = Control::Copying(Copy::Running);
        }
    }

    /// The job commits to its pivot. Refused once it stops: it must answer
    /// its commands (and stop) first.
    pub(super) fn begin_pivot(&mut self) -> bool {
        match self {
            Control::Preparing | Control::Copying(_) | Control::Pivoting => {
                *self = Control::Pivoting;
                true
            }
            Control::Stopping(_) | Control::Ending { .. } => false,
        }
    }

    /// The pivot is decided elsewhere (every disk of the group is
    /// synchronized, or someone else pivoted): a stop that came too late to
    /// abort the group is dropped. Refused once the job is ending.
    pub(super) fn committed(&mut self) -> bool {
        if matches!(self, Control::Ending { .. }) {
            return false;
        }
        *self = Control::Pivoting;
        true
    }

    /// The job records a failure; it keeps why it stopped and whether the
    /// pivot had begun, which decide how a late cancel is answered.
    pub(super) fn end(&mut self) {
        if matches!(self, Control::Ending { .. }) {
            return;
        }
        *self = Control::Ending {
            stop: self.stop_reason().cloned(),
            after_pivot: self.pivot_begun(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> StopReason {
        StopReason::MemberFailed {
            disk: "vdb".into(),
            reason: "no space".into(),
        }
    }

    #[test]
    fn a_job_starts_where_its_journaled_stage_says() {
        assert_eq!(Control::resumed(false, false), Control::Preparing);
        assert_eq!(
            Control::resumed(true, false),
            Control::Copying(Copy::Pending)
        );
        assert_eq!(Control::resumed(true, true), Control::Pivoting);
    }

    #[test]
    fn cancel_stops_a_job_before_its_pivot() {
        for mut c in [Control::Preparing, Control::Copying(Copy::Running)] {
            assert_eq!(c.cancel(false), Ok(()));
            assert_eq!(c, Control::Stopping(StopReason::Cancelled));
            assert!(!c.interruptible(), "the timeout no longer applies");
        }
    }

    #[test]
    fn cancel_during_the_pivot_is_refused() {
        let mut c = Control::Pivoting;
        assert_eq!(c.cancel(false), Err(Refusal::PivotBegun));
        assert_eq!(c, Control::Pivoting);
        let mut c = Control::Copying(Copy::Running);
        assert_eq!(
            c.cancel(true),
            Err(Refusal::PivotBegun),
            "the group committed to its pivots"
        );
        assert_eq!(c, Control::Copying(Copy::Running));
        let mut c = Control::Pivoting;
        c.end();
        assert_eq!(c.cancel(false), Err(Refusal::PivotBegun));
    }

    #[test]
    fn cancel_while_failing_is_refused_unless_it_was_cancelled() {
        let mut c = Control::Copying(Copy::Running);
        c.end();
        assert_eq!(c.cancel(false), Err(Refusal::AlreadyFailing));
        let mut c = Control::Stopping(StopReason::TimedOut(5));
        c.end();
        assert_eq!(c.cancel(false), Err(Refusal::AlreadyFailing));
        let mut c = Control::Preparing;
        assert_eq!(c.cancel(false), Ok(()));
        c.end();
        assert_eq!(c.cancel(false), Ok(()), "a repeated cancel is answered");
        assert_eq!(c.stop_reason(), Some(&StopReason::Cancelled));
    }

    #[test]
    fn a_stopping_job_keeps_its_first_reason() {
        let mut c = Control::Copying(Copy::Pending);
        assert!(c.stop(StopReason::TimedOut(30)));
        assert!(!c.stop(failed()));
        assert_eq!(c.cancel(false), Ok(()));
        assert_eq!(c.stop_reason(), Some(&StopReason::TimedOut(30)));
        c.end();
        assert_eq!(c.stop_reason(), Some(&StopReason::TimedOut(30)));
    }

    #[test]
    fn nothing_stops_a_pivoting_or_ending_job() {
        let mut c = Control::Pivoting;
        assert!(!c.stop(StopReason::TimedOut(1)));
        assert_eq!(c, Control::Pivoting);
        let mut c = Control::Preparing;
        c.end();
        assert!(!c.stop(failed()));
        assert_eq!(c.stop_reason(), None);
    }

    #[test]
    fn bandwidth_is_accepted_from_the_copying_event_on() {
        let mut c = Control::Preparing;
        assert_eq!(c.bandwidth(), Err(Refusal::CopyNotAnnounced));
        assert!(c.copy_announced());
        assert_eq!(
            c.bandwidth(),
            Ok(Copy::Pending),
            "recorded, and applied when the copy is issued"
        );
        c.copy_runs();
        assert_eq!(c.bandwidth(), Ok(Copy::Running));
        assert!(c.copy_announced(), "the copy is issued again");
        assert_eq!(c.bandwidth(), Ok(Copy::Pending));
    }

    #[test]
    fn bandwidth_is_refused_once_stopping_or_pivoting() {
        let mut c = Control::Copying(Copy::Running);
        assert_eq!(c.cancel(false), Ok(()));
        assert_eq!(c.bandwidth(), Err(Refusal::Stopping));
        assert!(!c.copy_announced(), "a stopped job issues no copy");
        let mut c = Control::Copying(Copy::Running);
        c.end();
        assert_eq!(c.bandwidth(), Err(Refusal::Stopping));
        let mut c = Control::Copying(Copy::Running);
        assert!(c.begin_pivot());
        assert_eq!(c.bandwidth(), Err(Refusal::NotCopying));
        c.end();
        assert_eq!(c.bandwidth(), Err(Refusal::NotCopying));
    }

    #[test]
    fn the_pivot_begins_only_while_nothing_stops_the_job() {
        let mut c = Control::Copying(Copy::Running);
        assert!(c.begin_pivot());
        assert!(c.pivot_begun());
        assert!(!c.interruptible());
        let mut c = Control::Stopping(StopReason::Cancelled);
        assert!(!c.begin_pivot());
        assert_eq!(c, Control::Stopping(StopReason::Cancelled));
        let mut c = Control::Preparing;
        c.end();
        assert!(!c.begin_pivot());
    }

    #[test]
    fn a_group_commit_overrides_a_stop_that_came_too_late() {
        let mut c = Control::Copying(Copy::Running);
        assert!(c.stop(StopReason::TimedOut(10)));
        assert!(c.committed());
        assert_eq!(c, Control::Pivoting);
        assert_eq!(c.stop_reason(), None);
        let mut c = Control::Copying(Copy::Running);
        c.end();
        assert!(!c.committed(), "a failing job does not pivot");
        assert!(!c.pivot_begun());
    }

    #[test]
    fn ending_keeps_what_was_true_when_it_began() {
        let mut c = Control::Pivoting;
        c.end();
        assert_eq!(
            c,
            Control::Ending {
                stop: None,
                after_pivot: true
            }
        );
        c.end();
        assert!(c.pivot_begun());
        let mut c = Control::Stopping(failed());
        c.end();
        assert_eq!(
            c,
            Control::Ending {
                stop: Some(failed()),
                after_pivot: false
            }
        );
    }
}
