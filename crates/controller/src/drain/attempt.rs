//! One attempt of one item, in its own task: start it through the
//! controller's migration path (or follow the migration a previous leader
//! started), then follow it to its end, telling the executor each step.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::model::{PlannedItem, ReportRow};
use crate::model::{NodeEvent, Order};
use crate::{Controller, WatchStream};

/// Following a migration again after its stream was lost.
const REFOLLOW: Duration = Duration::from_secs(1);

/// What an item's task tells the executor.
pub(super) enum Msg {
    /// The node runs the attempt as this migration.
    Started { index: usize, migration_id: String },
    /// A progress event.
    Progress { index: usize, event: NodeEvent },
    /// The attempt ended: its terminal event, or why it could not start.
    Ended {
        index: usize,
        outcome: Result<NodeEvent, String>,
    },
}

/// Starts `order` (or follows migration `known`) and reports to `tx`
/// until it ends.
pub(super) async fn attempt(
    c: Controller,
    actor: Option<String>,
    index: usize,
    order: Order,
    known: Option<String>,
    tx: mpsc::Sender<Msg>,
) {
    let started = match known {
        Some(mid) => c.watch(&mid).await.map(|s| (mid, s)),
        None => c.start_migration(actor.as_deref(), order).await,
    };
    let outcome = match started {
        Ok((migration_id, stream)) => {
            let _ = tx
                .send(Msg::Started {
                    index,
                    migration_id: migration_id.clone(),
                })
                .await;
            follow(&c, &migration_id, stream, index, &tx).await
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = tx.send(Msg::Ended { index, outcome }).await;
}

/// The distinct destination pools of an item.
pub(super) fn destinations(item: &PlannedItem) -> Vec<String> {
    let mut seen = HashSet::new();
    item.disks
        .iter()
        .filter(|d| seen.insert(d.dest_storage_id.clone()))
        .map(|d| d.dest_storage_id.clone())
        .collect()
}

/// The report's rows of a completed item: what the node says, with the
/// plan's figures where it said nothing (an older node).
pub(super) fn report_rows(item: &PlannedItem, event: &NodeEvent) -> Vec<ReportRow> {
    item.disks
        .iter()
        .map(|d| {
            let r = event.results.iter().find(|r| r.disk == d.target);
            let or = |got: Option<&String>, planned: &str| {
                got.filter(|s| !s.is_empty())
                    .cloned()
                    .unwrap_or_else(|| planned.to_string())
            };
            ReportRow {
                disk: d.target.clone(),
                old_pool: or(r.map(|r| &r.source_pool), &d.source_pool),
                old_path: or(r.map(|r| &r.previous_source), &d.source),
                old_volume: or(r.map(|r| &r.source_volume), &d.volume),
                new_pool: or(r.map(|r| &r.destination_pool), &d.dest_pool),
                new_path: or(r.map(|r| &r.destination_source), ""),
                new_volume: or(r.map(|r| &r.destination_volume), ""),
                source_deleted: r.is_some_and(|r| r.source_deleted),
            }
        })
        .collect()
}

/// Follows migration `id` until its terminal event, following it again
/// when the stream is lost (the controller's relay keeps the history).
async fn follow(
    c: &Controller,
    id: &str,
    mut stream: WatchStream,
    index: usize,
    tx: &mpsc::Sender<Msg>,
) -> Result<NodeEvent, String> {
    loop {
        while let Some(Ok(event)) = stream.recv().await {
            if event.is_terminal() {
                return Ok(event);
            }
            let _ = tx.send(Msg::Progress { index, event }).await;
        }
        tokio::time::sleep(REFOLLOW).await;
        if let Ok(entry) = c.entry(id).await {
            if entry.is_terminal() {
                return Ok(entry.latest);
            }
        }
        match c.watch(id).await {
            Ok(s) => stream = s,
            Err(e) => {
                tracing::debug!(migration_id = %id, error = %e, "cannot follow the item's migration yet")
            }
        }
    }
}

/// Sleeps until `at`, or for ever without one.
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
