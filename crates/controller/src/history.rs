//! The controller's migration history, one key per migration in the
//! [`Store`] (`migrations/<id>`, the [`MigrationEntry`] as JSON).
//!
//! A migration is recorded with a transaction that creates its key only if
//! absent, before anything of it is relayed, so the history never misses
//! one and two controllers never record it twice. Events are written with a
//! compare-and-swap that never moves an entry backwards (an older event, or
//! anything after the terminal one), because several controllers may follow
//! the same migration. The retention is applied at start-up and every
//! [`RETENTION_EVERY`] writes: finished migrations older than `max_age`, or
//! beyond the newest `max_records`, are forgotten. Unfinished ones are kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::model::{MigrationEntry, NodeEvent};
use super::store::{self, Compare, Store, StoreError, Write};

/// Key prefix of the history.
pub const PREFIX: &str = "migrations/";

/// The retention is applied after this many writes.
pub const RETENTION_EVERY: usize = 1000;

/// How long finished migrations are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention {
    /// Finished migrations whose last event is older than this are dropped.
    pub max_age: std::time::Duration,
    /// At most this many finished migrations are kept (the newest).
    pub max_records: usize,
}

impl Default for HistoryRetention {
    fn default() -> Self {
        HistoryRetention {
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            max_records: 10_000,
        }
    }
}

impl HistoryRetention {
    /// The retention a controller's configuration asks for.
    pub fn of(config: &volmig_config::ControllerConfig) -> HistoryRetention {
        HistoryRetention {
            max_age: std::time::Duration::from_secs(
                config.history_retention_days.saturating_mul(24 * 3600),
            ),
            max_records: config.history_retention_records,
        }
    }
}

/// The history over a store.
pub struct History {
    store: Arc<dyn Store>,
    retention: HistoryRetention,
    writes: AtomicUsize,
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<MigrationEntry, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Malformed {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode(entry: &MigrationEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(entry).map_err(|e| StoreError::Io(e.to_string()))
}

/// Whether `event` may replace `latest`: not after the end, not older.
fn advances(latest: &NodeEvent, event: &NodeEvent) -> bool {
    !latest.is_terminal() && event.timestamp_ms >= latest.timestamp_ms
}

impl History {
    /// The history in `store`, with the retention applied once now.
    pub async fn open(
        store: Arc<dyn Store>,
        retention: HistoryRetention,
    ) -> Result<History, StoreError> {
        let history = History {
            store,
            retention,
            writes: AtomicUsize::new(0),
        };
        history.apply_retention().await?;
        Ok(history)
    }

    /// One entry.
    pub async fn get(&self, id: &str) -> Result<Option<MigrationEntry>, StoreError> {
        let key = key(id);
        match self.store.get(&key).await? {
            Some(v) => decode(&key, &v.value).map(Some),
            None => Ok(None),
        }
    }

    /// Every entry. A malformed one is skipped (and logged), not fatal.
    pub async fn all(&self) -> Result<Vec<MigrationEntry>, StoreError> {
        Ok(self
            .store
            .list(PREFIX)
            .await?
            .into_iter()
            .filter_map(|(k, v)| match decode(&k, &v.value) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a history entry");
                    None
                }
            })
            .collect())
    }

    /// Records a new migration; when it is recorded already (a retry that
    /// attached to it, or another controller), the entry recorded.
    pub async fn create(&self, entry: MigrationEntry) -> Result<MigrationEntry, StoreError> {
        let key = key(&entry.migration_id);
        loop {
            let created = self
                .store
                .commit(
                    vec![Compare::Absent(key.clone())],
                    vec![Write::Put(key.clone(), encode(&entry)?)],
                )
                .await?;
            if created {
                self.wrote().await;
                return Ok(entry);
            }
            if let Some(prior) = self.get(&entry.migration_id).await? {
                return Ok(prior);
            }
        }
    }

