//! Pool maintenance: an operator's flag per cluster pool (by storage id) that
//! keeps placement from choosing the pool, kept in the [`Store`] so that it
//! outlives a controller restart and every controller sharing the store
//! honours it.
//!
//! Each pool ever flagged has one key, `pool-maintenance/<storage id,
//! escaped>`, holding a [`PoolMaintenance`]: on or off, who changed it last,
//! when, and why. Turning it off keeps the key (with `on: false`) so the
//! listing still says who ended the maintenance and when.
//!
//! There is no cache: every placement lists the prefix with a consistent
//! read ([`Store::list`], not the relaxed one), so a flag set through one
//! controller is seen by the next placement on any controller. Starting a
//! migration re-checks it where it reserves the destination's in-flight slot
//! ([`crate::reservations::Reservations::reserve`]): the transaction compares
//! the flag's revision too, so a flag set between placement and start refuses
//! the start instead of racing it. Migrations already running are not
//! touched; the flag moves nothing off the pool.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::ControllerError;
use super::inventory::ClusterPool;
use super::store::{Store, StoreError};
use super::Controller;
use volmig_types::phase::now_ms;
use volmig_types::validate::Invalid;

/// Key prefix of the flags.
pub const PREFIX: &str = "pool-maintenance/";

/// The longest reason an operator may give, in bytes: it is stored and shown
/// in every placement that judges the pool.
pub const MAX_REASON: usize = 512;

/// A pool's maintenance flag as last set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMaintenance {
    /// In maintenance: placement never chooses the pool.
    pub on: bool,
    /// Who set it (the caller's audit name).
    pub actor: String,
    /// When it was set, Unix ms.
    pub since_ms: u64,
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(any(test, feature = "test-suite"))]
impl PoolMaintenance {
    /// A flag as tests use it: set by `operator:alice` on 2024-05-01 at
    /// 12:00 UTC for a disk replacement.
    pub fn sample(on: bool) -> PoolMaintenance {
        PoolMaintenance {
            on,
            actor: "operator:alice".into(),
            since_ms: 1_714_564_800_000,
            reason: Some("disk replacement".into()),
        }
    }
}

/// The key of `storage_id`'s flag. Storage ids hold `/` and `:` (paths,
/// URLs), and an id that is a prefix of another must not list with it, so
/// every byte outside a plain set is `%XX`.
pub(crate) fn key(storage_id: &str) -> String {
    let mut k = String::from(PREFIX);
    for b in storage_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            k.push(char::from(b));
        } else {
            k.push_str(&format!("%{b:02X}"));
        }
    }
    k
}

