//! Following a node's migration: one follower per unfinished migration reads
//! the node's event stream, writes each event to the history once, and fans
//! it out to every caller watching through this controller. Callers never
//! open streams to nodes of their own, so N watchers cost one node stream and
//! one history write per event.
//!
//! Only events of the migration being followed, stamped by the node that runs
//! it, are recorded: a node cannot write another node's migrations (or
//! invented ones) into the history. When the node's stream is lost, watchers
//! are told and the follower reconnects in the background, so the history
//! still reaches the migration's end; the same happens after a controller
//! restart or when another controller started the migration and died: the
//! leader follows every unfinished migration in the store. When the
//! migration ends, its in-flight reservations are released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tracing::Instrument;

use super::error::ControllerError;
use super::model::{MigrationEntry, NodeEvent};
use super::nodes::NodeEventStream;
use super::retries::Retries;
use super::Controller;
use volmig_types::phase::now_ms;
use volmig_types::retry::RetryPolicy;

/// Re-following a node whose stream was lost or could not be opened: every
/// second until the migration ends. The policy never gives up; if one did,
/// the follower would end and the leader's next round would follow again.
const FOLLOW_AGAIN: RetryPolicy = RetryPolicy::constant(Duration::from_secs(1));

/// What a caller watching a migration receives: its latest event, then
/// every later one, ending after the terminal event (or an error).
pub type WatchStream = mpsc::Receiver<Result<NodeEvent, ControllerError>>;

/// What a follower hands its watchers.
#[derive(Clone)]
enum Item {
    Event(Box<NodeEvent>),
    /// The node's stream was lost (why); the follower keeps trying.
    Lost(String),
}

/// The follower of one migration.
pub(super) struct Follower {
    /// Latest event and the channel to watchers; one lock so that a new
    /// watcher's snapshot and its subscription see no gap and no repeat.
    state: Mutex<(NodeEvent, broadcast::Sender<Item>)>,
}

