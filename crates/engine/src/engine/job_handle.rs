//! The shared handle of one disk migration: what its task, its watchers and
//! the engine's requests meet on.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::Error;
use crate::group::Group;
use crate::journal::Record;
use crate::model::Event;

/// A request to a running job, answered by the job itself so that the answer
/// and the job's next step can never contradict each other.
pub(crate) enum Command {
    /// Stop before the pivot; answered with the state at that moment, or
    /// refused once the pivot has begun.
    Cancel(oneshot::Sender<Result<Event, Error>>),
    /// Change the copy bandwidth (bytes/s, 0 = unlimited).
    SetBandwidth(u64, oneshot::Sender<Result<(), Error>>),
}

pub(crate) struct JobState {
    pub record: Record,
    pub seq: u64,
}

/// One migration: its record, its event channel and its command queue. Only
/// the job's own task changes the record (see [`job`]).
pub(crate) struct Job {
    pub id: String,
    pub state: Mutex<JobState>,
    pub events: broadcast::Sender<(u64, Event)>,
    pub(super) commands: mpsc::Sender<Command>,
    /// Taken by the job's task when it starts.
    inbox: Mutex<Option<mpsc::Receiver<Command>>>,
    /// The group this disk moves with, if any.
    pub group: OnceLock<Weak<Group>>,
}

impl Job {
    pub(super) fn new(record: Record) -> Arc<Job> {
        let (events, _) = broadcast::channel(256);
        let (commands, inbox) = mpsc::channel(16);
        Arc::new(Job {
            id: record.id.clone(),
            state: Mutex::new(JobState { record, seq: 0 }),
            events,
            commands,
            inbox: Mutex::new(Some(inbox)),
            group: OnceLock::new(),
        })
    }

    /// The group this disk moves with, while it exists.
    pub fn group(&self) -> Option<Arc<Group>> {
        self.group.get().and_then(Weak::upgrade)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn latest(&self) -> Event {
        self.lock().record.latest.clone()
    }

    pub fn record(&self) -> Record {
        self.lock().record.clone()
    }

    /// The command queue, for the job's task; `None` once taken.
    pub fn take_inbox(&self) -> Option<mpsc::Receiver<Command>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) fn ended(&self) -> Error {
        Error::WrongPhase {
            id: self.id.clone(),
            phase: self.latest().phase.name(),
            reason: "it has already ended",
        }
    }
}