/// The storage id of a key written by [`key`].
fn storage_id_of(k: &str) -> Option<String> {
    let escaped = k.strip_prefix(PREFIX)?.as_bytes();
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        if escaped[i] == b'%' {
            let hex = std::str::from_utf8(escaped.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(escaped[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The flag stored at `key`.
pub(crate) fn decode(key: &str, value: &[u8]) -> Result<PoolMaintenance, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Malformed {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Every pool's flag, by storage id, read consistently (see the module docs).
pub async fn all(store: &dyn Store) -> Result<HashMap<String, PoolMaintenance>, StoreError> {
    let mut flags = HashMap::new();
    for (k, v) in store.list(PREFIX).await? {
        let storage_id = storage_id_of(&k).ok_or_else(|| StoreError::Malformed {
            key: k.clone(),
            reason: "not an escaped storage id".into(),
        })?;
        flags.insert(storage_id, decode(&k, &v.value)?);
    }
    Ok(flags)
}

/// Records `flag` for `storage_id`.
pub async fn set(
    store: &dyn Store,
    storage_id: &str,
    flag: &PoolMaintenance,
) -> Result<(), StoreError> {
    let value = serde_json::to_vec(flag).map_err(|e| StoreError::Io(e.to_string()))?;
    store.put(&key(storage_id), value).await
}

/// A maintenance change as the controller made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSet {
    /// The pool's storage id.
    pub storage_id: String,
    /// Its name (on the first node that reaches it; the storage id when no
    /// up node reports it).
    pub name: String,
    /// The flag now.
    pub flag: PoolMaintenance,
}

impl Controller {
    /// Turns `pool`'s maintenance flag on or off. `pool` is a storage id or
    /// a pool name that names one storage id among the up nodes' pools; a
    /// storage id flagged before is accepted even when no up node reports it,
    /// so a flag never outlives its pool's visibility.
    pub async fn set_pool_maintenance(
        &self,
        actor: Option<&str>,
        pool: &str,
        on: bool,
        reason: Option<String>,
    ) -> Result<MaintenanceSet, ControllerError> {
        check_reason(reason.as_deref())?;
        let up = self.up_nodes().await;
        let pools = self.cluster_pools(&up).await;
        let store = self.inner.store.as_ref();
        let (storage_id, name) = match resolve_pool(&pools.pools, pool)? {
            Some(cp) => (cp.storage_id.clone(), cp.pool.name.clone()),
            None if all(store).await?.contains_key(pool) => (pool.to_string(), pool.to_string()),
            None => {
                return Err(ControllerError::NotFound(format!(
                    "storage pool '{}' is neither a pool name nor a storage id of any up node (see `volmig pools --controller …`)",
                    pool.escape_debug()
                )))
            }
        };
        let flag = PoolMaintenance {
            on,
            actor: actor.unwrap_or("unknown").to_string(),
            since_ms: now_ms(),
            reason: reason.filter(|r| !r.is_empty()),
        };
        set(store, &storage_id, &flag).await?;
        tracing::info!(storage_id = %storage_id.escape_debug(), pool = %name.escape_debug(), on, actor = %flag.actor.escape_debug(), "pool maintenance set");
        Ok(MaintenanceSet {
            storage_id,
            name,
            flag,
        })
    }

    /// Every pool's maintenance flag, by storage id.
    pub(crate) async fn maintenance(
        &self,
    ) -> Result<HashMap<String, PoolMaintenance>, ControllerError> {
        Ok(all(self.inner.store.as_ref()).await?)
    }
}

/// The one pool `pool` names: its storage id, else its name on some node.
/// `None` when nothing matches; an error when the name is several pools'.
pub(crate) fn resolve_pool<'a>(
    pools: &'a [ClusterPool],
    pool: &str,
) -> Result<Option<&'a ClusterPool>, ControllerError> {
    if pool.is_empty() {
        return Err(ControllerError::InvalidArgument {
            field: "pool",
            reason: "a pool name or storage id is required".into(),
        });
    }
    if let Some(cp) = pools.iter().find(|cp| cp.storage_id == pool) {
        return Ok(Some(cp));
    }
    let named: Vec<&ClusterPool> = pools
        .iter()
        .filter(|cp| cp.names.values().any(|n| n == pool))
        .collect();
    match named.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(ControllerError::AmbiguousPool {
            name: pool.to_string(),
            storage_ids: many
                .iter()
                .map(|cp| cp.storage_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A reason is stored and shown to every operator: bounded, one safe line.
fn check_reason(reason: Option<&str>) -> Result<(), ControllerError> {
    volmig_types::validate::note("reason", reason.unwrap_or_default(), MAX_REASON).map_err(|e| {
        match e {
            Invalid::Field { field, reason } => ControllerError::InvalidArgument { field, reason },
            other => ControllerError::InvalidArgument {
                field: "reason",
                reason: other.to_string(),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    fn flag(on: bool) -> PoolMaintenance {
        PoolMaintenance::sample(on)
    }

    #[test]
    fn keys_escape_storage_ids_and_read_back() {
        for id in ["s-a", "dir:/var/lib/x", "rbd://mon/pool", "100%", "ü"] {
            let k = key(id);
            assert!(k[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b)));
            assert_eq!(storage_id_of(&k).as_deref(), Some(id), "{k}");
        }
        // An id that is a prefix of another lists apart from it.
        assert!(!key("a/b").starts_with(&format!("{}/", key("a"))));
        assert_eq!(storage_id_of("pool-maintenance/%4"), None);
    }

    #[tokio::test]
    async fn a_flag_survives_reopening_the_file_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = FileStore::open(dir.path()).expect("open");
            set(&store, "dir:/p", &flag(true)).await.expect("set");
        }
        let store = FileStore::open(dir.path()).expect("reopen");
        assert_eq!(
            all(&store).await.expect("list").get("dir:/p"),
            Some(&flag(true))
        );
    }

    fn cluster_pool(storage_id: &str, names: &[(&str, &str)]) -> ClusterPool {
        ClusterPool {
            storage_id: storage_id.into(),
            pool: crate::model::PoolInfo {
                name: names[0].1.into(),
                storage_id: storage_id.into(),
                ..Default::default()
            },
            names: names
                .iter()
                .map(|(node, name)| (node.to_string(), name.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_pool_is_named_by_storage_id_or_by_a_name_only_one_storage_id_carries() {
        let pools = [
            cluster_pool("local:h1:/a", &[("n1", "images")]),
            cluster_pool("local:h2:/a", &[("n2", "images")]),
            cluster_pool("netfs:nas:/vms", &[("n1", "nfs"), ("n2", "shared")]),
        ];
        let found = |p: &str| resolve_pool(&pools, p).map(|c| c.map(|c| c.storage_id.clone()));
        assert_eq!(found("local:h2:/a").ok(), Some(Some("local:h2:/a".into())));
        assert_eq!(found("shared").ok(), Some(Some("netfs:nas:/vms".into())));
        assert_eq!(found("nowhere").ok(), Some(None));
        let Err(ControllerError::AmbiguousPool { storage_ids, .. }) = found("images") else {
            panic!("a name two storage ids carry is not refused");
        };
        assert_eq!(storage_ids, "local:h1:/a, local:h2:/a");
        assert!(matches!(
            found(""),
            Err(ControllerError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn reasons_are_bounded_single_safe_lines() {
        assert!(check_reason(None).is_ok());
        assert!(check_reason(Some("disk replacement, ticket 42")).is_ok());
        assert!(check_reason(Some("a\nb")).is_err());
        assert!(check_reason(Some("\u{202E}x")).is_err());
        assert!(check_reason(Some(&"x".repeat(MAX_REASON + 1))).is_err());
    }
}
