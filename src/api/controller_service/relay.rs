//! Following a node's migration: one follower per unfinished migration reads
//! the node's event stream, writes each event to the history once, and fans
//! it out to every caller watching through the controller. Callers never
//! open streams to nodes of their own, so N watchers cost one node stream and
//! one history write per event.
//!
//! Only events of the migration being followed, stamped by the node that runs
//! it, are recorded: a node cannot write another node's migrations (or
//! invented ones) into the history. When the node's stream is lost, watchers
//! are told (UNAVAILABLE) and the follower reconnects in the background, so
//! the history still reaches the migration's end; the same happens after a
//! controller restart.

use tokio::sync::broadcast;

use super::*;

/// What a follower hands its watchers.
#[derive(Clone)]
enum Item {
    Event(Box<proto::MigrationEvent>),
    /// The node's stream was lost (why); the follower keeps trying.
    Lost(String),
}

/// The follower of one migration.
pub(super) struct Follower {
    /// Latest event and the channel to watchers; one lock so that a new
    /// watcher's snapshot and its subscription see no gap and no repeat.
    state: Mutex<(proto::MigrationEvent, broadcast::Sender<Item>)>,
}

impl Follower {
    fn new(latest: proto::MigrationEvent) -> Arc<Follower> {
        let (tx, _) = broadcast::channel(256);
        Arc::new(Follower {
            state: Mutex::new((latest, tx)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (proto::MigrationEvent, broadcast::Sender<Item>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, item: Item) {
        let mut state = self.lock();
        if let Item::Event(event) = &item {
            state.0 = event.as_ref().clone();
        }
        let _ = state.1.send(item);
    }

    fn latest(&self) -> proto::MigrationEvent {
        self.lock().0.clone()
    }
}

fn is_terminal(event: &proto::MigrationEvent) -> bool {
    matches!(
        event.phase(),
        proto::Phase::Completed | proto::Phase::Failed | proto::Phase::Cancelled
    )
}

/// Whether `event` may be recorded for `entry`: same migration, stamped by
/// the node that runs it.
pub(super) fn owns(entry: &Entry, event: &proto::MigrationEvent) -> bool {
    event.migration_id == entry.record.migration_id && event.node_id == entry.record.node_id
}

impl ControllerService {
    fn followers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Follower>>> {
        self.inner
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The follower of `id`, if one runs.
    pub(super) fn following(&self, id: &str) -> Option<Arc<Follower>> {
        self.followers().get(id).cloned()
    }

    /// The follower of an unfinished migration, started (from `stream` when
    /// the caller already has the node's stream) if there is none yet.
    pub(super) fn follow(
        &self,
        entry: &Entry,
        stream: Option<tonic::Streaming<proto::MigrationEvent>>,
    ) -> Arc<Follower> {
        let id = entry.record.migration_id.clone();
        let mut followers = self.followers();
        if let Some(existing) = followers.get(&id) {
            return existing.clone();
        }
        let latest = entry.record.latest.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "controller.relay",
            migration.id = %id,
            domain = %latest.domain.escape_debug(),
            disk = %latest.disk,
            node.id = %entry.record.node_id,
        );
        let follower = Follower::new(latest);
        followers.insert(id.clone(), follower.clone());
        drop(followers);
        let svc = self.clone();
        let task_follower = follower.clone();
        let entry = entry.clone();
        tokio::spawn(
            async move {
                svc.pump(&entry, &task_follower, stream).await;
                svc.followers().remove(&entry.record.migration_id);
            }
            .instrument(span),
        );
        follower
    }

    /// Reads the node's events into the history and to the watchers until
    /// the migration ends, reconnecting while the node is unreachable.
    async fn pump(
        &self,
        entry: &Entry,
        follower: &Follower,
        mut stream: Option<tonic::Streaming<proto::MigrationEvent>>,
    ) {
        let id = &entry.record.migration_id;
        loop {
            if stream.is_none() {
                stream = self.open_watch(entry).await;
            }
            if let Some(mut s) = stream.take() {
                loop {
                    match s.message().await {
                        Ok(Some(event)) => {
                            if !owns(entry, &event) {
                                tracing::warn!(
                                    node = %entry.record.node_id,
                                    claimed_node = %event.node_id.escape_debug(),
                                    claimed_migration = %event.migration_id.escape_debug(),
                                    "ignoring an event that is not this node's migration"
                                );
                                continue;
                            }
                            // A stream opened on a running migration first
                            // replays its latest event: that is no lag.
                            if event.timestamp_unix_ms > follower.latest().timestamp_unix_ms {
                                let lag = now_ms().saturating_sub(event.timestamp_unix_ms);
                                self.inner
                                    .observer
                                    .event_relayed(Duration::from_millis(lag));
                            }
                            if let Err(e) = self.inner.history.update_latest(&event) {
                                tracing::error!(error = %e, "cannot record migration event");
                            }
                            let done = is_terminal(&event);
                            follower.publish(Item::Event(Box::new(event)));
                            if done {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            follower.publish(Item::Lost(status.message().to_string()));
                            break;
                        }
                    }
                }
            }
            if self.inner.history.get(id).is_none_or(|e| e.is_terminal()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn open_watch(&self, entry: &Entry) -> Option<tonic::Streaming<proto::MigrationEvent>> {
        let node = self.inner.registry.get(&entry.record.node_id)?;
        let mut client = self.client(&node).await.ok()?;
        let request = self.to_node(
            None,
            proto::WatchMigrationRequest {
                migration_id: entry.record.migration_id.clone(),
            },
        );
        let resp = self.timed(client.watch_migration(request)).await.ok()?;
        Some(resp.into_inner())
    }

    /// A stream for one caller: the migration's latest event, then every
    /// later one, ending after the terminal event. RESOURCE_EXHAUSTED when
    /// the migration has its limit of watchers.
    pub(super) fn watch_stream(&self, follower: &Follower) -> Result<EventStream, Status> {
        let (first, mut rx) = {
            let state = follower.lock();
            let limit = self.inner.config.max_watchers_per_migration.max(1);
            if state.1.receiver_count() >= limit {
                return Err(Status::resource_exhausted(format!(
                    "migration {} already has {limit} watchers at the controller; try again when one has left",
                    state.0.migration_id
                )));
            }
            (state.0.clone(), state.1.subscribe())
        };
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let latest_of = {
            let svc = self.clone();
            let id = first.migration_id.clone();
            move || svc.followers().get(&id).map(|f| f.latest())
        };
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() || is_terminal(&last) {
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
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "lost the node's event stream: {why}; the migration goes on there, follow it with WatchMigration"
                            ))))
                            .await;
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
                if tx.send(Ok(event)).await.is_err() || is_terminal(&last) {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
    }
}
