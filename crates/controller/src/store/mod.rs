//! Where the controller keeps what must outlive it or be shared between
//! controllers: a small key-value store with revisions, conditional
//! transactions and keys that lapse unless renewed.
//!
//! The history, node registrations and in-flight reservations are layered on
//! it ([`super::history`], [`super::reservations`]), so every implementation
//! gets the same semantics: [`file::FileStore`] keeps one file under the
//! state dir for a single controller; `etcd::EtcdStore` shares the state
//! between controllers. Writes that must not race are [`Store::commit`]s that
//! compare revisions first, so two controllers acting at once cannot both win.

use std::time::Duration;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
pub mod lease;

/// A value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Revision of its last write (larger is later; never 0).
    pub revision: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key was last written at this revision.
    At(String, i64),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets the key.
    Put(String, Vec<u8>),
    /// Removes the key.
    Delete(String),
}

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Reading or writing the store failed.
    #[error("store: {0}")]
    Io(String),
    /// A value in the store could not be read.
    #[error("store: malformed value at {key}: {reason}")]
    Malformed {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A transaction kept losing to concurrent writers.
    #[error("store: too much contention on {0}")]
    Contention(String),
}

/// The controller's storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of `key`.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Every key under `prefix` as the nearest replica has it, which may
    /// miss the very latest writes: for advisory reads that a later
    /// transaction re-checks (placement's in-flight counts), never for a
    /// decision on its own.
    async fn list_relaxed(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.list(prefix).await
    }
    /// Applies `then` atomically if every condition in `when` holds; whether it did.
    async fn commit(&self, when: Vec<Compare>, then: Vec<Write>) -> Result<bool, StoreError>;
    /// Sets `key` to a value that lapses `ttl` after this write unless written again.
    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError>;
    /// Waits until this controller leads the controllers sharing the store;
    /// the returned lease ends when leadership is lost.
    async fn lead(&self) -> Result<Leadership, StoreError>;

    /// Sets `key`.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.commit(Vec::new(), vec![Write::Put(key.to_string(), value)])
            .await
            .map(|_| ())
    }

    /// Removes `key`.
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.commit(Vec::new(), vec![Write::Delete(key.to_string())])
            .await
            .map(|_| ())
    }
}

/// Leadership held until [`Leadership::lost`] resolves.
pub struct Leadership {
    lost: tokio::sync::watch::Receiver<bool>,
}

impl Leadership {
    /// Leadership that `lost` ends (when it turns true or its sender goes).
    pub fn new(lost: tokio::sync::watch::Receiver<bool>) -> Leadership {
        Leadership { lost }
    }

    /// Leadership that is never lost (a store no other controller shares).
    pub fn forever() -> Leadership {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Kept alive for the process: a dropped sender would end it.
        std::mem::forget(tx);
        Leadership { lost: rx }
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

/// Runs `change` on the value at `key` until its compare-and-swap wins:
/// `change` gets the current value (if any) and returns the new one (`None`
/// deletes it), or refuses with its `Err`, which is returned as it is.
pub async fn update<E>(
    store: &dyn Store,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
) -> Result<Result<(), E>, StoreError> {
    for _ in 0..64 {
        let current = store.get(key).await?;
        let next = match change(current.as_ref().map(|v| v.value.as_slice())) {
            Ok(next) => next,
            Err(refused) => return Ok(Err(refused)),
        };
        let when = vec![match &current {
            Some(v) => Compare::At(key.to_string(), v.revision),
            None => Compare::Absent(key.to_string()),
        }];
        let then = match next {
            Some(value) => vec![Write::Put(key.to_string(), value)],
            None if current.is_none() => return Ok(Ok(())),
            None => vec![Write::Delete(key.to_string())],
        };
        if store.commit(when, then).await? {
            return Ok(Ok(()));
        }
    }
    Err(StoreError::Contention(key.to_string()))
}

#[cfg(any(test, feature = "test-suite"))]
pub mod suite;