    /// Records the latest event of a known migration, unless the entry has
    /// a later one or has ended.
    pub async fn update_latest(&self, event: &NodeEvent) -> Result<(), StoreError> {
        let key = key(&event.migration_id);
        let outcome = store::update::<()>(self.store.as_ref(), &key, |current| {
            let Some(bytes) = current else {
                return Err(());
            };
            let mut entry = decode(&key, bytes).map_err(|_| ())?;
            if !advances(&entry.latest, event) || entry.latest == *event {
                return Err(());
            }
            entry.latest = event.clone();
            encode(&entry).map(Some).map_err(|_| ())
        })
        .await?;
        if outcome.is_ok() {
            self.wrote().await;
        }
        Ok(())
    }

    async fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % RETENTION_EVERY == RETENTION_EVERY - 1 {
            if let Err(e) = self.apply_retention().await {
                tracing::warn!(error = %e, "cannot apply the history retention");
            }
        }
    }

    /// Drops the finished entries the retention does not keep.
    pub async fn apply_retention(&self) -> Result<(), StoreError> {
        let now = volmig_types::phase::now_ms();
        let max_age = u64::try_from(self.retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let mut finished: Vec<(u64, String)> = Vec::new();
        let mut drop = Vec::new();
        for entry in self.all().await? {
            if !entry.is_terminal() {
                continue;
            }
            let stamp = entry.latest.timestamp_ms;
            // An entry without a timestamp is not aged out (only counted).
            if stamp != 0 && now.saturating_sub(stamp) > max_age {
                drop.push(entry.migration_id);
            } else {
                finished.push((stamp, entry.migration_id));
            }
        }
        if finished.len() > self.retention.max_records {
            finished.sort();
            let excess = finished.len() - self.retention.max_records;
            drop.extend(finished.into_iter().take(excess).map(|(_, id)| id));
        }
        for id in drop {
            self.store.delete(&key(&id)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;
    use volmig_types::phase::Phase;

    pub(crate) fn entry(id: &str, phase: Phase, at: u64) -> MigrationEntry {
        MigrationEntry {
            migration_id: id.into(),
            node_id: "n1".into(),
            order: Default::default(),
            latest: NodeEvent {
                migration_id: id.into(),
                node_id: "n1".into(),
                phase: Some(phase),
                timestamp_ms: at,
                ..Default::default()
            },
            source_pool: String::new(),
            previous_source: String::new(),
            dest_storage_id: "local:h:/p".into(),
            more_storage_ids: Vec::new(),
        }
    }

    #[tokio::test]
    async fn records_once_never_goes_back_and_applies_the_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = HistoryRetention {
            max_age: std::time::Duration::from_secs(3600),
            max_records: 3,
        };
        let now = volmig_types::phase::now_ms();
        {
            let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("open"));
            let h = History::open(store, retention).await.expect("open");
            let first = h
                .create(entry("m1", Phase::Copying, now))
                .await
                .expect("create");
            let again = h
                .create(entry("m1", Phase::Accepted, now - 5))
                .await
                .expect("create");
            assert_eq!(again, first, "the first record wins");
            h.update_latest(&entry("m1", Phase::Completed, now + 1).latest)
                .await
                .expect("update");
            h.update_latest(&entry("m1", Phase::Copying, now + 2).latest)
                .await
                .expect("update");
            assert_eq!(
                h.get("m1").await.expect("get").expect("m1").latest.phase,
                Some(Phase::Completed),
                "nothing after the end"
            );
            h.create(entry("running", Phase::Copying, now))
                .await
                .expect("create");
            for i in 0..6u64 {
                h.create(entry(&format!("done{i}"), Phase::Completed, now - 10 + i))
                    .await
                    .expect("create");
            }
            h.create(entry("ancient", Phase::Failed, now - 7200 * 1000))
                .await
                .expect("create");
        }
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("reopen"));
        let h = History::open(store, retention).await.expect("reopen");
        let mut ids: Vec<String> = h
            .all()
            .await
            .expect("all")
            .into_iter()
            .map(|e| e.migration_id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["done4", "done5", "m1", "running"]);
    }
}
