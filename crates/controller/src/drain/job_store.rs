//! Drains in the [`Store`]: one key per drain (`drains/<id>`, the
//! [`DrainJob`] as JSON), changed only by compare-and-swap
//! ([`store::update`]) so two controllers never overwrite each other's step.

use super::model::{DrainJob, ItemState};
use crate::error::ControllerError;
use crate::store::{self, Compare, Store, StoreError, Write};

/// Key prefix of the drains.
pub const PREFIX: &str = "drains/";

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<DrainJob, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Malformed {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode(job: &DrainJob) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(job).map_err(|e| StoreError::Io(e.to_string()))
}

/// Records a new drain; its id must be new.
pub(crate) async fn create(store: &dyn Store, job: &DrainJob) -> Result<(), ControllerError> {
    let k = key(&job.id);
    let created = store
        .commit(
            vec![Compare::Absent(k.clone())],
            vec![Write::Put(k, encode(job)?)],
        )
        .await?;
    if created {
        Ok(())
    } else {
        Err(StoreError::Contention(key(&job.id)).into())
    }
}

/// The drain `id`.
pub(crate) async fn get(store: &dyn Store, id: &str) -> Result<DrainJob, ControllerError> {
    let k = key(id);
    match store.get(&k).await? {
        Some(v) => Ok(decode(&k, &v.value)?),
        None => Err(ControllerError::UnknownDrain(id.to_string())),
    }
}

/// Every drain, oldest first.
pub(crate) async fn all(store: &dyn Store) -> Result<Vec<DrainJob>, ControllerError> {
    let mut jobs = store
        .list(PREFIX)
        .await?
        .into_iter()
        .map(|(k, v)| decode(&k, &v.value))
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Ok(jobs)
}

/// Applies `change` to drain `id` until the write wins; the job as written.
/// `change` refuses with its `Err`, returned as it is.
pub(crate) async fn update(
    store: &dyn Store,
    id: &str,
    mut change: impl FnMut(&mut DrainJob) -> Result<(), ControllerError>,
) -> Result<DrainJob, ControllerError> {
    let k = key(id);
    let mut written = None;
    store::update::<ControllerError>(store, &k, |current| {
        let Some(bytes) = current else {
            return Err(ControllerError::UnknownDrain(id.to_string()));
        };
        let mut job = decode(&k, bytes)?;
        change(&mut job)?;
        let bytes = encode(&job)?;
        written = Some(job);
        Ok(Some(bytes))
    })
    .await??;
    written.ok_or_else(|| ControllerError::UnknownDrain(id.to_string()))
}

/// Sets item `index`'s state to `next`, when the item is still in the
/// state `expected` says (another controller may have moved it on).
pub(crate) async fn set_item(
    store: &dyn Store,
    id: &str,
    index: usize,
    expected: impl Fn(&ItemState) -> bool,
    next: ItemState,
) -> Result<DrainJob, ControllerError> {
    update(store, id, |job| {
        let Some(state) = job.items.get_mut(index) else {
            return Err(ControllerError::UnknownDrain(format!("{id} item {index}")));
        };
        if !expected(state) {
            return Err(ControllerError::Precondition(format!(
                "drain {id} item {index} moved on meanwhile"
            )));
        }
        *state = next.clone();
        Ok(())
    })
    .await
}
