//! Carrying out a drain, on the leader only: items start through the
//! controller's own migration path ([`Controller::start_migration`], so
//! reservations, history, relay and source-user checks all apply) within the
//! drain's limits, each recorded as running *before* the node is asked, with
//! a request id derived from the drain, the item and the attempt: a resumed
//! drain re-attaches to what runs and never starts an attempt twice. A failed
//! item is tried again after a pause, up to `max_tries`, without holding up
//! the others. The bandwidth budget is re-divided whenever a copy starts or
//! ends (see [`super::budget`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use volmig_types::phase::{now_ms, Phase};
use volmig_types::retry::RetryPolicy;

use super::attempt::{attempt, destinations, report_rows, sleep_until, Msg};
use super::budget;
use super::job_store;
use super::model::{DrainJob, ItemState, PlannedItem};
use super::view::ItemProgress;
use crate::model::{DiskOrder, MigrationFilter, NodeEvent, Order};
use crate::Controller;

/// Pauses before an item's next attempt: 30 s, doubling up to 5 min (the
/// number of attempts is the drain's `max_tries`).
fn retry_policy(max_tries: u32) -> RetryPolicy {
    RetryPolicy::attempts(
        max_tries.max(1),
        Duration::from_secs(30),
        2,
        Duration::from_secs(300),
    )
}

/// The request id of an item's attempt: the same after a restart, so the
/// node attaches a repeated request to the migration it already runs.
pub fn request_id(drain_id: &str, index: usize, attempt: u32) -> String {
    format!("{drain_id}-i{index}-a{attempt}")
}

/// One running item, in memory.
struct Run {
    node_id: String,
    destinations: Vec<String>,
    migration_id: Option<String>,
    bandwidth: u64,
    bytes: (u64, u64),
    started: Instant,
    cancel_sent: bool,
}

/// The executor of one drain.
pub(super) struct Executor {
    c: Controller,
    id: String,
    job: DrainJob,
    running: HashMap<usize, Run>,
    not_before: HashMap<usize, Instant>,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
}

impl Executor {
    /// An executor of `job`, which it reads again on each round.
    pub(super) fn new(c: Controller, job: DrainJob) -> Executor {
        let (tx, rx) = mpsc::channel(256);
        Executor {
            c,
            id: job.id.clone(),
            job,
            running: HashMap::new(),
            not_before: HashMap::new(),
            tasks: JoinSet::new(),
            tx,
            rx,
        }
    }

    /// Runs the drain to its end.
    pub(super) async fn run(mut self) {
        let wake = self.c.inner.drains.wake(&self.id);
        self.resume().await;
        let every = self.c.heartbeat();
        loop {
            match job_store::get(self.c.inner.store.as_ref(), &self.id).await {
                Ok(job) => self.job = job,
                Err(e) => tracing::warn!(drain = %self.id, error = %e, "cannot read the drain"),
            }
            if self.job.is_finished() {
                break;
            }
            if self.job.cancel_requested {
                self.cancel_all().await;
            } else {
                self.start_eligible().await;
            }
            if self.running.is_empty() && self.job.items.iter().all(ItemState::is_final) {
                self.finish().await;
                break;
            }
            self.publish();
            let retry_at = self.not_before.values().min().copied();
            tokio::select! {
                Some(msg) = self.rx.recv() => self.handle(msg).await,
                () = wake.notified() => {}
                () = sleep_until(retry_at) => {}
                () = tokio::time::sleep(every) => {}
            }
        }
        self.publish();
        self.c.inner.drains.executor_ended(&self.id);
    }

