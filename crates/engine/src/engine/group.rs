//! Several disks of one domain moved as one migration (a group).
//!
//! Each disk is still its own migration with its own record, journal file and
//! task; the group adds two things. The [`Gate`] coordinates the members'
//! tasks: copies may be limited in number, no member pivots until every member
//! is synchronized (the commit point), a failure or cancel before that point
//! rolls every member back, and after it the pivots run one after another in
//! request order. The [`Group`] is what callers follow: one event stream whose
//! events sum up the members' latest events.
//!
//! After the commit point a member whose pivot fails does not stop the
//! others: a pivot already done cannot be undone without copying back, so the
//! remaining disks carry on and the terminal event says where each disk is.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use crate::engine::Job;
use crate::model::{
    now_ms, DiskStatus, ErrorCode, Event, Failure, GroupRequest, Phase, Progress, Skipped,
};

/// Why a group stops before its pivots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Abort {
    /// CancelMigration of the group or of one of its disks.
    Cancelled,
    /// A member failed; the others roll back.
    MemberFailed {
        /// Its disk.
        disk: String,
        /// Its error.
        reason: String,
    },
}

#[derive(Debug)]
struct GateState {
    synchronized: Vec<bool>,
    /// Every member was synchronized: the pivots go ahead, nothing aborts them.
    committed: bool,
    aborted: Option<Abort>,
    /// Members that have had their pivot turn (or will never take it).
    done: Vec<bool>,
}

/// The coordination point of a group's member tasks.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: watch::Sender<u64>,
    copies: Option<Arc<Semaphore>>,
}

