//! Following a migration: a subscription to one disk's events or a group's.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Engine, Job};
use crate::engine::group::Group;
use crate::error::Error;
use crate::model::Event;

/// A stream of one migration's events: its latest event first, then every later
/// one, ending after the terminal event.
pub struct Subscription {
    source: Source,
    first: Option<(u64, Event)>,
    rx: broadcast::Receiver<(u64, Event)>,
    last_seq: u64,
    done: bool,
}

/// What a subscription follows: one disk's migration or a group's.
#[derive(Clone)]
pub(super) enum Source {
    Job(Arc<Job>),
    Group(Arc<Group>),
}

impl Source {
    fn id(&self) -> &str {
        match self {
            Source::Job(job) => &job.id,
            Source::Group(group) => &group.id,
        }
    }

    fn latest(&self) -> (u64, Event) {
        match self {
            Source::Job(job) => {
                let st = job.lock();
                (st.seq, st.record.latest.clone())
            }
            Source::Group(group) => group.latest(),
        }
    }

    fn events(&self) -> &broadcast::Sender<(u64, Event)> {
        match self {
            Source::Job(job) => &job.events,
            Source::Group(group) => &group.events,
        }
    }
}

impl Subscription {
    pub(super) fn new(source: Source) -> Self {
        // Subscribed before the latest is read, so nothing falls between them.
        let rx = source.events().subscribe();
        let first = Some(source.latest());
        Subscription {
            source,
            first,
            rx,
            last_seq: 0,
            done: false,
        }
    }

    /// The migration id.
    pub fn migration_id(&self) -> &str {
        self.source.id()
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let (seq, event) = match self.first.take() {
            Some(first) => first,
            None => loop {
                match self.rx.recv().await {
                    Ok((seq, event)) if seq > self.last_seq => break (seq, event),
                    Ok(_) => continue,
                    // A slow watcher skips to the latest state rather than
                    // stalling the job; phase changes it missed are in the record.
                    Err(broadcast::error::RecvError::Lagged(_))
                    | Err(broadcast::error::RecvError::Closed) => {
                        let latest = self.source.latest();
                        if latest.0 > self.last_seq || latest.1.phase.is_terminal() {
                            break latest;
                        }
                    }
                }
            },
        };
        self.last_seq = seq;
        if event.phase.is_terminal() {
            self.done = true;
        }
        Some(event)
    }
}

impl Engine {
    /// Follows a migration; RESOURCE_EXHAUSTED when it has its limit of
    /// watchers already.
    pub fn watch(&self, id: &str) -> Result<Subscription, Error> {
        match self.group(id)? {
            Some(group) => self.subscribe(Source::Group(group)),
            None => self.subscribe(Source::Job(self.job(id)?)),
        }
    }

    pub(super) fn subscribe(&self, source: Source) -> Result<Subscription, Error> {
        let limit = self.inner.config.max_watchers;
        if source.events().receiver_count() >= limit {
            return Err(Error::Exhausted(format!(
                "migration {} already has {limit} watchers; try again when one has left",
                source.id()
            )));
        }
        Ok(Subscription::new(source))
    }
}
