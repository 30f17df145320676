//! In-flight reservations: the migrations writing to each pool, kept in the
//! [`Store`] so that every controller counts the same ones.
//!
//! Each pool with migrations in flight has one key, `inflight/<storage id>`,
//! holding its holders. A migration reserves a slot on every destination
//! pool in one transaction that compares each key's revision and checks each
//! pool's limit: of two controllers placing onto the last slot at once, one
//! commits and the other re-reads, sees the pool full and is refused. The
//! slot is taken before the node is asked and bound to the migration id once
//! the node has started it; it is released when the migration ends, when the
//! node refuses it, or by the leader's sweep ([`Reservations::sweep`]) when a
//! controller died in between. The same transaction compares each pool's
//! maintenance flag ([`super::maintenance`]), so a pool put in maintenance
//! after placement read it refuses the reservation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::maintenance::{self, PoolMaintenance};
use super::model::MigrationEntry;
use super::store::{self, Compare, Store, StoreError, Write};
use volmig_types::phase::now_ms;

/// Key prefix of the reservations.
pub const PREFIX: &str = "inflight/";

/// A slot not bound to a migration this long after it was taken belongs to
/// a controller that died before the node answered: the sweep frees it.
pub const UNBOUND_GRACE_MS: u64 = 120_000;

/// One slot of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    /// The migration, once the node started it.
    migration_id: Option<String>,
    /// When the slot was taken, Unix ms.
    since_ms: u64,
}

type Holders = BTreeMap<String, Holder>;

fn key(storage_id: &str) -> String {
    format!("{PREFIX}{storage_id}")
}