impl Gate {
    /// A gate for `size` members, at most `max_copies` copying at once (0: no limit).
    pub fn new(size: usize, max_copies: u32) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState {
                synchronized: vec![false; size],
                committed: false,
                aborted: None,
                done: vec![false; size],
            }),
            changed: watch::channel(0).0,
            copies: (max_copies > 0).then(|| Arc::new(Semaphore::new(max_copies as usize))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Stops the group before its pivots. False when it is too late: every
    /// member was synchronized and the pivots go ahead.
    pub fn abort(&self, why: Abort) -> bool {
        let mut st = self.lock();
        if st.committed {
            return false;
        }
        st.aborted.get_or_insert(why);
        drop(st);
        self.bump();
        true
    }

    /// Whether the pivots go ahead.
    #[cfg(test)]
    pub fn committed(&self) -> bool {
        self.lock().committed
    }

    /// Resolves when the group is aborted (never, once committed).
    pub async fn aborted(&self) -> Abort {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let st = self.lock();
                if let (Some(why), false) = (&st.aborted, st.committed) {
                    return why.clone();
                }
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A place among the copies allowed to run at once, held until the member
    /// is synchronized; `None` when there is no limit.
    pub async fn copy_slot(&self) -> Option<OwnedSemaphorePermit> {
        let copies = self.copies.clone()?;
        copies.acquire_owned().await.ok()
    }

    /// Member `index` is synchronized; waits until every member is (Ok: the
    /// pivots go ahead) or the group is aborted.
    pub async fn synchronized(&self, index: usize) -> Result<(), Abort> {
        let mut rx = self.changed.subscribe();
        {
            let mut st = self.lock();
            if let Some(flag) = st.synchronized.get_mut(index) {
                *flag = true;
            }
            if st.aborted.is_none() && st.synchronized.iter().all(|s| *s) {
                st.committed = true;
            }
        }
        self.bump();
        loop {
            {
                let st = self.lock();
                if st.committed {
                    return Ok(());
                }
                if let Some(why) = &st.aborted {
                    return Err(why.clone());
                }
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Waits until every member before `index` has had its pivot turn.
    pub async fn turn(&self, index: usize) {
        let mut rx = self.changed.subscribe();
        loop {
            if self.lock().done.iter().take(index).all(|d| *d) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Member `index` has had its pivot turn, or will never take it.
    pub fn done(&self, index: usize) {
        if let Some(flag) = self.lock().done.get_mut(index) {
            *flag = true;
        }
        self.bump();
    }
}

/// A member's handle on its group's gate.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The gate.
    pub gate: Arc<Gate>,
    /// Its place in the pivot order.
    pub index: usize,
}

/// A group as callers see it: its request and its members, and the stream of
/// its summed-up events.
pub(crate) struct Group {
    /// The group's migration id.
    pub id: String,
    /// The request, as received.
    pub request: GroupRequest,
    /// When it was accepted (Unix ms).
    pub started_ms: u64,
    /// The disks left alone.
    pub skipped: Vec<Skipped>,
    /// The member migrations, in pivot order.
    pub members: Vec<Arc<Job>>,
    /// The members' gate; `None` for a group recovered after a restart (its
    /// members then run on their own: rolled back, or pivoting, all alike).
    pub gate: Option<Arc<Gate>>,
    node_id: String,
    latest: Mutex<(u64, Event)>,
    /// Every new summary, numbered.
    pub events: broadcast::Sender<(u64, Event)>,
}

impl Group {
    /// A group over `members`, summed up as of now.
    pub fn new(
        id: String,
        request: GroupRequest,
        started_ms: u64,
        skipped: Vec<Skipped>,
        members: Vec<Arc<Job>>,
        gate: Option<Arc<Gate>>,
        node_id: String,
    ) -> Arc<Group> {
        let (events, _) = broadcast::channel(256);
        let group = Group {
            id,
            request,
            started_ms,
            skipped,
            members,
            gate,
            node_id,
            latest: Mutex::new((0, placeholder())),
            events,
        };
        let first = group.summarize();
        *group.lock() = (0, first);
        Arc::new(group)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Event)> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest summary and its number.
    pub fn latest(&self) -> (u64, Event) {
        self.lock().clone()
    }

    /// Sums up the members again and publishes the result when it changed.
    /// Called whenever a member publishes an event.
    pub fn refresh(&self) {
        let summary = self.summarize();
        let mut latest = self.lock();
        let same = {
            let mut a = latest.1.clone();
            a.timestamp_ms = summary.timestamp_ms;
            a == summary
        };
        if same {
            return;
        }
        latest.0 += 1;
        latest.1 = summary;
        // No receivers is normal (nobody watching).
        let _ = self.events.send(latest.clone());
    }

    /// The group's event as of its members' latest events.
    pub fn summarize(&self) -> Event {
        let records: Vec<_> = self.members.iter().map(|m| m.record()).collect();
        let disks: Vec<DiskStatus> = records
            .iter()
            .map(|r| DiskStatus {
                disk: r.plan.target.clone(),
                migration_id: r.id.clone(),
                phase: r.latest.phase,
                progress: r.latest.progress,
                message: r.latest.message.clone(),
                result: r.latest.result.clone(),
                failure: r.latest.failure.clone(),
                pivot: r.pivot,
                convergence: r.latest.convergence.clone(),
            })
            .collect();
        let phase = group_phase(&disks);
        let progress = disks.iter().fold(Progress::default(), |sum, d| Progress {
            bytes_done: sum.bytes_done + d.progress.bytes_done,
            bytes_total: sum.bytes_total + d.progress.bytes_total,
            rate: sum.rate + d.progress.rate,
            eta_seconds: sum.eta_seconds.max(d.progress.eta_seconds),
        });
        let failure = phase.is_terminal().then(|| group_failure(&disks)).flatten();
        let pivot_window_ms = if disks.iter().all(|d| d.phase.is_terminal()) {
            pivot_window(&disks)
        } else {
            0
        };
        let targets: Vec<&str> = disks.iter().map(|d| d.disk.as_str()).collect();
        let convergence = disks.iter().find_map(|d| d.convergence.clone());
        Event {
            migration_id: self.id.clone(),
            phase,
            progress,
            timestamp_ms: now_ms(),
            started_ms: self.started_ms,
            message: group_message(phase, &disks, failure.as_ref()),
            result: None,
            failure,
            node_id: self.node_id.clone(),
            domain: records
                .first()
                .map(|r| r.plan.domain.clone())
                .unwrap_or_default(),
            disk: targets.join(","),
            disks,
            skipped: self.skipped.clone(),
            pivot_window_ms,
            convergence,
            trace_id: records
                .first()
                .map(|r| r.latest.trace_id.clone())
                .unwrap_or_default(),
        }
    }
}

fn placeholder() -> Event {
    Event {
        migration_id: String::new(),
        phase: Phase::Accepted,
        progress: Progress::default(),
        timestamp_ms: 0,
        started_ms: 0,
        message: String::new(),
        result: None,
        failure: None,
        node_id: String::new(),
        domain: String::new(),
        disk: String::new(),
        disks: Vec::new(),
        skipped: Vec::new(),
        pivot_window_ms: 0,
        convergence: None,
        trace_id: String::new(),
    }
}

/// The least advanced phase of the members still running; once all have
/// ended: COMPLETED when all completed, CANCELLED when none failed and none
/// pivoted, FAILED otherwise.
fn group_phase(disks: &[DiskStatus]) -> Phase {
    if let Some(running) = disks
        .iter()
        .filter(|d| !d.phase.is_terminal())
        .map(|d| d.phase)
        .min()
    {
        return running;
    }
    if disks.iter().all(|d| d.phase == Phase::Completed) {
        Phase::Completed
    } else if disks.iter().all(|d| d.phase == Phase::Cancelled) {
        Phase::Cancelled
    } else {
        Phase::Failed
    }
}

/// The error that ended the group: the first member's own error (not a
/// "rolled back with the others"), with every disk's state.
fn group_failure(disks: &[DiskStatus]) -> Option<Failure> {
    let failed: Vec<(&DiskStatus, &Failure)> = disks
        .iter()
        .filter_map(|d| d.failure.as_ref().map(|f| (d, f)))
        .collect();
    let (disk, cause) = failed
        .iter()
        .find(|(_, f)| f.code != ErrorCode::Aborted)
        .or(failed.first())?;
    let states: Vec<String> = disks
        .iter()
        .map(|d| match (&d.failure, &d.result) {
            (Some(f), _) => format!("{}: {}", d.disk, f.disk_state),
            (None, Some(r)) => format!(
                "{}: on its destination {}",
                d.disk,
                r.destination.display_name()
            ),
            (None, None) => format!("{}: {}", d.disk, d.phase.name()),
        })
        .collect();
    Some(Failure {
        code: cause.code,
        message: format!("disk {}: {}", disk.disk, cause.message),
        phase: cause.phase,
        disk_state: states.join("; "),
    })
}

fn group_message(phase: Phase, disks: &[DiskStatus], failure: Option<&Failure>) -> String {
    let n = disks.len();
    let at_least = |p: Phase| {
        disks
            .iter()
            .filter(|d| d.phase >= p && !matches!(d.phase, Phase::Failed | Phase::Cancelled))
            .count()
    };
    match phase {
        Phase::Completed => format!(
            "completed: all {n} disks on their destinations ({})",
            disks
                .iter()
                .map(|d| d.disk.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Phase::Failed | Phase::Cancelled => match failure {
            Some(f) => format!("{}: {}; {}", phase.name(), f.message, f.disk_state),
            None => phase.name().to_string(),
        },
        Phase::Copying | Phase::Synchronized => format!(
            "{} of {n} disks synchronized; the pivots start when all are",
            at_least(Phase::Synchronized)
        ),
        Phase::Pivoting | Phase::Verifying | Phase::CleaningUp => {
            format!("{} of {n} disks pivoted", at_least(Phase::Verifying))
        }
        other => format!("{} disks: {}", n, other.name()),
    }
}

/// From the first pivot issued to the last one ended, ms.
fn pivot_window(disks: &[DiskStatus]) -> u64 {
    let pivots: Vec<(u64, u64)> = disks.iter().filter_map(|d| d.pivot).collect();
    match (
        pivots.iter().map(|p| p.0).min(),
        pivots.iter().map(|p| p.1).max(),
    ) {
        (Some(first), Some(last)) => last.saturating_sub(first),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_only_when_every_member_is_synchronized() {
        let gate = Gate::new(2, 0);
        let g = gate.clone();
        let first = tokio::spawn(async move { g.synchronized(0).await });
        tokio::task::yield_now().await;
        assert!(!gate.committed());
        assert_eq!(gate.synchronized(1).await, Ok(()));
        assert_eq!(first.await.expect("task"), Ok(()));
        assert!(!gate.abort(Abort::Cancelled), "aborted after the commit");
    }

    #[tokio::test]
    async fn an_abort_before_the_commit_reaches_waiting_members() {
        let gate = Gate::new(3, 0);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.synchronized(0).await });
        tokio::task::yield_now().await;
        let why = Abort::MemberFailed {
            disk: "vdc".into(),
            reason: "full".into(),
        };
        assert!(gate.abort(why.clone()));
        assert_eq!(waiting.await.expect("task"), Err(why.clone()));
        assert_eq!(gate.aborted().await, why);
        // A member arriving later is not committed either.
        assert!(gate.synchronized(1).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn pivots_take_turns_in_order() {
        let gate = Gate::new(3, 0);
        let g = gate.clone();
        let third = tokio::spawn(async move { g.turn(2).await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        gate.turn(0).await;
        gate.done(0);
        gate.done(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .expect("third turn")
            .expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn copies_are_limited() {
        let gate = Gate::new(3, 1);
        let slot = gate.copy_slot().await;
        assert!(slot.is_some());
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.copy_slot()).await;
        assert!(blocked.is_err());
        drop(slot);
        assert!(gate.copy_slot().await.is_some());
    }
}