impl Follower {
    fn new(latest: NodeEvent) -> Arc<Follower> {
        let (tx, _) = broadcast::channel(256);
        Arc::new(Follower {
            state: Mutex::new((latest, tx)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (NodeEvent, broadcast::Sender<Item>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, item: Item) {
        let mut state = self.lock();
        if let Item::Event(event) = &item {
            state.0 = event.as_ref().clone();
        }
        let _ = state.1.send(item);
    }

    fn latest(&self) -> NodeEvent {
        self.lock().0.clone()
    }
}

impl Controller {
    fn followers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Follower>>> {
        self.inner
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Follows migration `id` wherever it was started: the caller gets its
    /// latest event, then every later one.
    pub async fn watch(&self, id: &str) -> Result<WatchStream, ControllerError> {
        let entry = self.entry(id).await?;
        let existing = self.followers().get(&entry.migration_id).cloned();
        let follower = match existing {
            Some(follower) => follower,
            None => {
                // Nobody follows it here (it ended, another controller started
                // it, or it was not followed yet): reach the node now, so an
                // unreachable node is this caller's error, naming the node,
                // rather than a silent wait.
                let node = self.node_of(&entry)?;
                let stream = self
                    .inner
                    .nodes
                    .watch(&node, &entry.migration_id)
                    .await
                    .map_err(|e| self.node_failed_call(&node, e))?;
                self.follow(&entry, Some(stream))
            }
        };
        self.watch_stream(&follower)
    }

    /// The follower of an unfinished migration, started (from `stream` when
    /// the caller already has the node's stream) if there is none yet.
    pub(super) fn follow(
        &self,
        entry: &MigrationEntry,
        stream: Option<NodeEventStream>,
    ) -> Arc<Follower> {
        let id = entry.migration_id.clone();
        let mut followers = self.followers();
        if let Some(existing) = followers.get(&id) {
            return existing.clone();
        }
        let span = tracing::info_span!(
            "controller.relay",
            migration.id = %id,
            domain = %entry.latest.domain.escape_debug(),
            disk = %entry.order.disk.escape_debug(),
            node.id = %entry.node_id,
        );
        let follower = Follower::new(entry.latest.clone());
        followers.insert(id.clone(), follower.clone());
        drop(followers);
        let c = self.clone();
        let task_follower = follower.clone();
        let entry = entry.clone();
        tokio::spawn(
            async move {
                c.pump(&entry, &task_follower, stream).await;
                c.followers().remove(&entry.migration_id);
            }
            .instrument(span),
        );
        follower
    }

    /// Whether the history has the migration ended (or forgot it).
    async fn ended(&self, id: &str) -> bool {
        match self.inner.history.get(id).await {
            Ok(entry) => entry.is_none_or(|e| e.is_terminal()),
            // The store is unreachable for now: keep following.
            Err(_) => false,
        }
    }

    /// Reads the node's events into the history and to the watchers until
    /// the migration ends, reconnecting while the node is unreachable.
    async fn pump(
        &self,
        entry: &MigrationEntry,
        follower: &Follower,
        mut stream: Option<NodeEventStream>,
    ) {
        let id = &entry.migration_id;
        let mut retries = Retries::new(FOLLOW_AGAIN);
        loop {
            if stream.is_none() {
                stream = self.open_watch(entry).await;
            }
            if let Some(mut s) = stream.take() {
                while let Some(next) = s.next().await {
                    match next {
                        Ok(event) => {
                            if !entry.owns(&event) {
                                tracing::warn!(
                                    node = %entry.node_id,
                                    claimed_node = %event.node_id.escape_debug(),
                                    claimed_migration = %event.migration_id.escape_debug(),
                                    "ignoring an event that is not this node's migration"
                                );
                                continue;
                            }
                            // A stream opened on a running migration first
                            // replays its latest event: that is no lag.
                            if event.timestamp_ms > follower.latest().timestamp_ms {
                                let lag = now_ms().saturating_sub(event.timestamp_ms);
                                self.inner
                                    .observer
                                    .event_relayed(Duration::from_millis(lag));
                            }
                            if let Err(e) = self.inner.history.update_latest(&event).await {
                                tracing::error!(error = %e, "cannot record migration event");
                            }
                            let done = event.is_terminal();
                            follower.publish(Item::Event(Box::new(event)));
                            if done {
                                self.release(entry).await;
                                return;
                            }
                        }
                        Err(e) => {
                            follower.publish(Item::Lost(e.message));
                            break;
                        }
                    }
                }
            }
            if self.ended(id).await {
                self.release(entry).await;
                return;
            }
            if !retries.pause().await {
                return;
            }
        }
    }

    async fn release(&self, entry: &MigrationEntry) {
        if let Err(e) = self.inner.reservations.release_migration(entry).await {
            tracing::warn!(error = %e, "cannot release the migration's in-flight slots; the leader's sweep will");
        }
    }

    async fn open_watch(&self, entry: &MigrationEntry) -> Option<NodeEventStream> {
        let node = self.inner.registry.get(&entry.node_id)?;
        self.inner
            .nodes
            .watch(&node, &entry.migration_id)
            .await
            .ok()
    }

    /// A stream for one caller: the migration's latest event, then every
    /// later one, ending after the terminal event. Exhausted when the
    /// migration has its limit of watchers.
    pub(super) fn watch_stream(&self, follower: &Follower) -> Result<WatchStream, ControllerError> {
        let (first, mut rx) = {
            let state = follower.lock();
            let limit = self.inner.config.max_watchers_per_migration.max(1);
            if state.1.receiver_count() >= limit {
                return Err(ControllerError::Exhausted(format!(
                    "migration {} already has {limit} watchers at the controller; try again when one has left",
                    state.0.migration_id
                )));
            }
            (state.0.clone(), state.1.subscribe())
        };
        let (tx, out) = mpsc::channel(64);
        let latest_of = {
            let c = self.clone();
            let id = first.migration_id.clone();
            move || c.followers().get(&id).map(|f| f.latest())
        };
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() || last.is_terminal() {
                return;
            }
            loop {
                let item = tokio::select! {
                    item = rx.recv() => item,
                    () = tx.closed() => return,
                };
                let event = match item {
                    Ok(Item::Event(event)) => *event,
                    Ok(Item::Lost(why)) => {
                        let _ = tx.send(Err(ControllerError::StreamLost(why))).await;
                        return;
                    }
                    // A slow watcher skips to the latest state.
                    Err(broadcast::error::RecvError::Lagged(_)) => match latest_of() {
                        Some(latest) if latest != last => latest,
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                last = event.clone();
                if tx.send(Ok(event)).await.is_err() || last.is_terminal() {
                    return;
                }
            }
        });
        Ok(out)
    }
}