fn decode(key: &str, bytes: Option<&[u8]>) -> Result<Holders, StoreError> {
    match bytes {
        None => Ok(Holders::new()),
        Some(b) => serde_json::from_slice(b).map_err(|e| StoreError::Malformed {
            key: key.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn encode(holders: &Holders) -> Result<Option<Vec<u8>>, StoreError> {
    if holders.is_empty() {
        return Ok(None);
    }
    serde_json::to_vec(holders)
        .map(Some)
        .map_err(|e| StoreError::Io(e.to_string()))
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A pool is at its limit of migrations in flight.
    Full {
        /// Its storage id.
        storage_id: String,
        /// Its limit.
        limit: u32,
    },
    /// A pool is in maintenance (set since placement read it).
    InMaintenance {
        /// Its storage id.
        storage_id: String,
        /// The flag.
        flag: PoolMaintenance,
    },
}

/// Slots taken for one migration (one per destination disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    token: String,
    storage_ids: Vec<String>,
}

/// The reservations over a store.
pub struct Reservations {
    store: Arc<dyn Store>,
}

impl Reservations {
    /// The reservations in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Reservations { store }
    }

    /// Migrations in flight per storage id, for placement: it may lag the
    /// latest reservations by a moment, which [`Reservations::reserve`]
    /// re-checks.
    pub async fn counts(&self) -> Result<HashMap<String, u32>, StoreError> {
        let mut counts = HashMap::new();
        for (k, v) in self.store.list_relaxed(PREFIX).await? {
            let holders = decode(&k, Some(&v.value))?;
            let n = u32::try_from(holders.len()).unwrap_or(u32::MAX);
            counts.insert(k[PREFIX.len()..].to_string(), n);
        }
        Ok(counts)
    }

    /// Takes a slot on each pool of `wants` (storage id and its limit; a pool
    /// named twice takes two slots) in one transaction, or none when one of
    /// them is full or in maintenance. The transaction also compares each
    /// pool's maintenance flag, so a flag set after placement read it is
    /// never raced past.
    pub async fn reserve(
        &self,
        wants: &[(String, Option<u32>)],
    ) -> Result<Result<Slots, Refused>, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut pools: BTreeMap<&str, (u32, Option<u32>)> = BTreeMap::new();
        for (sid, limit) in wants {
            let e = pools.entry(sid.as_str()).or_insert((0, *limit));
            e.0 += 1;
        }
        for _ in 0..64 {
            let mut when = Vec::new();
            let mut then = Vec::new();
            for (sid, (n, limit)) in &pools {
                let k = key(sid);
                let current = self.store.get(&k).await?;
                let mut holders = decode(&k, current.as_ref().map(|v| v.value.as_slice()))?;
                if let Some(limit) = limit {
                    if holders.len() + *n as usize > *limit as usize {
                        return Ok(Err(Refused::Full {
                            storage_id: sid.to_string(),
                            limit: *limit,
                        }));
                    }
                }
                let flag_key = maintenance::key(sid);
                match self.store.get(&flag_key).await? {
                    Some(v) => {
                        let flag = maintenance::decode(&flag_key, &v.value)?;
                        if flag.on {
                            return Ok(Err(Refused::InMaintenance {
                                storage_id: sid.to_string(),
                                flag,
                            }));
                        }
                        when.push(Compare::At(flag_key, v.revision));
                    }
                    None => when.push(Compare::Absent(flag_key)),
                }
                for i in 0..*n {
                    holders.insert(
                        format!("{token}.{i}"),
                        Holder {
                            migration_id: None,
                            since_ms: now_ms(),
                        },
                    );
                }
                when.push(match &current {
                    Some(v) => Compare::At(k.clone(), v.revision),
                    None => Compare::Absent(k.clone()),
                });
                if let Some(value) = encode(&holders)? {
                    then.push(Write::Put(k, value));
                }
            }
            if self.store.commit(when, then).await? {
                return Ok(Ok(Slots {
                    token,
                    storage_ids: pools.keys().map(|s| s.to_string()).collect(),
                }));
            }
        }
        Err(StoreError::Contention(PREFIX.to_string()))
    }

    /// Binds the slots to the migration the node started.
    pub async fn bind(&self, slots: &Slots, migration_id: &str) -> Result<(), StoreError> {
        self.edit(&slots.storage_ids, |token, holder| {
            if token.starts_with(&format!("{}.", slots.token)) {
                holder.migration_id = Some(migration_id.to_string());
            }
            true
        })
        .await
    }

    /// Frees slots the node did not use.
    pub async fn release(&self, slots: &Slots) -> Result<(), StoreError> {
        let prefix = format!("{}.", slots.token);
        self.edit(&slots.storage_ids, |token, _| !token.starts_with(&prefix))
            .await
    }

    /// Frees the slots of a migration that ended.
    pub async fn release_migration(&self, entry: &MigrationEntry) -> Result<(), StoreError> {
        let mut sids: Vec<String> = entry.storage_ids().cloned().collect();
        sids.sort();
        sids.dedup();
        self.edit(&sids, |_, holder| {
            holder.migration_id.as_deref() != Some(entry.migration_id.as_str())
        })
        .await
    }

    /// Frees slots older than [`UNBOUND_GRACE_MS`] that are unbound or whose
    /// migration is finished or unknown (`finished` says which ids are).
    pub async fn sweep(&self, finished: impl Fn(&str) -> bool) -> Result<(), StoreError> {
        let now = now_ms();
        let sids: Vec<String> = self
            .store
            .list(PREFIX)
            .await?
            .into_iter()
            .map(|(k, _)| k[PREFIX.len()..].to_string())
            .collect();
        // A young slot is never swept: its migration may be recorded after
        // `finished` was computed.
        self.edit(&sids, |_, holder| {
            now.saturating_sub(holder.since_ms) < UNBOUND_GRACE_MS
                || holder
                    .migration_id
                    .as_deref()
                    .is_some_and(|id| !finished(id))
        })
        .await
    }

    /// Keeps the holders of each pool for which `keep` holds (it may edit them).
    async fn edit(
        &self,
        storage_ids: &[String],
        mut keep: impl FnMut(&str, &mut Holder) -> bool,
    ) -> Result<(), StoreError> {
        for sid in storage_ids {
            let k = key(sid);
            store::update::<StoreError>(self.store.as_ref(), &k, |current| {
                let mut holders = decode(&k, current)?;
                holders.retain(|token, holder| keep(token, holder));
                encode(&holders)
            })
            .await??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    #[tokio::test]
    async fn concurrent_reservations_never_overfill_a_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("open"));
        let r = Arc::new(Reservations::new(store));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let r = r.clone();
            tasks.spawn(async move {
                r.reserve(&[("p".into(), Some(2)), ("q".into(), None)])
                    .await
                    .expect("store")
            });
        }
        let mut won = Vec::new();
        while let Some(res) = tasks.join_next().await {
            if let Ok(slots) = res.expect("join") {
                won.push(slots);
            }
        }
        assert_eq!(won.len(), 2);
        let counts = r.counts().await.expect("counts");
        assert_eq!((counts["p"], counts["q"]), (2, 2));
        r.bind(&won[0], "m1").await.expect("bind");
        r.release(&won[1]).await.expect("release");
        assert_eq!(r.counts().await.expect("counts")["p"], 1);
        r.sweep(|_| true).await.expect("sweep");
        assert_eq!(
            r.counts().await.expect("counts")["p"],
            1,
            "young slots stay"
        );
    }

    #[tokio::test]
    async fn a_pool_put_in_maintenance_refuses_reservations_until_it_is_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("open"));
        let r = Reservations::new(store.clone());
        let flag = PoolMaintenance::sample(true);
        maintenance::set(store.as_ref(), "dir:/p", &flag)
            .await
            .expect("set");
        let refused = r
            .reserve(&[("q".into(), None), ("dir:/p".into(), None)])
            .await
            .expect("store");
        assert_eq!(
            refused,
            Err(Refused::InMaintenance {
                storage_id: "dir:/p".into(),
                flag
            })
        );
        assert!(
            r.counts().await.expect("counts").is_empty(),
            "no slot taken"
        );
        let off = PoolMaintenance::sample(false);
        maintenance::set(store.as_ref(), "dir:/p", &off)
            .await
            .expect("off");
        r.reserve(&[("dir:/p".into(), None)])
            .await
            .expect("store")
            .expect("reserved once off");
    }
}
