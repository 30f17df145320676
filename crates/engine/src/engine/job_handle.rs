//! The shared handle of one disk migration: what its task, its watchers and
//! the engine's requests meet on. Only the task writes the job's state,
//! through the [`Publisher`] it takes when it starts; everyone else reads
//! snapshots.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::engine::group::Group;
use crate::error::Error;
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

/// What a job's task publishes: its record and the number of its latest event.
pub(crate) struct JobState {
    pub record: Record,
    pub seq: u64,
}

/// One migration: its published state, its event channel and its command queue.
pub(crate) struct Job {
    pub id: String,
    state: watch::Receiver<JobState>,
    pub events: broadcast::Sender<(u64, Event)>,
    pub(super) commands: mpsc::Sender<Command>,
    /// Taken by the job's task when it starts.
    task: Mutex<Option<TaskEnd>>,
    /// The group this disk moves with, if any.
    pub group: OnceLock<Weak<Group>>,
}

/// What only the job's task holds: its inbox and the writer of its state.
pub(crate) struct TaskEnd {
    pub inbox: mpsc::Receiver<Command>,
    pub publisher: Publisher,
}

impl Job {
    pub(super) fn new(record: Record) -> Arc<Job> {
        let (events, _) = broadcast::channel(256);
        let (commands, inbox) = mpsc::channel(16);
        let id = record.id.clone();
        let (writer, state) = watch::channel(JobState { record, seq: 0 });
        let publisher = Publisher {
            state: writer,
            events: events.clone(),
        };
        Arc::new(Job {
            id,
            state,
            events,
            commands,
            task: Mutex::new(Some(TaskEnd { inbox, publisher })),
            group: OnceLock::new(),
        })
    }

    /// The group this disk moves with, while it exists.
    pub fn group(&self) -> Option<Arc<Group>> {
        self.group.get().and_then(Weak::upgrade)
    }

    /// The state as last published. Hold it briefly and never across an
    /// await: the job's task waits for it to publish.
    pub fn lock(&self) -> watch::Ref<'_, JobState> {
        self.state.borrow()
    }

    pub fn latest(&self) -> Event {
        self.lock().record.latest.clone()
    }

    pub fn record(&self) -> Record {
        self.lock().record.clone()
    }

    /// The task's end, for the job's task; `None` once taken.
    pub fn take_task(&self) -> Option<TaskEnd> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) fn ended(&self) -> Error {
        Error::WrongPhase {
            id: self.id.clone(),
            phase: self.latest().phase.name(),
            reason: "it has already ended",
        }
    }
}

/// The only writer of a job's state.
pub(crate) struct Publisher {
    state: watch::Sender<JobState>,
    events: broadcast::Sender<(u64, Event)>,
}

impl Publisher {
    /// Changes the record without announcing it.
    pub fn change(&self, change: impl FnOnce(&mut Record)) {
        self.state.send_modify(|s| change(&mut s.record));
    }

    /// Announces the record's latest event under the next number, and
    /// returns it. Numbered and sent while readers wait, so a new subscriber
    /// reads the state either before this event or with it.
    pub fn announce(&self) -> Event {
        self.state.send_modify(|s| {
            s.seq += 1;
            // No receivers is normal (nobody watching); the state keeps it.
            let _ = self.events.send((s.seq, s.record.latest.clone()));
        });
        self.state.borrow().record.latest.clone()
    }
}