    /// Re-attaches to the items a previous executor left running.
    async fn resume(&mut self) {
        let running: Vec<(usize, String, Option<String>)> = self
            .job
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                ItemState::Running {
                    request_id,
                    migration_id,
                    ..
                } => Some((i, request_id.clone(), migration_id.clone())),
                _ => None,
            })
            .collect();
        for (index, rid, known) in running {
            // Recorded before the node was asked: the history knows the
            // migration if the node started it.
            let known = match known {
                Some(mid) => Some(mid),
                None => self.by_request_id(&rid).await,
            };
            let order = self.order(index, &rid, None);
            self.spawn(index, order, known);
        }
    }

    /// The migration started with request id `rid`, from the history.
    async fn by_request_id(&self, rid: &str) -> Option<String> {
        let entries = self.c.list(&MigrationFilter::default()).await.ok()?;
        entries
            .into_iter()
            .find(|e| e.order.request_id.as_deref() == Some(rid))
            .map(|e| e.migration_id)
    }

    /// The order of item `index`'s attempt `rid`.
    fn order(&self, index: usize, rid: &str, bandwidth: Option<u64>) -> Order {
        let item = &self.job.plan.items[index];
        let base = Order {
            domain: item.domain.clone(),
            required_tags: self.job.spec.required_tags.clone(),
            delete_source: self.job.spec.source_policy == super::model::SourcePolicy::Delete,
            request_id: Some(rid.to_string()),
            bandwidth,
            drain_id: Some(self.id.clone()),
            ..Order::default()
        };
        if let (true, [disk]) = (item.offline, item.disks.as_slice()) {
            // The node moves one disk of a stopped guest at a time, as a
            // single-disk request; should the guest run by the time this
            // attempt starts, the same request moves it live.
            return Order {
                disk: disk.target.clone(),
                destination_pool: disk.dest_storage_id.clone(),
                offline_if_stopped: true,
                ..base
            };
        }
        Order {
            disks: item
                .disks
                .iter()
                .map(|d| DiskOrder {
                    disk: d.target.clone(),
                    // The storage id: the controller names the pool as the
                    // item's node knows it.
                    destination_pool: d.dest_storage_id.clone(),
                    ..DiskOrder::default()
                })
                .collect(),
            ..base
        }
    }

    /// Starts (or follows, when `known`) an item's attempt in its own task.
    fn spawn(&mut self, index: usize, order: Order, known: Option<String>) {
        let item = &self.job.plan.items[index];
        self.running.insert(
            index,
            Run {
                node_id: item.node_id.clone(),
                destinations: destinations(item),
                migration_id: None,
                bandwidth: order.bandwidth.unwrap_or(0),
                bytes: (0, item.bytes()),
                started: Instant::now(),
                cancel_sent: false,
            },
        );
        let c = self.c.clone();
        let tx = self.tx.clone();
        let actor = self.job.actor.clone();
        self.tasks
            .spawn(async move { attempt(c, actor, index, order, known, tx).await });
    }

    /// Starts every pending item the limits allow now, in plan order.
    async fn start_eligible(&mut self) {
        let spec = self.job.spec.clone();
        let in_flight = self.c.in_flight().await.unwrap_or_default();
        let now = Instant::now();
        for index in 0..self.job.items.len() {
            if self.running.len() >= spec.max_parallel.max(1) as usize {
                return;
            }
            // A copy still starting has its share unset: starting another
            // now could take the sum past the budget.
            if spec.bandwidth > 0 && self.running.values().any(|r| r.migration_id.is_none()) {
                return;
            }
            let ItemState::Pending { tries, .. } = self.job.items[index] else {
                continue;
            };
            if self.not_before.get(&index).is_some_and(|t| *t > now) {
                continue;
            }
            let item = &self.job.plan.items[index];
            if !self.fits(item, &in_flight) {
                continue;
            }
            let attempt = tries + 1;
            let rid = request_id(&self.id, index, attempt);
            let share = budget::share(spec.bandwidth, self.running.len() + 1);
            // Make room in the budget before the new copy takes its share.
            self.rebalance(self.running.len() + 1).await;
            let next = ItemState::Running {
                request_id: rid.clone(),
                migration_id: None,
                attempt,
                started_ms: now_ms(),
            };
            let expected = |s: &ItemState| matches!(s, ItemState::Pending { .. });
            match job_store::set_item(self.c.inner.store.as_ref(), &self.id, index, expected, next)
                .await
            {
                Ok(job) => self.job = job,
                Err(e) => {
                    tracing::warn!(drain = %self.id, index, error = %e, "cannot record the item's start; not starting it");
                    return;
                }
            }
            self.not_before.remove(&index);
            let order = self.order(index, &rid, share);
            self.spawn(index, order, None);
        }
    }

    /// Whether item's node and destinations have room under the drain's
    /// limits and each pool's own `max_in_flight`.
    fn fits(&self, item: &PlannedItem, in_flight: &HashMap<String, u32>) -> bool {
        let spec = &self.job.spec;
        let on_node = self
            .running
            .values()
            .filter(|r| r.node_id == item.node_id)
            .count();
        if on_node >= spec.per_node.max(1) as usize {
            return false;
        }
        destinations(item).iter().all(|sid| {
            let ours = self
                .running
                .values()
                .filter(|r| r.destinations.contains(sid))
                .count();
            let per_drain = spec.per_destination == 0 || ours < spec.per_destination as usize;
            let name = item
                .disks
                .iter()
                .find(|d| &d.dest_storage_id == sid)
                .map_or("", |d| d.dest_pool.as_str());
            let limit = self.c.inner.config.pool_settings(name, sid).max_in_flight;
            // Items still starting have not reserved their slot yet.
            let starting = self
                .running
                .values()
                .filter(|r| r.migration_id.is_none() && r.destinations.contains(sid))
                .count();
            let now = in_flight
                .get(sid)
                .copied()
                .unwrap_or(0)
                .saturating_add(u32::try_from(starting).unwrap_or(u32::MAX));
            per_drain && limit.is_none_or(|l| now < l)
        })
    }

    /// Brings every running copy with a known migration to its share
    /// among `copies` (lowerings first).
    async fn rebalance(&mut self, copies: usize) {
        let current: Vec<(String, u64)> = self
            .running
            .values()
            .filter_map(|r| r.migration_id.clone().map(|m| (m, r.bandwidth)))
            .collect();
        for (mid, bps) in budget::redivide(self.job.spec.bandwidth, copies, &current) {
            let actor = self.job.actor.clone();
            if let Err(e) = self.c.set_bandwidth(actor.as_deref(), &mid, bps).await {
                tracing::warn!(drain = %self.id, migration_id = %mid, error = %e, "cannot set the copy's share of the budget");
                continue;
            }
            if let Some(run) = self
                .running
                .values_mut()
                .find(|r| r.migration_id.as_deref() == Some(mid.as_str()))
            {
                run.bandwidth = bps;
            }
        }
    }

    /// Applies what an item's task reported.
    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Started {
                index,
                migration_id,
            } => self.started(index, migration_id).await,
            Msg::Progress { index, event } => {
                if let Some(run) = self.running.get_mut(&index) {
                    run.bytes = (event.bytes_done, event.bytes_total.max(run.bytes.1));
                }
            }
            Msg::Ended { index, outcome } => self.ended(index, outcome).await,
        }
    }

    /// Records the migration the node runs for the item.
    async fn started(&mut self, index: usize, migration_id: String) {
        if let Some(run) = self.running.get_mut(&index) {
            run.migration_id = Some(migration_id.clone());
        }
        // A re-attached copy has the share a previous leader gave it.
        self.rebalance(self.running.len()).await;
        let store = self.c.inner.store.clone();
        let recorded = job_store::update(store.as_ref(), &self.id, |job| {
            if let Some(ItemState::Running {
                migration_id: m, ..
            }) = job.items.get_mut(index)
            {
                *m = Some(migration_id.clone());
            }
            Ok(())
        })
        .await;
        match recorded {
            Ok(job) => self.job = job,
            Err(e) => {
                tracing::warn!(drain = %self.id, index, error = %e, "cannot record the item's migration")
            }
        }
    }

    /// Records how the item's attempt ended: done, failed for good, to be
    /// tried again, or skipped when the drain was cancelled.
    async fn ended(&mut self, index: usize, outcome: Result<NodeEvent, String>) {
        let Some(run) = self.running.remove(&index) else {
            return;
        };
        let attempt = match &self.job.items[index] {
            ItemState::Running { attempt, .. } => *attempt,
            _ => 1,
        };
        let item = &self.job.plan.items[index];
        let next = match outcome {
            Ok(event) if event.phase == Some(Phase::Completed) => ItemState::Done {
                rows: report_rows(item, &event),
                bytes: item.bytes(),
                duration_ms: u64::try_from(run.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                migration_id: event.migration_id,
            },
            other => {
                let error = match other {
                    Ok(event) if event.error.is_empty() => {
                        format!("migration {} ended {:?}", event.migration_id, event.phase)
                    }
                    Ok(event) => event.error,
                    Err(e) => e,
                };
                if self.job.cancel_requested {
                    ItemState::Skipped {
                        reason: format!("drain cancelled while it ran: {error}"),
                    }
                } else if attempt >= self.job.spec.max_tries.max(1) {
                    ItemState::Failed {
                        tries: attempt,
                        last_error: error,
                    }
                } else {
                    let pause = retry_policy(self.job.spec.max_tries)
                        .next_pause(attempt, run.started.elapsed())
                        .unwrap_or_default();
                    self.not_before.insert(index, Instant::now() + pause);
                    tracing::info!(drain = %self.id, index, attempt, error = %error, "item failed; trying again");
                    ItemState::Pending {
                        tries: attempt,
                        last_error: Some(error),
                    }
                }
            }
        };
        let expected = |s: &ItemState| matches!(s, ItemState::Running { .. });
        match job_store::set_item(self.c.inner.store.as_ref(), &self.id, index, expected, next)
            .await
        {
            Ok(job) => self.job = job,
            Err(e) => {
                tracing::warn!(drain = %self.id, index, error = %e, "cannot record the item's end")
            }
        }
        self.rebalance(self.running.len()).await;
    }

    /// After a cancel: skips what has not started, cancels what runs.
    async fn cancel_all(&mut self) {
        let store = self.c.inner.store.clone();
        let pending = self
            .job
            .items
            .iter()
            .any(|s| matches!(s, ItemState::Pending { .. }));
        if pending {
            let skipped = job_store::update(store.as_ref(), &self.id, |job| {
                for state in &mut job.items {
                    if matches!(state, ItemState::Pending { .. }) {
                        *state = ItemState::Skipped {
                            reason: "drain cancelled before it started".to_string(),
                        };
                    }
                }
                Ok(())
            })
            .await;
            match skipped {
                Ok(job) => self.job = job,
                Err(e) => {
                    tracing::warn!(drain = %self.id, error = %e, "cannot skip the pending items")
                }
            }
            self.not_before.clear();
        }
        let actor = self.job.actor.clone();
        for run in self.running.values_mut() {
            let Some(mid) = run.migration_id.clone() else {
                continue;
            };
            if run.cancel_sent {
                continue;
            }
            run.cancel_sent = true;
            if let Err(e) = self.c.cancel(actor.as_deref(), &mid).await {
                tracing::warn!(drain = %self.id, migration_id = %mid, error = %e, "cannot cancel the item's migration");
            }
        }
    }

    /// Records that every item reached a final state.
    async fn finish(&mut self) {
        let store = self.c.inner.store.clone();
        match job_store::update(store.as_ref(), &self.id, |job| {
            job.finished_ms.get_or_insert_with(now_ms);
            Ok(())
        })
        .await
        {
            Ok(job) => self.job = job,
            Err(e) => tracing::warn!(drain = %self.id, error = %e, "cannot record the drain's end"),
        }
        tracing::info!(drain = %self.id, "drain finished");
    }

    /// Tells the drain's watchers where it is.
    fn publish(&self) {
        let running = self
            .running
            .iter()
            .map(|(index, r)| ItemProgress {
                index: *index,
                domain: self.job.plan.items[*index].domain.clone(),
                migration_id: r.migration_id.clone().unwrap_or_default(),
                bytes_done: r.bytes.0,
                bytes_total: r.bytes.1,
                bandwidth: r.bandwidth,
            })
            .collect();
        self.c.inner.drains.publish(&self.job, running);
    }
}
